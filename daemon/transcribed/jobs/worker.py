"""The worker: takes one queued job at a time through decode -> transcribe -> publish -> dispose.

`step()` does one unit of work so tests can drive it; `run()` is the plain loop.
Failure classes decide the job's fate: permanent -> failed_dir at once; transient -> retry
with a backoff that doubles with each consecutive transient failure, attempt refunded,
original untouched; anything else (a crash, a hang, a bug, an error while handling an error)
-> counted attempt, behind the other jobs, quarantined after `max_attempts`. A job the daemon
died in (kill -9, power loss, a file that kills the process) counts too: the attempt was
committed before the work started, so `recover` quarantines it once its attempts are spent
instead of looping forever. Nothing can hold a job at the head of the queue.

The model runs once per content and request: a job whose content was already transcribed
the same way under another name publishes its own transcript from that result.
"""

import contextlib
import dataclasses
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from transcribed import faults
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
from transcribed.jobs.rules import Plan, Rules
from transcribed.logs import get_logger
from transcribed.model.pipeline import Recognizer, WordAligner, transcribe_stream
from transcribed.model.speakers import SpeakerSource
from transcribed.output.outbox import published_source, retract_earlier
from transcribed.output.search_index import SearchIndex
from transcribed.output.transcript import Request, SourceInfo, Transcript
from transcribed.state.queue import LONGEST_WAIT_SECONDS, FailureKind, Job, JobQueue, JobState
from transcribed.state.recheck import RecordingChanged, StillBeingWritten, check_unchanged
from transcribed.state.workfolder import WorkFolder

log = get_logger(__name__)

BACKOFF_MAX_SECONDS = LONGEST_WAIT_SECONDS  # a longer one would be taken for a wrong clock
PROGRESS_SECONDS = 2.0  # how often a running job's progress is written for `status`
# Errors no retry can cure: a path that cannot exist (too long, invalid), a folder in the way.
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR, errno.EISDIR})


