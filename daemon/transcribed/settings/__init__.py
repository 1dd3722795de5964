"""Settings: a TOML file and TRANSCRIBED_* environment variables (env wins), validated at start.

Every refusal names where the bad value came from (the file, which variable, an option) and,
for a misspelt name, the setting it probably meant.
"""

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from transcribed.errors import ConfigError
from transcribed.logs import get_logger
from transcribed.settings import paths
from transcribed.settings.access import state_access_problem
from transcribed.settings.declared import Doc, Group
from transcribed.settings.folders import Disposal, FolderRule, Format
from transcribed.settings.languages import language_code
from transcribed.settings.modes import file_mode, number_mode
from transcribed.settings.paths import AbsolutePath
from transcribed.settings.programs import check_programs as check_programs  # re-exported
from transcribed.settings.web import WebSettings

log = get_logger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/transcribed/config.toml")
DEFAULT_MODEL = "Qwen/Qwen3-ASR-1.7B-hf"
ENV_PREFIX = "TRANSCRIBED_"
DATABASE_NAME = "jobs.sqlite3"

# TRANSCRIBED_* variables that are not settings: what hooks receive (service.hook_environment;
# a hook may well call `transcribed status`) and the tests' fault switches.
_NOT_SETTINGS = frozenset(
    {
        "TRANSCRIBED_JOB",
        "TRANSCRIBED_SOURCE",
        "TRANSCRIBED_OUTPUTS",
        "TRANSCRIBED_TRANSCRIPT",
        "TRANSCRIBED_JSON",
        "TRANSCRIBED_ERROR",
        "TRANSCRIBED_FAILED_PATH",
        "TRANSCRIBED_AUDIO_SECONDS",
    }
)
_NOT_SETTINGS_PREFIX = "TRANSCRIBED_TEST_"


# Longer documentation of a few settings, for the reference (docs/configuration.md).
_LANGUAGES = (
    "One of the 30 languages Qwen3-ASR knows (ar cs da de el "
    "en es fa fi fil fr hi hu id it ja ko mk ms nl pl pt ro ru sv th tr vi yue zh); anything "
    'else (jp, cn, en-US) is refused at start with the closest codes ("did you mean ja '
    '(Japanese)?"). The same in [[folders]] rules.'
)
_MODES = (
    'Also "640" or "0o640", and the same in TRANSCRIBED_OUTPUT_MODE. A TOML number is refused '
    "with the quoted form to write: 640 and 0o640 are different numbers to TOML, and 0640 is "
    "not TOML at all. No setuid, setgid or sticky bits, and the owner must be able to read."
)
_RULES = (
    "Each rule is a [[folders]] table with the keys below. The deepest rule whose path holds "
    "a recording applies; what it leaves unset comes from the settings above."
)
_HOOKS = (
    "Its program must exist and be executable by the service's user (a bare name: be found "
    "in PATH), or `run` refuses to start and `doctor` fails."
)


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere follow the XDG convention.
    if systemd_state := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd_state.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "transcribed"


