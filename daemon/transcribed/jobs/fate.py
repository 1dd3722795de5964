"""A job's fate after a failure: the one place that decides it (dramatiq's `Retries`).

Failure classes decide: permanent -> the failed folder at once; transient -> retried after
the backoff (`transcribed.backoff`), doubling with each transient failure in a row, the
attempt refunded and the original untouched; a recording found still being written or
changed -> it waits a settle window, never its fault; anything else (a crash, a hang, a bug,
an error while handling an error) -> a counted attempt, behind the other jobs, quarantined
after `max_attempts`. A job the daemon died in (kill -9, power loss, a file that kills the
process) counts too: its attempt was committed before the work started, so after the restart
it is quarantined once its attempts are spent instead of looping forever. A disposal that
fails waits, its transcript safe, and is never run again as a job. Nothing can hold a job at
the head of the queue.
"""

import dataclasses
import errno
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from transcribed.backoff import backoff
from transcribed.errors import (
    DecoderCrashed,
    PermanentError,
    RecordingVanished,
    ShutdownRequested,
    TransientError,
    advice,
)
from transcribed.files.names import display_name
from transcribed.jobs.destinations import Destinations
from transcribed.jobs.rules import Rules
from transcribed.jobs.versions import replaceable
from transcribed.logs import get_logger
from transcribed.output.outbox import retract_earlier
from transcribed.output.search_index import SearchIndex
from transcribed.state.queue import FailureKind, Job, JobQueue, JobState
from transcribed.state.recheck import RecordingChanged, StillBeingWritten

log = get_logger(__name__)

# Errors no retry can cure: a path that cannot exist (too long, a name the filesystem
# refuses). Not a file where a folder should be, or the reverse (ENOTDIR, EISDIR: the outbox
# replaced by a file): the user can fix that, and the recording waits for it.
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL})


def _nothing(job: Job, outcome: str) -> None:
    pass


class FailureSettings(Protocol):
    """What a loop that can fail jobs holds: the worker's and the disposal thread's."""

    jobs: JobQueue
    rules: Rules
    destinations: Destinations
    max_attempts: int
    retry_seconds: float
    settle_seconds: float
    search: SearchIndex | None

    @property  # a callable field reads as a method: read-only
    def on_finished(self) -> Callable[[Job, str], None]: ...


def fate_of(loop: FailureSettings) -> "Fate":
    """A loop's `Fate` under its settings of now (a reload reaches it at once)."""
    return Fate(
        loop.jobs,
        loop.rules,
        loop.destinations,
        loop.max_attempts,
        loop.retry_seconds,
        loop.settle_seconds,
        loop.on_finished,
        loop.search,
    )


