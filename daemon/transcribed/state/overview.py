"""Operator commands on the job database, safe while the daemon runs: `status` and `jobs`.

Every change goes through one SQLite transaction (the daemon's own locking applies), and a
retry never moves a file out of the failed folder before its copy is back in the inbox.
"""

import contextlib
import errno
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed.errors import ConfigError
from transcribed.files.durable import fsync_dir, temp_name
from transcribed.files.folders import link_free_name, open_below
from transcribed.files.names import REASON_SUFFIX, display_name
from transcribed.servers import engine_status
from transcribed.settings import StateSettings
from transcribed.state.backlog import SIZE_SAMPLE, backlog
from transcribed.state.instance import SILENT_SECONDS, Holder, holder
from transcribed.state.queue import Job, JobQueue, JobState, is_damaged

_HOUR = 3600.0
_FAILED_SHOWN = 10
# A running job whose progress has not moved for this long is shown as stuck (the health
# check withholds systemd's watchdog pings at the same age).
STALLED_SECONDS = 600.0


class OperatorError(Exception):
    """A request that cannot be carried out, with what to do instead."""


def open_queue(settings: StateSettings) -> JobQueue:
    """The daemon's job database; never a new, empty one in the wrong place."""
    path = settings.database
    if not path.is_file():
        raise ConfigError(
            f"no job database at {path}: the daemon has not run with state_dir = "
            f"{settings.state_dir} (pass the daemon's config with --config, its state folder "
            "with --state-dir, or set TRANSCRIBED_STATE_DIR)"
        )
    try:
        return JobQueue(path)
    except sqlite3.Error as error:
        if not is_damaged(error):
            raise ConfigError(
                f"cannot open {path}: {error}; run this as the service's user "
                "(e.g. `sudo -u transcribed transcribed status`)"
            ) from None
        raise ConfigError(
            f"the job database {path} is damaged ({error}): stop the daemon and run "
            "`transcribed recover` to rebuild it from the disk"
        ) from None


# --- status ---------------------------------------------------------------------------------


def status_line(counts: dict[str, int], awaiting_disposal: int | None = None) -> str:
    """One line for `systemctl status`: what is waiting, running, finished and failed.
    `awaiting_disposal`: originals transcribed and waiting to be disposed of (published jobs
    and same-name duplicates of transcribed ones), when known; else the published ones."""
    published = counts.get("published", 0)
    disposing = published if awaiting_disposal is None else awaiting_disposal
    waiting = counts.get("queued", 0) + counts.get("claiming", 0) + counts.get("duplicate", 0)
    waiting -= disposing - published  # same-name duplicates only wait to be disposed of
    line = (
        f"{waiting} queued, {counts.get('running', 0)} running, {counts.get('done', 0)} done,"
        f" {counts.get('failed', 0)} failed"
    )
    if disposing:  # transcribed; the original not yet disposed of
        line += f", {disposing} waiting for disposal"
    return line


def service_status(jobs: JobQueue) -> str:
    """The STATUS= line for systemd: the counts, the running job's progress, the last result."""
    parts = [status_line(jobs.counts(), len(jobs.awaiting_disposal()))]
    speed = _job_speed(jobs, time.time())
    for job in jobs.in_state(JobState.RUNNING)[:1]:
        percent = _running(job, time.time(), speed)["percent"]
        parts.append(f"now {display_name(job.relpath)}" + (f" {percent}%" if percent else ""))
    if (last := jobs.last_finished()) is not None and last.finished is not None:
        when = time.strftime("%H:%M", time.localtime(last.finished))
        parts.append(f"last {display_name(last.relpath)} {last.state} {when}")
    return "; ".join(parts)


