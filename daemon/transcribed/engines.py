"""The engine kinds: what turns chunks into text, looked up by `settings.engine`.

The one place that knows the kinds' names (as uvicorn's `Config.load` knows its loops and
dramatiq's `brokers/` its brokers): the daemon, `doctor`, `transcribe` and `bench` ask the
kind what it needs instead of comparing names. A kind declares what is checked before it
starts, how its recognizer and the workers' shared model are made, how its decoders are
shared, what the network may reach, its status summary and whether it runs a recording's
chunks concurrently. Its models and clients are imported only when one is made: choosing a
kind imports neither torch nor the HTTP client.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from transcribed.settings import ModelSettings, Settings

if TYPE_CHECKING:
    from transcribed.model.batching import SharedModel
    from transcribed.model.engine import Engine
    from transcribed.servers.vllm_engine import RemoteEngine

# What `run` and `doctor` check before a kind starts: the model's files on this machine, this
# machine's GPU, the configured servers.
Check = Literal["model_files", "gpu", "servers"]
# What may be reachable while require_offline holds: nothing, or the servers only.
Network = Literal["isolated", "servers_only"]


@dataclass(frozen=True)
class EngineKind:
    name: str
    checks: frozenset[Check]
    network: Network
    # Sends each recording's chunks out at once and leaves the batching to the engine (the
    # servers' continuous batching) rather than merging recordings into one model call.
    concurrent: bool
    # Worker threads per decoder process: a recording waiting for its last answers needs no
    # decoder, and servers want requests from more recordings than there are cores to decode.
    workers_per_decoder: int
    # `batch_size` and `jobs_at_once` left unset follow from the GPU batch ceiling at load.
    sized_by_ceiling: bool
    # The recognizer one process uses alone (`transcribe`): settings, the least window of
    # chunks a recording keeps in flight, the stop event.
    recognizer: Callable[[ModelSettings, int, threading.Event], "Engine | RemoteEngine"]
    # What the daemon's workers share.
    shared: Callable[[Settings, threading.Event], "SharedModel"]
    # A line for the service status (None: nothing to add).
    summary: Callable[["SharedModel"], str | None]

    @property
    def model_on_disk(self) -> bool:
        return "model_files" in self.checks


def load_engine(settings: ModelSettings, model: str | None = None) -> "Engine":
    """The model `settings` ask for (or `model` instead), warmed up."""
    from transcribed.model.engine import Engine

    engine = Engine.load(
        model or settings.model,
        settings.device,
        allow_download=settings.allow_download,
        batch_size=settings.batch_size,
        chunk_seconds=settings.chunk_seconds,
    )
    engine.warm_up()
    return engine


def _local_recognizer(settings: ModelSettings, window: int, stop: threading.Event) -> "Engine":
    return load_engine(settings)


def _local_shared(settings: Settings, stop: threading.Event) -> "SharedModel":
    from transcribed.model.batching import SharedRecognizer
    from transcribed.servers import engine_status

    engine_status.clear(settings.state_dir)
    return SharedRecognizer(load_engine(settings), stop)


def _servers_recognizer(
    settings: ModelSettings, window: int, stop: threading.Event
) -> "RemoteEngine":
    from transcribed.servers.vllm_engine import RemoteEngine

    return RemoteEngine.connect(settings, window, stop)


def _servers_shared(settings: Settings, stop: threading.Event) -> "SharedModel":
    """The pool of vLLM servers, whose state the status file in state_dir tells
    `transcribed status`."""
    from transcribed.servers import engine_status
    from transcribed.servers.vllm_engine import RemoteEngine, recording_batch

    return RemoteEngine.connect(
        settings,
        recording_batch(settings, settings.jobs_at_once),
        stop,
        on_change=lambda servers: engine_status.write(settings.state_dir, servers),
    )


def _servers_summary(model: "SharedModel") -> str | None:
    from transcribed.servers.vllm_engine import RemoteEngine

    return model.summary() if isinstance(model, RemoteEngine) else None


LOCAL = EngineKind(
    name="local",
    checks=frozenset({"model_files", "gpu"}),
    network="isolated",
    concurrent=False,
    workers_per_decoder=1,
    sized_by_ceiling=True,
    recognizer=_local_recognizer,
    shared=_local_shared,
    summary=lambda model: None,
)
VLLM = EngineKind(
    name="vllm",
    checks=frozenset({"servers"}),
    network="servers_only",
    concurrent=True,
    # Each recording still sends batches sized for `jobs_at_once` recordings, so host memory
    # for requests is at most this many times what it would be without the sharing.
    workers_per_decoder=2,
    sized_by_ceiling=False,
    recognizer=_servers_recognizer,
    shared=_servers_shared,
    summary=_servers_summary,
)
ENGINES: dict[str, EngineKind] = {kind.name: kind for kind in (LOCAL, VLLM)}


def engine_kind(settings: ModelSettings) -> EngineKind:
    """The kind `settings.engine` names (the settings' own type admits only these names)."""
    return ENGINES[settings.engine]
