"""The `transcribed` command: `run` the daemon, `transcribe` files once, and the operator
commands `status`, `jobs`, `doctor` and `config show`."""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from transcribed import __version__
from transcribed.admin import OperatorError
from transcribed.errors import ConfigError, ModelError
from transcribed.logs import configure_logging
from transcribed.queue import JobState
from transcribed.settings import (
    DEFAULT_CONFIG_PATH,
    ModelSettings,
    Settings,
    load_settings,
    setting_sources,
)

if TYPE_CHECKING:
    from transcribed.engine import Engine
    from transcribed.vllm_engine import RemoteEngine

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
    except OperatorError as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_FAILED
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

    status = commands.add_parser(
        "status",
        help="what the daemon is doing: queued, running (with progress), failed, last hour",
        description="Read the job database (safe while the daemon runs) and show queued jobs, "
        "running ones with progress and an ETA, recent failures with their reasons, and "
        "the throughput of the last hour.",
    )
    status.set_defaults(handler=_status)

    jobs = commands.add_parser(
        "jobs",
        help="list, retry or forget jobs",
        description="Inspect and act on individual jobs (safe while the daemon runs).",
    )
    actions = jobs.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the newest jobs, optionally in one state")
    listing.add_argument("--state", choices=[str(state) for state in JobState])
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(handler=_jobs_list)
    again = actions.add_parser(
        "retry",
        help="put a failed job's recording back into the inbox",
        description="Move a failed recording from failed_dir back into the inbox under its "
        "original name; the daemon transcribes it as a new arrival. The copy in the inbox "
        "is durable before the failed copy is removed.",
    )
    again.add_argument("job", type=int, metavar="ID")
    again.set_defaults(handler=_jobs_retry)
    drop = actions.add_parser(
        "forget",
        help="forget a done or failed job, so the same recording is transcribed again",
        description="Delete a done or failed job's record. Its files stay where they are; "
        "the same recording dropped again is then transcribed anew instead of being "
        "recognised as a duplicate.",
    )
    drop.add_argument("job", type=int, metavar="ID")
    drop.set_defaults(handler=_jobs_forget)

    doctor = commands.add_parser(
        "doctor",
        help="check this machine: GPU, model files, folders, inotify, network isolation",
        description="Check everything the daemon needs and print one line per check "
        "(ok / warn / fail) with what to do. Exits 1 when any check fails.",
    )
    doctor.set_defaults(handler=_doctor)

    config = commands.add_parser("config", help="show the effective configuration")
    config_actions = config.add_subparsers(required=True, metavar="ACTION")
    show = config_actions.add_parser(
        "show",
        help="every setting, its value and where it came from",
        description="Every setting with its effective value and its source: an environment "
        "variable, the config file, or the default.",
    )
    show.set_defaults(handler=_config_show)

    bench = commands.add_parser(
        "bench",
        help="measure throughput end to end on this machine (CPU or GPU)",
        description="Write a backlog of compressed recordings to a scratch folder and time "
        "the daemon's own pipeline from files on disk to published transcripts. Model load "
        "and warm-up are reported apart. --synthetic-weights measures the full-size model "
        "with random weights (no download); its transcripts are meaningless.",
    )
    bench.add_argument("--hours", type=float, default=0.5, help="audio in the backlog (0.5)")
    bench.add_argument(
        "--synthetic-weights",
        choices=["1.7b", "0.6b"],
        help="random weights of this size instead of the configured model",
    )
    bench.add_argument(
        "--tokens-per-second",
        type=float,
        help="tokens written per audio second (default 4 with --synthetic-weights; "
        "otherwise the model decides)",
    )
    bench.add_argument("--jobs-at-once", type=int, default=4, help="recordings at once (4)")
    bench.add_argument(
        "--batch-size", type=int, help="chunks each recording gathers per call (from config)"
    )
    bench.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="static KV cache and compiled decoding (CUDA; compiling counts as warm-up)",
    )
    bench.add_argument("--model", help="hub id or local folder (default: from config)")
    bench.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)")
    bench.add_argument(
        "--engine",
        choices=["local", "vllm"],
        help="the resident model, or the configured vLLM servers (default: from config)",
    )
    bench.add_argument(
        "--simulate-servers",
        metavar="K,K,…",
        help="measure the dispatcher instead: simulated vLLM servers (no GPU, no CPU), e.g. "
        "1,2,4,8; reports how busy the daemon keeps them",
    )
    bench.add_argument(
        "--server-speed",
        type=float,
        default=5.0,
        help="each simulated request's speed in audio seconds per second (5: a 30 s chunk "
        "takes 6 s; capacity = speed x vllm_max_in_flight)",
    )
    bench.add_argument("--scratch", type=Path, help="folder for the backlog (default: a temp one)")
    bench.set_defaults(handler=_bench)

    with_json = (status, listing, doctor, show, bench)
    for command in with_json:
        command.add_argument("--json", action="store_true", help="machine-readable output")
    for command in (run, once, status, listing, again, drop, doctor, show, bench):
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
    bench.set_defaults(log_level="WARNING")  # the table, not an event per job
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


