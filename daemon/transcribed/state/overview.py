"""Operator commands on the job database, safe while the daemon runs: `status` and `jobs`.

Every change goes through one SQLite transaction (the daemon's own locking applies), and a
retry never moves a file out of the failed folder before its copy is back in the inbox.
"""

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transcribed.errors import ConfigError
from transcribed.files.durable import (
    fsync_dir,
    link_or_copy_no_overwrite,
    make_folders,
    unique_name,
)
from transcribed.files.names import REASON_SUFFIX, display_name
from transcribed.servers import engine_status
from transcribed.settings import StateSettings
from transcribed.state.backlog import SIZE_SAMPLE, backlog
from transcribed.state.instance import Holder, holder
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


def status_line(counts: dict[str, int]) -> str:
    """One line for `systemctl status`: what is waiting, running, finished and failed."""
    waiting = counts.get("queued", 0) + counts.get("claiming", 0) + counts.get("duplicate", 0)
    finished = counts.get("done", 0) + counts.get("published", 0)
    return (
        f"{waiting} queued, {counts.get('running', 0)} running, {finished} done,"
        f" {counts.get('failed', 0)} failed"
    )


def service_status(jobs: JobQueue) -> str:
    """The STATUS= line for systemd: the counts, the running job's progress, the last result."""
    parts = [status_line(jobs.counts())]
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
    recordings, audio, busy = jobs.finished_since(now - _HOUR)
    queued = jobs.in_state(JobState.QUEUED)
    speed = _job_speed(jobs, now)
    running = [_running(job, now, speed) for job in jobs.in_state(JobState.RUNNING)]
    return {
        "summary": status_line(counts),
        "daemon": _daemon(daemon, now),
        "counts": counts,
        "running": running,
        "queued": [_brief(job) | {"waiting_for_retry": bool(job.error)} for job in queued],
        "waiting": [
            {"file": display_name(relpath), "reason": reason, "since": round(since)}
            for relpath, reason, since in jobs.waiting()
        ],
        "waiting_seen_in": "daemon",
        "backlog": _backlog(jobs, now, queued, running),
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
    since = holder.since
    return {
        "running": True,
        "pid": holder.pid,
        "since": round(since) if since else None,
        "up_seconds": round(now - since) if since else None,
    }


def _brief(job: Job) -> dict[str, Any]:
    return {"id": job.id, "file": display_name(job.relpath), "attempts": job.attempts}


def _job_speed(jobs: JobQueue, now: float) -> float | None:
    """Audio seconds one job gets through per second of its own time, lately: to move a
    running job's progress between the model batches that confirm it."""
    _recordings, audio, busy = jobs.finished_since(now - _HOUR)
    return audio / busy if busy > 0 and audio > 0 else None


_CAUTION = 0.8  # of a job's pace, for the progress shown between its confirmed batches


def _running(job: Job, now: float, speed: float | None = None) -> dict[str, Any]:
    """Progress is confirmed after each model batch (minutes of audio apart); in between it
    moves on at a little under the job's own pace (before its first batch: the last hour's),
    never past the length the header claims. A little under, so that a batch confirmed later
    than its pace predicted moves the figure forward, never back."""
    confirmed, expected = job.progress_seconds or 0.0, job.expected_seconds
    if confirmed and job.started and job.progress_at and job.progress_at - job.started >= 1:
        speed = confirmed / (job.progress_at - job.started)  # this job's own pace so far
    done = confirmed
    if speed and expected and job.progress_at is not None:
        estimate = confirmed + max(0.0, now - job.progress_at) * speed * _CAUTION
        done = max(confirmed, min(estimate, expected * 0.99))
    fraction = min(1.0, done / expected) if expected else None
    elapsed = now - job.started if job.started else None
    eta = None
    if fraction and elapsed is not None and fraction > 0:
        eta = round(elapsed * (1 - fraction) / fraction)
    since_progress = now - job.progress_at if job.progress_at is not None else None
    return _brief(job) | {
        "audio_done_seconds": round(done, 1),
        "audio_confirmed_seconds": round(confirmed, 1),
        "audio_expected_seconds": round(expected, 1) if expected else None,
        "percent": round(100 * fraction) if fraction is not None else None,
        "elapsed_seconds": round(elapsed) if elapsed is not None else None,
        "eta_seconds": eta,
        "stalled": since_progress is not None and since_progress > STALLED_SECONDS,
    }


def _backlog(
    jobs: JobQueue, now: float, queued: list[Job], running: list[dict[str, Any]]
) -> dict[str, Any]:
    """How much audio is waiting, and when it should be done at the last hour's pace."""
    finished = jobs.finished_jobs(now - _HOUR)
    known = {job.id: job for job in (*finished, *jobs.listing(JobState.DONE, SIZE_SAMPLE))}
    return backlog(queued, running, finished, known.values())


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
    return f"  daemon   running (PID {daemon['pid']}, since {since})"


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


def retry(jobs: JobQueue, inbox: Path, job_id: int) -> Path:
    """Put a failed job's original back into the inbox (under its old name) and forget the
    failure; the daemon picks it up as a new arrival. Returns where the file now is."""
    job = _get(jobs, job_id)
    if job.state != JobState.FAILED:
        raise OperatorError(f"job {job_id} is {job.state}; only failed jobs can be retried")
    quarantined = Path(job.disposed_to) if job.disposed_to else None
    if quarantined is None or not os.path.isfile(quarantined):
        raise OperatorError(
            f"the failed file of job {job_id} is no longer at "
            f"{display_name(job.disposed_to or '?')}; copy the recording into the inbox "
            f"yourself, then `transcribed jobs forget {job_id}`"
        )
    relpath = Path(os.fsdecode(job.relpath))
    folder = make_folders(inbox, relpath.parent)
    target = unique_name(folder, relpath.name)
    # The copy in the inbox is durable before anything is removed: at any crash point the
    # recording exists at least once.
    link_or_copy_no_overwrite(quarantined, target)
    fsync_dir(folder)
    jobs.forget(job_id)
    quarantined.unlink()
    quarantined.with_name(quarantined.name + REASON_SUFFIX).unlink(missing_ok=True)
    fsync_dir(quarantined.parent)
    return target


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
