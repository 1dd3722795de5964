"""Runs `audio.decode` in a child process with memory and time limits.

Decoders parse untrusted bytes: a crafted file may crash, hang or exhaust memory. Here that
kills a disposable child, never the daemon; the parent restarts it for the next file.
"""

import multiprocessing
import os
import resource
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from transcribed import faults
from transcribed.errors import DecoderCrashed, PermanentError, TransientError
from transcribed.memory import pin_mmap_threshold


class ChildDecoder:
    """A persistent decoder child; one request at a time."""

    def __init__(self, timeout_seconds: float, memory_bytes: int, max_seconds: float) -> None:
        self._timeout = timeout_seconds
        self._memory = memory_bytes
        self._max_seconds = max_seconds
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        # What the current file's header claims its length is: shown as progress, never
        # trusted for anything else (the duration cap counts decoded samples).
        self.expected_seconds: float | None = None

    def start(self) -> None:
        """Start the child now rather than at the first file (it takes a moment to import)."""
        self._ensure_child()

    def decode(self, path: Path, label: str = "") -> np.ndarray:
        """The whole recording in memory: for short files and tests; the worker streams."""
        return np.concatenate([np.zeros(0, np.float32), *self.stream(path, label)])

    def stream(self, path: Path, label: str = "") -> Iterator[np.ndarray]:
        """16 kHz mono float32 blocks of `path`, a few seconds each, as the child decodes them.

        The child waits while we are busy with earlier blocks (the pipe is small), so memory
        holds a few blocks, not the recording. `label` names the file for fault injection.
        Raises PermanentError for files that are not usable audio and DecoderCrashed when the
        child died or made no progress for the time limit. Abandoning the iterator early
        kills the child (it is mid-file); the next request starts a fresh one.
        """
        conn = self._ensure_child()
        conn.send((str(path), self._max_seconds, label))
        self.expected_seconds = None
        finished = False
        try:
            while True:
                status, payload = self._receive(conn)
                if status == "block":
                    yield np.asarray(payload, dtype=np.float32)
                    continue
                if status == "length":
                    self.expected_seconds = float(payload)
                    continue
                finished = True
                if status == "end":
                    return
                if status == "transient":
                    raise TransientError(payload)
                raise PermanentError(payload)
        finally:
            if not finished:
                self.close()

    def _receive(self, conn: Connection) -> tuple[str, Any]:
        if not conn.poll(self._timeout):
            self.close()
            raise DecoderCrashed(f"decoding made no progress for {self._timeout:.0f} s")
        try:
            message: tuple[str, Any] = conn.recv()
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process else None
            self.close()
            raise DecoderCrashed(f"the decoder process died (exit code {exit_code})") from None
        return message

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
    """Child main loop: stream each requested file as ("length", claimed seconds) when the
    header says, ("block", samples)… then ("end", None),
    or ("error" | "transient", why)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    pin_mmap_threshold()
    # libmpg123 and ffmpeg print free-form notes about broken input; logs stay structured.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    while True:
        try:
            path, max_seconds, label = conn.recv()
        except EOFError:
            return
        faults.point("decoder.child", label)
        conn.send(_stream_one(conn, Path(path), max_seconds))


def _stream_one(conn: Connection, path: Path, max_seconds: float) -> tuple[str, Any]:
    """Send the blocks of one file; return the closing message."""
    from transcribed.audio import claimed_seconds, decode_blocks  # libraries: child only

    if (length := claimed_seconds(path)) is not None:
        conn.send(("length", length))
    try:
        for block in decode_blocks(path, max_seconds):
            conn.send(("block", block))
    except PermanentError as error:
        return ("error", str(error))
    except MemoryError:
        return ("error", "decoding needs more memory than decode_memory_mb allows")
    except OSError as error:  # EIO, EACCES, a vanished mount: may work later
        return ("transient", f"cannot read the file: {error}")
    except Exception as error:  # any other decoder-library failure means unusable input
        return ("error", f"cannot decode: {type(error).__name__}: {error}")
    return ("end", None)
