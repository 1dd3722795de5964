"""The `transcribed` command: `run` the daemon, `transcribe` files once, the operator
commands `status`, `jobs`, `doctor`, `config`, `recover` and `bench`, and the page: `web`,
`search`.

Nothing heavy is imported before the settings, folders and model files are checked: a
mistake is reported in about a second, not after torch has loaded.
"""

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from transcribed import __version__
from transcribed.errors import ConfigError, ModelError
from transcribed.files.content import ignore_lease_breaks
from transcribed.logs import configure_logging
from transcribed.settings import (
    DEFAULT_CONFIG_PATH,
    ModelSettings,
    RetrySettings,
    Settings,
    StateSettings,
    StatusSettings,
    check_folders,
    check_programs,
    load_settings,
    setting_sources,
)
from transcribed.settings.access import StateAccessDenied, check_state_access
from transcribed.state.overview import OperatorError
from transcribed.state.queue import JobState

if TYPE_CHECKING:
    from transcribed.model.engine import Engine
    from transcribed.output.search_index import SearchIndex
    from transcribed.servers.vllm_engine import RemoteEngine

EXIT_FAILED = 1
DEFAULT_BENCH_JOBS = 4  # recordings at once in `bench` without a GPU, as jobs_at_once's default
EXIT_CONFIG = 2  # usage and configuration errors, like argparse's own
EXIT_BROKEN_PIPE = 128 + 13  # as a program killed by SIGPIPE: what shells expect of `… | head`

