"""The dispatcher measured by simulation: `transcribed bench --simulate-servers 1,2,4,8`.

The servers run elsewhere, so what the daemon can be held to is keeping them busy. K
simulated servers (`pool_sim`, in a process of their own) answer each chunk after a set
time per audio second and use no CPU: each has a known capacity, `speed * max_in_flight`
seconds of audio per second. The daemon's own pipeline (intake, decoder processes, workers,
the vLLM engine and its pool) transcribes the same backlog against K = 1, 2, 4, 8 of them,
and the servers report how busy they were: the time-integral of requests in flight over
`max_in_flight` times the time. "While the backlog lasted" runs from the first request to the
moment fewer than `jobs_at_once` recordings were left unfinished (after it, the last few
recordings' chunks are all there is to send); "whole run" to the last answer. The pipeline with no
model at all gives this machine's ceiling: past it, more servers cannot help.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile

from transcribed.commands.bench import (
    NoModel,
    _copy_backlog,
    _rig,
    _transcribe_backlog,
    write_backlog,
)
from transcribed.servers.pool_sim import fetch_stats
from transcribed.settings import ModelSettings

BUSY_TARGET = 0.90
_MODEL = "simulated"


@dataclass(frozen=True)
class PoolRun:
    servers: int
    batch_per_recording: int
    capacity_times_real_time: float
    times_real_time: float
    busy_while_backlog: float
    busy_whole_run: float
    most_in_flight: int
    wall_seconds: float


@dataclass(frozen=True)
class PoolReport:
    recordings: int
    audio_seconds: float
    speed: float
    max_in_flight: int
    jobs_at_once: int
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
        progress("running the pipeline with no model: this machine's ceiling")
        alone = _transcribe_backlog(
            _rig(settings, scratch / "no-model"),
            _copy_backlog(paths, scratch / "no-model-backlog"),
            NoModel(settings.batch_size),
            jobs_at_once,
        )
        runs = []
        for count in counts:
            progress(f"{count} simulated server(s), {speed:g}x real time per request")
            runs.append(_run(settings, paths, count, speed, jobs_at_once, audio, scratch))
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
    return PoolReport(
        recordings=len(paths),
        audio_seconds=round(audio, 1),
        speed=speed,
        max_in_flight=settings.vllm_max_in_flight,
        jobs_at_once=jobs_at_once,
        no_model_times_real_time=round(audio / alone, 1),
        runs=runs,
    )


def _run(
    settings: ModelSettings,
    paths: list[Path],
    count: int,
    speed: float,
    jobs_at_once: int,
    audio: float,
    scratch: Path,
) -> PoolRun:
    from transcribed.servers.vllm_engine import RemoteEngine, recording_batch

    with simulated_servers(count, speed) as urls:
        pooled = settings.model_copy(
            update={"engine": "vllm", "vllm_servers": urls, "model": _MODEL}
        )
        batch = recording_batch(pooled, jobs_at_once)
        engine = RemoteEngine.connect(pooled, batch, threading.Event())
        drained: list[list[dict[str, Any]]] = []
        try:
            wall = _transcribe_backlog(
                _rig(pooled, scratch / f"servers-{count}"),
                _copy_backlog(paths, scratch / f"backlog-{count}"),
                engine,
                jobs_at_once,
                batches_itself=True,
                on_drained=lambda: drained.append([fetch_stats(url) for url in urls]),
            )
        finally:
            engine.pool.close()
        final = [fetch_stats(url) for url in urls]
    cap = settings.vllm_max_in_flight
    return PoolRun(
        servers=count,
        batch_per_recording=batch,
        capacity_times_real_time=round(count * cap * speed, 1),
        times_real_time=round(audio / wall, 1),
        busy_while_backlog=_busy(drained[0], final, cap, until="now"),
        busy_whole_run=_busy(final, final, cap, until="last"),
        most_in_flight=max(int(stats["most_in_flight"]) for stats in final),
        wall_seconds=round(wall, 2),
    )


def _busy(at: list[dict[str, Any]], final: list[dict[str, Any]], cap: int, until: str) -> float:
    """Share of the servers' capacity in use from the first request to `until` (the time
    the stats `at` were taken, or the last answer)."""
    start = min((stats["first"] for stats in final if stats["first"] is not None), default=0.0)
    end = max((stats[until] for stats in at if stats[until] is not None), default=start)
    busy = sum(stats["busy"] for stats in at)
    share: float = busy / (cap * len(at) * max(end - start, 1e-9))
    return round(share, 3)


@contextmanager
def simulated_servers(count: int, speed: float) -> Iterator[list[str]]:
    """`count` simulated servers in a process of their own (not competing for this one's
    interpreter lock); their URLs."""
    command = [sys.executable, "-m", "transcribed.servers.pool_sim", "--servers", str(count)]
    command += ["--speed", str(speed), "--model", _MODEL]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            yield list(json.loads(process.stdout.readline()))
        finally:
            process.kill()


def render(report: PoolReport) -> str:
    lines = [
        f"backlog: {report.recordings} recordings, {report.audio_seconds / 3600:.2f} h; "
        f"each simulated server answers {report.speed:g}x real time per request, "
        f"{report.max_in_flight} requests in flight at most; {report.jobs_at_once} "
        "recordings at once",
        f"{'servers':>7}  {'capacity':>10}  {'achieved':>10}  {'busy while backlog':>18}  "
        f"{'busy whole run':>14}  {'in flight':>9}  {'batch/rec':>9}",
    ]
    for run in report.runs:
        lines.append(
            f"{run.servers:>7}  {run.capacity_times_real_time:>9,.0f}x  "
            f"{run.times_real_time:>9,.0f}x  {run.busy_while_backlog:>18.0%}  "
            f"{run.busy_whole_run:>14.0%}  {run.most_in_flight:>9}  {run.batch_per_recording:>9}"
        )
    lines.append(
        f"this machine's pipeline with no model: {report.no_model_times_real_time:,.0f}x "
        "real time (the ceiling for any number of servers)"
    )
    short = [run.servers for run in report.runs if run.busy_while_backlog < BUSY_TARGET]
    lines.append(
        f"kept >= {BUSY_TARGET:.0%} busy up to {max(_kept(report), default=0)} server(s)"
        + (f"; below that from {short[0]} (the daemon's CPU is the limit)" if short else "")
    )
    return "\n".join(lines)


def _kept(report: PoolReport) -> list[int]:
    return [run.servers for run in report.runs if run.busy_while_backlog >= BUSY_TARGET]
