"""`transcribed bench`: throughput end to end, compressed files on disk to published transcripts.

A backlog of mixed-length recordings (Ogg Vorbis, 48 kHz, tone bursts with pauses) is written
to a scratch folder, then claimed, decoded, chunked, transcribed, published and disposed of
by the daemon's own parts (Intake, Workers, SharedRecognizer). Model load and warm-up are
timed and reported apart. Time inside model calls is measured too, so the pipeline around
the model (decode, resample, features, queue, outputs) gets its own figure, set against
decoding the same files with the `ffmpeg` program (when installed) and with ffmpeg's
decoders called from Python (PyAV): the floor for any Python pipeline.

`--synthetic-weights 1.7b|0.6b` builds the full-size architecture with random weights and
makes every row write a fixed number of tokens per audio second and then end, as a real
chunk ends: throughput without downloading anything. `tiny` builds the tests' tiny model,
for a dry run of the same path on a CPU. Their transcripts are meaningless, and the report
says so. `chunks` counts the chunks the pipeline cut (the run with no model counts them);
`model_rows` the rows the model was given, a truncated chunk's retried halves included:
with synthetic weights no row is truncated, so the two are equal.

`--stand-in h100-1.7b` (or h100-0.6b, h200-…) runs the pipeline against
`stand_in.StandInEngine`: the real decode loop, each step and prefill taking what a cost
model of that GPU says, nothing computed. It reports how busy the modelled GPU was and how
many decoding steps ran at the batch ceiling until the backlog could no longer fill the
jobs (the steady state of a long backlog); `--stand-in-scale S` slows the modelled GPU S
times, standing for a CPU S times faster than this one.

With a diarizer configured, every recording also gets speaker labels, as in the daemon; the
time spent in the diarizer (features and model) and its load are reported on their own.

With the vLLM engine the same backlog goes to the configured servers, and the same table
comes out. `pool_bench.simulate_pool` measures the dispatcher itself, against stand-in
servers of known capacity that cost next to nothing (`stand_in`), beside the daemon's own
ceiling, for K = 1, 2, 4, 8.
"""

import contextlib
import dataclasses
import queue
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile

from transcribed.commands.backlog import SOURCE_RATE, speechlike
from transcribed.commands.backlog import write_backlog as write_backlog  # pool_bench's too
from transcribed.engines import engine_kind
from transcribed.jobs.worker import Decoder
from transcribed.loops.supervisor import Supervisor
from transcribed.model.batching import SharedModel, SharedRecognizer
from transcribed.model.decoding import Row
from transcribed.model.pipeline import Recognizer, StreamingRecognizer
from transcribed.model.rows import ChunkFeed, RowEngine
from transcribed.output.transcript import ChunkText, ModelInfo
from transcribed.settings import ModelSettings, Settings
from transcribed.state.queue import JobQueue
from transcribed.state.workfolder import WorkFolder

if TYPE_CHECKING:
    from transcribed.model.diarizer import Diarizer
    from transcribed.model.engine import Engine
    from transcribed.model.stand_in import StandInEngine
    from transcribed.servers.vllm_engine import RemoteEngine

    AnyEngine = Engine | RemoteEngine | StandInEngine


@dataclass(frozen=True)
class BenchReport:
    device: str
    dtype: str
    model: str
    synthetic: bool
    recordings: int
    audio_seconds: float
    wall_seconds: float
    times_real_time: float
    model_seconds: float
    outside_model_times_real_time: float
    pipeline_alone_seconds: float
    pipeline_alone_times_real_time: float
    pipeline_alone_vs_decode: float
    decode_only_seconds: float
    decode_only_times_real_time: float
    ffmpeg_program_seconds: float | None
    pipeline_alone_vs_ffmpeg_program: float | None
    load_seconds: float
    warmup_seconds: float
    gpu_memory_peak_mib: float | None
    host_rss_peak_mib: float
    jobs_at_once: int
    batch_size: int
    batch_ceiling: int
    chunks: int  # cut by the pipeline (counted by the run with no model)
    model_rows: int  # given to the model, retried halves of truncated chunks included
    model_busy_share: float  # of the wall time, the model (a stand-in: its GPU) was busy
    steps_at_ceiling_share: float | None  # decoding steps with every slot of the ceiling in use
    rows_per_step: float | None  # live rows per decoding step, on average
    # The same from the first step at the ceiling to the last (no start, no end):
    steady_seconds: float | None
    steady_busy_share: float | None
    steady_steps_at_ceiling_share: float | None
    stand_in_scale: float | None = None  # the stand-in's clock slowed this many times
    stand_in_times_real_time: float | None = None  # the modelled GPU alone, always fed
    diarizer: str | None = None
    diarizer_seconds: float | None = None  # inside the diarizer: its features and model
    diarizer_times_real_time: float | None = None
    diarizer_load_seconds: float | None = None


