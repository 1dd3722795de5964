"""The worker: takes one queued job at a time through decode -> transcribe -> publish -> dispose.

`step()` does one unit of work so tests can drive it; `run()` is the plain loop.
Failure classes decide the job's fate: permanent -> failed_dir at once; transient -> retry
with backoff, attempt refunded, original untouched; anything else (a crash, a hang) -> counted
attempt, quarantined after `max_attempts`.
"""

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from transcribed.disposal import Disposer
from transcribed.errors import DecoderCrashed, PermanentError, ShutdownRequested, TransientError
from transcribed.logs import get_logger
from transcribed.names import display_name
from transcribed.outbox import Outbox
from transcribed.pipeline import Recognizer, transcribe_audio
from transcribed.queue import Job, JobQueue, JobState
from transcribed.transcript import SourceInfo

log = get_logger(__name__)

_BACKOFF_BASE_SECONDS = 30.0
_BACKOFF_MAX_SECONDS = 3600.0


class Decoder(Protocol):
    """Turns a recording into 16 kHz mono samples: `decoder.ChildDecoder` in production."""

    def decode(self, path: Path) -> np.ndarray: ...


@dataclass
class Worker:
    jobs: JobQueue
    work_dir: Path
    decoder: Decoder
    recognizer: Recognizer
    outbox: Outbox
    disposer: Disposer
    chunk_seconds: float
    language: str | None
    max_attempts: int
    stop: threading.Event
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None

    def recover(self) -> None:
        """After a restart: requeue cut-short attempts and finish interrupted disposals."""
        if requeued := self.jobs.recover_running():
            log.info("recover.requeued", jobs=requeued)
        for job in self.jobs.in_state(JobState.PUBLISHED):
            self._dispose(job)

    def step(self) -> bool:
        """Dispose of settled duplicates, then process the next due job; False when idle."""
        self.jobs.orphan_duplicates()
        for duplicate in self.jobs.duplicates_ready():
            self._dispose(duplicate)
        job = self.jobs.next_job()
        if job is None:
            return False
        self._process(job)
        return True

    def run(self, idle_wait: float = 0.5) -> None:
        while not self.stop.is_set():
            try:
                busy = self.step()
            except Exception:  # a bug or a dead database: log, back off, keep the daemon up
                log.exception("worker.step_failed")
                busy = False
                self.stop.wait(5)
            if not busy:
                self.stop.wait(idle_wait)

    def _process(self, job: Job) -> None:
        name = display_name(job.relpath)
        log.info("job.started", job=job.id, file=name, attempt=job.attempts)
        started = time.monotonic()
        try:
            self._transcribe_and_publish(job, started)
        except ShutdownRequested:
            self.jobs.requeue(job.id, 0, None, refund=True)
            log.info("job.requeued_for_shutdown", job=job.id)
            return
        except PermanentError as error:
            self._fail(job, str(error))
            return
        except DecoderCrashed as error:
            log.warning("job.decoder_crashed", job=job.id, error=str(error), attempt=job.attempts)
            self._retry_or_quarantine(job, str(error))
            return
        except TransientError as error:
            delay = _backoff(job.attempts)
            self.jobs.requeue(job.id, delay, str(error), refund=True)
            log.warning("job.retry_later", job=job.id, error=str(error), retry_in=delay)
            return
        except Exception as error:  # unexpected: counts as an attempt, like a crash would
            log.exception("job.attempt_failed", job=job.id, attempt=job.attempts)
            self._retry_or_quarantine(job, f"{type(error).__name__}: {error}")
            return
        self._dispose(self.jobs.get(job.id))
        log.info("job.done", job=job.id, file=name, seconds=round(time.monotonic() - started, 3))

    def _transcribe_and_publish(self, job: Job, started: float) -> None:
        audio = self.decoder.decode(self.work_dir / job.work_name)
        assert job.sha256 is not None and job.size is not None
        source = SourceInfo(
            name=display_name(os.path.basename(job.relpath)), sha256=job.sha256, size=job.size
        )
        transcript = transcribe_audio(
            audio,
            source,
            self.recognizer,
            chunk_seconds=self.chunk_seconds,
            language=self.language,
            should_stop=self.stop.is_set,
            started=started,
        )
        del audio
        try:
            outputs = self.outbox.publish(transcript, os.fsdecode(job.relpath))
        except OSError as error:  # disk full, unwritable, I/O error: nothing lost, try later
            raise TransientError(f"cannot write the transcript: {error}") from error
        self.jobs.mark_published(job.id, [str(path) for path in outputs])
        log.info(
            "job.published",
            job=job.id,
            audio_seconds=transcript.duration,
            segments=len(transcript.segments),
            language=transcript.language,
        )

    def _retry_or_quarantine(self, job: Job, error: str) -> None:
        if job.attempts >= self.max_attempts:
            self._fail(job, f"gave up after {job.attempts} attempts; last error: {error}")
        else:
            self.jobs.requeue(job.id, _backoff(job.attempts), error, refund=False)

    def _fail(self, job: Job, error: str) -> None:
        target = self.disposer.quarantine(job, error)
        self.jobs.mark_failed(job.id, error)
        log.warning(
            "job.failed",
            job=job.id,
            file=display_name(job.relpath),
            error=error,
            moved_to=display_name(str(target)),
        )
        self.on_finished(job, "failed")

    def _dispose(self, job: Job) -> None:
        try:
            outcome = self.disposer.dispose(job)
        except OSError as error:  # the transcript is safe; disposal is retried at next start
            log.warning("job.disposal_failed", job=job.id, error=str(error))
            return
        self.jobs.mark_done(job.id)
        log.info("job.disposed", job=job.id, disposal=outcome)
        self.on_finished(job, outcome)


def _backoff(attempts: int) -> float:
    return float(min(_BACKOFF_MAX_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)))