def daemon_status(
    settings: StateSettings,
    jobs: JobQueue,
    look_into_inbox: Callable[[], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """`status_report` for the daemon of `settings`: whether it runs (its lock), and with
    the vLLM engine how many of its servers are up. What `status` and the page both show.
    While no daemon runs, what waits in the inbox is what `look_into_inbox` finds there
    (the daemon's own record of it may be stale), when it is given."""
    running = holder(settings.state_dir)
    report = status_report(jobs, daemon=running)
    if running is None and look_into_inbox is not None:
        report["waiting"] = look_into_inbox()
        report["waiting_seen_in"] = "inbox"
    if (servers := engine_status.read(settings.state_dir)) is not None:
        report["engine_servers"] = servers
        report["summary"] += f"; {engine_status.summary(servers)}"
    return report


def status_report(
    jobs: JobQueue, now: float | None = None, daemon: Holder | None = None
) -> dict[str, Any]:
    """What the daemon is doing, as plain data (the --json form). `daemon` is the running
    daemon (instance.holder), None when none runs."""
    now = time.time() if now is None else now
    counts = jobs.counts()
    awaiting = jobs.awaiting_disposal()
    recordings, audio, busy = jobs.finished_since(now - _HOUR)
    queued = jobs.in_state(JobState.QUEUED)
    about_daemon = _daemon(daemon, now)
    # Progress is estimated between the model's answers only while a daemon works on it: a
    # job a killed daemon left running (requeued at the next start) stands where it was.
    working = about_daemon["running"] and about_daemon["silent_seconds"] is None
    speed = _job_speed(jobs, now) if working else None
    running = [_running(job, now, speed, working) for job in jobs.in_state(JobState.RUNNING)]
    return {
        "summary": status_line(counts, len(awaiting)),
        "daemon": about_daemon,
        "counts": counts,
        "running": running,
        "queued": [_brief(job) | {"waiting_for_retry": bool(job.error)} for job in queued],
        "waiting": [
            {"file": display_name(relpath), "reason": reason, "since": round(since)}
            for relpath, reason, since in jobs.waiting()
        ],
        "waiting_seen_in": "daemon",
        "backlog": _backlog(jobs, now, queued, running),
        "disposal": _disposal(awaiting),
        "failed": [_failed(job) for job in jobs.listing(JobState.FAILED, _FAILED_SHOWN)],
        "last_hour": {
            "recordings": recordings,
            "audio_seconds": round(audio, 1),
            "processing_seconds": round(busy, 1),
            "times_real_time": round(audio / busy, 1) if busy > 0 else None,
        },
    }


def _daemon(holder: Holder | None, now: float) -> dict[str, Any]:
    if holder is None:
        return {"running": False}
    since, alive_at = holder.since, holder.alive_at
    return {
        "running": True,
        "pid": holder.pid,
        "since": round(since) if since else None,
        "up_seconds": round(now - since) if since else None,
        # Not beaten for long: stopped (SIGSTOP, a debugger) or hung; status says so.
        "silent_seconds": round(now - alive_at)
        if holder.ready and alive_at and now - alive_at > SILENT_SECONDS
        else None,
    }


def _brief(job: Job) -> dict[str, Any]:
    return {"id": job.id, "file": display_name(job.relpath), "attempts": job.attempts}


def _job_speed(jobs: JobQueue, now: float) -> float | None:
    """Audio seconds one job gets through per second of its own time, lately: to move a
    running job's progress between the model batches that confirm it."""
    _recordings, audio, busy = jobs.finished_since(now - _HOUR)
    return audio / busy if busy > 0 and audio > 0 else None


def _running(
    job: Job, now: float, speed: float | None = None, working: bool = True
) -> dict[str, Any]:
    """Progress is confirmed when the model answers a chunk (up to minutes of audio apart);
    in between it moves on at the job's own pace (before its first answer: the last
    hour's), toward where the next answer will reach at least, and slows as it nears it,
    never passing it: a confirmation later than the pace predicted moves the figure forward,
    never back."""
    confirmed, expected = job.progress_seconds or 0.0, job.expected_seconds
    if not working:
        speed = None
    elif confirmed and job.started and job.progress_at and job.progress_at - job.started >= 1:
        speed = confirmed / (job.progress_at - job.started)  # this job's own pace so far
    done = confirmed
    if speed and job.progress_next_seconds is not None and job.progress_at is not None:
        done = _toward(confirmed, job.progress_next_seconds, (now - job.progress_at) * speed)
        if expected:  # a header that claims less than the audio holds
            done = max(confirmed, min(done, expected * 0.99))
    fraction = min(1.0, done / expected) if expected else None
    elapsed = now - job.started if job.started else None
    eta = None
    if working and fraction and elapsed is not None and fraction > 0:
        eta = round(elapsed * (1 - fraction) / fraction)
    since_progress = now - job.progress_at if job.progress_at is not None else None
    return _brief(job) | {
        # An estimate is shown rounded down: never the next answer's figure before it comes.
        "audio_done_seconds": round(done, 1) if done == confirmed else math.floor(done * 10) / 10,
        "audio_confirmed_seconds": round(confirmed, 1),
        "audio_expected_seconds": round(expected, 1) if expected else None,
        "percent": round(100 * fraction) if fraction is not None else None,
        "elapsed_seconds": round(elapsed) if elapsed is not None else None,
        "eta_seconds": eta,
        "stalled": since_progress is not None and since_progress > STALLED_SECONDS,
    }


def _toward(confirmed: float, bound: float, paced: float) -> float:
    """`confirmed` moved on by `paced` seconds, but bent so that it approaches `bound`
    without reaching it: at the pace while far, then ever slower (half the gap when the pace
    says all of it; an answer twice as late as the pace predicted still sees it move)."""
    gap = bound - confirmed
    if gap <= 0 or paced <= 0:
        return confirmed
    return confirmed + gap * paced / (paced + gap)


def _backlog(
    jobs: JobQueue, now: float, queued: list[Job], running: list[dict[str, Any]]
) -> dict[str, Any]:
    """How much audio is waiting, and when it should be done at the last hour's pace."""
    finished = jobs.finished_jobs(now - _HOUR)
    known = {job.id: job for job in (*finished, *jobs.listing(JobState.DONE, SIZE_SAMPLE))}
    return backlog(queued, running, finished, known.values())


_DISPOSED = {"move": "archived", "delete": "deleted", "shred": "shredded"}


def _disposal(published: list[Job]) -> dict[str, Any]:
    """Originals whose transcript is published and which wait to be disposed of: how many, by
    the policy each transcript records, and the last error when a disposal failed."""
    by_policy: dict[str, int] = {}
    for job in published:
        policy = job.disposal or "move"
        by_policy[policy] = by_policy.get(policy, 0) + 1
    failing = [job for job in published if job.disposal_failures and job.error]
    last = max(failing, key=lambda job: job.updated, default=None)
    return {
        "waiting": len(published),
        "by_policy": by_policy,
        "last_error": last.error if last is not None else None,
    }


def _failed(job: Job) -> dict[str, Any]:
    return _brief(job) | {
        "reason": job.error,
        "kind": job.failure_kind,
        "moved_to": display_name(job.disposed_to) if job.disposed_to else None,
    }


def render_status(report: dict[str, Any]) -> str:
    """The report for a person."""
    lines = [f"transcribed: {report['summary']}", _render_daemon(report["daemon"])]
    for job in report["running"]:
        lines.append(f"  running  #{job['id']} {job['file']}: {_progress(job)}")
    queued = report["queued"]
    if queued:
        names = ", ".join(job["file"] for job in queued[:5]) + (", …" if len(queued) > 5 else "")
        retrying = sum(job["waiting_for_retry"] for job in queued)
        note = f" ({retrying} waiting to retry after an error)" if retrying else ""
        lines.append(f"  queued   {len(queued)}: {names}{note}")
    lines += _render_disposal(report["disposal"])
    lines += _render_backlog(report["backlog"])
    lines += _render_waiting(report["waiting"], report.get("waiting_seen_in") == "inbox")
    for job in report["failed"]:
        lines.append(f"  failed   #{job['id']} {job['file']}: {job['reason']}")
        if job["moved_to"]:
            lines.append(f"           now at {job['moved_to']}")
    if report["failed"]:
        lines.append("           retry one with `transcribed jobs retry ID`")
    hour = report["last_hour"]
    if hour["recordings"]:
        speed = f", {hour['times_real_time']}x real time" if hour["times_real_time"] else ""
        lines.append(
            f"  last hour: {_count(hour['recordings'], 'recording')}, "
            f"{_clock(hour['audio_seconds'])} of audio in "
            f"{_clock(hour['processing_seconds'])}{speed}"
        )
    else:
        lines.append("  last hour: nothing finished")
    return "\n".join(lines)


def _render_disposal(disposal: dict[str, Any]) -> list[str]:
    """ "3 waiting to be archived (last error: …)": transcribed, the original still here."""
    if not disposal["waiting"]:
        return []
    kinds = "/".join(_DISPOSED.get(policy, policy) for policy in sorted(disposal["by_policy"]))
    error = f" (last error: {disposal['last_error']})" if disposal["last_error"] else ""
    return [f"  disposal {disposal['waiting']} waiting to be {kinds}{error}"]


def _render_backlog(backlog: dict[str, Any]) -> list[str]:
    if (eta := backlog["eta_seconds"]) is None:
        return []
    audio = backlog["audio_seconds"]
    of = f" ({_clock(audio)} of audio)" if audio else ""
    return [f"  backlog  about {_clock(eta)} to clear{of}"]


_WAITING_SHOWN = 20


def _render_waiting(waiting: list[dict[str, Any]], seen_in_inbox: bool) -> list[str]:
    """Each file with its reason; looked at in the inbox itself (no daemon runs), the time
    is when the file last changed, else since when the daemon has not taken it."""
    lines = []
    for item in waiting[:_WAITING_SHOWN]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item["since"]))
        note = f"changed {when}" if seen_in_inbox else f"not taken since {when}"
        lines.append(f"  waiting  {item['file']}: {item['reason']} ({note})")
    if len(waiting) > _WAITING_SHOWN:
        lines.append(f"           … and {len(waiting) - _WAITING_SHOWN} more (--json lists all)")
    return lines