class TimedRecognizer:
    """Counts the seconds during which at least one model call runs (the vLLM engine takes
    chunks from several recordings at once; their overlap is counted once)."""

    def __init__(self, model: Recognizer) -> None:
        self._model = model
        self.info: ModelInfo = model.info
        self.ceiling = int(getattr(model, "ceiling", model.batch_size))
        self.seconds = 0.0
        self.rows = 0
        self._lock = threading.Lock()
        self._calls = 0
        self._since = 0.0

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        self._count(+1)
        self.rows += len(chunks)
        try:
            return self._model.transcribe(chunks, language, context, should_stop)
        finally:
            self._count(-1)

    @property
    def batch_size(self) -> int:
        return self._model.batch_size  # asked anew: the vLLM engine's follows its jobs

    def job(self) -> contextlib.AbstractContextManager[None]:
        return _job_of(self._model)

    def _count(self, change: int) -> None:
        with self._lock:
            now = time.perf_counter()
            if self._calls:
                self.seconds += now - self._since
            self._since = now
            self._calls += change

    def seconds_now(self) -> float:
        """`seconds`, the call running now included."""
        with self._lock:
            running = time.perf_counter() - self._since if self._calls else 0.0
            return self.seconds + running


class TimedRows(TimedRecognizer):
    """A TimedRecognizer for an engine that takes rows while it decodes (`rows.RowEngine`):
    the model thread's calls stream through it, their rows counted as they are taken."""

    def __init__(self, model: RowEngine) -> None:
        super().__init__(model)  # type: ignore[arg-type]  # a RowEngine is a Recognizer too
        self._rows_engine = model

    def run_rows(self, feed: ChunkFeed, should_stop: Callable[[], bool]) -> None:
        self._count(+1)
        try:
            self._rows_engine.run_rows(_Counted(feed, self), should_stop)
        finally:
            self._count(-1)


class _Counted:
    def __init__(self, feed: ChunkFeed, timed: TimedRecognizer) -> None:
        self._feed, self._timed = feed, timed

    def take(self, count: int) -> list[Row]:
        taken = self._feed.take(count)
        self._timed.rows += len(taken)
        return taken

    def done(self, row: Row, text: ChunkText) -> None:
        self._feed.done(row, text)

    def failed(self, row: Row, error: BaseException) -> None:
        self._feed.failed(row, error)


class TimedStreams(TimedRecognizer):
    """`TimedRecognizer` for a `StreamingRecognizer` (the vLLM engine): a chunk counts from
    when it is sent until its answer is in."""

    def __init__(self, model: StreamingRecognizer) -> None:
        super().__init__(model)  # type: ignore[arg-type]  # it transcribes lists too
        self._streams = model

    @property
    def window(self) -> int:
        return self._streams.window

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        self._count(+1)
        self.rows += 1
        answer = self._streams.submit(chunk, language, context)
        answer.add_done_callback(lambda _answer: self._count(-1))
        return answer


def timed(model: Recognizer) -> TimedRecognizer:
    if isinstance(model, RowEngine):
        return TimedRows(model)
    if isinstance(model, StreamingRecognizer):  # the vLLM engine
        return TimedStreams(model)
    return TimedRecognizer(model)


