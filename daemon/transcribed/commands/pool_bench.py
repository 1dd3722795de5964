"""The dispatcher measured against stand-in servers: `transcribed bench --simulate-servers 1,2,4,8`.

The servers run elsewhere, so what the daemon can be held to is keeping them busy, up to
what its own machine can send. Each stand-in (`stand_in`) is a process of its own that
answers a chunk after a set time per audio second, never parsing the request nor decoding
its audio: it costs this machine next to nothing, and has a known capacity, `speed *
max_in_flight` seconds of audio per second. For each K the daemon's own parts (intake,
decoder processes, workers, the vLLM engine and its pool, outputs, disposal) transcribe the
same backlog twice: against K stand-ins that answer at once (servers of unbounded capacity:
the daemon's own ceiling on this machine, with K servers to spread over) and against K of
the given speed. The target is the smaller of the two: K x capacity when the servers are the
limit, the ceiling when the daemon is.

The servers also report how busy they were: the time-integral of requests in flight over
`max_in_flight` times the time, while the backlog lasted (from the first request to the
moment fewer than `jobs_at_once` recordings were left unfinished) and over the whole run (to
the last answer); and the bytes they were sent per second of audio.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import soundfile

from transcribed.commands.bench import (
    NoModel,
    _copy_backlog,
    _cores,
    _rig,
    _transcribe_backlog,
    write_backlog,
)
from transcribed.engines import VLLM
from transcribed.settings import ModelSettings

TARGET = 0.90  # of min(K x capacity, the daemon's ceiling)
_MODEL = "simulated"
_UNBOUNDED = 0.0  # a stand-in's speed that answers at once


@dataclass(frozen=True)
class Measured:
    """One backlog transcribed against K stand-ins."""

    times_real_time: float
    busy_while_backlog: float
    busy_whole_run: float
    most_in_flight: int
    wire_bytes_per_audio_second: float
    wall_seconds: float
    load_average: float  # the 1-minute load average as the run ended
    # CPU seconds per hour of audio: the daemon's own process (intake, chunking, requests,
    # answers, outputs) and its decoder processes (decoding and resampling).
    daemon_cpu_per_audio_hour: float
    decoders_cpu_per_audio_hour: float


@dataclass(frozen=True)
class PoolRun:
    servers: int
    capacity_times_real_time: float
    ceiling_times_real_time: float  # the daemon against K servers of unbounded capacity
    target_times_real_time: float  # TARGET x min(capacity, ceiling)
    times_real_time: float
    share_of_target: float  # achieved / min(capacity, ceiling)
    busy_while_backlog: float
    busy_whole_run: float
    most_in_flight: int
    window_per_recording: int
    wire_bytes_per_audio_second: float
    wall_seconds: float
    load_average: float
    ceiling_daemon_cpu_per_audio_hour: float  # in the ceiling's run
    ceiling_decoders_cpu_per_audio_hour: float


@dataclass(frozen=True)
class PoolReport:
    recordings: int
    audio_seconds: float
    speed: float
    max_in_flight: int
    jobs_at_once: int
    cores: int
    no_model_times_real_time: float
    runs: list[PoolRun]


def simulate_pool(
    settings: ModelSettings,
    counts: list[int],
    hours: float,
    jobs_at_once: int,
    speed: float,
    progress: Callable[[str], None] = lambda line: None,
    scratch: Path | None = None,
) -> PoolReport:
    owned = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="transcribed-pool-")) if scratch is None else scratch
    try:
        progress(f"writing a backlog of {hours:g} h of Ogg Vorbis recordings in {scratch}")
        paths = write_backlog(scratch / "backlog", hours)
        audio = sum(soundfile.info(str(path)).duration for path in paths)
        progress("running the pipeline with no model (no requests at all)")
        alone = _transcribe_backlog(
            _rig(settings, scratch / "no-model"),
            _copy_backlog(paths, scratch / "no-model-backlog"),
            NoModel(settings.batch_size),
            jobs_at_once,
        )
        runs = []
        for count in counts:
            progress(f"{count} stand-in(s) of unbounded capacity: the daemon's ceiling")
            ceiling = _measure(settings, paths, count, _UNBOUNDED, jobs_at_once, audio, scratch)
            progress(f"{count} stand-in(s), {speed:g}x real time per request")
            run = _measure(settings, paths, count, speed, jobs_at_once, audio, scratch)
            runs.append(_row(settings, count, speed, jobs_at_once, ceiling, run))
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
    return PoolReport(
        recordings=len(paths),
        audio_seconds=round(audio, 1),
        speed=speed,
        max_in_flight=settings.vllm_max_in_flight,
        jobs_at_once=jobs_at_once,
        cores=_cores(),
        no_model_times_real_time=round(audio / alone, 1),
        runs=runs,
    )


def _row(
    settings: ModelSettings,
    count: int,
    speed: float,
    jobs_at_once: int,
    ceiling: Measured,
    run: Measured,
) -> PoolRun:
    from transcribed.servers.vllm_engine import recording_batch

    capacity = count * settings.vllm_max_in_flight * speed
    bound = min(capacity, ceiling.times_real_time)
    pooled = settings.model_copy(update={"vllm_servers": [f"http://s{n}:1" for n in range(count)]})
    return PoolRun(
        servers=count,
        capacity_times_real_time=round(capacity, 1),
        ceiling_times_real_time=ceiling.times_real_time,
        target_times_real_time=round(TARGET * bound, 1),
        times_real_time=run.times_real_time,
        share_of_target=round(run.times_real_time / bound, 3),
        busy_while_backlog=run.busy_while_backlog,
        busy_whole_run=run.busy_whole_run,
        most_in_flight=run.most_in_flight,
        window_per_recording=recording_batch(pooled, jobs_at_once),
        wire_bytes_per_audio_second=run.wire_bytes_per_audio_second,
        wall_seconds=run.wall_seconds,
        load_average=max(run.load_average, ceiling.load_average),
        ceiling_daemon_cpu_per_audio_hour=ceiling.daemon_cpu_per_audio_hour,
        ceiling_decoders_cpu_per_audio_hour=ceiling.decoders_cpu_per_audio_hour,
    )


def _measure(
    settings: ModelSettings,
    paths: list[Path],
    count: int,
    speed: float,
    jobs_at_once: int,
    audio: float,
    scratch: Path,
) -> Measured:
    from transcribed.servers.vllm_engine import RemoteEngine, recording_batch

    name = f"servers-{count}-{'unbounded' if speed == _UNBOUNDED else speed}"
    with stand_ins(count, speed) as urls:
        pooled = settings.model_copy(
            update={"engine": VLLM.name, "vllm_servers": urls, "model": _MODEL}
        )
        engine = RemoteEngine.connect(
            pooled, recording_batch(pooled, jobs_at_once), threading.Event()
        )
        drained: list[list[dict[str, Any]]] = []
        before = _cpu()
        try:
            wall = _transcribe_backlog(
                _rig(pooled, scratch / name),
                _copy_backlog(paths, scratch / f"backlog-{name}"),
                engine,
                jobs_at_once,
                batches_itself=True,
                on_drained=lambda: drained.append([fetch_stats(url) for url in urls]),
            )
        finally:
            engine.pool.close()
        own, decoders = (after - start for after, start in zip(_cpu(), before, strict=True))
        final = [fetch_stats(url) for url in urls]
    cap = settings.vllm_max_in_flight
    sent = sum(stats["body_bytes"] for stats in final)
    heard = sum(stats["audio_seconds"] for stats in final)
    return Measured(
        times_real_time=round(audio / wall, 1),
        busy_while_backlog=_busy(drained[0] if drained else final, final, cap, until="now"),
        busy_whole_run=_busy(final, final, cap, until="last"),
        most_in_flight=max(int(stats["most_in_flight"]) for stats in final),
        wire_bytes_per_audio_second=round(sent / max(heard, 1e-9)),
        wall_seconds=round(wall, 2),
        load_average=round(os.getloadavg()[0], 2),
        daemon_cpu_per_audio_hour=round(own / audio * 3600, 2),
        decoders_cpu_per_audio_hour=round(decoders / audio * 3600, 2),
    )


def _cpu() -> tuple[float, float]:
    """CPU seconds so far of this process, and of its children that have ended (the decoder
    processes, which `_transcribe_backlog` ends; the stand-ins are still running)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _busy(at: list[dict[str, Any]], final: list[dict[str, Any]], cap: int, until: str) -> float:
    """Share of the servers' capacity in use from the first request to `until` (the time
    the stats `at` were taken, or the last answer)."""
    start = min((stats["first"] for stats in final if stats["first"] is not None), default=0.0)
    end = max((stats[until] for stats in at if stats[until] is not None), default=start)
    busy = sum(stats["busy"] for stats in at)
    share: float = busy / (cap * len(at) * max(end - start, 1e-9))
    return round(share, 3)


