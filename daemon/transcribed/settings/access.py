"""May this user use the state folder? The most common first-hour mistake is running
`transcribed status` as yourself while the daemon's files belong to its service user: that
gets one line naming the user to run as, not a PermissionError from deep inside SQLite."""

import os
import pwd
import shlex
import stat
from collections.abc import Sequence
from pathlib import Path

from transcribed.errors import ConfigError

# The job database and the files SQLite keeps beside it (WAL): readers write these too.
_DATABASE_FILES = ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm")


class StateAccessDenied(ConfigError):
    """This user may not read or write the state folder; the message names its owner."""

    def __init__(self, problem: str, owner: str | None) -> None:
        self.problem = problem
        self.owner = owner  # None: the folder is this user's own, its mode is the trouble
        super().__init__(self.with_command(None))

    def with_command(self, argv: Sequence[str] | None) -> str:
        """The refusal, with the exact command to run instead (`argv`: this one's arguments)."""
        if self.owner is None:
            return self.problem
        command = "transcribed " + shlex.join(argv) if argv else "the command"
        return f"{self.problem}; run it as that user: sudo -u {self.owner} {command}"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no name (a container's, a deleted user's)
        return str(uid)


def check_state_access(state_dir: Path) -> None:
    """Refuse, naming the owner, when this user cannot read and write `state_dir` and the job
    database in it (SQLite's readers write its -shm file too). A folder that does not exist
    is left to the callers, which say so in their own words."""
    if (problem := state_access_problem(state_dir)) is not None:
        raise problem


def state_access_problem(state_dir: Path) -> StateAccessDenied | None:
    """What check_state_access raises, or None."""
    me = user_name(os.geteuid())
    try:
        info = os.stat(state_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        return _denied(_nearest_existing(state_dir), state_dir, me)
    if not stat.S_ISDIR(info.st_mode):  # not a question of access: the folder check says so
        return None
    if not _may(state_dir, os.R_OK | os.W_OK | os.X_OK):
        return _denied(state_dir, state_dir, me, info)
    for name in _DATABASE_FILES:
        path = state_dir / name
        if path.exists() and not _may(path, os.R_OK | os.W_OK):
            return _denied(path, state_dir, me)
    return None


def _may(path: Path, mode: int) -> bool:
    effective = os.access in os.supports_effective_ids  # as open() will be judged
    return os.access(path, mode, effective_ids=effective)


def _nearest_existing(path: Path) -> Path:
    """The deepest folder above `path` this user can look into (its owner is the one to ask)."""
    for parent in path.parents:
        try:
            os.stat(parent)
        except OSError:
            continue
        return parent
    return Path("/")


def _denied(
    culprit: Path, state_dir: Path, me: str, info: os.stat_result | None = None
) -> StateAccessDenied:
    info = info or os.stat(culprit)
    owner = user_name(info.st_uid)
    if info.st_uid == os.geteuid():
        mode = f"{info.st_mode & 0o7777:04o}"
        return StateAccessDenied(
            f"the state folder {state_dir}: {culprit} is yours ({me}) but its permissions "
            f"({mode}) shut you out: `chmod u+rwX {culprit}`, or point state_dir elsewhere",
            None,
        )
    what = f"the state folder {state_dir}" if culprit == state_dir else str(culprit)
    return StateAccessDenied(
        f"permission denied: {what} belongs to user {owner}, and this command runs as {me}, "
        "who may not read and write the job database",
        owner,
    )
