"""`transcribed transcribe FILE…`: transcribe files once, without the daemon (the work
itself is `commands.transcribe`)."""

import argparse
import sys
from pathlib import Path

from transcribed.cli.shared import check_device, check_model_files, offline_unless
from transcribed.cli.verb import EXIT_FAILED, Verb, argument
from transcribed.errors import ConfigError
from transcribed.settings import ModelSettings, load_settings


def transcribe(args: argparse.Namespace) -> int:
    overrides = {k: v for k in ("model", "device", "language") if (v := getattr(args, k))}
    settings = load_settings(args.config, ModelSettings, **overrides)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise ConfigError("not a file: " + ", ".join(missing))
    check_model_files(settings)
    check_device(settings.device)
    if args.outbox is not None:
        _make_outbox(args.outbox)
    offline_unless(settings.allow_download)
    from transcribed.commands.transcribe import transcribe_files

    failures = transcribe_files(args.files, settings, args.outbox, overwrite=args.overwrite)
    return EXIT_FAILED if failures else 0


def _make_outbox(folder: Path) -> None:
    """--outbox names where the transcripts go: made when it does not exist yet."""
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"--outbox {folder} exists and is not a folder") from None
    except OSError as error:
        raise ConfigError(f"--outbox {folder}: cannot make the folder: {error.strerror}") from None
    print(f"transcribed: made the folder {folder} for the transcripts", file=sys.stderr)


VERB = Verb(
    "transcribe",
    help="transcribe files once, without the daemon",
    description="Transcribe FILEs now and write <stem>.txt and <stem>.json (and the other "
    "formats configured) next to each file, or into --outbox. The files themselves are "
    "not moved or changed. A file whose transcript is already there is skipped unless "
    "--overwrite; another file's transcript of the same name is never replaced (a "
    "suffixed name is used).",
    run=transcribe,
    arguments=(
        argument("files", nargs="+", type=Path, metavar="FILE", help="recordings"),
        argument(
            "--outbox", type=Path, help="write transcripts into this folder (made when missing)"
        ),
        argument(
            "--overwrite",
            action="store_true",
            help="transcribe again files whose transcript is already there, replacing it",
        ),
        argument("--model", help="hub id or local folder (default: from config)"),
        argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)"),
        argument("--language", help="force a language, e.g. en or zh (default: detect)"),
    ),
)
