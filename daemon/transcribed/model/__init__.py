"""The resident Qwen3-ASR (the local engine): loading and checking model files, the audio
encoder and the decode loop (rows in KV slots, refilled as they end; CUDA graphs on a GPU),
a stand-in costed as a GPU for benchmarks, batching chunks across recordings, the
per-recording pipeline, aligner, speaker labels, scores. Hands a transcript on to output.
"""
