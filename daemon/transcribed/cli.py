"""The `transcribed` command: `run` the daemon, or `transcribe` files once."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from transcribed import __version__
from transcribed.errors import ConfigError, ModelError
from transcribed.logs import configure_logging
from transcribed.settings import DEFAULT_CONFIG_PATH, ModelSettings, Settings, load_settings

EXIT_FAILED = 1
EXIT_CONFIG = 2  # usage and configuration errors, like argparse's own


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except (ConfigError, ModelError) as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed",
        description="Private, local transcription: recordings dropped into an inbox folder become "
        "transcripts in an outbox folder, on a Qwen3-ASR model on this machine. "
        "Nothing is sent anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the daemon in the foreground (what the systemd unit starts)",
        description="Watch the inbox and transcribe every recording dropped into it. "
        "SIGTERM or Ctrl-C stops intake, finishes or requeues the current job and exits 0.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=_run)

    once = commands.add_parser(
        "transcribe",
        help="transcribe files once, without the daemon",
        description="Transcribe FILEs now and write <stem>.txt and <stem>.json next to each "
        "file (or into --outbox). The files themselves are not moved or changed.",
    )
    once.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recordings")
    once.add_argument("--outbox", type=Path, help="write transcripts here instead")
    once.add_argument("--model", help="hub id or local folder (default: from config)")
    once.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)")
    once.add_argument("--language", help="force a language, e.g. en or zh (default: detect)")
    once.set_defaults(handler=_transcribe)

    for command in (run, once):
        command.add_argument(
            "--config",
            type=Path,
            metavar="PATH",
            help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} when it exists); "
            "TRANSCRIBED_<NAME> environment variables override it",
        )
        command.add_argument(
            "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
        )
    return parser


def _settings_help() -> str:
    lines = ["settings (config file key, or environment variable TRANSCRIBED_<KEY>):"]
    for name, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = "required" if field.is_required() else f"default {_show(name, value)}"
        lines.append(f"  {name:<24} {field.description} [{default}]")
    return "\n".join(lines)


def _show(name: str, value: object) -> str:
    return f"{value:04o}" if name == "output_mode" and isinstance(value, int) else str(value)


def _offline_unless(allowed: bool) -> None:
    """Make the hub client refuse network access before anything imports it."""
    if not allowed:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    _offline_unless(settings.allow_download)
    from transcribed.service import Daemon

    return Daemon(settings, args.config).run()


def _transcribe(args: argparse.Namespace) -> int:
    overrides = {k: v for k in ("model", "device", "language") if (v := getattr(args, k))}
    settings = load_settings(args.config, ModelSettings, **overrides)
    _offline_unless(settings.allow_download)
    if args.outbox is not None and not args.outbox.is_dir():
        raise ConfigError(f"--outbox {args.outbox} is not an existing folder")
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise ConfigError("not a file: " + ", ".join(missing))
    from transcribed.oneshot import transcribe_files

    failures = transcribe_files(args.files, settings, args.outbox)
    return EXIT_FAILED if failures else 0