class PassThrough:
    """The workers' shared model for an engine that batches for itself (vLLM servers):
    every job's chunks go straight through, from many threads at once."""

    def __init__(self, model: StreamingRecognizer, stop: threading.Event) -> None:
        self._model = model
        self._stop = stop
        self.info = model.info  # type: ignore[attr-defined]

    @property
    def batch_size(self) -> int:
        return self._model.window

    @property
    def window(self) -> int:
        return self._model.window

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        return self._model.submit(chunk, language, context)

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        answers = [self.submit(chunk, language, context) for chunk in chunks]
        return [answer.result() for answer in answers]

    def job(self) -> contextlib.AbstractContextManager[None]:
        return _job_of(self._model)  # type: ignore[arg-type]

    def serve(self) -> None:
        self._stop.wait()

    def busy_for(self) -> float:
        return 0.0


def _job_of(model: Recognizer) -> contextlib.AbstractContextManager[None]:
    """The engine's own bracket around a job (the vLLM engine counts the jobs sharing its
    servers), or none."""
    job = getattr(model, "job", None)
    return job() if job is not None else contextlib.nullcontext()


def _shared(model: Recognizer, stop: threading.Event, batches_itself: bool) -> SharedModel:
    if batches_itself:
        assert isinstance(model, StreamingRecognizer)
        return PassThrough(model, stop)
    return SharedRecognizer(model, stop)


class NoModel:
    """Answers every chunk at once with no text: the pipeline around the model, alone."""

    info = ModelInfo("none", "cpu", "none")

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.rows = 0

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        self.rows += len(chunks)
        return [ChunkText("", None, False) for _ in chunks]


