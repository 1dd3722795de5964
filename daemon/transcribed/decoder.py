"""Runs `audio.decode` in a child process with memory and time limits.

Decoders parse untrusted bytes: a crafted file may crash, hang or exhaust memory. Here that
kills a disposable child, never the daemon; the parent restarts it for the next file.
"""

import multiprocessing
import os
import resource
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from transcribed.errors import DecoderCrashed, PermanentError, TransientError


class ChildDecoder:
    """A persistent decoder child; one request at a time."""

    def __init__(self, timeout_seconds: float, memory_bytes: int, max_seconds: float) -> None:
        self._timeout = timeout_seconds
        self._memory = memory_bytes
        self._max_seconds = max_seconds
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    def decode(self, path: Path) -> np.ndarray:
        """16 kHz mono float32 samples of `path`.

        Raises PermanentError for files that are not usable audio and DecoderCrashed when the
        child died or ran past the time limit.
        """
        conn = self._ensure_child()
        conn.send((str(path), self._max_seconds))
        if not conn.poll(self._timeout):
            self.close()
            raise DecoderCrashed(f"decoding took longer than {self._timeout:.0f} s")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process else None
            self.close()
            raise DecoderCrashed(f"the decoder process died (exit code {exit_code})") from None
        if status == "ok":
            return np.asarray(payload, dtype=np.float32)
        if status == "transient":
            raise TransientError(payload)
        raise PermanentError(payload)

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def _ensure_child(self) -> Connection:
        if self._conn is None or self._process is None or not self._process.is_alive():
            self.close()
            # spawn, not fork: the daemon holds CUDA state and threads that must not be forked.
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            self._process = context.Process(
                target=_serve, args=(child, self._memory), name="transcribed-decoder", daemon=True
            )
            self._process.start()
            child.close()
            self._conn = parent
        return self._conn


def _serve(conn: Connection, memory_bytes: int) -> None:
    """Child main loop: decode each requested path, answer ("ok", samples) or ("error", why)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # libmpg123 and ffmpeg print free-form notes about broken input; logs stay structured.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    from transcribed.audio import decode

    while True:
        try:
            path, max_seconds = conn.recv()
        except EOFError:
            return
        answer: tuple[str, Any]
        try:
            answer = ("ok", decode(Path(path), max_seconds))
        except PermanentError as error:
            answer = ("error", str(error))
        except MemoryError:
            answer = ("error", "decoding needs more memory than decode_memory_mb allows")
        except OSError as error:  # EIO, EACCES, a vanished mount: may work later
            answer = ("transient", f"cannot read the file: {error}")
        except Exception as error:  # any other decoder-library failure means unusable input
            answer = ("error", f"cannot decode: {type(error).__name__}: {error}")
        conn.send(answer)