class _Environment(EnvSettingsSource):
    """TRANSCRIBED_* variables. A list setting takes a comma list (TRANSCRIBED_FORMATS=txt,srt)
    or JSON (TRANSCRIBED_FORMATS='["txt", "srt"]'); a bad one is blamed on its variable."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        variable = f"{ENV_PREFIX}{field_name.upper()}"
        text = str(value).strip()
        if text.startswith(("[", "{")):
            try:
                return json.loads(text)
            except ValueError as error:
                raise ConfigError(
                    f"environment variable {variable} is not valid JSON ({error}); "
                    "write it as a JSON list or as a comma list (a,b,c)"
                ) from None
        if _holds_tables(field):
            raise ConfigError(
                f"environment variable {variable} must be a JSON list, e.g. "
                f'{variable}=\'[{{"path": "team", "language": "zh"}}]\' '
                f"(or use [[{field_name}]] in the config file)"
            )
        return [item.strip() for item in text.split(",") if item.strip()]


def _holds_tables(field: FieldInfo) -> bool:
    """A list of models ([[folders]]): a comma list cannot express its items."""
    arguments = getattr(field.annotation, "__args__", ())
    return any(isinstance(a, type) and issubclass(a, BaseModel) for a in arguments)


class _Base(BaseSettings):
    # allow_inf_nan: `inf` reads as "never" but nothing can wait that long (Event.wait and
    # Connection.poll raise OverflowError): every number must be finite.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environment(settings_cls))


StateDir = Annotated[
    AbsolutePath,
    Doc(
        Group.FOLDERS,
        default="`$STATE_DIRECTORY` (systemd's `StateDirectory=`), else "
        "`$XDG_STATE_HOME/transcribed` or `~/.local/state/transcribed`",
        example="/var/lib/transcribed",
        set_in_example=True,
        more="Set it in the config the service reads, so that `transcribed status` and "
        "`jobs` run from a shell find the service's database.",
    ),
    Field(
        default_factory=_default_state_dir,
        description="Local folder for the job database (never on a network share).",
    ),
]


class StateSettings(_Base):
    """Where the job database is: all that `status` and `jobs` need."""

    state_dir: StateDir

    @property
    def database(self) -> Path:
        """The job queue."""
        return self.state_dir / DATABASE_NAME


class StatusSettings(StateSettings):
    """`status` also looks into the inbox, when it is known, while no daemon runs."""

    inbox: AbsolutePath | None = Field(default=None, description="Folder watched for recordings.")


class RetrySettings(StateSettings):
    """`jobs retry` also puts the recording back into the inbox."""

    inbox: AbsolutePath = Field(description="Folder watched for recordings.")


class ModelSettings(_Base):
    """What turning audio into text needs; shared by `run` and one-shot `transcribe`."""

    model: Annotated[
        str,
        Doc(
            Group.MODEL,
            more="A hub id (`Qwen/Qwen3-ASR-1.7B-hf` or `Qwen/Qwen3-ASR-0.6B-hf`, fetched once "
            "with `hf download`) or a local folder: `./x` beside the config, `~/x` or `/x` (a bare "
            '`x` is a hub id). With `engine = "vllm"`, the name the servers serve it under.',
        ),
    ] = Field(
        default=DEFAULT_MODEL, description="Hugging Face repo id or local folder of a -hf model."
    )
    allow_download: Annotated[bool, Doc(Group.MODEL)] = Field(
        default=False, description="Let the model be fetched from the hub if it is not cached."
    )
    device: Annotated[str, Doc(Group.MODEL, more="bf16 on a GPU, float32 on a CPU.")] = Field(
        default="auto", description="auto | cpu | cuda | cuda:N."
    )
    language: Annotated[
        str | None, Doc(Group.MODEL, reload=True, default="detected", example="en", more=_LANGUAGES)
    ] = Field(
        default=None,
        description="Force a language (ISO code or English name, e.g. en, zh, German); "
        "default detects it.",
    )
    max_duration_seconds: Annotated[
        float, Doc(Group.LIMITS, more="Checked while decoding (43200 s: 12 hours).")
    ] = Field(default=12 * 3600, gt=0, description="Longer recordings fail permanently.")
    chunk_seconds: Annotated[
        float, Doc(Group.MODEL, reload=True, more="Cuts fall in quiet places.")
    ] = Field(default=30.0, ge=5, le=300, description="Longest piece handed to the model at once.")
    aligner: Annotated[
        str | None,
        Doc(
            Group.MODEL,
            default="off",
            example="Qwen/Qwen3-ForcedAligner-0.6B-hf",
            more="Each segment gets word (for Chinese and Japanese: character) timing, and "
            "subtitles are cut after whole words. Fetched like the main model.",
        ),
    ] = Field(
        default=None,
        description="Word timing model (hub id or folder), e.g. Qwen/Qwen3-ForcedAligner-0.6B-hf; "
        "off by default.",
    )
    diarizer: Annotated[
        str | None,
        Doc(
            Group.MODEL,
            default="off",
            example="nvidia/Nemotron-3-Diarization",
            more="Fetched like the main model. A missing or unusable diarizer stops the daemon "
            "at start.",
        ),
    ] = Field(
        default=None,
        description="Speaker labels (S1, S2, …): diarization model (hub id or folder), e.g. "
        "nvidia/Nemotron-3-Diarization; off by default.",
    )
    max_speakers: Annotated[
        int | None, Doc(Group.MODEL, reload=True, default="as many as it hears", example=2)
    ] = Field(
        default=None,
        ge=1,
        le=8,
        description="Label at most this many speakers (the diarizer tells up to 8 apart); "
        "default: as many as it hears.",
    )
    batch_size: Annotated[int, Doc(Group.MODEL)] = Field(
        default=8,
        ge=1,
        le=256,
        description="Chunks each recording keeps in flight (its window: each is sent as it is "
        "cut, the next as soon as one is answered); the model decodes the chunks of every "
        "recording together, up to what free GPU memory holds. On a GPU, unset: 32.",
    )
    compile: Annotated[bool, Doc(Group.MODEL)] = Field(
        default=False,
        description="No longer used (kept so older configs load): on a GPU every decoding "
        "step is captured as a CUDA graph anyway.",
    )
    decode_timeout_seconds: Annotated[float, Doc(Group.LIMITS)] = Field(
        default=600.0,
        gt=0,
        description="A decoder that produces no audio this long is killed (counts as an attempt).",
    )
    decode_memory_mb: Annotated[int, Doc(Group.LIMITS)] = Field(
        default=8192, ge=256, description="Address-space limit of the decoder child process."
    )
    output_mode: Annotated[
        int,
        Doc(
            Group.TRANSCRIPTS,
            reload=True,
            default='"0640"',
            kind='octal mode, in quotes ("0640")',
            example="0640",
            more=_MODES,
        ),
    ] = Field(
        default=0o640,
        description='Permission bits of transcripts, octal in quotes as chmod takes them: "0640".',
    )
    formats: Annotated[
        list[Format],
        Doc(
            Group.TRANSCRIPTS,
            reload=True,
            more="The JSON records the source and lets the daemon recognise its own files.",
        ),
    ] = Field(
        default=["txt", "json"],
        min_length=1,
        description="Transcript files to write: txt, json, srt, vtt, tsv (json is always kept).",
    )
    language_in_names: Annotated[bool, Doc(Group.TRANSCRIPTS, reload=True)] = Field(
        default=False,
        description="Put the language code in subtitle names: meeting.zh.srt, meeting.zh.vtt.",
    )
    engine: Annotated[Literal["local", "vllm"], Doc(Group.SERVERS)] = Field(
        default="local",
        description="local: the model runs in the daemon | vllm: chunks go to vllm_servers, "
        "which serve `model`.",
    )
    vllm_servers: Annotated[
        list[str],
        Doc(
            Group.SERVERS,
            example=("https://gpu1:8000", "https://gpu2:8000"),
            more="Address and port only: no path (such as /v1), user, query or fragment.",
        ),
    ] = Field(
        default=[],
        description='vLLM servers sharing the work (engine = "vllm"), e.g. '
        '["https://gpu1:8000", "https://gpu2:8000"].',
    )
    vllm_api_key_file: Annotated[
        AbsolutePath | None,
        Doc(
            Group.SERVERS,
            example="/etc/transcribed/vllm-key",
            more="One line; never in the environment.",
        ),
    ] = Field(
        default=None,
        description="File holding the servers' API key (their --api-key); never logged.",
    )
    vllm_ca_file: Annotated[
        AbsolutePath | None,
        Doc(
            Group.SERVERS,
            default="the system's trusted CAs",
            example="/etc/transcribed/vllm-ca.pem",
        ),
    ] = Field(
        default=None,
        description="PEM file of the CA the servers' certificates must chain to (pins it); "
        "default: the system's trusted CAs.",
    )
    vllm_max_in_flight: Annotated[int, Doc(Group.SERVERS)] = Field(
        default=64, ge=1, le=1024, description="Requests in flight to each server at most."
    )
    vllm_timeout_seconds: Annotated[float, Doc(Group.SERVERS)] = Field(
        default=300.0,
        gt=0,
        description="One deadline for a request's whole exchange (sending the chunk, the "
        "server's work, reading its answer): past it the chunk goes to another server.",
    )
    vllm_connect_seconds: Annotated[float, Doc(Group.SERVERS)] = Field(
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
        return file_mode(value)

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        return None if value is None else language_code(value)

    @field_validator("model", "aligner", "diarizer")
    @classmethod
    def _model_folder(cls, value: str | None) -> str | None:
        return None if value is None else paths.model_folder(value)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N (for example cuda:0)")


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


class Settings(StateSettings, ModelSettings):
    """Everything the daemon needs. Field descriptions are shown by `transcribed run --help`."""

    model_config = SettingsConfigDict(extra="forbid")

    inbox: Annotated[
        AbsolutePath,
        Doc(
            Group.FOLDERS,
            example="/srv/recordings/inbox",
            set_in_example=True,
            more="Watched with every folder below it.",
        ),
    ] = Field(description="Folder watched for recordings (may be a Samba/NFS share).")
    outbox: Annotated[
        AbsolutePath,
        Doc(Group.FOLDERS, reload=True, example="/srv/recordings/transcripts", set_in_example=True),
    ] = Field(description="Folder where transcripts are written, mirroring subfolders.")
    archive_dir: Annotated[
        AbsolutePath | None,
        Doc(
            Group.FOLDERS,
            reload=True,
            default='none; required when disposal is "move"',
            example="/srv/recordings/archive",
            set_in_example=True,
        ),
    ] = Field(default=None, description="Where originals go after transcription (disposal = move).")
    failed_dir: Annotated[
        AbsolutePath,
        Doc(Group.FOLDERS, reload=True, example="/srv/recordings/failed", set_in_example=True),
    ] = Field(
        description="Where recordings that can never be transcribed go, with <name>.error.json."
    )
    disposal: Annotated[
        Disposal,
        Doc(
            Group.FOLDERS,
            reload=True,
            more="`move` (to archive_dir), `delete`, or `shred` (the README "
            "says what shred cannot promise).",
        ),
    ] = Field(
        default="move", description="What happens to an original once its transcript is durable."
    )
    settle_seconds: Annotated[float, Doc(Group.INTAKE)] = Field(
        default=3.0, gt=0, description="A file must stay unchanged this long before it is taken."
    )
    settle_seconds_unseen: Annotated[float, Doc(Group.INTAKE)] = Field(
        default=120.0,
        gt=0,
        description="A file whose writers this machine cannot see (a network mount written "
        "from elsewhere, or another user's file without CAP_LEASE) must stay unchanged this "
        "long: recorders pause up to a minute between writes (ffmpeg's Opus at 24 kb/s: 53 "
        "s) and NFS clients cache file attributes for up to 60 s.",
    )
    rescan_seconds: Annotated[
        float, Doc(Group.INTAKE, more="It catches anything the watcher missed.")
    ] = Field(default=120.0, gt=0, description="Full rescan of the inbox every this many seconds.")
    watch_mode: Annotated[Literal["events", "poll"], Doc(Group.INTAKE)] = Field(
        default="events", description="events (inotify) | poll (network mounts written elsewhere)."
    )
    poll_seconds: Annotated[float, Doc(Group.INTAKE)] = Field(
        default=5.0, gt=0, description="Poll interval in poll mode."
    )
    stalled_seconds: Annotated[float, Doc(Group.INTAKE)] = Field(
        default=3600.0,
        gt=0,
        description="A file that still looks unfinished but has not changed for this long "
        "(a recorder that crashed) is taken anyway: transcribed as far as it decodes and "
        "flagged source_incomplete.",
    )
    folders: Annotated[
        list[FolderRule], Doc(Group.RULES, reload=True, default="none", more=_RULES)
    ] = Field(
        default=[],
        description="Per-folder rules ([[folders]] in the config): path, language, context, "
        "formats, disposal, output.",
    )
    jobs_at_once: Annotated[int, Doc(Group.MODEL)] = Field(
        default=4,
        ge=1,
        le=32,
        description="Recordings transcribed at once: each has its own decoder process, and "
        "the model decodes their chunks together. On a GPU, unset: enough to fill its batch "
        "ceiling three times over (24 at 256).",
    )
    max_attempts: Annotated[int, Doc(Group.LIMITS, reload=True)] = Field(
        default=3, ge=1, description="Tries before a recording is quarantined in failed_dir."
    )
    retry_seconds: Annotated[
        float, Doc(Group.LIMITS, reload=True, more="For disk full, a decoder crash and the like.")
    ] = Field(
        default=30.0,
        gt=0,
        description="First wait before a retry; doubles each time, at most 10 minutes.",
    )

    require_offline: Annotated[bool, Doc(Group.SERVICE)] = Field(
        default=False,
        description="Refuse to start unless the process is cut off from the network "
        "(as under the systemd unit's PrivateNetwork=yes); otherwise it only warns.",
    )
    on_done: Annotated[
        list[str] | None,
        Doc(
            Group.SERVICE,
            reload=True,
            default="off",
            example=("/usr/local/bin/notify-transcript",),
            more=_HOOKS,
        ),
    ] = Field(
        default=None,
        description="Command run after each transcript, as an argument list (no shell); "
        "paths in TRANSCRIBED_TRANSCRIPT, TRANSCRIBED_JSON, … (README).",
    )
    on_failed: Annotated[
        list[str] | None,
        Doc(
            Group.SERVICE,
            reload=True,
            default="off",
            example=("/usr/local/bin/notify-failure",),
            more=_HOOKS,
        ),
    ] = Field(
        default=None,
        description="Command run when a recording fails for good, as an argument list; "
        "the reason in TRANSCRIBED_ERROR.",
    )
    hook_timeout_seconds: Annotated[float, Doc(Group.SERVICE, reload=True)] = Field(
        default=60.0, gt=0, description="A hook still running after this long is killed."
    )
    metrics_file: Annotated[
        AbsolutePath | None,
        Doc(
            Group.SERVICE,
            reload=True,
            default="off",
            example="/var/lib/node_exporter/textfile/transcribed.prom",
            more="Written every 5 s.",
        ),
    ] = Field(
        default=None,
        description="Prometheus textfile (e.g. /var/lib/node_exporter/textfile/"
        "transcribed.prom), rewritten atomically; off by default.",
    )

    web: Annotated[WebSettings, Doc(Group.WEB, reload=True, default="the [web] defaults below")] = (
        Field(
            default_factory=WebSettings,
            description="The page (`transcribed web`): [web] in the config file; the daemon "
            "ignores it.",
        )
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
        if self.diarizer is None and (asks := [r.path for r in self.folders if r.diarize]):
            raise ValueError(
                f"[[folders]] {asks[0]!r} sets diarize = true, but no diarizer is configured "
                "(set diarizer, e.g. nvidia/Nemotron-3-Diarization)"
            )
        return self

    @property
    def search_database(self) -> Path:
        """The full-text index of published transcripts; rebuilt from the outbox at will."""
        return self.state_dir / "search.sqlite3"


SettingsT = TypeVar("SettingsT", bound=_Base)


def load_settings(config_path: Path | None, kind: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read settings from `config_path` (or the system default when present) and the environment;
    `overrides` (command-line options) win over both.

    Raises ConfigError with one readable line per problem, each naming where the value came from.
    """
    path = config_path if config_path is not None else _system_config()
    values = read_config_file(path)
    if unknown := [key for key in values if key not in Settings.model_fields]:
        where = f" in {path}" if path else ""
        raise ConfigError(_lines([_unknown(key, Settings.model_fields, where) for key in unknown]))
    if (number := number_mode(values.get("output_mode"))) is not None:
        raise ConfigError(_lines([f"{number} (in {path})"]))
    if path is not None:
        values = paths.in_file(values, path.absolute().parent)
    overrides = {name: paths.from_here(value) for name, value in overrides.items()}
    _warn_about_unknown_variables()
    try:
        return _reading(kind, values)(**overrides)
    except ValidationError as error:
        problems = [_problem(p, path, set(values), set(overrides)) for p in error.errors()]
        raise ConfigError(_lines(problems)) from None


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The config file's keys and values; {} without a file."""
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (check --config)") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML is UTF-8
        hint = _toml_hint(path, str(error))
        raise ConfigError(f"config file {path} is not valid TOML: {error}{hint}") from None


