"""`metrics_file`: the queue's figures in Prometheus text format, for node_exporter's textfile
collector. A file, rewritten atomically, instead of a listening socket: it works under
PrivateNetwork=yes and opens nothing to the network."""

from pathlib import Path

from transcribed.files.durable import publish_bytes
from transcribed.state.queue import JobQueue, JobState

_WAITING = (JobState.CLAIMING, JobState.QUEUED, JobState.DUPLICATE)


def render(jobs: JobQueue) -> str:
    counts = jobs.counts()
    recordings, audio, busy = jobs.finished_since(0.0)
    lines = [
        "# HELP transcribed_jobs Jobs in the queue database, by state.",
        "# TYPE transcribed_jobs gauge",
        *(f'transcribed_jobs{{state="{state}"}} {counts.get(state, 0)}' for state in JobState),
        "# HELP transcribed_queue_depth Recordings waiting to be transcribed.",
        "# TYPE transcribed_queue_depth gauge",
        f"transcribed_queue_depth {sum(counts.get(state, 0) for state in _WAITING)}",
        "# HELP transcribed_transcribed_total Recordings transcribed.",
        "# TYPE transcribed_transcribed_total counter",
        f"transcribed_transcribed_total {recordings}",
        "# HELP transcribed_audio_seconds_total Seconds of audio transcribed.",
        "# TYPE transcribed_audio_seconds_total counter",
        f"transcribed_audio_seconds_total {audio:.3f}",
        "# HELP transcribed_processing_seconds_total Wall seconds spent transcribing.",
        "# TYPE transcribed_processing_seconds_total counter",
        f"transcribed_processing_seconds_total {busy:.3f}",
        "# HELP transcribed_failures Recordings that failed for good, by reason.",
        "# TYPE transcribed_failures gauge",
        *(
            f'transcribed_failures{{reason="{kind}"}} {n}'
            for kind, n in sorted(jobs.failures_by_kind().items())
        ),
    ]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, jobs: JobQueue, mode: int) -> None:
    """Replace `path` atomically: the collector never reads half a file."""
    publish_bytes(path, render(jobs).encode(), mode=mode, label="metrics")
