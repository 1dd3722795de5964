"""The disposal loop: originals go (archived, deleted or shredded) once their transcript is
durable and names them (docs/design.md I6).

One disposal thread in the daemon, and only one, so two never race on one original. The
workers publish and wake it; it also sweeps on its own every so often, for disposals that
were put off (a file still being written, an outbox away) come due by time. `step()` is one
sweep, for tests to drive; `loop()` says how the supervisor runs it.
"""

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from transcribed.backoff import backoff
from transcribed.errors import RecordingVanished
from transcribed.files.names import display_name
from transcribed.jobs.destinations import Destinations
from transcribed.jobs.fate import Fate, fate_of
from transcribed.jobs.rules import Rules
from transcribed.logs import get_logger
from transcribed.loops.supervisor import Heartbeat, Loop
from transcribed.output.outbox import published_source
from transcribed.output.search_index import SearchIndex
from transcribed.state.queue import Job, JobQueue, JobState
from transcribed.state.recheck import RecordingChanged, StillBeingWritten
from transcribed.state.workfolder import WorkFolder

log = get_logger(__name__)


@dataclass
class Disposals:
    """Disposes of every original whose transcript is durable, on its own database
    connection. Rules, destinations and the retry settings are replaced by a reload."""

    jobs: JobQueue
    work: WorkFolder
    rules: Rules
    destinations: Destinations
    max_attempts: int
    retry_seconds: float = 30.0
    settle_seconds: float = 3.0  # a recording still being written waits this long
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None
    wake: threading.Event | None = None  # set by a worker that published a transcript
    heartbeat: Heartbeat = dataclasses.field(default_factory=Heartbeat)
    search: SearchIndex | None = None  # what a failed disposal's quarantine takes back

    @property
    def fate(self) -> Fate:
        """What becomes of a job whose disposal fails, under the settings of now."""
        return fate_of(self)

    def loop(self, idle_seconds: float, stall_seconds: float) -> Loop:
        """How the disposal thread runs: a sweep when a worker published something, or
        every `idle_seconds`; after a failed sweep the backoff from `retry_seconds`."""
        return Loop(
            "disposals",
            self.step,
            idle_seconds,
            self._backoff,
            wake=self.wake,
            heartbeat=self.heartbeat,
            stall_seconds=stall_seconds,
            cannot_record="worker.cannot_record_progress",
            step_failed="worker.step_failed",
        )

    def step(self) -> bool:
        """Dispose of every original that is due; True when any was (nothing while the inbox
        is not the folder we opened: no original can be found there)."""
        if self.work.problem() is not None:
            return False
        self.jobs.release_duplicates()
        ready = self.jobs.disposals_due()
        for job in ready:
            self.dispose(job)
        return bool(ready)

    def dispose(self, job: Job) -> None:
        """This job's original, if the transcript it counts on is on disk."""
        if not self._transcript_on_disk(job):
            return
        disposer = self.destinations.disposer(self._policy(job))
        try:
            outcome = disposer.dispose(job)
        except (RecordingVanished, RecordingChanged, StillBeingWritten, OSError) as error:
            self.fate.disposal_failed(job, error)
            return
        self.jobs.mark_done(job.id)
        log.info(
            "job.disposed",
            job=job.id,
            disposal=outcome,
            assurance=disposer.assurance.assurance,
        )
        self.on_finished(job, outcome)

    def _backoff(self, failures: int) -> float:
        return backoff(failures, self.retry_seconds)  # read now: a reload may change it

    def _transcript_on_disk(self, job: Job) -> bool:
        """The disk decides (docs/design.md I6): an original goes only while the transcript it
        counts on (its own, or for the same recording dropped again the first drop's) is on
        disk, every file of it, and names its content. Otherwise it is transcribed again (its
        files written again where they were), and False."""
        owner = self._transcript_owner(job)
        name = display_name(os.path.basename(job.relpath))
        complete = all(os.path.exists(path) for path in owner.outputs)  # the .txt too
        if complete and published_source(owner.outputs) == (job.sha256, name):
            return True
        outbox = self.destinations.outbox(self.rules.plan(os.fsdecode(job.relpath)).formats).root
        if not outbox.is_dir():  # away (unmounted?), not emptied: wait for it, transcribe nothing
            self.fate.outbox_away(job, outbox)
            return False
        self.jobs.transcribe_again(job.id, "its transcript is no longer whole in the outbox")
        log.warning(
            "job.transcript_missing",
            job=job.id,
            transcript_of=owner.id,
            hint="the transcript (or one of its files) was removed or replaced before the "
            "original was disposed of: transcribed again, the original kept until then",
        )
        return False

    def _transcript_owner(self, job: Job) -> Job:
        """The job whose transcript is this one's: the first drop, for a same-name duplicate."""
        if job.state == JobState.DUPLICATE and job.duplicate_of is not None:
            return self.jobs.get(job.duplicate_of)
        return job

    def _policy(self, job: Job) -> str:
        """The disposal policy the job's transcript records (the first drop's, for the same
        recording dropped again), not today's config: a reload never shreds a recording whose
        transcript promises it was kept."""
        recorded = self._transcript_owner(job).disposal
        return recorded or self.rules.plan(os.fsdecode(job.relpath)).disposal