_ERROR_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_LEADING_ZERO = re.compile(r"^\s*([\w.-]+)\s*=\s*([+-]?0\d+)\s*(#.*)?$")


def _toml_hint(path: Path, message: str) -> str:
    """What people mean by the TOML mistakes they make most: `output_mode = 0640` (TOML
    numbers cannot start with 0) gets the quoted form."""
    where = _ERROR_LINE.search(message)
    if where is None:
        return ""
    try:
        line = path.read_text(errors="replace").splitlines()[int(where.group(1)) - 1]
    except (OSError, IndexError):
        return ""
    if (number := _LEADING_ZERO.match(line)) is None:
        return ""
    key, digits = number.group(1), number.group(2)
    if key == "output_mode":  # a mode: octal, as chmod takes it
        return f'; a TOML number cannot start with 0: write {key} = "{digits}" in quotes'
    return f"; a TOML number cannot start with 0: write {key} = {int(digits)}"


def _reading(kind: type[SettingsT], values: dict[str, Any]) -> type[SettingsT]:
    """`kind` reading options, then the environment, then the file's `values`."""

    def sources(
        cls: type[BaseSettings],
        /,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environment(settings_cls), _FileValues(settings_cls, values))

    return type(kind.__name__, (kind,), {"settings_customise_sources": classmethod(sources)})


