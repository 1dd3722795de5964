"""The daemon's error types: one base, split by what the caller should do about them."""

import errno
import sqlite3

# What to tell the operator for the OS errors that stop a transcript from being written.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space; work resumes by itself",
    errno.EDQUOT: "the disk quota is exhausted: free some space; work resumes by itself",
    errno.EACCES: "permission denied: let the service user write there",
    errno.EPERM: "permission denied: let the service user write there",
    errno.EROFS: "the folder is on a read-only filesystem: remount it read-write",
    errno.EIO: "the disk reported an I/O error: check it; the files are written again",
    errno.ENOTDIR: "a file stands where a folder should be (the error names the path): move "
    "it away; the job waits and resumes by itself",
    errno.EISDIR: "a folder stands where a file should be written (the error names the "
    "path): move it away; the job waits and resumes by itself",
    errno.ENOENT: "a folder is missing (the error names the path): make it again, or mount "
    "it; the job waits and resumes by itself",
}


def advice(error: BaseException | None) -> str | None:
    """One line on what the operator can do about `error`, when we know."""
    if isinstance(error, OSError) and error.errno in _ADVICE:
        return _ADVICE[error.errno]
    if isinstance(error, FolderUnusable):
        return "fix the folder (the error says which); the job waits and resumes by itself"
    if isinstance(error, sqlite3.Error):
        return "the job database cannot be written: check free space and permissions of state_dir"
    return None


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


class RecordingVanished(TranscribedError):
    """The original left the work folder without us: the job fails with a reason."""


class FolderUnusable(OSError):
    """A folder we write to is gone or now leads into the inbox: wait, and say so."""


class DecoderCrashed(TranscribedError):
    """The decoder process died or hung on this file: retried, then quarantined."""
