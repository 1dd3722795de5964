"""`transcribed doctor`: is this machine ready to run the daemon? One line per check.

Each check says ok, warn or fail, and what to do. Checks read; the only thing they may
create is the state folder (as the daemon would). Nothing is loaded onto the GPU or sent
anywhere.
"""

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from transcribed.commands.findings import Finding as Finding  # its callers' name for it
from transcribed.commands.findings import Level
from transcribed.disposal.assurance import assess
from transcribed.engines import engine_kind
from transcribed.errors import ConfigError, ModelError
from transcribed.files.filesystems import NETWORK, filesystem_type
from transcribed.host.isolation import (
    ISOLATION_HINT,
    SERVERS_ONLY_HINT,
    isolation_problem,
    servers_only_problem,
)
from transcribed.settings import Settings, check_folders, check_programs
from transcribed.state.instance import holder
from transcribed.state.queue import IN_WORK_FOLDER, JobState
from transcribed.state.workfolder import WORK_FOLDER_NAME

_LIVE_STATES = tuple(str(state) for state in (JobState.CLAIMING, *IN_WORK_FOLDER))
_LIVE_MARKS = ", ".join("?" for _ in _LIVE_STATES)
_LOW_DISK_BYTES = 1 << 30
_INOTIFY = Path("/proc/sys/fs/inotify")


def diagnose(settings: Settings) -> list[Finding]:
    checks: list[Callable[[Settings], Iterator[Finding]]] = [
        _folders,
        _hooks,
        _filesystems,
        _state_database,
        _work_folder,
        _disk_space,
        _inotify,
        _model,
        _gpu,
        _engine,
        _network,
        _disposal,
    ]
    return [finding for check in checks for finding in check(settings)]


def _folders(settings: Settings) -> Iterator[Finding]:
    try:
        check_folders(settings)
    except Exception as error:  # ConfigError: one line per unusable folder
        yield Finding("folders", "fail", str(error), "create the folders or fix the config")
        return
    yield Finding("folders", "ok", "inbox, outbox, failed and archive folders are writable")


def _hooks(settings: Settings) -> Iterator[Finding]:
    """The programs `run` refuses to start without (as this user: run doctor as the
    service's)."""
    if settings.on_done is None and settings.on_failed is None:
        return
    try:
        check_programs(settings)
    except ConfigError as error:
        yield Finding("hooks", "fail", str(error), "fix on_done / on_failed in the config")
        return
    yield Finding("hooks", "ok", "the on_done / on_failed programs exist and can be run")


def _filesystems(settings: Settings) -> Iterator[Finding]:
    try:
        inbox = os.stat(settings.inbox).st_dev
        others = {
            name: os.stat(folder).st_dev
            for name, folder in (("archive_dir", settings.archive_dir),)
            if folder is not None and settings.disposal == "move"
        }
    except OSError:
        return  # reported by the folder check
    apart = [name for name, device in others.items() if device != inbox]
    if apart:
        yield Finding(
            "filesystems",
            "warn",
            f"{', '.join(apart)} is on another filesystem than the inbox: each move copies "
            "the recording (safe, but slower and briefly uses twice the space)",
            "put archive_dir on the inbox's filesystem to make moves instant renames",
        )
    else:
        yield Finding("filesystems", "ok", "moves out of the inbox are renames (one filesystem)")


def _state_database(settings: Settings) -> Iterator[Finding]:
    try:
        kind = filesystem_type(os.stat(settings.state_dir).st_dev)
    except OSError:
        return
    if kind in NETWORK:
        yield Finding(
            "state",
            "fail",
            f"state_dir {settings.state_dir} is on a network filesystem ({kind}); SQLite's "
            "locking and durability are not reliable there",
            "set state_dir to a local folder (the systemd unit uses /var/lib/transcribed)",
        )
        return
    if not settings.database.exists():
        yield Finding(
            "state", "ok", f"no job database yet; it will be created in {settings.state_dir}"
        )
        return
    try:
        with sqlite3.connect(f"file:{settings.database}?mode=ro", uri=True) as db:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as error:
        yield Finding(
            "state",
            "fail",
            f"cannot read {settings.database}: {error}",
            "run as the service's user; check the file's owner",
        )
        return
    if result != "ok":
        yield Finding(
            "state",
            "fail",
            f"{settings.database} is damaged: {result}",
            "stop the daemon and restore the database from a backup",
        )
    else:
        yield Finding("state", "ok", f"job database {settings.database} passes its check")