class _FileValues(PydanticBaseSettingsSource):
    """The config file's values, already read (so a TOML error is blamed on the file alone)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _system_config() -> Path | None:
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _lines(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    return "\n".join(["invalid configuration:", *(f"  {problem}" for problem in problems)])


def _unknown(key: str, known: dict[str, FieldInfo], where: str = "", noun: str = "setting") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown {noun} {key}{where}" + (f" — did you mean {close[0]}?" if close else "")


def _problem(problem: Any, path: Path | None, in_file: set[str], overrides: set[str]) -> str:
    loc = problem["loc"]
    if not loc:  # a check across several settings
        return str(problem["msg"]).removeprefix("Value error, ")
    name, field = str(loc[0]), _field(loc)
    if problem["type"] == "missing":
        where = f"in {path}" if path else "in a config file (--config)"
        return f"{field} is required: set {ENV_PREFIX}{name.upper()} or {name} {where}"
    if problem["type"] == "extra_forbidden" and name == "folders":
        rule = f" in [[folders]] rule {int(loc[1]) + 1}"
        return _unknown(str(loc[-1]), FolderRule.model_fields, rule, "key")
    if problem["type"] == "extra_forbidden" and name == "web":
        return _unknown(str(loc[-1]), WebSettings.model_fields, " in [web]", "key")
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{field}: {message} (from {_origin(name, path, in_file, overrides)})"


def _field(loc: tuple[Any, ...]) -> str:
    """`formats.1`, `web.port`; a [[folders]] rule by its number, as the file shows it."""
    if len(loc) >= 3 and loc[0] == "folders" and isinstance(loc[1], int):
        return f"[[folders]] rule {loc[1] + 1}: " + ".".join(str(part) for part in loc[2:])
    return ".".join(str(part) for part in loc)


def _origin(name: str, path: Path | None, in_file: set[str], overrides: set[str]) -> str:
    """Where the value of setting `name` comes from, in the precedence `load_settings` uses."""
    variable = f"{ENV_PREFIX}{name.upper()}"
    if name in overrides:
        return f"option --{name.replace('_', '-')}"
    if variable in {key.upper() for key in os.environ}:
        return f"environment {variable}"
    if name in in_file:
        return f"file {path}"
    return "default"


def _warn_about_unknown_variables() -> None:
    """A misspelt variable is only warned about: the environment is inherited (hooks, shells,
    unit files), so a stray TRANSCRIBED_* name must not stop every command."""
    for variable in sorted(os.environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        key = upper.removeprefix(ENV_PREFIX).lower()
        if key not in Settings.model_fields and not upper.startswith(_NOT_SETTINGS_PREFIX):
            close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
            hint = f"did you mean {ENV_PREFIX}{close[0].upper()}? " if close else ""
            log.warning(
                "config.unknown_variable",
                variable=variable,
                hint=f"{hint}{variable} names no setting and is ignored",
            )


def check_folders(settings: Settings) -> None:
    """Refuse to run with folders that are missing, unwritable, shared by two roles, or that
    would loop through the inbox."""
    folders = {
        "inbox": settings.inbox,
        "outbox": settings.outbox,
        "failed_dir": settings.failed_dir,
    }
    if settings.archive_dir is not None and settings.disposal == "move":
        folders["archive_dir"] = settings.archive_dir
    problems = [p for name, folder in folders.items() if (p := _folder_problem(name, folder))]
    if problem := _state_dir_problem(settings.state_dir):
        problems.append(problem)
    if not problems:
        problems += _nesting_problems(settings.inbox, folders | {"state_dir": settings.state_dir})
        problems += _shared_folder_problems(folders)
    if problems:
        raise ConfigError(_folder_lines(problems))


def _folder_lines(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"unusable folder: {problems[0]}"
    return "\n".join(["unusable folders:", *(f"  {problem}" for problem in problems)])


def _state_dir_problem(state_dir: Path) -> str | None:
    """The state folder is made when missing (as systemd's StateDirectory= would)."""
    if (denied := state_access_problem(state_dir)) is not None:
        return f"state_dir: {denied}"
    if not state_dir.exists():
        try:
            _make_durable(state_dir)
        except OSError as error:
            return (
                f"state_dir: cannot create {state_dir}: {error.strerror}; create it or "
                "point state_dir elsewhere"
            )
    return _folder_problem("state_dir", state_dir)


def _make_durable(folder: Path) -> None:
    """`mkdir -p`, each new folder fsynced into its parent: a power cut must not take the
    job database away with a folder whose name never reached the disk."""
    for path in reversed([folder, *folder.parents]):
        if path.exists():
            continue
        path.mkdir(mode=0o750 if path == folder else 0o777)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        if name == "inbox":
            continue
        if real.is_relative_to(real_inbox):
            problems.append(f"{name}: {folder} is inside the inbox; it would be picked up again")
        elif name != "state_dir" and real_inbox.is_relative_to(real):
            problems.append(
                f"inbox: {inbox} is inside {name} ({folder}): what is written there for the "
                "recordings of an inbox subfolder could land in the inbox; give each its own "
                "folder"
            )
    return problems


# Why two roles cannot share one folder.
_SHARING = {
    frozenset({"outbox", "failed_dir"}): "reason files would sit among the transcripts",
    frozenset({"outbox", "archive_dir"}): "recordings would sit among the transcripts",
    frozenset({"failed_dir", "archive_dir"}): "the recordings that need a look would be lost "
    "among the archived ones",
}


def _shared_folder_problems(folders: dict[str, Path]) -> list[str]:
    real = {name: folder.resolve() for name, folder in folders.items()}
    problems = []
    for pair, why in _SHARING.items():
        first, second = sorted(pair)
        if first in real and second in real and real[first] == real[second]:
            problems.append(
                f"{first} and {second} are the same folder ({folders[first]}): {why}; "
                "give each its own folder"
            )
    return problems


def setting_sources(config_path: Path | None, settings: _Base) -> dict[str, str]:
    """Where each effective setting came from: an environment variable, the config file, or
    the default (the same precedence `load_settings` applies)."""
    path = config_path if config_path is not None else _system_config()
    in_file = set(read_config_file(path))
    return {name: _origin(name, path, in_file, set()) for name in type(settings).model_fields}