def _print(data: object, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _status(args: argparse.Namespace) -> int:
    from transcribed import admin, engine_status

    settings = load_settings(args.config, Settings)
    report = admin.status_report(admin.open_queue(settings))
    if (servers := engine_status.read(settings.state_dir)) is not None:  # the vLLM engine's
        report["engine_servers"] = servers
        report["summary"] += f"; {engine_status.summary(servers)}"
    _print(report, args.json, admin.render_status(report))
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    from transcribed import admin

    jobs = admin.open_queue(load_settings(args.config, Settings))
    rows = admin.job_rows(jobs, JobState(args.state) if args.state else None, args.limit)
    _print(rows, args.json, admin.render_jobs(rows))
    return 0


def _jobs_retry(args: argparse.Namespace) -> int:
    from transcribed import admin

    settings = load_settings(args.config, Settings)
    target = admin.retry(admin.open_queue(settings), settings, args.job)
    print(f"job {args.job}: the recording is back in the inbox as {target}")
    return 0


def _jobs_forget(args: argparse.Namespace) -> int:
    from transcribed import admin

    job = admin.forget(admin.open_queue(load_settings(args.config, Settings)), args.job)
    print(f"job {args.job} ({job.state}) forgotten; its files were not touched")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from transcribed import doctor

    try:
        settings = load_settings(args.config, Settings)
    except ConfigError as error:
        findings = [doctor.Finding("config", "fail", str(error), "fix the config file")]
    else:
        _offline_unless(False)  # doctor only looks: never fetch anything
        findings = [doctor.Finding("config", "ok", "the configuration is valid")]
        findings += doctor.diagnose(settings)
    rows = [dataclasses.asdict(finding) for finding in findings]
    _print(rows, args.json, doctor.render(findings))
    return EXIT_FAILED if any(finding.level == "fail" for finding in findings) else 0


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
    keys = ("model", "device", "batch_size", "compile", "engine")
    overrides = {k: v for k in keys if (v := getattr(args, k))}
    if args.simulate_servers:
        return _bench_pool(args, load_settings(args.config, ModelSettings, **overrides))
    settings = load_settings(args.config, ModelSettings, **overrides)
    _offline_unless(settings.allow_download)
    if settings.engine == "vllm" and args.synthetic_weights:
        raise ConfigError("--synthetic-weights is for the local engine: the servers hold theirs")
    from transcribed import bench

    per_second = args.tokens_per_second or (4.0 if args.synthetic_weights else None)
    report = bench.run_bench(
        settings,
        args.hours,
        args.jobs_at_once,
        lambda: _bench_engine(settings, args, per_second),
        synthetic=bool(args.synthetic_weights),
        progress=lambda line: print(line, file=sys.stderr),
        scratch=args.scratch,
    )
    _print(dataclasses.asdict(report), args.json, bench.render(report))
    return 0


def _bench_engine(
    settings: ModelSettings, args: argparse.Namespace, per_second: float | None
) -> "Engine | RemoteEngine":
    if settings.engine == "vllm":
        import threading

        from transcribed.vllm_engine import RemoteEngine, recording_batch

        remote = RemoteEngine.connect(
            settings, recording_batch(settings, args.jobs_at_once), threading.Event()
        )
        remote.fixed_tokens_per_second = args.tokens_per_second
        return remote
    from transcribed.engine import Engine
    from transcribed.synthetic import build_full_size_checkpoint

    model = settings.model
    if args.synthetic_weights:
        folder = Path.home() / ".cache" / "transcribed" / f"synthetic-{args.synthetic_weights}"
        print(f"building random {args.synthetic_weights} weights in {folder}", file=sys.stderr)
        model = str(build_full_size_checkpoint(folder, args.synthetic_weights))
    engine = Engine.load(
        model,
        settings.device,
        allow_download=False,
        batch_size=settings.batch_size,
        chunk_seconds=settings.chunk_seconds,
        compile_decoder=settings.compile,
    )
    engine.fixed_tokens_per_second = per_second
    return engine


def _bench_pool(args: argparse.Namespace, settings: ModelSettings) -> int:
    from transcribed import pool_bench

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
        args.jobs_at_once,
        args.server_speed,
        progress=lambda line: print(line, file=sys.stderr),
        scratch=args.scratch,
    )
    _print(dataclasses.asdict(report), args.json, pool_bench.render(report))
    return 0