def _work_folder(settings: Settings) -> Iterator[Finding]:
    """The disk against the job database (I5), read-only: recordings in the work folder that
    no job owns, and jobs whose recording is not there. The daemon mends both at its next
    rescan; this says what it will find."""
    work = settings.inbox / WORK_FOLDER_NAME
    if not work.is_dir() or not settings.database.is_file():
        return
    try:
        with sqlite3.connect(f"file:{settings.database}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT work_name, state, disposal_started FROM jobs"  # noqa: S608 ("?" only)
                f" WHERE state IN ({_LIVE_MARKS})",
                _LIVE_STATES,
            ).fetchall()
    except sqlite3.Error:
        return  # reported by the state check
    present = {name for name in os.listdir(work) if not name.startswith(".")}
    owned = {name for name, _state, _started in rows}
    strays = present - owned
    missing = [
        name
        for name, state, started in rows
        if name not in present and started is None and state != JobState.CLAIMING
    ]
    running = holder(settings.state_dir)
    if not strays and not missing:
        daemon = f"a daemon is running (PID {running.pid})" if running else "no daemon runs"
        yield Finding("work", "ok", f"work folder and job database agree; {daemon}")
        return
    yield Finding(
        "work",
        "warn" if running else "fail",
        f"{_count(len(strays), 'recording')} in {work} with no job, "
        f"{_count(len(missing), 'job')} whose recording is not there",
        "the daemon claims the strays again and fails the missing jobs with a reason at its "
        "next rescan; see `transcribed status` for the reasons",
    )


def _disk_space(settings: Settings) -> Iterator[Finding]:
    for name, folder in (("outbox", settings.outbox), ("state_dir", settings.state_dir)):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < _LOW_DISK_BYTES:
            yield Finding(
                "disk",
                "warn",
                f"{name} {folder} has only {free >> 20} MiB free",
                "free some space: transcripts wait (safely) while the disk is full",
            )
            return
    yield Finding("disk", "ok", "at least 1 GiB free for transcripts and the job database")


def _inotify(settings: Settings) -> Iterator[Finding]:
    if settings.watch_mode == "poll":
        yield Finding("inotify", "ok", "poll mode: inotify not used")
        return
    try:
        watches = int((_INOTIFY / "max_user_watches").read_text())
        instances = int((_INOTIFY / "max_user_instances").read_text())
    except (OSError, ValueError):
        yield Finding(
            "inotify",
            "warn",
            "cannot read the inotify limits",
            "periodic rescans still find every file",
        )
        return
    folders = 1 + sum(len(subfolders) for _, subfolders, _ in os.walk(settings.inbox))
    if watches < 2 * folders or instances < 8:
        yield Finding(
            "inotify",
            "warn",
            f"inotify allows {watches} watches / {instances} instances for "
            f"{_count(folders, 'inbox folder')}",
            "raise fs.inotify.max_user_watches / max_user_instances with sysctl; "
            "rescans cover missed events meanwhile",
        )
    else:
        yield Finding(
            "inotify", "ok", f"{watches} watches allowed for {_count(folders, 'inbox folder')}"
        )