def decode_only_seconds(paths: list[Path]) -> tuple[float, float]:
    """(wall seconds, audio seconds) for ffmpeg's decoders alone (through PyAV), in one
    process per core as the daemon's decoders run: the floor for the pipeline around the
    model. The processes are started before the clock starts."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(_cores(), mp_context=context) as pool:
        list(pool.map(_decode_with_ffmpeg, [None] * _cores()))  # start and import first
        started = time.perf_counter()
        audio = sum(pool.map(_decode_with_ffmpeg, paths))
        return time.perf_counter() - started, audio


def ffmpeg_program_seconds(paths: list[Path]) -> float | None:
    """Wall seconds for the `ffmpeg` program to decode every file (`-f null`: decode and
    discard), one process per core; None when it is not installed or fails on a file (a
    baseline that did not decode everything would flatter the pipeline)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    program = shutil.which("ffmpeg")
    if program is None:
        return None

    def decode(path: Path) -> None:
        command = [program, "-nostdin", "-v", "error", "-threads", "1", "-i", str(path)]
        subprocess.run([*command, "-f", "null", "-"], check=True, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(_cores()) as pool:
        started = time.perf_counter()
        try:
            list(pool.map(decode, paths))
        except (OSError, subprocess.CalledProcessError):
            return None
        return time.perf_counter() - started


def _decode_with_ffmpeg(path: Path | None) -> float:
    """Seconds of audio in `path`, decoded and thrown away (None: just import PyAV)."""
    import av

    if path is None:
        return 0.0
    samples, rate = 0, 1
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _rig(settings: ModelSettings, scratch: Path) -> Settings:
    """The daemon's settings for a run in `scratch`: its own inbox, outbox, archive, failed
    folder and job database; everything else (formats, chunking, decoder limits) as
    configured. Files are taken at once and a failure is not retried. What an earlier run
    left in `scratch` is removed first (its job database would take the backlog for done)."""
    shutil.rmtree(scratch, ignore_errors=True)
    folders = {name: scratch / name for name in ("inbox", "outbox", "archive", "failed", "state")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return Settings.model_validate(
        settings.model_dump()
        | {
            "inbox": folders["inbox"],
            "outbox": folders["outbox"],
            "archive_dir": folders["archive"],
            "failed_dir": folders["failed"],
            "state_dir": folders["state"],
            "disposal": "move",
            "settle_seconds": 0.01,
            "rescan_seconds": 3600,
            "max_attempts": 1,
        }
    )


@dataclass(frozen=True)
class _Baselines:
    audio_seconds: float
    decode_wall: float  # ffmpeg's decoders from Python
    program_wall: float | None  # the ffmpeg program
    alone: float  # the pipeline with no model
    chunks: int  # chunks the pipeline cut


@dataclass(frozen=True)
class _Measured:
    wall: float
    model_seconds: float
    rows: int
    gpu_peak_mib: float | None
    busy_share: float
    steps_at_ceiling: float | None
    rows_per_step: float | None
    steady_seconds: float | None
    steady_busy_share: float | None
    steady_steps_at_ceiling: float | None


def run_bench(
    settings: ModelSettings,
    hours: float,
    jobs_at_once: int | Callable[["AnyEngine"], int],
    load: Callable[[], "AnyEngine"],
    synthetic: bool,
    progress: Callable[[str], None] = lambda line: None,
    scratch: Path | None = None,
) -> BenchReport:
    """`jobs_at_once` may depend on the loaded engine (on a GPU, on its ceiling): the model
    is then loaded before the baselines run, with the same number of jobs."""
    from transcribed.service import load_diarizer

    owned = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="transcribed-bench-")) if scratch is None else scratch
    try:
        progress(f"writing a backlog of {hours:g} h of Ogg Vorbis recordings in {scratch}")
        paths = write_backlog(scratch / "backlog", hours)
        started = time.perf_counter()
        diarizer = load_diarizer(settings)  # first, as the daemon loads it
        diarizer_load = time.perf_counter() - started
        progress("loading the model")
        started = time.perf_counter()
        engine = load()
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        engine.warm_up()
        warmup_seconds = time.perf_counter() - started
        if not isinstance(jobs_at_once, int):
            jobs_at_once = jobs_at_once(engine)
        baselines = _baselines(settings, paths, scratch, jobs_at_once, progress)
        progress(f"transcribing {len(paths)} recordings ({baselines.audio_seconds / 3600:.2f} h)")
        measured = _model_run(settings, scratch, paths, engine, jobs_at_once, diarizer)
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
    audio = baselines.audio_seconds
    return BenchReport(
        device=engine.info.device,
        dtype=engine.info.dtype,
        model=engine.info.id,
        synthetic=synthetic,
        recordings=len(paths),
        audio_seconds=round(audio, 1),
        wall_seconds=round(measured.wall, 2),
        times_real_time=round(audio / measured.wall, 1),
        model_seconds=round(measured.model_seconds, 2),
        outside_model_times_real_time=round(
            audio / max(measured.wall - measured.model_seconds, 1e-9), 1
        ),
        load_seconds=round(load_seconds, 2),
        warmup_seconds=round(warmup_seconds, 2),
        gpu_memory_peak_mib=measured.gpu_peak_mib,
        host_rss_peak_mib=round(_peak_rss_mib(), 1),
        jobs_at_once=jobs_at_once,
        batch_size=engine.batch_size,
        batch_ceiling=engine.ceiling,
        model_rows=measured.rows,
        model_busy_share=measured.busy_share,
        steps_at_ceiling_share=measured.steps_at_ceiling,
        rows_per_step=measured.rows_per_step,
        steady_seconds=measured.steady_seconds,
        steady_busy_share=measured.steady_busy_share,
        steady_steps_at_ceiling_share=measured.steady_steps_at_ceiling,
        **_baseline_figures(baselines),
        **_stand_in_figures(engine, audio),
        **_diarizer_figures(diarizer, diarizer_load, audio),
    )


def _baselines(
    settings: ModelSettings,
    paths: list[Path],
    scratch: Path,
    jobs_at_once: int,
    progress: Callable[[str], None],
) -> _Baselines:
    """ffmpeg's decoders and program on the backlog, and the pipeline with no model."""
    progress(f"decoding them with ffmpeg alone ({_cores()} threads) for the baseline")
    decode_wall, audio_seconds = decode_only_seconds(paths)
    program_wall = ffmpeg_program_seconds(paths)
    progress("running the pipeline with no model (decode, chunk, queue, outputs)")
    copies = _copy_backlog(paths, scratch / "backlog-copy")
    nothing = NoModel(settings.batch_size)
    alone = _transcribe_backlog(_rig(settings, scratch / "no-model"), copies, nothing, jobs_at_once)
    return _Baselines(audio_seconds, decode_wall, program_wall, alone, nothing.rows)


