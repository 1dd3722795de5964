"""The hook programs (`on_done`, `on_failed`) must be there and runnable before the first
recording is touched: a hook that cannot start fails quietly, once per recording, for months."""

import os
import shutil
import stat
from pathlib import Path
from typing import Protocol

from transcribed.errors import ConfigError
from transcribed.settings.access import user_name


class _Hooks(Protocol):
    @property
    def on_done(self) -> list[str] | None: ...

    @property
    def on_failed(self) -> list[str] | None: ...


def check_programs(settings: _Hooks) -> None:
    """Refuse hook programs this user cannot run: missing, not a file, not executable, or (a
    bare name) not found in PATH. ConfigError, one line per problem."""
    problems = [
        f"{name}: {problem}"
        for name, command in (("on_done", settings.on_done), ("on_failed", settings.on_failed))
        if command and (problem := program_problem(command[0]))
    ]
    if len(problems) == 1:
        raise ConfigError(f"unusable hook: {problems[0]}")
    if problems:
        raise ConfigError("\n".join(["unusable hooks:", *(f"  {p}" for p in problems)]))


def program_problem(program: str) -> str | None:
    """Why this user cannot run `program`, or None."""
    me = user_name(os.geteuid())
    if "/" not in program:
        if shutil.which(program) is None:
            return (
                f"{program!r} is not found in PATH; give its full path, e.g. "
                f"/usr/local/bin/{program}"
            )
        return None
    path = Path(program)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{program} does not exist; give the full path of the program to run"
    except OSError as error:
        return f"{program} cannot be looked at by user {me}: {error.strerror}"
    if not stat.S_ISREG(mode):
        return f"{program} is not a program (a folder or a special file)"
    if not os.access(path, os.X_OK):
        return f"{program} is not executable by user {me}: `chmod +x {program}`"
    return None
