"""Shared fixtures: the tiny real checkpoint (built once per run) and daemon folders."""

import os

# The tiny checkpoints' matrices are a few dozen wide: torch's thread pool only spins on
# them. One thread each, in this process and every daemon it starts (they inherit the
# environment), cut a worker test's CPU time from 25 s to 7 s on this 2-core machine.
# Set before torch is first imported (below), which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import warm_start
from transcribed.files.content import Content, Fingerprint, ignore_lease_breaks
from transcribed.model.synthetic import (
    build_tiny_aligner,
    build_tiny_checkpoint,
    build_tiny_diarizer,
)
from transcribed.state.workfolder import WorkFolder

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach for the network
ignore_lease_breaks()  # the intake driven in-process probes files for writers, as the daemon


@pytest.fixture(scope="session", autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    yield
    warm_start.kill_leftovers()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection beyond loopback or a local socket fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-asr"))


@pytest.fixture(scope="session")
def tiny_aligner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_aligner(tmp_path_factory.mktemp("tiny-qwen3-aligner"))


@pytest.fixture(scope="session")
def tiny_diarizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_diarizer(tmp_path_factory.mktemp("tiny-diarizer"))


@dataclass
class Folders:
    inbox: Path
    outbox: Path
    archive: Path
    failed: Path
    state: Path

    def env(self, model: Path, **extra: str) -> dict[str, str]:
        """Environment that configures `transcribed run` entirely through TRANSCRIBED_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
        env.update(
            TRANSCRIBED_INBOX=str(self.inbox),
            TRANSCRIBED_OUTBOX=str(self.outbox),
            TRANSCRIBED_ARCHIVE_DIR=str(self.archive),
            TRANSCRIBED_FAILED_DIR=str(self.failed),
            TRANSCRIBED_STATE_DIR=str(self.state),
            TRANSCRIBED_MODEL=str(model),
            TRANSCRIBED_DEVICE="cpu",
            TRANSCRIBED_DISPOSAL="move",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    made = Folders(*(tmp_path / name for name in ("inbox", "outbox", "archive", "failed", "state")))
    for folder in vars(made).values():
        folder.mkdir()
    return made


@pytest.fixture
def work(folders: Folders) -> Iterator[WorkFolder]:
    """The inbox's work folder, opened (and locked) as the daemon opens it."""
    opened = WorkFolder(folders.inbox)
    opened.open()
    yield opened
    opened.close()


def hashed(sha256: str, size: int) -> Content:
    """A claim's content as the queue stores it, for tests that make up the hash."""
    return Content(sha256, size, Fingerprint(size, 0, 0))
