"""The daemon's error types: one base, split by what the caller should do about them."""


class TranscribedError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(TranscribedError):
    """The configuration is unusable; the message says what to change."""


class ModelError(TranscribedError):
    """The model cannot be loaded; the message says how to get a usable one."""


class PermanentError(TranscribedError):
    """This recording can never be transcribed as it is (not audio, corrupt, too long)."""


class TransientError(TranscribedError):
    """Retrying later may succeed (out of memory, disk full, I/O error); nothing is lost."""


class ShutdownRequested(TranscribedError):
    """The daemon is stopping; the current job goes back to the queue untouched."""


class DecoderCrashed(TranscribedError):
    """The decoder process died or hung on this file: retried, then quarantined."""
