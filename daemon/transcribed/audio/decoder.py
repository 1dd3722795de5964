"""Runs the decoding in `audio` in a child process with memory and time limits.

Decoders parse untrusted bytes: a crafted file may crash, hang or exhaust memory. Here that
kills a disposable child, never the daemon; the parent restarts it for the next file.
"""

import multiprocessing
import os
import queue
import resource
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from transcribed import faults
from transcribed.audio.memory import pin_mmap_threshold
from transcribed.errors import DecoderCrashed, PermanentError, TransientError

# Messages from the child are raw bytes behind a 4-byte tag (4 keeps the samples aligned for
# numpy): samples go through the pipe without pickling, which costs as much as the transfer.
_TAG_BYTES = 4
_BLOCK = b"BLK "  # float32 samples at 16 kHz
_LENGTH = b"LEN "  # float64: the seconds the header claims
_END = b"END "
_ERROR = b"ERR "  # utf-8 reason: not usable audio
_TRANSIENT = b"TRN "  # utf-8 reason: may work later
_REPAIRED = b"FIX "  # int64: samples that were NaN, infinite or absurd and were repaired


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
        self.repaired_samples = 0  # of the current file, known at its end

    def start(self) -> None:
        """Start the child now rather than at the first file (it takes a moment to import)."""
        self._ensure_child()

    def reserve(self, timeout: float) -> bool:
        """This decoder is its worker's alone: always free."""
        return True

    def release(self) -> None:
        """Nothing to give back (see `PooledDecoder`)."""

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
        self.repaired_samples = 0
        finished = False
        try:
            while True:
                tag, payload = self._receive(conn)
                if tag == _BLOCK:
                    yield np.frombuffer(payload, np.float32, offset=_TAG_BYTES)
                    continue
                if tag == _LENGTH:
                    claimed = np.frombuffer(payload, np.float64, 1, _TAG_BYTES)
                    self.expected_seconds = float(claimed[0])
                    continue
                if tag == _REPAIRED:
                    repaired = np.frombuffer(payload, np.int64, 1, _TAG_BYTES)
                    self.repaired_samples = int(repaired[0])
                    continue
                finished = True
                reason = payload[_TAG_BYTES:].decode()
                if tag == _END:
                    return
                if tag == _TRANSIENT:
                    raise TransientError(reason)
                raise PermanentError(reason)
        finally:
            if not finished:
                self.close()

    def _receive(self, conn: Connection) -> tuple[bytes, bytes]:
        if not conn.poll(self._timeout):
            self.close()
            raise DecoderCrashed(f"decoding made no progress for {self._timeout:.0f} s")
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process else None
            self.close()
            raise DecoderCrashed(f"the decoder process died (exit code {exit_code})") from None
        return message[:_TAG_BYTES], message

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


class DecoderPool:
    """Decoder processes shared by more worker threads than there are processes.

    With a pool of servers as the engine, a recording's last batch is a server round trip
    during which its worker has nothing left to decode. Its decoder process goes back to the
    pool as soon as the recording is decoded, and another worker decodes the next recording
    with it: the servers get requests from more recordings at once, without more processes
    (each costs memory and a core while it decodes).
    """

    def __init__(self, children: list[ChildDecoder]) -> None:
        self._children = children
        self._free: queue.Queue[ChildDecoder] = queue.Queue()
        for child in children:
            self._free.put(child)
        self._started = self._closed = False
        self._lock = threading.Lock()

    def lease(self) -> "PooledDecoder":
        return PooledDecoder(self)

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                for child in self._children:
                    child.start()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                for child in self._children:
                    child.close()

    def take(self, timeout: float | None) -> ChildDecoder | None:
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def give_back(self, child: ChildDecoder) -> None:
        self._free.put(child)


class PooledDecoder:
    """A worker's handle on a `DecoderPool`: a process is reserved before a job is taken (a
    job never waits for one) and given back once its recording is decoded."""

    def __init__(self, pool: DecoderPool) -> None:
        self._pool = pool
        self._child: ChildDecoder | None = None
        self.expected_seconds: float | None = None
        self.repaired_samples = 0

    def reserve(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: as long as it takes) for a free process."""
        if self._child is None:
            self._child = self._pool.take(timeout)
        return self._child is not None

    def release(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            self._pool.give_back(child)

    def stream(self, path: Path, label: str = "") -> Iterator[np.ndarray]:
        if not self.reserve(timeout=None):
            raise AssertionError("unreachable: an unbounded wait for a decoder ended")
        child = self._child
        assert child is not None
        self.expected_seconds, self.repaired_samples = None, 0
        try:
            for block in child.stream(path, label):
                self.expected_seconds = child.expected_seconds
                yield block
            self.repaired_samples = child.repaired_samples
        finally:
            self.release()  # decoded (or given up): the next recording may use it

    def start(self) -> None:
        self._pool.start()

    def close(self) -> None:
        self._pool.close()


def _serve(conn: Connection, memory_bytes: int) -> None:
    """Child main loop: stream each requested file as LEN (when the header says), BLK…, FIX
    (when samples were repaired), then END, or ERR or TRN with the reason."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    pin_mmap_threshold()
    # libmpg123 and ffmpeg print free-form notes about broken input; logs stay structured.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    # Import the decoding libraries now, while the child waits for its first file, not during it.
    import av  # noqa: F401

    import transcribed.audio.formats  # noqa: F401

    while True:
        try:
            path, max_seconds, label = conn.recv()
        except EOFError:
            return
        faults.point("decoder.child", label)
        tag, reason = _stream_one(conn, Path(path), max_seconds)
        conn.send_bytes(tag + reason.encode())


def _stream_one(conn: Connection, path: Path, max_seconds: float) -> tuple[bytes, str]:
    """Send the blocks of one file; return the closing message's tag and reason."""
    from transcribed.audio.formats import Repairs, open_source, to_16k_mono  # libraries: child only

    repairs = Repairs()
    try:
        source = open_source(path)
        if source.claimed_seconds is not None:
            conn.send_bytes(_tagged(_LENGTH, np.array([source.claimed_seconds], np.float64)))
        for block in to_16k_mono(source.blocks, max_seconds, repairs):
            conn.send_bytes(_tagged(_BLOCK, block))
        if repairs.repaired:
            conn.send_bytes(_tagged(_REPAIRED, np.array([repairs.repaired], np.int64)))
    except PermanentError as error:
        return _ERROR, str(error)
    except MemoryError:
        return _ERROR, "decoding needs more memory than decode_memory_mb allows"
    except OSError as error:  # EIO, EACCES, a vanished mount: may work later
        return _TRANSIENT, f"cannot read the file: {error}"
    except Exception as error:  # any other decoder-library failure means unusable input
        return _ERROR, f"cannot decode: {type(error).__name__}: {error}"
    return _END, ""


def _tagged(tag: bytes, values: np.ndarray) -> bytearray:
    """`tag` and the raw bytes of `values` in one buffer: one copy, no pickling."""
    message = bytearray(_TAG_BYTES + values.nbytes)
    message[:_TAG_BYTES] = tag
    np.frombuffer(message, values.dtype, offset=_TAG_BYTES)[:] = values
    return message