def fetch_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/sim/stats", timeout=10, trust_env=False).json())


@contextmanager
def stand_ins(count: int, speed: float) -> Iterator[list[str]]:
    """`count` stand-in servers, each a process of its own; their URLs."""
    command = [sys.executable, "-m", "transcribed.servers.stand_in", "--model", _MODEL]
    command += ["--speed", str(speed)]
    with ExitStack() as running:
        processes = [
            running.enter_context(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
            for _ in range(count)
        ]
        try:
            urls = []
            for process in processes:
                assert process.stdout is not None
                urls.append(str(json.loads(process.stdout.readline())["url"]))
            yield urls
        finally:
            for process in processes:
                process.kill()


def render(report: PoolReport) -> str:
    lines = [
        f"backlog: {report.recordings} recordings, {report.audio_seconds / 3600:.2f} h; "
        f"each stand-in answers {report.speed:g}x real time per request, "
        f"{report.max_in_flight} requests in flight at most; {report.jobs_at_once} "
        f"recordings at once; {report.cores} CPU cores",
        f"{'servers':>7}  {'capacity':>9}  {'ceiling':>9}  {'achieved':>9}  {'of target':>9}  "
        f"{'busy (backlog)':>14}  {'busy (run)':>10}  {'in flight':>9}  {'window':>6}  "
        f"{'bytes/audio s':>13}  {'load':>5}",
    ]
    for run in report.runs:
        lines.append(
            f"{run.servers:>7}  {run.capacity_times_real_time:>8,.0f}x  "
            f"{run.ceiling_times_real_time:>8,.0f}x  {run.times_real_time:>8,.0f}x  "
            f"{run.share_of_target:>9.1%}  {run.busy_while_backlog:>14.0%}  "
            f"{run.busy_whole_run:>10.0%}  {run.most_in_flight:>9}  "
            f"{run.window_per_recording:>6}  {run.wire_bytes_per_audio_second:>13,.0f}  "
            f"{run.load_average:>5.1f}"
        )
    best = max(report.runs, key=lambda run: run.ceiling_times_real_time, default=None)
    ceiling = best.ceiling_times_real_time if best is not None else 0.0
    lines += [
        f"ceiling: the daemon against stand-ins of unbounded capacity; up to {ceiling:,.0f}x "
        f"real time, {ceiling / max(report.cores, 1):,.0f}x per CPU core",
        f"the pipeline with no model at all (no requests): "
        f"{report.no_model_times_real_time:,.0f}x real time",
        "of target: achieved / min(capacity, ceiling); the goal is "
        f">= {TARGET:.0%}: " + ", ".join(_verdicts(report)),
    ]
    if best is not None:
        lines.insert(
            -2,
            f"CPU per hour of audio at the ceiling ({best.servers} stand-ins): the daemon's "
            f"process {best.ceiling_daemon_cpu_per_audio_hour:.1f} s, its decoders "
            f"{best.ceiling_decoders_cpu_per_audio_hour:.1f} s",
        )
    return "\n".join(lines)


def _verdicts(report: PoolReport) -> list[str]:
    return [
        f"K={run.servers} {'met' if run.share_of_target >= TARGET else 'MISSED'}"
        for run in report.runs
    ]