class Decoder(Protocol):
    """Turns a recording into 16 kHz mono sample blocks: `decoder.ChildDecoder` in production."""

    # The length the current file's header claims, once known: for progress display only.
    expected_seconds: float | None
    # Samples of the last file that were NaN, infinite or absurd, and were repaired.
    repaired_samples: int

    def stream(self, path: Path, label: str = "") -> Iterator[np.ndarray]: ...

    def reserve(self, timeout: float) -> bool:
        """Wait up to `timeout` for a decoder process to be this worker's; False if none."""
        ...

    def release(self) -> None:
        """Give a reserved process back unused (idempotent; `stream` gives it back itself)."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class _WaitingForSameContent(Exception):
    """The same content, asked the same way, is being transcribed by another job right now."""


@dataclass
class Worker:
    jobs: JobQueue
    work: WorkFolder
    decoder: Decoder
    recognizer: Recognizer
    rules: Rules
    destinations: Destinations
    chunk_seconds: float
    max_attempts: int
    stop: threading.Event
    retry_seconds: float = 30.0
    # A recording found changed (or still open for writing) waits this long before it is
    # looked at again: its writer may not be done yet either.
    settle_seconds: float = 3.0
    aligner: WordAligner | None = None
    diarizer: SpeakerSource | None = None  # speaker labels, where the folder's plan asks
    # When the worker last showed it is alive: each loop turn and each model batch.
    last_beat: float = dataclasses.field(default_factory=time.monotonic)
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None
    # Several workers transcribe at once in the daemon; then none of them disposes (one
    # disposal thread does, so two never race on one original) and each brackets its job
    # with `job_scope` (the shared model's count of active jobs).
    disposes: bool = True
    job_scope: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    wake_disposals: threading.Event | None = None
    search: SearchIndex | None = None  # full-text index of what is published (never fails a job)
    _progress_written: float = 0.0
    _last_job: int | None = None  # the job this worker last started (put back on a failure)

    def recover(self) -> None:
        """After a restart: requeue attempts a crash cut short (quarantining a file that has
        now used up its attempts: it is what keeps killing us) and retry pending disposals."""
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
                delay = _backoff(self.retry_seconds, job.attempts)
                self.jobs.requeue(job.id, delay, "interrupted by a restart", refund=False)
                log.info("recover.requeued", job=job.id, attempts=job.attempts, retry_in=delay)

    def step(self) -> bool:
        """Dispose of what is ready, then process the next due job; False when idle (or
        while the inbox is not the folder we opened: nothing can be read or disposed of)."""
        if self.work.problem() is not None:
            return False
        if self.disposes:
            self.sweep_disposals()
        if not self.decoder.reserve(timeout=0.5):  # shared processes all busy: no job yet
            return False
        try:
            job = self.jobs.next_job()
            if job is None:
                return False
            self._last_job = job.id
            self._process(job)
            return True
        finally:
            self.decoder.release()

    def sweep_disposals(self) -> bool:
        """Dispose of every original whose transcript is durable; True when any was."""
        self.jobs.release_duplicates()
        ready = self.jobs.disposals_due()
        for job in ready:
            self._dispose(job)
        return bool(ready)

    def run(self, idle_wait: float = 0.5) -> None:
        """Transcribe jobs until stopped."""
        self._loop(self.step, idle_wait)

    def run_disposals(self, idle_wait: float = 0.5) -> None:
        """The disposal thread: sweep when a worker published something, or every
        `idle_wait` seconds (deferred disposals come due by time)."""
        wake = self.wake_disposals or threading.Event()

        def sweep() -> bool:
            wake.clear()
            if self.work.problem() is not None:
                return False
            return self.sweep_disposals()

        self._loop(sweep, idle_wait, wait=lambda seconds: wake.wait(seconds))

    def _loop(
        self,
        work: Callable[[], bool],
        idle_wait: float,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        wait = wait or self.stop.wait
        failures = 0
        while not self.stop.is_set():
            self.last_beat = time.monotonic()
            try:
                busy = work()
                failures = 0
            except (OSError, sqlite3.Error) as error:  # the state dir is full, read-only, …
                failures += 1
                busy = self._wait_out_failure(error, failures)
            except Exception:  # a bug: log it, back off, keep the daemon up
                failures += 1
                log.exception("worker.step_failed")
                busy = self._wait_out_failure(None, failures)
            if not busy:
                wait(idle_wait)

    def _wait_out_failure(self, error: BaseException | None, failures: int) -> bool:
        """Back off, then put back the job that was cut short: the failure was in our own
        bookkeeping (the job's own failures are handled in `_process`), so its attempt is
        refunded. Only this worker's job: the others' are still being transcribed."""
        delay = _backoff(self.retry_seconds, failures)
        if error is not None:
            log.error(
                "worker.cannot_record_progress",
                error=str(error),
                retry_in=delay,
                hint=advice(error),
            )
        self.stop.wait(delay)
        with contextlib.suppress(sqlite3.Error):  # still broken: the next step waits again
            if self._last_job is not None:
                self.jobs.recover_running(refund=True, job_id=self._last_job)
        return False

    # --- one job --------------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        name = display_name(job.relpath)
        log.info("job.started", job=job.id, file=name, attempt=job.attempts)
        started = time.monotonic()
        if job.attempts > self.max_attempts:  # spent; quarantining it failed last time
            self._fail_or_wait(job, job.error or "gave up", FailureKind.GAVE_UP)
            return
        try:
            with self.job_scope():
                self._transcribe_and_publish(job, started)
        except _WaitingForSameContent as twin:
            log.info("job.waiting_for_same_content", job=job.id, same_as=str(twin))
            return
        except Exception as error:
            self._after_failure(job, error)
            return
        if self.disposes:
            self._dispose(self.jobs.get(job.id))
        elif self.wake_disposals is not None:
            self.wake_disposals.set()
        log.info("job.done", job=job.id, file=name, seconds=round(time.monotonic() - started, 3))

    def _after_failure(self, job: Job, error: Exception) -> None:
        """Decide a failed attempt's fate. A database error is ours, not the job's: it goes to
        the loop, which backs off and puts the job back. If deciding fails too (the failed
        folder is unwritable…), the attempt still counts and the job goes behind the others."""
        if isinstance(error, sqlite3.Error):
            raise error
        try:
            self._classify(job, error)
        except sqlite3.Error:
            raise
        except Exception as secondary:
            log.exception("job.failure_not_recorded", job=job.id, error=str(secondary))
            delay = _backoff(self.retry_seconds, job.attempts)
            self.jobs.requeue(job.id, delay, f"{error} (then: {secondary})", refund=False)

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
            delay = _backoff(self.settle_seconds, job.transient_failures + 1)
            self.jobs.requeue(job.id, delay, str(error), refund=True, transient=True)
            log.info("job.still_being_written", job=job.id, retry_in=delay)

    def _recheck(self, job: Job) -> None:
        """The work file still holds what was hashed (docs/design.md I6), or the job cannot
        go on."""
        try:
            check_unchanged(self.work.file(job.work_name), job, self.jobs)
        except FileNotFoundError:
            self._check_work_folder()
            raise RecordingVanished(self.work.vanished()) from None

    def _retry_later(self, job: Job, error: Exception) -> None:
        """Not the file's fault (disk full, I/O error, a folder gone): the attempt is refunded,
        and each consecutive time the wait doubles, up to 10 minutes."""
        delay = _backoff(self.retry_seconds, job.transient_failures + 1)
        self.jobs.requeue(job.id, delay, str(error), refund=True, transient=True)
        log.warning(
            "job.retry_later",
            job=job.id,
            error=str(error),
            retry_in=delay,
            hint=advice(error.__cause__ or error),
        )

    def _transcribe_and_publish(self, job: Job, started: float) -> None:
        assert job.sha256 is not None and job.size is not None
        relpath = os.fsdecode(job.relpath)
        plan = self.rules.plan(relpath)
        name = os.fsdecode(os.path.basename(job.relpath))
        self._recheck(job)  # a writer still at work: no model time spent on half a file
        request = Request(
            self.recognizer.info.id,
            plan.language,
            self.rules.context(plan),
            speakers=self._speakers(plan),
        )
        twin = self.jobs.start_request(job.id, request.key)
        if twin is not None and twin.state == JobState.RUNNING:
            raise _WaitingForSameContent(twin.id)
        source = SourceInfo(name=display_name(name), sha256=job.sha256, size=job.size)
        transcript = self._reuse(twin, source) if twin is not None else None
        if transcript is None:
            transcript = self._transcribe(job, plan, request, source, started)
        extra = {"disposal": self.destinations.disposer(plan.disposal).assurance.as_dict()}
        transcript = dataclasses.replace(transcript, extra=transcript.extra | extra)
        self._recheck(job)  # the transcript names exactly the bytes it describes
        try:
            outbox = self.destinations.outbox(plan.formats)
            outputs = outbox.publish(transcript, plan.output_relpath, self._replaceable(job))
        except OSError as error:  # disk full, unwritable, I/O error: nothing lost, try later
            if error.errno in PERMANENT_ERRNOS:
                raise
            raise TransientError(f"cannot write the transcript: {error}") from error
        self.jobs.mark_published(
            job.id,
            [str(path) for path in outputs],
            audio_seconds=transcript.duration,
            processing_seconds=round(time.monotonic() - started, 3),
            language=transcript.language,
            disposal=plan.disposal,
        )
        if self.search is not None:
            self.search.add_published(outputs, job.id)
        log.info(
            "job.published",
            job=job.id,
            audio_seconds=transcript.duration,
            segments=len(transcript.segments),
            language=transcript.language,
            reused=twin is not None and "reused_from" in transcript.extra,
        )

    def _replaceable(self, job: Job) -> tuple[str, ...]:
        """The files this job published for an earlier version of its recording, which the
        new transcript replaces; none while another recording of that name and content (a
        duplicate that was disposed of) still counts on them as its transcript."""
        if not job.versions or not job.outputs:
            return ()
        earlier = _published_sha256(job.outputs)
        if earlier is None or self.jobs.shares_transcript(job, earlier):
            return ()
        return job.outputs

    def _transcribe(
        self, job: Job, plan: Plan, request: Request, source: SourceInfo, started: float
    ) -> Transcript:
        name = os.fsdecode(os.path.basename(job.relpath))
        faults.point("job.decoding", name)
        blocks = self._announce_length(
            job, self.decoder.stream(self.work.file(job.work_name), name)
        )
        transcript = transcribe_stream(
            _as_far_as_it_decodes(blocks) if job.incomplete else blocks,
            source,
            self.recognizer,
            chunk_seconds=self.chunk_seconds,
            language=request.language,
            context=request.context,
            aligner=self.aligner,
            speakers=self.diarizer.open()
            if self.diarizer and request.speakers is not None
            else None,
            max_speakers=plan.max_speakers,
            should_stop=self._beat_and_check_stop,
            on_progress=lambda seconds: self._record_progress(job, seconds),
            started=started,
        )
        extra: dict[str, object] = {"request": request.as_json()}
        if job.incomplete:
            extra |= {"source_incomplete": True, "source_incomplete_reason": job.incomplete}
        if self.decoder.repaired_samples:
            extra["samples_repaired"] = self.decoder.repaired_samples
        return dataclasses.replace(transcript, extra=transcript.extra | extra)

    def _speakers(self, plan: Plan) -> int | None:
        """Speaker labels asked for this recording: None (off), else the speaker cap (0 for
        the model's own limit). Part of the request: labels change the transcript."""
        if self.diarizer is None or not plan.diarize:
            return None
        return plan.max_speakers or 0

    def _reuse(self, twin: Job, source: SourceInfo) -> Transcript | None:
        """This content's transcript, published for `twin` under its name, as this
        recording's own; None when it cannot be read back (then the model runs again)."""
        published = next((path for path in twin.outputs if path.endswith(".json")), None)
        try:
            assert published is not None
            data = json.loads(Path(published).read_bytes())
            transcript = Transcript.from_json_dict(data)
            assert transcript.source.sha256 == source.sha256
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
            log.warning("job.cannot_reuse", same_as=twin.id, error=type(error).__name__)
            return None
        return dataclasses.replace(
            transcript,
            source=source,
            extra=transcript.extra | {"reused_from": transcript.source.name},
        )

    def _check_work_folder(self) -> None:
        if problem := self.work.problem():
            raise TransientError(problem)

    def _announce_length(self, job: Job, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Once the first samples arrive, the length the header claims is known: `status`
        shows a percentage and an ETA from then on, not only after the first model batch."""
        announced = False
        for block in blocks:
            if not announced:
                announced = True
                self.jobs.record_progress(job.id, 0.0, self.decoder.expected_seconds)
            yield block

    def _record_progress(self, job: Job, seconds: float) -> None:
        """At most every PROGRESS_SECONDS: progress is for people, not worth an fsync a batch."""
        now = time.monotonic()
        if now - self._progress_written >= PROGRESS_SECONDS:
            self._progress_written = now
            self.jobs.record_progress(job.id, seconds, self.decoder.expected_seconds)

    def _beat_and_check_stop(self) -> bool:
        """Called between model batches: proof of progress, and the chance to stop."""
        self.last_beat = time.monotonic()
        return self.stop.is_set()

    def _retry_or_quarantine(self, job: Job, error: str) -> None:
        if job.attempts >= self.max_attempts:
            self._fail(
                job,
                f"gave up after {job.attempts} attempts; last error: {error}",
                FailureKind.GAVE_UP,
            )
        else:
            self.jobs.requeue(
                job.id, _backoff(self.retry_seconds, job.attempts), error, refund=False
            )

    def _fail_or_wait(self, job: Job, error: str, kind: FailureKind) -> None:
        """`_fail`, or, when even that fails (failed_dir unwritable), wait and try again:
        in the queue, or, for a job past its transcript, as a disposal that waits."""
        try:
            self._fail(job, error, kind)
        except sqlite3.Error:
            raise
        except Exception as secondary:
            log.error("job.cannot_quarantine", job=job.id, error=str(secondary))
            if job.state in (JobState.RUNNING, JobState.QUEUED):
                delay = _backoff(self.retry_seconds, job.attempts)
                self.jobs.requeue(job.id, delay, error, refund=False)
            else:  # published, or a duplicate: never back to the queue to be run again
                delay = _backoff(self.retry_seconds, job.disposal_failures + 1)
                self.jobs.defer_disposal(job.id, delay, error)

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
            retracted += retract_earlier(self._replaceable(job), name)
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

    def _dispose(self, job: Job) -> None:
        if not self._transcript_on_disk(job):
            return
        disposer = self.destinations.disposer(self._policy(job))
        try:
            outcome = disposer.dispose(job)
        except RecordingVanished as error:
            self._fail_or_wait(job, str(error), FailureKind.VANISHED)
            return
        except RecordingChanged as changed:
            self._not_final_yet(job, changed)
            return
        except StillBeingWritten as busy:
            delay = _backoff(self.settle_seconds, job.disposal_failures + 1)
            self.jobs.defer_disposal(job.id, delay, str(busy))
            log.info("job.still_being_written", job=job.id, retry_in=delay)
            return
        except OSError as error:  # the transcript is safe; the original waits in the work folder
            delay = _backoff(self.retry_seconds, job.disposal_failures + 1)
            self.jobs.defer_disposal(job.id, delay, str(error))
            log.warning(
                "job.disposal_failed",
                job=job.id,
                error=str(error),
                retry_in=delay,
                hint=advice(error),
            )
            return
        self.jobs.mark_done(job.id)
        log.info(
            "job.disposed",
            job=job.id,
            disposal=outcome,
            assurance=disposer.assurance.assurance,
        )
        self.on_finished(job, outcome)

    def _transcript_on_disk(self, job: Job) -> bool:
        """The disk decides (docs/design.md I6): an original goes only while the transcript it
        counts on (its own, or for the same recording dropped again the first drop's) is on
        disk and names its content. Otherwise it is transcribed again, and False."""
        owner = self._transcript_owner(job)
        name = display_name(os.path.basename(job.relpath))
        if published_source(owner.outputs) == (job.sha256, name):
            return True
        outbox = self.destinations.outbox(self.rules.plan(os.fsdecode(job.relpath)).formats).root
        if not outbox.is_dir():  # away (unmounted?), not emptied: wait for it, transcribe nothing
            delay = _backoff(self.retry_seconds, job.disposal_failures + 1)
            self.jobs.defer_disposal(job.id, delay, f"the outbox {outbox} is missing")
            return False
        self.jobs.transcribe_again(job.id, "its transcript is no longer in the outbox")
        log.warning(
            "job.transcript_missing",
            job=job.id,
            transcript_of=owner.id,
            hint="the transcript was removed or replaced before the original was disposed of: "
            "transcribed again, the original kept until then",
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


def _quarantine_cut_short(job: Job) -> tuple[str, FailureKind] | None:
    """When the original is gone from the work folder because a quarantine that a crash cut
    short had already moved it to the failed folder (its reason was recorded first): that
    reason, not "vanished"."""
    if job.failure_reason is None or job.failure_kind is None or job.disposed_to is None:
        return None
    if not os.path.lexists(job.disposed_to):
        return None
    return job.failure_reason, FailureKind(job.failure_kind)


def _published_sha256(outputs: tuple[str, ...]) -> str | None:
    source = published_source(outputs)
    return source[0] if source is not None else None


def _as_far_as_it_decodes(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """A recording that never finished: what decodes is transcribed, and a broken tail ends
    it (a recording of which nothing decodes still fails)."""
    decoded = False
    try:
        for block in blocks:
            decoded = True
            yield block
    except PermanentError:
        if not decoded:
            raise


def _backoff(base: float, attempts: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, base * 2 ** max(0, attempts - 1)))
