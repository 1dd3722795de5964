"""`transcribed run`: the daemon in the foreground (what the systemd unit starts)."""

import argparse
import os
import signal
import sys

from transcribed import faults
from transcribed.cli.shared import check_device, check_model_files, offline_unless
from transcribed.cli.verb import Verb
from transcribed.settings import Settings, check_folders, check_programs, load_settings
from transcribed.settings.access import check_state_access


def run(args: argparse.Namespace) -> int:
    # A reload asked for while the daemon starts (before its own handlers, seconds away) is
    # kept for it, not fatal: SIGHUP's default action ends the process.
    reloads: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: reloads.append(signum))
    settings = load_settings(args.config, Settings)
    faults.point("daemon.starting")
    check_state_access(settings.state_dir)
    check_folders(settings)
    check_programs(settings)
    check_model_files(settings)
    check_device(settings.device)
    offline_unless(settings.allow_download)
    from transcribed.service import Daemon

    daemon = Daemon(settings, args.config, reloads_asked=reloads)
    code = daemon.run()
    if daemon.left_running:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Exit although loops still run (a model call hung past the stop's grace time):
    Python would otherwise wait for them at exit, for good. What they were doing is taken
    up again at the next start, as after a crash; the lock is released and the log says
    which loops they were."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def settings_help() -> str:
    lines = [
        "settings (config file key, or environment variable TRANSCRIBED_<KEY>; lists there "
        "as comma lists or JSON, e.g. TRANSCRIBED_FORMATS=txt,srt):"
    ]
    for name, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = "required" if field.is_required() else f"default {_show(name, value)}"
        lines.append(f"  {name:<24} {field.description} [{default}]")
    return "\n".join(lines)


def _show(name: str, value: object) -> str:
    return f"{value:04o}" if name == "output_mode" and isinstance(value, int) else str(value)


VERB = Verb(
    "run",
    help="run the daemon in the foreground (what the systemd unit starts)",
    description="Watch the inbox and transcribe every recording dropped into it. "
    "SIGTERM or Ctrl-C stops intake, finishes or requeues the current job and exits 0.",
    run=run,
    epilog=settings_help(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