def _model(settings: Settings) -> Iterator[Finding]:
    """The same checks `run` makes before it loads the weights."""
    from transcribed.model.model_files import checked_folder, load_processor

    models = (("model", settings.model), ("aligner", settings.aligner))
    for name, model in (*models, ("diarizer", settings.diarizer)):
        if model is None or (name == "model" and not engine_kind(settings).model_on_disk):
            continue  # the servers hold the model
        try:
            if name == "diarizer":
                from transcribed.model.model_files import diarizer_folder

                folder = diarizer_folder(model, allow_download=False)
            else:
                folder = checked_folder(
                    model, allow_download=False, recognizer=name == "model", setting=name
                )
                load_processor(folder)
        except ModelError as error:
            yield Finding(name, "fail", str(error), "fetch it once while online (docs/models.md)")
            continue
        yield Finding(name, "ok", f"{model} is complete on disk at {folder}")


def _gpu(settings: Settings) -> Iterator[Finding]:
    import torch

    from transcribed.model.device import why_no_cuda

    if settings.device == "cpu":
        yield Finding("gpu", "ok", "device = cpu: the GPU is not used (slow for real models)")
        return
    local = "gpu" in engine_kind(settings).checks
    if not local and settings.aligner is None and settings.diarizer is None:
        yield Finding(
            "gpu", "ok", f'engine = "{settings.engine}": the model runs on the servers\' GPUs'
        )
        return
    if (reason := why_no_cuda()) is not None:  # the words `run` refuses device = "cuda" with
        problem, remedy = reason
        if settings.device.startswith("cuda"):
            yield Finding("gpu", "fail", problem, remedy)
            return
        on_purpose = '; or set device = "cpu" to run on the CPU on purpose (no more warning)'
        fallback = ": device = 'auto' falls back to the CPU (far slower)"
        yield Finding("gpu", "warn", problem + fallback, remedy + on_purpose)
        return
    index = int(settings.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        yield Finding(
            "gpu",
            "fail",
            f"device = {settings.device} but this machine has only "
            f"{_count(torch.cuda.device_count(), 'GPU')}",
            "pick an existing GPU",
        )
        return
    properties = torch.cuda.get_device_properties(index)
    yield Finding(
        "gpu",
        "ok",
        f"cuda:{index} {properties.name}, {properties.total_memory >> 30} GiB, "
        f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}",
    )


def _engine(settings: Settings) -> Iterator[Finding]:
    if "servers" in engine_kind(settings).checks:
        from transcribed.commands.vllm_check import check_engine

        yield from check_engine(settings)


def _network(settings: Settings) -> Iterator[Finding]:
    if engine_kind(settings).network == "servers_only":
        yield from _servers_only(settings)
        return
    problem = isolation_problem()
    if problem is None:
        yield Finding("network", "ok", "no network interface is reachable (isolated)")
        return
    level: Level = "fail" if settings.require_offline else "warn"
    yield Finding(
        "network",
        level,
        problem + " (the daemon itself never connects; isolation makes sure nothing can)",
        ISOLATION_HINT,
    )


def _servers_only(settings: Settings) -> Iterator[Finding]:
    problem = servers_only_problem()
    if problem is None:
        yield Finding("network", "ok", "only the engine servers are reachable (others blocked)")
        return
    level: Level = "fail" if settings.require_offline else "warn"
    yield Finding("network", level, problem, SERVERS_ONLY_HINT)


def _disposal(settings: Settings) -> Iterator[Finding]:
    if settings.disposal != "shred":
        yield Finding("disposal", "ok", f"disposal = {settings.disposal}")
        return
    assurance = assess("shred", settings.inbox)
    if assurance.assurance == "overwritten":
        yield Finding("disposal", "ok", "shred overwrites in place on this disk")
    else:
        yield Finding(
            "disposal",
            "warn",
            f"shredding on {assurance.filesystem or 'this filesystem'} is "
            f"{assurance.assurance}: old copies may survive",
            "keep the inbox on an encrypted volume (docs/how-it-works.md, Disposal policies)",
        )


def render(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{finding.level:<4}  {finding.check:<11} {finding.message}")
        if finding.hint and finding.level != "ok":
            lines.append(f"{'':<17} -> {finding.hint}")
    failed = sum(finding.level == "fail" for finding in findings)
    warned = sum(finding.level == "warn" for finding in findings)
    lines.append(f"{failed} failed, {_count(warned, 'warning')}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