def _render_daemon(daemon: dict[str, Any]) -> str:
    if not daemon["running"]:
        return "  daemon   not running (nothing is being transcribed; start it to go on)"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(daemon["since"] or 0))
    line = f"  daemon   running (PID {daemon['pid']}, since {since})"
    if daemon.get("silent_seconds"):
        line += (
            f", but silent for {_clock(daemon['silent_seconds'])}: stopped or hung "
            "(`systemctl status transcribed`; `kill -CONT` if it was stopped)"
        )
    return line


def _progress(job: dict[str, Any]) -> str:
    if job["percent"] is not None:
        text = (
            f"{job['percent']}% ({_clock(job['audio_done_seconds'])} of "
            f"{_clock(job['audio_expected_seconds'])} audio)"
        )
        if job["eta_seconds"] is not None:
            text += f", about {_clock(job['eta_seconds'])} left"
    elif job["audio_done_seconds"]:
        text = f"{_clock(job['audio_done_seconds'])} of audio done"
    else:
        text = f"started {_clock(job['elapsed_seconds'])} ago"
    if job["stalled"]:
        text += f"; no progress for over {_clock(STALLED_SECONDS)} (stuck?)"
    return text


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --- jobs -----------------------------------------------------------------------------------


def job_rows(jobs: JobQueue, state: JobState | None, limit: int) -> list[dict[str, Any]]:
    return [
        _brief(job)
        | {
            "state": str(job.state),
            "language": job.language,
            "error": job.error,
            "audio_seconds": job.audio_seconds,
            "outputs": list(job.outputs),
            "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated)),
        }
        for job in jobs.listing(state, limit)
    ]


