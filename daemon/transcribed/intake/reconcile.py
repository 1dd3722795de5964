"""The disk is the truth, the database its index (docs/design.md I5): compare the two, and
mend the index.

Run at start and on every rescan. A file in the work folder that no live job owns (the
database was lost, or restored from an older copy) is claimed again where it lies: its name
carries its inbox path, and its content hash finds what was already done with it. A live job
whose work file is gone, with no disposal under way, lost its recording (the inbox was
replaced, someone cleaned the folder by hand): it is made due now, and the worker or the
disposal thread that owns it fails it with a reason. Never `done`, never "disposed".

The work folder is listed before the database is read: a file that a claim, a disposal or a
quarantine moves meanwhile is then seen in a consistent state or looked at again.
"""

import os
import stat
from dataclasses import dataclass, field

from transcribed.files.content import hash_descriptor
from transcribed.files.names import display_name
from transcribed.intake.claim import LARGE_FILE_BYTES, LargeFileHasher, finish_claim_logged
from transcribed.logs import get_logger
from transcribed.state.queue import Job, JobQueue, JobState
from transcribed.state.workfolder import WorkFolder, relpath_of

log = get_logger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Jobs a worker is not handling: a running job's missing file is its worker's to report.
_RECONCILED = (JobState.QUEUED, JobState.PUBLISHED, JobState.DUPLICATE)


@dataclass
class Reconciler:
    jobs: JobQueue
    work: WorkFolder
    hasher: LargeFileHasher | None = None
    _skipped: set[str] = field(default_factory=set)  # strange entries, reported once
    _reported: set[int] = field(default_factory=set)  # jobs found without their file

    def run(self) -> tuple[int, int]:
        """Mend the index; return (work files claimed again, jobs whose file vanished)."""
        present = set(self.work.names())
        vanished = sum(self._vanished(job) for job in self._missing(present))
        adopted = sum(self._adopt(name) for name in sorted(present) if self._orphan(name))
        return adopted, vanished

    def _missing(self, present: set[str]) -> list[Job]:
        return [
            job
            for job in self.jobs.in_work_folder()
            if job.state in _RECONCILED
            and job.work_name not in present
            and job.disposal_started is None
            and not os.path.lexists(self.work.file(job.work_name))  # claimed since the listing
        ]

    def _vanished(self, job: Job) -> bool:
        self.jobs.make_due(job.id)
        if job.id in self._reported:
            return False
        self._reported.add(job.id)
        log.error(
            "reconcile.vanished",
            job=job.id,
            file=display_name(job.relpath),
            state=str(job.state),
            hint="the job fails with a reason (see `transcribed status`): " + self.work.vanished(),
        )
        return True

    def _orphan(self, name: str) -> bool:
        return not self.jobs.holds_work_name(name) and os.path.lexists(self.work.file(name))

    def _adopt(self, name: str) -> bool:
        """Claim a work file that no live job owns, where it lies."""
        path = self.work.file(name)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as error:
            return self._skip(name, f"cannot be opened: {error}")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                return self._skip(name, "not a single-link regular file")
            relpath = relpath_of(name)
            job_id = self.jobs.adopt(os.fsencode(relpath), name)
            log.error(
                "reconcile.adopted",
                job=job_id,
                file=display_name(relpath),
                hint="a claimed recording had no job (database lost or restored?): queued "
                "again; its content hash finds what was already done with it",
            )
            if self.hasher is not None and info.st_size >= LARGE_FILE_BYTES:
                self.hasher.submit(job_id, relpath)
            else:
                finish_claim_logged(self.jobs, job_id, relpath, hash_descriptor(fd))
            return True
        finally:
            os.close(fd)

    def _skip(self, name: str, reason: str) -> bool:
        if name not in self._skipped:
            self._skipped.add(name)
            log.error("reconcile.strange_entry", entry=display_name(name), reason=reason)
        return False
