"""Settings: a TOML file and TRANSCRIBED_* environment variables (env wins), validated at start."""

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from transcribed.errors import ConfigError
from transcribed.rules import Disposal, FolderRule, Format

DEFAULT_CONFIG_PATH = Path("/etc/transcribed/config.toml")
DEFAULT_MODEL = "Qwen/Qwen3-ASR-1.7B-hf"


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere follow the XDG convention.
    if systemd_state := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd_state.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "transcribed"


class ModelSettings(BaseSettings):
    """What turning audio into text needs; shared by `run` and one-shot `transcribe`."""

    model_config = SettingsConfigDict(env_prefix="TRANSCRIBED_", extra="ignore", frozen=True)

    model: str = Field(
        default=DEFAULT_MODEL, description="Hugging Face repo id or local folder of a -hf model."
    )
    allow_download: bool = Field(
        default=False, description="Let the model be fetched from the hub if it is not cached."
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N.")
    language: str | None = Field(
        default=None, description="Force a language (ISO code or name); default detects it."
    )
    max_duration_seconds: float = Field(
        default=12 * 3600, gt=0, description="Longer recordings fail permanently."
    )
    chunk_seconds: float = Field(
        default=30.0, ge=5, le=300, description="Longest piece handed to the model at once."
    )
    aligner: str | None = Field(
        default=None,
        description="Word timing model (hub id or folder), e.g. Qwen/Qwen3-ForcedAligner-0.6B-hf; "
        "off by default.",
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Chunks each recording gathers per model call. On a GPU, calls merged "
        "across recordings grow up to what free GPU memory holds.",
    )
    compile: bool = Field(
        default=False,
        description="Static KV cache and a compiled decoding step (CUDA only): faster once "
        "warm; every batch shape is compiled at start, which takes minutes.",
    )
    decode_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A decoder that produces no audio this long is killed (counts as an attempt).",
    )
    decode_memory_mb: int = Field(
        default=8192, ge=256, description="Address-space limit of the decoder child process."
    )
    output_mode: int = Field(
        default=0o640, description="Permission bits of transcripts, octal (e.g. 0640)."
    )
    formats: list[Format] = Field(
        default=["txt", "json"],
        min_length=1,
        description="Transcript files to write: txt, json, srt, vtt, tsv (json is always kept).",
    )
    language_in_names: bool = Field(
        default=False,
        description="Put the language code in subtitle names: meeting.zh.srt, meeting.zh.vtt.",
    )
    engine: Literal["local", "vllm"] = Field(
        default="local",
        description="local: the model runs in the daemon | vllm: chunks go to vllm_servers, "
        "which serve `model`.",
    )
    vllm_servers: list[str] = Field(
        default=[],
        description='vLLM servers sharing the work (engine = "vllm"), e.g. '
        '["https://gpu1:8000", "https://gpu2:8000"].',
    )
    vllm_api_key_file: Path | None = Field(
        default=None,
        description="File holding the servers' API key (their --api-key); never logged.",
    )
    vllm_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA the servers' certificates must chain to (pins it); "
        "default: the system's trusted CAs.",
    )
    vllm_max_in_flight: int = Field(
        default=64, ge=1, le=1024, description="Requests in flight to each server at most."
    )
    vllm_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A request with no answer this long is given up and sent to another server.",
    )
    vllm_connect_seconds: float = Field(
        default=5.0, gt=0, description="A server not accepting a connection this fast is down."
    )

    @field_validator("vllm_servers")
    @classmethod
    def _server_urls(cls, value: list[str]) -> list[str]:
        urls = [_server_url(entry) for entry in value]
        if len(urls) != len(set(urls)):
            raise ValueError("a server is listed twice")
        return urls

    @model_validator(mode="after")
    def _servers_needed_for_vllm(self) -> "ModelSettings":
        if self.engine == "vllm" and not self.vllm_servers:
            raise ValueError('engine = "vllm" needs vllm_servers, e.g. ["https://gpu1:8000"]')
        return self

    @field_validator("output_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        # "0640" from TOML strings or the environment means octal, as in chmod.
        return int(value, 8) if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N (for example cuda:0)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def _server_url(entry: str) -> str:
    """`scheme://host:port` of a vLLM server, or ValueError saying what is wrong with it."""
    try:
        parts = urlsplit(entry.strip())
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{entry!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{entry!r} must look like https://gpu1:8000")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{entry!r}: no user, query or fragment (the key goes in a file)")
    if parts.path.strip("/"):
        raise ValueError(f"{entry!r}: give the server's address only, without a path like /v1")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or (443 if parts.scheme == 'https' else 80)}"


class Settings(ModelSettings):
    """Everything the daemon needs. Field descriptions are shown by `transcribed run --help`."""

    model_config = SettingsConfigDict(extra="forbid")

    inbox: Path = Field(description="Folder watched for recordings (may be a Samba/NFS share).")
    outbox: Path = Field(description="Folder where transcripts are written, mirroring subfolders.")
    archive_dir: Path | None = Field(
        default=None, description="Where originals go after transcription (disposal = move)."
    )
    failed_dir: Path = Field(
        description="Where recordings that can never be transcribed go, with <name>.error.json."
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Local folder for the job database (never on a network share).",
    )
    disposal: Disposal = Field(
        default="move", description="What happens to an original once its transcript is durable."
    )
    settle_seconds: float = Field(
        default=3.0, gt=0, description="A file must stay unchanged this long before it is taken."
    )
    rescan_seconds: float = Field(
        default=120.0, gt=0, description="Full rescan of the inbox every this many seconds."
    )
    watch_mode: Literal["events", "poll"] = Field(
        default="events", description="events (inotify) | poll (network mounts written elsewhere)."
    )
    poll_seconds: float = Field(default=5.0, gt=0, description="Poll interval in poll mode.")
    folders: list[FolderRule] = Field(
        default=[],
        description="Per-folder rules ([[folders]] in the config): path, language, context, "
        "formats, disposal, output.",
    )
    jobs_at_once: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Recordings transcribed at once: each has its own decoder process, and "
        "their chunks share model batches.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Tries before a recording is quarantined in failed_dir."
    )
    retry_seconds: float = Field(
        default=30.0,
        gt=0,
        description="First wait before a retry; doubles each time, at most 10 minutes.",
    )

    require_offline: bool = Field(
        default=False,
        description="Refuse to start unless the process is cut off from the network "
        "(as under the systemd unit's PrivateNetwork=yes); otherwise it only warns.",
    )
    on_done: list[str] | None = Field(
        default=None,
        description="Command run after each transcript, as an argument list (no shell); "
        "paths in TRANSCRIBED_TRANSCRIPT, TRANSCRIBED_JSON, … (README).",
    )
    on_failed: list[str] | None = Field(
        default=None,
        description="Command run when a recording fails for good, as an argument list; "
        "the reason in TRANSCRIBED_ERROR.",
    )
    hook_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A hook still running after this long is killed."
    )
    metrics_file: Path | None = Field(
        default=None,
        description="Prometheus textfile (e.g. /var/lib/node_exporter/textfile/"
        "transcribed.prom), rewritten atomically; off by default.",
    )

    @field_validator("on_done", "on_failed")
    @classmethod
    def _nonempty_command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError('must be a non-empty argument list, e.g. ["/usr/local/bin/notify"]')
        return value

    @model_validator(mode="after")
    def _archive_needed_for_move(self) -> "Settings":
        moves = self.disposal == "move" or any(rule.disposal == "move" for rule in self.folders)
        if moves and self.archive_dir is None:
            raise ValueError("disposal = 'move' needs archive_dir (or choose delete / shred)")
        paths = [rule.path for rule in self.folders]
        if len(paths) != len(set(paths)):
            raise ValueError("two [[folders]] rules have the same path")
        return self

    @property
    def database(self) -> Path:
        """The job queue."""
        return self.state_dir / "jobs.sqlite3"

    @property
    def work_dir(self) -> Path:
        """Private folder inside the inbox: same filesystem, so claiming is an atomic rename."""
        return self.inbox / ".transcribed-work"


