"""The worker: takes one queued job at a time through decode -> transcribe -> publish -> dispose.

`step()` does one unit of work so tests can drive it; `run()` is the plain loop.
Failure classes decide the job's fate: permanent -> failed_dir at once; transient -> retry
with backoff, attempt refunded, original untouched; anything else (a crash, a hang) -> counted
attempt, quarantined after `max_attempts`. A job the daemon died in (kill -9, power loss, a
file that kills the process) counts too: the attempt was committed before the work started,
so `recover` quarantines it once its attempts are spent instead of looping forever.
"""

import contextlib
import dataclasses
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
from transcribed.destinations import Destinations
from transcribed.errors import (
    DecoderCrashed,
    PermanentError,
    ShutdownRequested,
    TransientError,
    advice,
)
from transcribed.logs import get_logger
from transcribed.names import display_name
from transcribed.pipeline import Recognizer, WordAligner, transcribe_stream
from transcribed.queue import FailureKind, Job, JobQueue, JobState
from transcribed.rules import Rules
from transcribed.search_index import SearchIndex
from transcribed.transcript import SourceInfo

log = get_logger(__name__)

BACKOFF_MAX_SECONDS = 600.0


PROGRESS_SECONDS = 2.0  # how often a running job's progress is written for `status`


class Decoder(Protocol):
    """Turns a recording into 16 kHz mono sample blocks: `decoder.ChildDecoder` in production."""

    # The length the current file's header claims, once known: for progress display only.
    expected_seconds: float | None

    def stream(self, path: Path, label: str = "") -> Iterator[np.ndarray]: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Worker:
    jobs: JobQueue
    work_dir: Path
    decoder: Decoder
    recognizer: Recognizer
    rules: Rules
    destinations: Destinations
    chunk_seconds: float
    max_attempts: int
    stop: threading.Event
    retry_seconds: float = 30.0
    aligner: WordAligner | None = None
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
                self._fail(
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
        """Dispose of what is ready, then process the next due job; False when idle."""
        if self.disposes:
            self.sweep_disposals()
        job = self.jobs.next_job()
        if job is None:
            return False
        self._last_job = job.id
        self._process(job)
        return True

    def sweep_disposals(self) -> bool:
        """Dispose of every original whose transcript is durable; True when any was."""
        self.jobs.orphan_duplicates()
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
        bookkeeping, not the file, so its attempt is refunded. Only this worker's job: the
        others' are still being transcribed."""
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

    def _process(self, job: Job) -> None:
        name = display_name(job.relpath)
        log.info("job.started", job=job.id, file=name, attempt=job.attempts)
        started = time.monotonic()
        try:
            with self.job_scope():
                self._transcribe_and_publish(job, started)
        except ShutdownRequested:
            self.jobs.requeue(job.id, 0, None, refund=True)
            log.info("job.requeued_for_shutdown", job=job.id)
            return
        except PermanentError as error:
            self._fail(job, str(error), FailureKind.UNREADABLE)
            return
        except DecoderCrashed as error:
            log.warning("job.decoder_crashed", job=job.id, error=str(error), attempt=job.attempts)
            self._retry_or_quarantine(job, str(error))
            return
        except TransientError as error:
            delay = _backoff(self.retry_seconds, job.attempts)
            self.jobs.requeue(job.id, delay, str(error), refund=True)
            log.warning(
                "job.retry_later",
                job=job.id,
                error=str(error),
                retry_in=delay,
                hint=advice(error.__cause__),
            )
            return
        except Exception as error:  # unexpected: counts as an attempt, like a crash would
            log.exception("job.attempt_failed", job=job.id, attempt=job.attempts)
            self._retry_or_quarantine(job, f"{type(error).__name__}: {error}")
            return
        if self.disposes:
            self._dispose(self.jobs.get(job.id))
        elif self.wake_disposals is not None:
            self.wake_disposals.set()
        log.info("job.done", job=job.id, file=name, seconds=round(time.monotonic() - started, 3))

    def _transcribe_and_publish(self, job: Job, started: float) -> None:
        assert job.sha256 is not None and job.size is not None
        plan = self.rules.plan(os.fsdecode(job.relpath))
        name = os.fsdecode(os.path.basename(job.relpath))
        faults.point("job.decoding", name)
        source = SourceInfo(name=display_name(name), sha256=job.sha256, size=job.size)
        transcript = transcribe_stream(
            self.decoder.stream(self.work_dir / job.work_name, name),
            source,
            self.recognizer,
            chunk_seconds=self.chunk_seconds,
            language=plan.language,
            context=self.rules.context(plan),
            aligner=self.aligner,
            should_stop=self._beat_and_check_stop,
            on_progress=lambda seconds: self._record_progress(job, seconds),
            started=started,
        )
        disposal = {"disposal": self.destinations.disposer(plan.disposal).assurance.as_dict()}
        transcript = dataclasses.replace(transcript, extra=transcript.extra | disposal)
        try:
            outbox = self.destinations.outbox(plan.formats)
            outputs = outbox.publish(transcript, plan.output_relpath)
        except OSError as error:  # disk full, unwritable, I/O error: nothing lost, try later
            raise TransientError(f"cannot write the transcript: {error}") from error
        self.jobs.mark_published(
            job.id,
            [str(path) for path in outputs],
            audio_seconds=transcript.duration,
            processing_seconds=round(time.monotonic() - started, 3),
        )
        if self.search is not None:
            self.search.add_published(outputs, job.id)
        log.info(
            "job.published",
            job=job.id,
            audio_seconds=transcript.duration,
            segments=len(transcript.segments),
            language=transcript.language,
        )

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

    def _fail(self, job: Job, error: str, kind: FailureKind) -> None:
        plan = self.rules.plan(os.fsdecode(job.relpath))
        if job.sha256 is not None:
            self.destinations.outbox(plan.formats).retract(plan.output_relpath, job.sha256)
        target = self.destinations.disposer(plan.disposal).quarantine(job, error)
        self.jobs.mark_failed(job.id, error, kind)
        log.warning(
            "job.failed",
            job=job.id,
            file=display_name(job.relpath),
            error=error,
            moved_to=display_name(str(target)),
        )
        self.on_finished(self.jobs.get(job.id), "failed")

    def _dispose(self, job: Job) -> None:
        try:
            disposer = self.destinations.disposer(
                self.rules.plan(os.fsdecode(job.relpath)).disposal
            )
            outcome = disposer.dispose(job)
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


def _backoff(base: float, attempts: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, base * 2 ** max(0, attempts - 1)))