def _baseline_figures(baselines: _Baselines) -> dict[str, Any]:
    audio, program = baselines.audio_seconds, baselines.program_wall
    return {
        "pipeline_alone_seconds": round(baselines.alone, 2),
        "pipeline_alone_times_real_time": round(audio / baselines.alone, 1),
        "pipeline_alone_vs_decode": round(baselines.alone / baselines.decode_wall, 2),
        "decode_only_seconds": round(baselines.decode_wall, 2),
        "decode_only_times_real_time": round(audio / baselines.decode_wall, 1),
        "ffmpeg_program_seconds": round(program, 2) if program else None,
        "pipeline_alone_vs_ffmpeg_program": round(baselines.alone / program, 2)
        if program
        else None,
        "chunks": baselines.chunks,
    }


def _model_run(
    settings: ModelSettings,
    scratch: Path,
    paths: list[Path],
    engine: "AnyEngine",
    jobs_at_once: int,
    diarizer: "Diarizer | None",
) -> _Measured:
    """The backlog through the daemon's parts and the model; how busy the model was until
    the backlog could no longer fill the jobs."""
    import torch

    from transcribed.model.decoding import LoopCounters
    from transcribed.servers.vllm_engine import RemoteEngine

    cuda = torch.cuda.is_available() and engine.info.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loop = getattr(engine, "loop", None)
    if loop is not None:
        loop.counters = LoopCounters()  # the warm-up's steps are not the backlog's
    clock = timed(engine)
    samples = _Samples(engine, clock)
    wall = _transcribe_backlog(
        _rig(settings, scratch / "model"),
        _copy_backlog(paths, scratch / "backlog-model"),  # the backlog stays for a rerun
        clock,
        jobs_at_once,
        diarizer,
        batches_itself=engine_kind(settings).concurrent,
        on_started=samples.start,
    )
    samples.stop()
    if isinstance(engine, RemoteEngine):
        engine.pool.close()
    return _Measured(
        wall=wall,
        model_seconds=clock.seconds,
        rows=clock.rows,
        gpu_peak_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        **samples.figures(),
    )


class _Samples:
    """How busy the model was and how its decoding steps went, sampled every 50 ms while
    the backlog runs: over the whole run, and over its steady part (from the first step at
    the ceiling to the last), which leaves out the start, while the recordings decode their
    first chunks, and the end, while the last ones finish."""

    def __init__(self, engine: "AnyEngine", clock: TimedRecognizer) -> None:
        self._engine, self._clock = engine, clock
        self._taken: list[tuple[float, float, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._take()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._take()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self._take()

    def _take(self) -> None:
        counters = getattr(getattr(self._engine, "loop", None), "counters", None)
        copy = dataclasses.replace(counters) if counters is not None else None
        self._taken.append((time.perf_counter(), _busy_seconds(self._engine, self._clock), copy))

    def figures(self) -> dict[str, Any]:
        whole = _between(self._taken[0], self._taken[-1])
        full = [sample for sample in self._taken if sample[2] and sample[2].full_steps]
        steady = {}
        if len(full) > 1:
            last = max(full, key=lambda sample: (sample[2].full_steps, -sample[0]))
            first = self._taken[self._taken.index(full[0]) - 1]
            steady = _between(first, last)
        return {
            "busy_share": whole["busy"],
            "steps_at_ceiling": whole["at_ceiling"],
            "rows_per_step": whole["rows"],
            "steady_seconds": steady.get("seconds"),
            "steady_busy_share": steady.get("busy"),
            "steady_steps_at_ceiling": steady.get("at_ceiling"),
        }


def _between(first: tuple[float, float, Any], last: tuple[float, float, Any]) -> dict[str, Any]:
    (begun, busy_before, before), (ended, busy_after, after) = first, last
    seconds = max(ended - begun, 1e-9)
    figures: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "busy": round(min(1.0, (busy_after - busy_before) / seconds), 3),
    }
    steps = after.steps - before.steps if after is not None and before is not None else 0
    figures["at_ceiling"] = (
        round((after.full_steps - before.full_steps) / steps, 3) if steps else None
    )
    figures["rows"] = round((after.live_steps - before.live_steps) / steps, 1) if steps else None
    return figures


def _busy_seconds(engine: "AnyEngine", clock: TimedRecognizer) -> float:
    """Seconds the model was busy so far: a stand-in's modelled GPU time, else the time
    inside model calls."""
    backend = getattr(engine, "backend", None)
    modelled = getattr(backend, "busy", None)
    return float(modelled) if modelled is not None else clock.seconds_now()


def _stand_in_figures(engine: "AnyEngine", audio_seconds: float) -> dict[str, Any]:
    backend = getattr(engine, "backend", None)
    if backend is None or not hasattr(backend, "busy"):
        return {}
    modelled = backend.busy / backend.scale
    return {
        "stand_in_scale": backend.scale,
        "stand_in_times_real_time": round(audio_seconds / max(modelled, 1e-9), 1),
    }


def _diarizer_figures(
    diarizer: "Diarizer | None", load_seconds: float, audio_seconds: float
) -> dict[str, Any]:
    """The BenchReport fields about the diarizer (none without one)."""
    if diarizer is None:
        return {}
    seconds = max(diarizer.seconds, 1e-9)
    return {
        "diarizer": diarizer.id,
        "diarizer_seconds": round(diarizer.seconds, 2),
        "diarizer_times_real_time": round(audio_seconds / seconds, 1),
        "diarizer_load_seconds": round(load_seconds, 2),
    }


def _copy_backlog(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(path, folder / path.name)) for path in paths]


