"""transcribed: a private, local transcription daemon (inbox -> Qwen3-ASR -> outbox)."""

__version__ = "0.1.0"