StateT = TypeVar("StateT", bound=StateSettings)
ResultT = TypeVar("ResultT")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ignore_lease_breaks()  # any command may ask whether a writer still holds a recording
    try:
        args = _build_parser().parse_args(argv)  # --help prints, too
        configure_logging(args.log_level or args.quiet_log_level)
        code = int(args.handler(args))
        sys.stdout.flush()  # a reader that went away (`status | head`) is noticed here
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except StateAccessDenied as denied:  # the one mistake whose fix is this very command
        print(f"transcribed: {denied.with_command(argv)}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConfigError, ModelError) as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OperatorError as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed",
        description="Private, local transcription: recordings dropped into an inbox folder become "
        "transcripts in an outbox folder, on a Qwen3-ASR model on this machine. "
        "Nothing is sent anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # --config and --log-level go before the command or after it: `transcribed --config x
    # status` and `transcribed status --config x` mean the same.
    _common_options(parser, default=None)
    parser.set_defaults(quiet_log_level="INFO")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = _command(
        commands,
        "run",
        help="run the daemon in the foreground (what the systemd unit starts)",
        description="Watch the inbox and transcribe every recording dropped into it. "
        "SIGTERM or Ctrl-C stops intake, finishes or requeues the current job and exits 0.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=_run)

    once = _command(
        commands,
        "transcribe",
        help="transcribe files once, without the daemon",
        description="Transcribe FILEs now and write <stem>.txt and <stem>.json (and the other "
        "formats configured) next to each file, or into --outbox. The files themselves are "
        "not moved or changed. A file whose transcript is already there is skipped unless "
        "--overwrite; another file's transcript of the same name is never replaced (a "
        "suffixed name is used).",
    )
    once.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recordings")
    once.add_argument(
        "--outbox", type=Path, help="write transcripts into this folder (made when missing)"
    )
    once.add_argument(
        "--overwrite",
        action="store_true",
        help="transcribe again files whose transcript is already there, replacing it",
    )
    once.add_argument("--model", help="hub id or local folder (default: from config)")
    once.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)")
    once.add_argument("--language", help="force a language, e.g. en or zh (default: detect)")
    once.set_defaults(handler=_transcribe)

    status = _command(
        commands,
        "status",
        help="what the daemon is doing: queued, running (with progress), failed, last hour",
        description="Read the job database (safe while the daemon runs) and show queued jobs, "
        "running ones with progress and an ETA, recent failures with their reasons, and "
        "the throughput of the last hour. Needs only the state folder.",
    )
    _state_dir_option(status)
    status.set_defaults(handler=_status)

    jobs = _command(
        commands,
        "jobs",
        help="list, retry, forget or prune jobs",
        description="Inspect and act on individual jobs (safe while the daemon runs).",
    )
    actions = jobs.add_subparsers(required=True, metavar="ACTION")
    listing = _command(actions, "list", help="the newest jobs, optionally in one state")
    listing.add_argument("--state", choices=[str(state) for state in JobState])
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(handler=_jobs_list)
    again = _command(
        actions,
        "retry",
        help="put a failed job's recording back into the inbox",
        description="Move a failed recording from failed_dir back into the inbox under its "
        "original name; the daemon transcribes it as a new arrival. The copy in the inbox "
        "is durable before the failed copy is removed. Needs the inbox as well as the state "
        "folder (from --config or TRANSCRIBED_INBOX).",
    )
    again.add_argument("job", type=int, metavar="ID")
    again.set_defaults(handler=_jobs_retry)
    drop = _command(
        actions,
        "forget",
        help="forget a done or failed job, so the same recording is transcribed again",
        description="Delete a done or failed job's record. Its files stay where they are; "
        "the same recording dropped again is then transcribed anew instead of being "
        "recognised as a duplicate.",
    )
    drop.add_argument("job", type=int, metavar="ID")
    drop.set_defaults(handler=_jobs_forget)
    prune = _command(
        actions,
        "prune",
        help="forget done and failed jobs older than an age, e.g. --older-than 90d",
        description="Delete the records of done and failed jobs that finished more than "
        "--older-than ago, in one transaction (safe while the daemon runs). No file is "
        "touched: transcripts, archived and failed recordings stay where they are. What is "
        "lost: a pruned done job's recording is no longer recognised as a duplicate, so the "
        "same recording dropped again is transcribed again; a pruned failed job cannot be "
        "retried with `jobs retry` (copy its file from failed_dir into the inbox instead). "
        "Jobs still running, queued or waiting are never pruned.",
    )
    prune.add_argument(
        "--older-than",
        required=True,
        type=_age,
        metavar="AGE",
        help="finished at least this long ago: a number and a unit, min, h, d, w or mo "
        "(30 days), e.g. 90d, 12h, 30min, 6mo",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    prune.set_defaults(handler=_jobs_prune)
    for action in (listing, again, drop, prune):
        _state_dir_option(action)

    doctor = _command(
        commands,
        "doctor",
        help="check this machine: GPU, model files, folders, inotify, network isolation",
        description="Check everything the daemon needs and print one line per check "
        "(ok / warn / fail) with what to do. Exits 1 when any check fails. A model is ok "
        "only when `run` would load it.",
    )
    doctor.set_defaults(handler=_doctor)

    recover = _command(
        commands,
        "recover",
        help="rebuild a damaged job database from the disk (daemon stopped)",
        description="Set the job database aside (renamed, not deleted) and rebuild it from "
        "the disk: published transcripts in the outbox become done jobs (they name their "
        "recording's SHA-256), failed recordings with reason files become failed jobs, and "
        "the recordings in the work folder are queued again when the daemon next starts, "
        "so nothing is lost and nothing is transcribed twice. Refuses to run while the "
        "daemon runs.",
    )
    recover.set_defaults(handler=_recover)

    config = _command(
        commands,
        "config",
        help="show the effective configuration (`config show`)",
        description="Every setting with its effective value and its source: an environment "
        "variable, the config file, or the default.",
    )
    config.set_defaults(handler=_config_show)
    config_actions = config.add_subparsers(metavar="ACTION")
    show = _command(
        config_actions,
        "show",
        help="every setting, its value and where it came from (the default action)",
        description="Every setting with its effective value and its source: an environment "
        "variable, the config file, or the default.",
    )
    show.set_defaults(handler=_config_show)

    bench = _command(
        commands,
        "bench",
        help="measure throughput end to end on this machine (CPU or GPU)",
        description="Write a backlog of compressed recordings to a scratch folder and time "
        "the daemon's own pipeline from files on disk to published transcripts. Model load "
        "and warm-up are reported apart. --synthetic-weights measures the full-size model "
        "with random weights (no download); its transcripts are meaningless. --stand-in "
        "drives the pipeline with a model that costs what a GPU would and computes nothing.",
    )
    bench.add_argument("--hours", type=float, default=0.5, help="audio in the backlog (0.5)")
    bench.add_argument(
        "--synthetic-weights",
        choices=["tiny", "1.7b", "0.6b"],
        help="random weights of this size instead of the configured model (tiny: the tests' "
        "model, for a dry run); built once under $XDG_CACHE_HOME/transcribed",
    )
    bench.add_argument(
        "--stand-in",
        metavar="GPU-SIZE",
        help="no model: a stand-in that costs what this GPU would for this size (h100-1.7b, "
        "h100-0.6b, h200-1.7b, h200-0.6b) and computes nothing",
    )
    bench.add_argument(
        "--stand-in-scale",
        type=float,
        default=1.0,
        help="slow the stand-in's GPU this many times: as if this machine's CPU were that much "
        "faster (1)",
    )
    bench.add_argument(
        "--tokens-per-second",
        type=float,
        help="tokens written per audio second (default 4 with --synthetic-weights; "
        "otherwise the model decides)",
    )
    bench.add_argument(
        "--jobs-at-once",
        type=int,
        help="recordings at once (default: from config; on a GPU, from its batch ceiling)",
    )
    bench.add_argument(
        "--batch-size",
        type=int,
        help="chunks each recording gathers per call (default: from config; on a GPU, from "
        "its batch ceiling)",
    )
    bench.add_argument("--model", help="hub id or local folder (default: from config)")
    bench.add_argument(
        "--diarizer", help="also label speakers with this diarizer (default: from config)"
    )
    bench.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)")
    bench.add_argument(
        "--engine",
        choices=["local", "vllm"],
        help="the resident model, or the configured vLLM servers (default: from config)",
    )
    bench.add_argument(
        "--simulate-servers",
        metavar="K,K,…",
        help="measure the dispatcher instead: K stand-in vLLM servers (each its own process, "
        "next to no CPU), e.g. 1,2,4,8; reports what the daemon achieves with them beside its "
        "own ceiling (stand-ins of unbounded capacity)",
    )
    bench.add_argument(
        "--server-speed",
        type=float,
        default=5.0,
        help="each stand-in request's speed in audio seconds per second (5: a 30 s chunk "
        "takes 6 s; capacity = speed x vllm_max_in_flight)",
    )
    bench.add_argument("--scratch", type=Path, help="folder for the backlog (default: a temp one)")
    bench.set_defaults(handler=_bench, quiet_log_level="WARNING")  # the table, not every job

    search = _command(
        commands,
        "search",
        help="find words in every transcript (the page's search, from the shell)",
        description="Full-text search over published transcripts: segments holding any "
        "term of QUERY, in transcripts that hold every term, with their times. Any script "
        "works, Chinese and Japanese included. The index lives beside the job database; "
        "--rebuild makes it anew from the JSON files in the outbox.",
    )
    search.add_argument("query", nargs="?", metavar="QUERY", help="words to look for")
    search.add_argument("--limit", type=int, default=50, help="at most this many hits (50)")
    search.add_argument(
        "--rebuild",
        action="store_true",
        help="index every transcript in the outbox anew (run as the service's user)",
    )
    search.set_defaults(handler=_search)

    web = _command(
        commands,
        "web",
        help="serve the page: status, transcripts, search and upload (127.0.0.1 by default)",
        description="A web page for the people who drop the files, in its own process (the "
        "daemon stays cut off from the network). It reads the job database and the "
        "outbox, and writes only uploads into the inbox and retries. Listening beyond "
        "127.0.0.1 needs a login: [web] password_hash (see `transcribed web-password`) "
        "or token_file in the config.",
    )
    web.add_argument("--host", help="address to listen on (default: [web] host, 127.0.0.1)")
    web.add_argument("--port", type=int, help="TCP port (default: [web] port, 8750)")
    web.set_defaults(handler=_web)

    password = _command(
        commands,
        "web-password",
        help="hash a password for the page's [web] password_hash",
        description="Read a password (twice, from the terminal; once from a pipe) and print "
        "the line to put under [web] in the config file.",
    )
    password.set_defaults(handler=_web_password, quiet_log_level="WARNING")

    for command in (status, listing, doctor, config, show, bench, search):
        command.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, **kwargs: object
) -> argparse.ArgumentParser:
    """A subcommand that also takes the common options (after its name)."""
    command = commands.add_parser(name, **kwargs)  # type: ignore[arg-type]
    # SUPPRESS: an option not given here keeps what was given before the command name.
    _common_options(command, default=argparse.SUPPRESS)
    return command


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=default,
        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} when it exists); "
        "TRANSCRIBED_<NAME> environment variables override it",
    )
    parser.add_argument(
        "--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _state_dir_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--state-dir",
        type=Path,
        metavar="PATH",
        help="the daemon's state folder (default: state_dir from --config or "
        "TRANSCRIBED_STATE_DIR)",
    )