def _transcribe_backlog(
    rig: Settings,
    paths: list[Path],
    model: Recognizer,
    jobs_at_once: int,
    diarizer: "Diarizer | None" = None,
    batches_itself: bool = False,
    on_drained: Callable[[], None] = lambda: None,
    on_started: Callable[[], None] = lambda: None,
) -> float:
    """Drop the backlog into the inbox and run the daemon's parts, wired as the daemon
    wires them, until every transcript is published and every original archived; wall
    seconds. `on_drained` is called once, when fewer recordings than `jobs_at_once` are left
    unfinished (from then on the backlog can no longer fill what the daemon takes at once)."""
    from transcribed.service import Pace, make_loops, worker_decoders

    stop = threading.Event()
    shared = _shared(model, stop, batches_itself)
    work = WorkFolder(rig.inbox)
    work.open()
    decoders = worker_decoders(rig, jobs_at_once)
    loops = make_loops(rig, work, shared, stop, queue.SimpleQueue(), decoders, diarizer=diarizer)
    supervisor = Supervisor(stop)
    loops.supervise(supervisor, shared, Pace(idle_seconds=0.05, intake_seconds=0.02))
    _warm_up_decoders([each.decoder for each in loops.workers], rig.state_dir)
    on_started()
    started = time.perf_counter()
    for path in paths:
        path.rename(rig.inbox / path.name)
    loops.intake.rescan()  # as the daemon does at start: everything already in the inbox
    supervisor.start()
    try:
        archive = rig.archive_dir
        assert archive is not None  # _rig sets it: the backlog is moved there
        with contextlib.closing(JobQueue(rig.database)) as jobs:
            _wait_until(lambda: _drained(jobs, len(paths), jobs_at_once), stop)
        on_drained()
        _wait_until(lambda: _archived(archive) == len(paths), stop)
    finally:
        wall = time.perf_counter() - started
        stop.set()
        supervisor.join(30)
        for worker in loops.workers:
            worker.decoder.close()
        work.close()
    return wall


def _warm_up_decoders(decoders: list[Decoder], scratch: Path) -> None:
    """Have every decoder process decode a second of audio: a running daemon's decoders
    were started (and have imported their libraries) long before a backlog arrives."""
    sample = scratch / "warm-up.ogg"
    soundfile.write(sample, speechlike(1, 0), SOURCE_RATE, format="OGG", subtype="VORBIS")
    for decoder in decoders:
        for _block in decoder.stream(sample):
            pass
    sample.unlink()


