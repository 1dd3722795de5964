"""The worker: takes one queued job at a time through decode -> transcribe -> publish.

Its original is then disposed of by the disposal loop (`jobs.disposals`).

`step()` does one unit of work so tests can drive it; `loop()` says how the supervisor runs
it. A job that fails meets the fate `jobs.fate` decides for it.

The model runs once per content and request: a job whose content was already transcribed
the same way under another name publishes its own transcript from that result.
"""

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from transcribed import faults
from transcribed.backoff import backoff
from transcribed.errors import PermanentError, RecordingVanished, TransientError
from transcribed.files.names import display_name
from transcribed.jobs.destinations import Destinations
from transcribed.jobs.fate import PERMANENT_ERRNOS, Fate, fate_of
from transcribed.jobs.rules import Plan, Rules
from transcribed.jobs.versions import replaceable
from transcribed.logs import get_logger
from transcribed.loops.supervisor import Heartbeat, Loop
from transcribed.model.pipeline import Recognizer, StreamProgress, WordAligner, transcribe_stream
from transcribed.model.speakers import SpeakerSource
from transcribed.output.search_index import SearchIndex
from transcribed.output.transcript import Request, SourceInfo, Transcript
from transcribed.state.queue import Job, JobQueue, JobState
from transcribed.state.recheck import check_unchanged
from transcribed.state.workfolder import WorkFolder

log = get_logger(__name__)

PROGRESS_SECONDS = 2.0  # how often a running job's progress is written for `status`


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
    # Shows the worker alive: each loop turn and each model batch.
    heartbeat: Heartbeat = dataclasses.field(default_factory=Heartbeat)
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None
    # Several workers transcribe at once in the daemon: each brackets its job with
    # `job_scope` (the shared model's count of active jobs), and wakes the disposal thread
    # (`jobs.disposals`, the only one that disposes) when it has published a transcript.
    job_scope: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    wake_disposals: threading.Event | None = None
    search: SearchIndex | None = None  # full-text index of what is published (never fails a job)
    _progress_written: float = 0.0
    _written_next: float | None = None  # the last `next_at_least` written for `status`
    _last_job: int | None = None  # the job this worker last started (put back on a failure)
    _put_back_owed: int | None = None  # a put-back that could not be written yet

    @property
    def fate(self) -> Fate:
        """What becomes of a job that fails here, under the settings of now."""
        return fate_of(self)

    def step(self) -> bool:
        """Process the next due job; False when idle (or while the inbox is not the folder
        we opened: nothing can be read there)."""
        self._settle_put_back()  # before any other job: raises while it still cannot be written
        if self.work.problem() is not None:
            return False
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

    def loop(self, name: str, idle_seconds: float, stall_seconds: float) -> Loop:
        """How a transcription thread runs: after a failed turn (the job database full, a
        bug) the backoff from `retry_seconds`, then the job it cut short goes back."""
        return Loop(
            name,
            self.step,
            idle_seconds,
            self._loop_backoff,
            after_failure=self.put_back_job,
            heartbeat=self.heartbeat,
            stall_seconds=stall_seconds,
            cannot_record="worker.cannot_record_progress",
        )

    def _loop_backoff(self, failures: int) -> float:
        return backoff(failures, self.retry_seconds)  # read now: a reload may change it

    def put_back_job(self) -> None:
        """After a failed turn: the job it cut short goes back, its attempt refunded (the
        failure was in our own bookkeeping; the job's own failures meet their fate in
        `_process`). Only this worker's job: the others' are still being transcribed. Owed
        until it is written (a full disk): each later turn tries again before anything else."""
        if self._last_job is not None:
            self._put_back_owed, self._last_job = self._last_job, None
        self._settle_put_back()

    def _settle_put_back(self) -> None:
        if self._put_back_owed is not None:
            self.jobs.recover_running(refund=True, job_id=self._put_back_owed)
            self._put_back_owed = None

    # --- one job --------------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        if job.failure_reason is not None or job.attempts > self.max_attempts:
            self._quarantine_owed(job)  # its failure is decided: only the move is owed
            return
        name = display_name(job.relpath)
        log.info("job.started", job=job.id, file=name, attempt=job.attempts)
        started = time.monotonic()
        try:
            with self.job_scope():
                self._transcribe_and_publish(job, started)
        except _WaitingForSameContent as twin:
            log.info("job.waiting_for_same_content", job=job.id, same_as=str(twin))
            return
        except Exception as error:
            self.fate.attempt_failed(job, error)
            return
        if self.wake_disposals is not None:
            self.wake_disposals.set()  # the disposal thread disposes of its original
        log.info("job.done", job=job.id, file=name, seconds=round(time.monotonic() - started, 3))

    def _quarantine_owed(self, job: Job) -> None:
        """Move a recording whose failure was decided to the failed folder, unless it has
        changed since (I6: a writer that had paused may have finished it): then it is new
        content, transcribed as such."""
        try:
            check_unchanged(self.work.file(job.work_name), job, self.jobs)
        except FileNotFoundError:
            pass  # the move says what became of it (a move cut short, or a reason alone)
        except Exception as error:  # changed, still being written, unreadable now
            self.fate.attempt_failed(job, error)
            return
        self.fate.quarantine_owed(job)

    def _recheck(self, job: Job) -> None:
        """The work file still holds what was hashed (docs/design.md I6), or the job cannot
        go on."""
        try:
            check_unchanged(self.work.file(job.work_name), job, self.jobs)
        except FileNotFoundError:
            self._check_work_folder()
            raise RecordingVanished(self.work.vanished()) from None

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
            outputs = outbox.publish(transcript, plan.output_relpath, replaceable(self.jobs, job))
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
            on_progress=lambda progress: self._record_progress(job, progress),
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
                self._written_next = None
                self.jobs.record_progress(job.id, 0.0, self.decoder.expected_seconds, None)
            yield block

    def _record_progress(self, job: Job, progress: StreamProgress) -> None:
        """At most every PROGRESS_SECONDS (progress is for people, not worth an fsync a
        batch), but at once when the model takes a chunk and had none: until then `status`
        has nothing its estimate may move toward."""
        now = time.monotonic()
        first_sent = self._written_next is None and progress.next_at_least is not None
        if first_sent or now - self._progress_written >= PROGRESS_SECONDS:
            self._progress_written, self._written_next = now, progress.next_at_least
            self.jobs.record_progress(
                job.id, progress.done, self.decoder.expected_seconds, progress.next_at_least
            )

    def _beat_and_check_stop(self) -> bool:
        """Called between model batches: proof of progress, and the chance to stop."""
        self.heartbeat.beat()
        return self.stop.is_set()


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