def _age(text: str) -> float:
    from transcribed.jobs.retention import parse_age

    try:
        return parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _settings_help() -> str:
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


def _offline_unless(allowed: bool) -> None:
    """Make the hub client refuse network access before anything imports it."""
    if not allowed:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    check_folders(settings)
    check_programs(settings)
    _check_model_files(settings)
    _check_device(settings.device)
    _offline_unless(settings.allow_download)
    from transcribed.service import Daemon

    return Daemon(settings, args.config).run()


def _check_model_files(settings: ModelSettings) -> None:
    from transcribed.model.model_files import check_before_loading

    check_before_loading(settings)


def _check_device(device: str) -> None:
    """A GPU asked for but not usable is refused before anything starts (and logs)."""
    if device.startswith("cuda"):
        from transcribed.model.engine import resolve_device

        resolve_device(device)


def _transcribe(args: argparse.Namespace) -> int:
    overrides = {k: v for k in ("model", "device", "language") if (v := getattr(args, k))}
    settings = load_settings(args.config, ModelSettings, **overrides)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise ConfigError("not a file: " + ", ".join(missing))
    _check_model_files(settings)
    _check_device(settings.device)
    if args.outbox is not None:
        _make_outbox(args.outbox)
    _offline_unless(settings.allow_download)
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