def _drained(jobs: JobQueue, recordings: int, jobs_at_once: int) -> bool:
    """Every recording claimed, and fewer than `jobs_at_once` of them not yet transcribed."""
    counts = jobs.counts()
    waiting = ("claiming", "queued", "running", "duplicate")
    unfinished = sum(counts.get(state, 0) for state in waiting)
    return sum(counts.values()) >= recordings and unfinished < jobs_at_once


def _archived(folder: Path) -> int:
    return sum(1 for _ in folder.iterdir())


def _wait_until(done: Callable[[], bool], stop: threading.Event) -> None:
    while not done():
        if stop.wait(0.05):
            return


def _peak_rss_mib() -> float:
    """Peak resident memory of this process and of its finished children (the decoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def render(report: BenchReport) -> str:
    rows: list[tuple[str, str]] = [
        ("model", f"{report.model} ({report.dtype} on {report.device})"),
        ("recordings", f"{report.recordings}"),
        ("audio", f"{report.audio_seconds:,.0f} s ({report.audio_seconds / 3600:.2f} h)"),
        ("wall", f"{report.wall_seconds:,.2f} s"),
        ("throughput", f"{report.times_real_time:,.1f}x real time"),
        ("in model calls", f"{report.model_seconds:,.2f} s"),
        ("model idle", f"{report.outside_model_times_real_time:,.1f}x real time"),
        ("pipeline, no model", f"{report.pipeline_alone_times_real_time:,.1f}x real time"),
        ("ffmpeg program", _program(report)),
        ("no model / ffmpeg", _ratio(report.pipeline_alone_vs_ffmpeg_program)),
        ("ffmpeg's decoders", f"{report.decode_only_times_real_time:,.1f}x real time (PyAV)"),
        ("no model / decoders", _ratio(report.pipeline_alone_vs_decode)),
        ("model load", f"{report.load_seconds:,.2f} s (not counted)"),
        ("warm-up", f"{report.warmup_seconds:,.2f} s (not counted)"),
        ("GPU memory peak", _mib(report.gpu_memory_peak_mib)),
        ("host RSS peak", _mib(report.host_rss_peak_mib)),
        ("jobs at once", f"{report.jobs_at_once}"),
        ("batch", f"{report.batch_size} per recording, {report.batch_ceiling} per model call"),
        ("chunks", f"{report.chunks:,} cut, {report.model_rows:,} rows to the model"),
        ("model busy", f"{report.model_busy_share:.1%} of the time"),
    ]
    if report.steps_at_ceiling_share is not None:
        rows.append(
            (
                "decoding steps",
                f"{report.steps_at_ceiling_share:.1%} at the ceiling, "
                f"{report.rows_per_step:,.1f} rows each on average",
            )
        )
    if report.steady_seconds is not None:
        rows.append(
            (
                "steady part",
                f"{report.steady_seconds:,.1f} s: model busy {report.steady_busy_share:.1%}, "
                f"{report.steady_steps_at_ceiling_share:.1%} of steps at the ceiling",
            )
        )
    if report.stand_in_times_real_time is not None:
        rows.append(
            (
                "stand-in GPU alone",
                f"{report.stand_in_times_real_time:,.0f}x real time; its clock slowed "
                f"{report.stand_in_scale:g}x",
            )
        )
    if report.diarizer is not None:
        rows += [
            ("diarizer", f"{report.diarizer}"),
            ("in the diarizer", f"{report.diarizer_seconds:,.2f} s (also within wall)"),
            ("diarizer alone", f"{report.diarizer_times_real_time:,.1f}x real time"),
            ("diarizer load", f"{report.diarizer_load_seconds:,.2f} s (not counted)"),
        ]
    lines = [f"{name:<22}{value}" for name, value in rows]
    if report.synthetic:
        lines.append(
            "NOTE: random weights; the transcripts are meaningless. Only the speed is real."
        )
    return "\n".join(lines)


def _program(report: BenchReport) -> str:
    seconds = report.ffmpeg_program_seconds
    if seconds is None:
        return "n/a (ffmpeg not installed, or it failed on these files)"
    return f"{report.audio_seconds / seconds:,.1f}x real time (ffmpeg -f null, 1 per core)"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x the decode time"


def _mib(value: float | None) -> str:
    return "n/a (no GPU)" if value is None else f"{value:,.0f} MiB"