def render_jobs(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "no jobs"
    lines = [f"{'ID':>6}  {'STATE':<9}  {'UPDATED':<19}  {'LANG':<5} FILE"]
    for row in rows:
        detail = f"  ({row['error']})" if row["error"] else ""
        language = row["language"] or "-"
        lines.append(
            f"{row['id']:>6}  {row['state']:<9}  {row['updated']:<19}  {language:<5} "
            f"{row['file']}{detail}"
        )
    return "\n".join(lines)


# A retry that has held its job this long was cut short (a crash): another may take over.
RETRY_TAKEOVER_SECONDS = 600.0


def retry(jobs: JobQueue, inbox: Path, job_id: int) -> Path:
    """Put a failed job's original back into the inbox (under its old name, or a free variant)
    and forget the failure; the daemon picks it up as a new arrival. Returns where the file now
    is. The job is claimed in the database first, so two retries never both put it back; the
    copy enters the inbox through folder descriptors that never follow a symlink (anyone who
    can write to the share could plant one); nothing is forgotten or removed before the copy
    is durable in the inbox."""
    job = _get_failed(jobs, job_id)
    if jobs.begin_retry(job_id, RETRY_TAKEOVER_SECONDS) is None:
        raise OperatorError(
            f"job {job_id} is being put back into the inbox by another retry right now; "
            "see `transcribed jobs list` in a moment"
        )
    try:
        placed = _copy_back(job, inbox)
    except BaseException:
        jobs.abandon_retry(job_id)
        raise
    jobs.finish_retry(job_id, os.fsencode(placed))
    _remove_failed_copy(Path(job.disposed_to or ""))
    return inbox / placed


def _get_failed(jobs: JobQueue, job_id: int) -> Job:
    try:
        job = jobs.get(job_id)
    except KeyError:
        raise OperatorError(_not_found(jobs, job_id)) from None
    if job.state != JobState.FAILED:
        raise OperatorError(f"job {job_id} is {job.state}: only failed jobs can be retried")
    if not job.disposed_to or not os.path.isfile(job.disposed_to):
        raise OperatorError(
            f"the failed file of job {job_id} is no longer at "
            f"{display_name(job.disposed_to or '?')}; copy the recording into the inbox "
            f"yourself, then `transcribed jobs forget {job_id}`"
        )
    return job


def _not_found(jobs: JobQueue, job_id: int) -> str:
    """No such job: say where a job that was retried went."""
    went = jobs.retried_as(job_id)
    if went is None:
        return f"no job {job_id} (see `transcribed jobs list`)"
    relpath, later = went
    name = display_name(relpath)
    if later is None:
        return f"job {job_id} was put back into the inbox as {name}; it has not been taken yet"
    return (
        f"job {job_id} was put back into the inbox as {name}: it is job {later.id} now "
        f"({later.state})"
    )


def _copy_back(job: Job, inbox: Path) -> str:
    """A durable copy of the failed original in its inbox folder; its inbox-relative path."""
    relpath = PurePosixPath(os.fsdecode(job.relpath))
    try:
        folder_fd = open_below(inbox, relpath.parent, create=True)
    except OSError as error:
        raise OperatorError(_unsafe_folder(job.id, relpath.parent, error)) from None
    try:
        temp = temp_name(relpath.name)
        try:
            _copy_into(Path(job.disposed_to or ""), folder_fd, temp)
            placed = link_free_name(folder_fd, temp, relpath.name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    return str(relpath.parent / placed) if relpath.parent.parts else placed


def _unsafe_folder(job_id: int, folder: PurePosixPath, error: OSError) -> str:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return (
            f"cannot put job {job_id} back: {display_name(str(folder))} in the inbox is a "
            "symbolic link or not a folder, and is never followed; move it away and retry"
        )
    return f"cannot put job {job_id} back into {display_name(str(folder))}: {error.strerror}"


def _copy_into(source: Path, folder_fd: int, name: str) -> None:
    """Copy `source` (never through a symlink) to a new file `name` in `folder_fd`, fsynced."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, 0o640, dir_fd=folder_fd)
        try:
            while block := os.read(src, 1 << 20):
                view = memoryview(block)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _remove_failed_copy(quarantined: Path) -> None:
    quarantined.unlink(missing_ok=True)
    quarantined.with_name(quarantined.name + REASON_SUFFIX).unlink(missing_ok=True)
    fsync_dir(quarantined.parent)


def forget(jobs: JobQueue, job_id: int) -> Job:
    """Drop a done or failed job's row; its files stay where they are."""
    job = _get(jobs, job_id)
    if job.state not in (JobState.DONE, JobState.FAILED):
        raise OperatorError(
            f"job {job_id} is {job.state}; only done or failed jobs can be forgotten "
            "(see `transcribed status` for when it finishes)"
        )
    try:
        return jobs.forget(job_id)
    except ValueError as error:
        raise OperatorError(str(error)) from None


def _get(jobs: JobQueue, job_id: int) -> Job:
    try:
        return jobs.get(job_id)
    except KeyError:
        raise OperatorError(f"no job {job_id} (see `transcribed jobs list`)") from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