def _print(data: object, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _state(args: argparse.Namespace, kind: type[StateT]) -> StateT:
    """The settings naming the state folder: --state-dir, else the config and environment."""
    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    settings = load_settings(args.config, kind, **overrides)
    check_state_access(settings.state_dir)
    return settings


def _status(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    settings = _state(args, StatusSettings)
    inbox = settings.inbox
    look = (lambda: _look_into(inbox)) if inbox is not None and inbox.is_dir() else None
    report = overview.daemon_status(settings, overview.open_queue(settings), look)
    _print(report, args.json, overview.render_status(report))
    return 0


def _look_into(inbox: Path) -> list[dict[str, object]]:
    """What waits in the inbox, seen read-only with the intake's own checks."""
    from transcribed.intake.survey import survey

    return [
        {"file": found.file, "reason": found.reason, "since": round(found.changed)}
        for found in survey(inbox)
    ]


def _jobs_list(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    jobs = overview.open_queue(_state(args, StateSettings))
    rows = overview.job_rows(jobs, JobState(args.state) if args.state else None, args.limit)
    _print(rows, args.json, overview.render_jobs(rows))
    return 0


def _jobs_retry(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    settings = _state(args, RetrySettings)
    if not settings.inbox.is_dir():
        raise ConfigError(
            f"inbox {settings.inbox} does not exist or is not a folder: the recording goes back "
            "there (check inbox in --config or TRANSCRIBED_INBOX)"
        )
    target = overview.retry(overview.open_queue(settings), settings.inbox, args.job)
    print(f"job {args.job}: the recording is back in the inbox as {target}")
    return 0


def _jobs_forget(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    job = overview.forget(overview.open_queue(_state(args, StateSettings)), args.job)
    print(f"job {args.job} ({job.state}) forgotten; its files were not touched")
    return 0


def _jobs_prune(args: argparse.Namespace) -> int:
    from transcribed.jobs.retention import prune
    from transcribed.state import overview

    settings = _state(args, StateSettings)
    overview.open_queue(settings).close()  # the same refusals as every jobs command
    try:
        pruned = prune(settings.database, time.time() - args.older_than, dry_run=args.dry_run)
    except sqlite3.Error as error:
        raise OperatorError(f"cannot prune {settings.database}: {error}") from None
    verb = "would forget" if args.dry_run else "forgot"
    print(f"{verb} {pruned['done']} done and {pruned['failed']} failed jobs; no file was touched")
    return 0


def _search(args: argparse.Namespace) -> int:
    from transcribed.output import search_index

    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    index = search_index.SearchIndex(settings.search_database)
    if args.rebuild:
        ids = search_index.published_job_ids(settings.database)
        count = _index_write(index, lambda: index.rebuild(settings.outbox, ids))
        print(f"indexed {count} transcripts from {settings.outbox}", file=sys.stderr)
        if not args.query:
            return 0
    if not args.query:
        raise ConfigError("say what to look for: transcribed search QUERY (or --rebuild)")
    if not settings.search_database.exists():
        raise ConfigError(
            f"no search index at {settings.search_database}: run `transcribed search "
            "--rebuild` as the service's user (pass the daemon's config with --config)"
        )
    try:
        hits = index.search(args.query, args.limit)
    except search_index.IndexDamaged:
        _repair_index(index, settings)
        hits = index.search(args.query, args.limit)
    rows = [dataclasses.asdict(hit) for hit in hits]
    text = "\n".join(search_index.render_hit(hit) for hit in hits) or "no transcript holds that"
    _print(rows, args.json, text)
    return 0 if hits else EXIT_FAILED


def _repair_index(index: "SearchIndex", settings: Settings) -> None:
    """A damaged index met by a search: set aside and rebuilt from the outbox, then searched."""
    print(
        f"the search index {index.path} is damaged: setting it aside and rebuilding it from "
        f"{settings.outbox}…",
        file=sys.stderr,
    )
    count = _index_write(index, lambda: index.repair(settings.outbox, settings.database))
    if count is None:
        raise OperatorError(
            "the search index is being rebuilt by another process (the daemon or the page); "
            "try again in a minute"
        )
    print(f"indexed {count} transcripts", file=sys.stderr)


def _index_write(index: "SearchIndex", write: Callable[[], ResultT]) -> ResultT:
    """`write` changes the index: one clear line when this user may not."""
    try:
        return write()
    except (OSError, sqlite3.Error) as error:
        raise OperatorError(
            f"cannot write the search index {index.path}: {error}; run this as the service's "
            "user (sudo -u transcribed …, with the daemon's --config)"
        ) from None


def _web(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k)) is not None}
    web = settings.web.model_copy(update=overrides)
    from transcribed.web.app import serve

    return serve(settings.model_copy(update={"web": web}))


def _web_password(args: argparse.Namespace) -> int:
    from transcribed.web.auth import hash_password, read_new_password

    print(f'password_hash = "{hash_password(read_new_password())}"')
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from transcribed.commands import doctor

    try:
        settings = load_settings(args.config, Settings)
    except ConfigError as error:
        findings = [doctor.Finding("config", "fail", str(error), "fix the setting named above")]
    else:
        # Every later check would answer for the wrong user: only the right one helps.
        check_state_access(settings.state_dir)
        _offline_unless(False)  # doctor only looks: never fetch anything
        findings = [doctor.Finding("config", "ok", "the configuration is valid")]
        findings += doctor.diagnose(settings)
    rows = [dataclasses.asdict(finding) for finding in findings]
    _print(rows, args.json, doctor.render(findings))
    return EXIT_FAILED if any(finding.level == "fail" for finding in findings) else 0


def _recover(args: argparse.Namespace) -> int:
    from transcribed.state.instance import InstanceLock
    from transcribed.state.queue import JobQueue
    from transcribed.state.rebuild import index_disk, set_aside
    from transcribed.state.workfolder import WorkFolder

    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    lock = InstanceLock(settings.state_dir)
    lock.acquire()  # the daemon must not run meanwhile
    aside = set_aside(settings.database)
    indexed = index_disk(JobQueue(settings.database), settings.outbox, settings.failed_dir)
    work = WorkFolder(settings.inbox).path
    waiting = len([n for n in os.listdir(work) if not n.startswith(".")]) if work.is_dir() else 0
    if aside is not None:
        print(f"the old database is now {aside}")
    print(
        f"rebuilt {settings.database}: {indexed.transcripts} published transcripts, "
        f"{indexed.failed} failed recordings; {waiting} recordings in the work folder are "
        "queued again when the daemon starts (those already transcribed are only disposed "
        "of, or published under their own name without running the model)"
    )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    sources = setting_sources(args.config, settings)
    values = settings.model_dump(mode="json")
    values["output_mode"] = f"{settings.output_mode:04o}"
    rows = {name: {"value": values[name], "source": sources[name]} for name in values}
    width = max(map(len, rows))
    text = "\n".join(
        f"{name:<{width}}  {json.dumps(row['value'])}  ({row['source']})"
        for name, row in rows.items()
    )
    _print(rows, args.json, text)
    return 0


def _bench(args: argparse.Namespace) -> int:
    keys = ("model", "device", "batch_size", "diarizer", "engine")
    overrides = {k: v for k in keys if (v := getattr(args, k))}
    settings = load_settings(args.config, ModelSettings, **overrides)
    if args.simulate_servers:
        return _bench_pool(args, settings)
    if args.stand_in:
        return _bench_stand_in(args, settings)
    if not args.synthetic_weights:
        _check_model_files(settings)
    _check_device(settings.device)
    _offline_unless(settings.allow_download)
    if settings.engine == "vllm" and args.synthetic_weights:
        raise ConfigError("--synthetic-weights is for the local engine: the servers hold theirs")
    from transcribed.commands import bench

    per_second = args.tokens_per_second or (4.0 if args.synthetic_weights else None)
    report = bench.run_bench(
        settings,
        args.hours,
        lambda engine: _jobs_at_once(args, settings, engine),
        lambda: _bench_engine(settings, args, per_second),
        synthetic=bool(args.synthetic_weights),
        progress=lambda line: print(line, file=sys.stderr),
        scratch=args.scratch,
    )
    _print(dataclasses.asdict(report), args.json, bench.render(report))
    return 0


def _bench_stand_in(args: argparse.Namespace, settings: ModelSettings) -> int:
    from transcribed.commands import bench
    from transcribed.model.stand_in import GPUS, StandInEngine
    from transcribed.model.synthetic import FULL_SIZES

    gpu, _, size = args.stand_in.partition("-")
    if gpu not in GPUS or size not in FULL_SIZES or args.stand_in_scale <= 0:
        raise ConfigError(
            f"--stand-in takes GPU-SIZE with GPU one of {', '.join(GPUS)} and SIZE one of "
            f"{', '.join(FULL_SIZES)} (e.g. h100-1.7b), and --stand-in-scale > 0"
        )
    stand_in = StandInEngine(
        gpu,
        size,
        settings.batch_size,
        chunk_seconds=settings.chunk_seconds,
        scale=args.stand_in_scale,
        tokens_per_second=args.tokens_per_second or 4.0,
    )
    stand_in.batch_size = _gpu_sizes(args, settings, stand_in.ceiling)[0]
    report = bench.run_bench(
        settings,
        args.hours,
        _gpu_sizes(args, settings, stand_in.ceiling)[1],
        lambda: stand_in,
        synthetic=True,
        progress=lambda line: print(line, file=sys.stderr),
        scratch=args.scratch,
    )
    _print(dataclasses.asdict(report), args.json, bench.render(report))
    return 0


def _jobs_at_once(args: argparse.Namespace, settings: ModelSettings, engine: object) -> int:
    """--jobs-at-once, else 4; with the local engine on a GPU, what its ceiling asks for,
    and the batch size too unless configured."""
    from transcribed.model.engine import Engine

    if not isinstance(engine, Engine) or not engine.info.device.startswith("cuda"):
        return int(args.jobs_at_once or DEFAULT_BENCH_JOBS)
    engine.batch_size, jobs = _gpu_sizes(args, settings, engine.ceiling)
    return jobs


def _gpu_sizes(args: argparse.Namespace, settings: ModelSettings, ceiling: int) -> tuple[int, int]:
    """(batch_size, jobs_at_once): given or configured ones kept, the rest from the GPU's
    ceiling (`engine.gpu_defaults`)."""
    from transcribed.model.engine import gpu_defaults

    batch, jobs = gpu_defaults(ceiling)
    if args.batch_size or "batch_size" in settings.model_fields_set:
        batch = settings.batch_size
    if args.jobs_at_once:
        jobs = int(args.jobs_at_once)
    return batch, jobs


def _bench_engine(
    settings: ModelSettings, args: argparse.Namespace, per_second: float | None
) -> "Engine | RemoteEngine":
    if settings.engine == "vllm":
        import threading

        from transcribed.servers.vllm_engine import RemoteEngine, recording_batch

        remote = RemoteEngine.connect(
            settings,
            recording_batch(settings, args.jobs_at_once or DEFAULT_BENCH_JOBS),
            threading.Event(),
        )
        remote.fixed_tokens_per_second = args.tokens_per_second
        return remote
    from transcribed.model.engine import Engine
    from transcribed.model.synthetic import build_synthetic, synthetic_folder

    model = settings.model
    if args.synthetic_weights:
        folder = synthetic_folder(args.synthetic_weights)
        print(f"random {args.synthetic_weights} weights in {folder}", file=sys.stderr)
        model = str(build_synthetic(folder, args.synthetic_weights))
    engine = Engine.load(
        model,
        settings.device,
        allow_download=False,
        batch_size=settings.batch_size,
        chunk_seconds=settings.chunk_seconds,
    )
    engine.fixed_tokens_per_second = per_second
    return engine


def _bench_pool(args: argparse.Namespace, settings: ModelSettings) -> int:
    from transcribed.commands import pool_bench

    try:
        counts = [int(part) for part in args.simulate_servers.split(",")]
    except ValueError:
        raise ConfigError("--simulate-servers takes counts like 1,2,4,8") from None
    if not counts or min(counts) < 1 or args.server_speed <= 0:
        raise ConfigError("--simulate-servers needs counts >= 1 and --server-speed > 0")
    report = pool_bench.simulate_pool(
        settings,
        counts,
        args.hours,
        args.jobs_at_once or DEFAULT_BENCH_JOBS,
        args.server_speed,
        progress=lambda line: print(line, file=sys.stderr),
        scratch=args.scratch,
    )
    _print(dataclasses.asdict(report), args.json, pool_bench.render(report))
    return 0
