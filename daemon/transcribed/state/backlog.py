"""How long the backlog takes to clear: audio waiting, divided by audio done per busy second.

Work is measured in audio seconds, not bytes (a WAV holds ten times the bytes of an MP3 of
the same length), and time in busy seconds: the stretches in which some job was running,
so an idle hour or jobs running side by side do not skew the pace. A running job's own
estimate stands for itself; a queued job's length is not known until it is decoded, so it
is estimated from its size, at the bytes per audio second of finished jobs of its kind.
"""

from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any

from transcribed.state.queue import Job

# Finished jobs whose sizes teach the bytes per audio second of each kind of file.
SIZE_SAMPLE = 200


def backlog(
    queued: Sequence[Job],
    running: Sequence[dict[str, Any]],
    finished: Sequence[Job],
    sizes: Iterable[Job],
) -> dict[str, Any]:
    """The backlog of `queued` jobs and `running` ones (status rows, with their own ETAs),
    at the pace of the `finished` jobs (the last hour's), with queued lengths estimated from
    the `sizes` of earlier jobs."""
    pace = _pace(finished) or _running_pace(running)
    rates = _seconds_per_byte(sizes)
    lengths = [_length(job, rates) for job in queued]
    left = sum(
        max(0.0, row["audio_expected_seconds"] - row["audio_done_seconds"])
        for row in running
        if row["audio_expected_seconds"]
    )
    running_eta = max((row["eta_seconds"] for row in running if row["eta_seconds"]), default=None)
    waiting = None if None in lengths else left + sum(x for x in lengths if x is not None)
    eta: float | None = running_eta
    if queued:
        eta = None if waiting is None or not pace else max(running_eta or 0, waiting / pace)
    return {
        "recordings": len(queued) + len(running),
        "bytes": sum(job.size or 0 for job in queued),
        "audio_seconds": round(waiting) if waiting is not None else None,
        "audio_per_second": round(pace, 2) if pace else None,
        "eta_seconds": round(eta) if eta is not None else None,
    }


def _pace(finished: Sequence[Job]) -> float | None:
    """Audio seconds published per busy second (the union of the jobs' working times)."""
    spans = sorted(
        (job.finished - job.processing_seconds, job.finished)
        for job in finished
        if job.finished is not None and job.processing_seconds
    )
    busy, reach = 0.0, float("-inf")
    for start, end in spans:
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    audio = sum(job.audio_seconds or 0.0 for job in finished if job.processing_seconds)
    return audio / busy if busy > 0 and audio > 0 else None


def _running_pace(running: Sequence[dict[str, Any]]) -> float | None:
    """Before anything finished: the running jobs' own paces, added up (they run side by
    side)."""
    paces = [
        row["audio_done_seconds"] / row["elapsed_seconds"]
        for row in running
        if row["elapsed_seconds"] and row["audio_done_seconds"]
    ]
    return sum(paces) or None


def _kind(job: Job) -> str:
    return PurePosixPath(job.relpath.decode("utf-8", "replace")).suffix.lower()


def _seconds_per_byte(jobs: Iterable[Job]) -> dict[str, float]:
    """Audio seconds per byte for each file extension seen, and overall (key "")."""
    totals: dict[str, list[float]] = {}
    for job in jobs:
        if job.size and job.audio_seconds:
            for key in (_kind(job), ""):
                seconds, size = totals.setdefault(key, [0.0, 0.0])
                totals[key] = [seconds + job.audio_seconds, size + job.size]
    return {key: seconds / size for key, (seconds, size) in totals.items()}


def _length(job: Job, rates: dict[str, float]) -> float | None:
    """A queued job's audio seconds, estimated from its size; None when nothing is known."""
    rate = rates.get(_kind(job)) or rates.get("")
    return job.size * rate if rate and job.size is not None else None