SettingsT = TypeVar("SettingsT", bound=ModelSettings)


def load_settings(config_path: Path | None, kind: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read settings from `config_path` (or the system default when present) and the environment.

    Raises ConfigError with one readable line per problem.
    """
    path = config_path if config_path is not None else _system_config()
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (check --config)")

    file_settings = type(
        kind.__name__, (kind,), {"model_config": SettingsConfigDict(toml_file=path)}
    )
    try:
        return file_settings(**overrides)  # type: ignore[no-any-return]
    except ValidationError as error:
        raise ConfigError(_describe(error, path)) from None
    except SettingsError as error:
        if "EnvSettingsSource" not in str(error):
            raise ConfigError(f"cannot read config file {path}: {error}") from None
        raise ConfigError(  # a list given plainly, e.g. TRANSCRIBED_VLLM_SERVERS=https://a:1
            f"{error}: lists in TRANSCRIBED_* variables are JSON, e.g. "
            """TRANSCRIBED_VLLM_SERVERS='["https://gpu1:8000"]'"""
        ) from None
    except (OSError, ValueError) as error:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read config file {path}: {error}") from None


def _system_config() -> Path | None:
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _describe(error: ValidationError, path: Path | None) -> str:
    lines = ["invalid configuration:"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "settings"
        env = f"TRANSCRIBED_{field.upper()}" if problem["loc"] else "the settings"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            where = f"in {path}" if path else "in a config file (--config)"
            message = f"is required: set {env} or {field} {where}"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def check_folders(settings: Settings) -> None:
    """Refuse to run with folders that are missing, unwritable, or would loop through the inbox."""
    folders = {
        "inbox": settings.inbox,
        "outbox": settings.outbox,
        "failed_dir": settings.failed_dir,
    }
    if settings.archive_dir is not None and settings.disposal == "move":
        folders["archive_dir"] = settings.archive_dir
    problems = [p for name, folder in folders.items() if (p := _folder_problem(name, folder))]
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if problem := _folder_problem("state_dir", settings.state_dir):
        problems.append(problem)
    if not problems:
        problems += _nesting_problems(settings.inbox, folders | {"state_dir": settings.state_dir})
    if problems:
        raise ConfigError("unusable folders:\n" + "\n".join(f"  {p}" for p in problems))


def _folder_problem(name: str, folder: Path) -> str | None:
    if not folder.exists():
        return f"{name}: {folder} does not exist; create it or point {name} elsewhere"
    if not folder.is_dir():
        return f"{name}: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{name}: {folder} is not writable by this user ({os.geteuid()})"
    return None


def _nesting_problems(inbox: Path, folders: dict[str, Path]) -> list[str]:
    real_inbox = inbox.resolve()
    problems = []
    for name, folder in folders.items():
        real = folder.resolve()
        if name != "inbox" and real.is_relative_to(real_inbox):
            problems.append(f"{name}: {folder} is inside the inbox; it would be picked up again")
    return problems


def setting_sources(config_path: Path | None, settings: ModelSettings) -> dict[str, str]:
    """Where each effective setting came from: the environment, the config file, or the
    default (the same precedence `load_settings` applies)."""
    path = config_path if config_path is not None else _system_config()
    in_file: set[str] = set()
    if path is not None:
        with path.open("rb") as handle:
            in_file = set(tomllib.load(handle))
    sources = {}
    for name in type(settings).model_fields:
        variable = f"TRANSCRIBED_{name.upper()}"
        if variable in os.environ:
            sources[name] = f"environment {variable}"
        elif name in in_file:
            sources[name] = f"file {path}"
        else:
            sources[name] = "default"
    return sources
