"""A recording's earlier versions: the transcript published for the bytes it held before its
writer added more, which the new transcript replaces (docs/design.md §3)."""

from transcribed.output.outbox import published_source
from transcribed.state.queue import Job, JobQueue


def replaceable(jobs: JobQueue, job: Job) -> tuple[str, ...]:
    """The files this job published for an earlier version of its recording, which the new
    transcript replaces; none while another recording of that name and content (a duplicate
    that was disposed of) still counts on them as its transcript."""
    if not job.versions or not job.outputs:
        return ()
    earlier = _published_sha256(job.outputs)
    if earlier is None or jobs.shares_transcript(job, earlier):
        return ()
    return job.outputs


def _published_sha256(outputs: tuple[str, ...]) -> str | None:
    source = published_source(outputs)
    return source[0] if source is not None else None