@dataclass
class Fate:
    """Decides what becomes of a job whose attempt or disposal failed, on one thread's
    database connection. Built from the current settings each time it is used, so a reload
    reaches it at once."""

    jobs: JobQueue
    rules: Rules
    destinations: Destinations
    max_attempts: int
    retry_seconds: float = 30.0
    # A recording found changed (or still open for writing) waits this long before it is
    # looked at again: its writer may not be done yet either.
    settle_seconds: float = 3.0
    on_finished: Callable[[Job, str], None] = _nothing  # a job failed for good: "failed"
    search: SearchIndex | None = None  # a transcript taken back is no longer found there

    # --- the moments a job can fail -------------------------------------------------------

    def requeue_interrupted(self) -> None:
        """After a restart: requeue attempts a crash cut short, quarantining a file that has
        now used up its attempts (it is what keeps killing us)."""
        for job in self.jobs.in_state(JobState.RUNNING):
            if job.attempts >= self.max_attempts:
                self._fail_or_wait(
                    job,
                    f"the daemon stopped during each of {job.attempts} attempts "
                    "(a crash, a kill or a power cut): this file may be what kills it",
                    FailureKind.KILLS_DAEMON,
                )
            else:
                # After the others: a file that kills us must not block the queue, and a
                # good file is less likely to be hit by the next kill as well.
                delay = backoff(job.attempts, self.retry_seconds)
                self.jobs.requeue(job.id, delay, "interrupted by a restart", refund=False)
                log.info("recover.requeued", job=job.id, attempts=job.attempts, retry_in=delay)

    def quarantine_owed(self, job: Job) -> None:
        """Started though its failure was decided: moving it to the failed folder failed
        last time (`failure_reason` set; or, in a database from before that column, its
        attempts spent). Only the move is tried again: the attempt this start counted is
        given back first."""
        self.jobs.give_back_attempt(job.id)
        job = dataclasses.replace(job, attempts=job.attempts - 1)
        reason = job.failure_reason or job.error or "gave up"
        self._fail_or_wait(job, reason, FailureKind(job.failure_kind or FailureKind.GAVE_UP))

    def attempt_failed(self, job: Job, error: Exception) -> None:
        """Decide a failed attempt's fate. A database error is ours, not the job's: it goes to
        the loop, which backs off and puts the job back. If deciding fails too (the failed
        folder is unwritable…), the attempt still counts and the job goes behind the others."""
        if isinstance(error, sqlite3.Error):
            raise error
        try:
            self._classify(job, error)
        except sqlite3.Error:
            raise
        except OSError as problem:  # a folder's fault (failed_dir a file, a link, full)
            self._quarantine_waits(job, str(error), problem)
        except Exception as secondary:
            log.exception("job.failure_not_recorded", job=job.id, error=str(secondary))
            delay = backoff(job.attempts, self.retry_seconds)
            self.jobs.requeue(job.id, delay, f"{error} (then: {secondary})", refund=False)

    def disposal_failed(self, job: Job, error: Exception) -> None:
        """The transcript is safe; the original waits in the work folder (or fails with its
        reason when it vanished, or becomes the new version when it changed)."""
        if isinstance(error, RecordingVanished):
            self._fail_or_wait(job, str(error), FailureKind.VANISHED)
        elif isinstance(error, RecordingChanged):
            self._not_final_yet(job, error)
        elif isinstance(error, StillBeingWritten):
            delay = backoff(job.disposal_failures + 1, self.settle_seconds)
            self.jobs.defer_disposal(job.id, delay, str(error))
            log.info("job.still_being_written", job=job.id, retry_in=delay)
        else:
            delay = backoff(job.disposal_failures + 1, self.retry_seconds)
            self.jobs.defer_disposal(job.id, delay, str(error))
            log.warning(
                "job.disposal_failed",
                job=job.id,
                error=str(error),
                retry_in=delay,
                hint=advice(error),
            )

    def outbox_away(self, job: Job, outbox: Path) -> None:
        """The outbox is missing as a whole (unmounted?), not emptied: the disposal waits for
        it, and nothing is transcribed again."""
        delay = backoff(job.disposal_failures + 1, self.retry_seconds)
        self.jobs.defer_disposal(job.id, delay, f"the outbox {outbox} is missing")

    # --- the fates ------------------------------------------------------------------------

    def _classify(self, job: Job, error: Exception) -> None:
        if isinstance(error, ShutdownRequested):
            self.jobs.requeue(job.id, 0, None, refund=True)
            log.info("job.requeued_for_shutdown", job=job.id)
        elif isinstance(error, RecordingChanged | StillBeingWritten):
            self._not_final_yet(job, error)
        elif isinstance(error, PermanentError):
            self._fail(job, str(error), FailureKind.UNREADABLE)
        elif isinstance(error, RecordingVanished):
            self._fail(job, str(error), FailureKind.VANISHED)
        elif isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
            self._fail(job, f"{error}: a path that cannot exist", FailureKind.UNWRITABLE)
        elif isinstance(error, DecoderCrashed):
            log.warning("job.decoder_crashed", job=job.id, error=str(error), attempt=job.attempts)
            self._retry_or_quarantine(job, str(error))
        elif isinstance(error, TransientError | OSError):
            self._retry_later(job, error)
        else:  # unexpected: counts as an attempt, like a crash would
            log.error(
                "job.attempt_failed",
                job=job.id,
                attempt=job.attempts,
                error=f"{type(error).__name__}: {error}",
                exc_info=error,
            )
            self._retry_or_quarantine(job, f"{type(error).__name__}: {error}")

    def _not_final_yet(self, job: Job, error: RecordingChanged | StillBeingWritten) -> None:
        """Its writer was not done (docs/design.md I6): the job waits a settle window, and
        becomes the new content when the bytes changed. Never the file's fault: no attempt
        counts."""
        if isinstance(error, RecordingChanged):
            self.jobs.new_version(job.id, error.content, self.settle_seconds)
            log.warning(
                "job.recording_changed",
                job=job.id,
                bytes_before=job.size,
                bytes_now=error.content.size,
                hint="its writer was not done when it was taken: transcribed again, and its "
                "transcript replaced",
            )
        else:  # each time it is still open, the wait doubles (up to the longest backoff)
            delay = backoff(job.transient_failures + 1, self.settle_seconds)
            self.jobs.requeue(job.id, delay, str(error), refund=True, transient=True)
            log.info("job.still_being_written", job=job.id, retry_in=delay)

    def _retry_later(self, job: Job, error: Exception) -> None:
        """Not the file's fault (disk full, I/O error, a folder gone): the attempt is refunded,
        and each consecutive time the wait doubles, up to 10 minutes."""
        delay = backoff(job.transient_failures + 1, self.retry_seconds)
        self.jobs.requeue(job.id, delay, str(error), refund=True, transient=True)
        log.warning(
            "job.retry_later",
            job=job.id,
            error=str(error),
            retry_in=delay,
            hint=advice(error.__cause__ or error),
        )

    def _retry_or_quarantine(self, job: Job, error: str) -> None:
        if job.attempts >= self.max_attempts:
            self._fail(
                job,
                f"gave up after {job.attempts} attempts; last error: {error}",
                FailureKind.GAVE_UP,
            )
        else:
            delay = backoff(job.attempts, self.retry_seconds)
            self.jobs.requeue(job.id, delay, error, refund=False)

    def _fail_or_wait(self, job: Job, error: str, kind: FailureKind) -> None:
        """`_fail`, or, when even that fails (failed_dir unwritable), wait and try again:
        in the queue, or, for a job past its transcript, as a disposal that waits."""
        try:
            self._fail(job, error, kind)
        except sqlite3.Error:
            raise
        except Exception as secondary:
            if job.state in (JobState.RUNNING, JobState.QUEUED):
                self._quarantine_waits(job, error, secondary)
            else:  # published, or a duplicate: never back to the queue to be run again
                log.error("job.cannot_quarantine", job=job.id, error=str(secondary))
                delay = backoff(job.disposal_failures + 1, self.retry_seconds)
                self.jobs.defer_disposal(job.id, delay, error)

    def _quarantine_waits(self, job: Job, error: str, problem: Exception) -> None:
        """Failed for good, but its original cannot go to the failed folder now (the folder
        is missing, a file, a link, full): not the recording's fault. It waits in the queue,
        the wait doubling, and its next start only tries the move again (`failure_reason`,
        recorded before the move, says so), so it is never transcribed again meanwhile and
        its attempts stay what they were. The reason stays the recording's own."""
        reason = self.jobs.get(job.id).failure_reason or error
        delay = backoff(job.transient_failures + 1, self.retry_seconds)
        waiting = f"{reason} (waiting to be moved to the failed folder: {problem})"
        self.jobs.requeue(job.id, delay, waiting, refund=False, transient=True)
        log.error(
            "job.cannot_quarantine",
            job=job.id,
            error=str(problem),
            retry_in=delay,
            hint=advice(problem),
        )

    def _fail(self, job: Job, error: str, kind: FailureKind) -> None:
        """Failed for good: the original (or, when it vanished, a reason file alone) goes to
        failed_dir. A transcript published before a crash is taken back, so the name ends
        with its reason only; not one published for a recording that then vanished, nor one
        that another job of the same name and content published."""
        if kind == FailureKind.VANISHED and (earlier := _quarantine_cut_short(job)):
            error, kind = earlier
        else:
            self.jobs.record_failing(job.id, error, kind)
        plan = self.rules.plan(os.fsdecode(job.relpath))
        ours_alone = job.state != JobState.PUBLISHED and not self.jobs.shares_transcript(job)
        name = display_name(os.path.basename(job.relpath))
        retracted: list[Path] = []
        if job.sha256 is not None and ours_alone:
            outbox = self.destinations.outbox(plan.formats)
            retracted += outbox.retract(plan.output_relpath, job.sha256, name)
        if job.state != JobState.PUBLISHED:  # an earlier version's transcript, published once
            retracted += retract_earlier(replaceable(self.jobs, job), name)
        if self.search is not None:
            self.search.forget_retracted(retracted)
        target = self.destinations.disposer(plan.disposal).quarantine(job, error)
        self.jobs.mark_failed(job.id, error, kind)
        log.warning(
            "job.failed",
            job=job.id,
            file=display_name(job.relpath),
            error=error,
            kind=str(kind),
            moved_to=display_name(str(target)),
        )
        self.on_finished(self.jobs.get(job.id), "failed")


def _quarantine_cut_short(job: Job) -> tuple[str, FailureKind] | None:
    """When the original is gone from the work folder because a quarantine that a crash cut
    short had already moved it to the failed folder (its reason was recorded first): that
    reason, not "vanished"."""
    if job.failure_reason is None or job.failure_kind is None or job.disposed_to is None:
        return None
    if not os.path.lexists(job.disposed_to):
        return None
    return job.failure_reason, FailureKind(job.failure_kind)
