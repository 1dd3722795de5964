"""Paths in settings mean the same wherever a command runs from.

A path in the config file is read against the file's own folder (as `include` in many
configs is), so `doctor` in one folder and the daemon under systemd (working folder `/`) agree.
`~` is expanded everywhere, to the home of the user running the command. A path from the
environment must be absolute after that: there is no file to be relative to, and the working
folder of a service is not the one its variables were written in. Command-line options are
relative to the working folder, as in every command.
"""

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

# Settings that hold a path, and those that hold a path only when it looks like one (a model
# is a hub id like Qwen/Qwen3-ASR-1.7B-hf or a folder like ./models/qwen).
PATH_SETTINGS = frozenset(
    {
        "inbox",
        "outbox",
        "archive_dir",
        "failed_dir",
        "state_dir",
        "metrics_file",
        "vllm_api_key_file",
        "vllm_ca_file",
    }
)
WEB_PATH_SETTINGS = frozenset({"token_file", "tls_certfile", "tls_keyfile"})
FOLDER_OR_ID_SETTINGS = frozenset({"model", "aligner", "diarizer"})
PROGRAM_SETTINGS = frozenset({"on_done", "on_failed"})
_FOLDER_PREFIXES = ("./", "../", "~", "/")


def _absolute(path: Path) -> Path:
    expanded = path.expanduser()
    if not expanded.is_absolute():
        raise ValueError(
            f"{str(path)!r} is a relative path; give an absolute one (only paths in the "
            "config file may be relative: to the file's folder)"
        )
    return expanded


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


def looks_like_folder(value: str) -> bool:
    """A model setting that names a folder rather than a hub id."""
    return value.startswith(_FOLDER_PREFIXES) or value in (".", "..")


def model_folder(value: str) -> str:
    """A model setting with `~` expanded; a relative folder (from the environment) refused."""
    if not looks_like_folder(value):
        return value
    return str(_absolute(Path(value)))


def in_file(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config file's values with every path made absolute: `~` expanded, relative paths
    read against `folder` (the file's own)."""
    resolved = dict(values)
    for key, value in values.items():
        if isinstance(value, str) and _holds_path(key, value):
            resolved[key] = _against(value, folder)
        elif key in PROGRAM_SETTINGS and _is_program_path(value):
            resolved[key] = [_against(value[0], folder), *value[1:]]
        elif key == "web" and isinstance(value, dict):
            resolved[key] = {
                name: _against(item, folder)
                if name in WEB_PATH_SETTINGS and isinstance(item, str)
                else item
                for name, item in value.items()
            }
    return resolved


def _holds_path(key: str, value: str) -> bool:
    return key in PATH_SETTINGS or (key in FOLDER_OR_ID_SETTINGS and looks_like_folder(value))


def from_here(value: Any) -> Any:
    """A command-line option's path, read against the working folder; other values as given."""
    return Path(value).expanduser().absolute() if isinstance(value, Path) else value


def _is_program_path(value: Any) -> bool:
    """An argument list whose program is given with a folder ("bin/notify", not "notify",
    which is looked up in PATH)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], str) and "/" in value[0]


def _against(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)
