"""`transcribed bench`: throughput end to end on this machine, with the configured model,
random weights, a stand-in for a GPU, or simulated vLLM servers (the measuring is
`commands.bench` and `commands.pool_bench`)."""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from transcribed.cli.shared import check_device, check_model_files, offline_unless, print_result
from transcribed.cli.verb import JSON, Verb, argument
from transcribed.engines import ENGINES, engine_kind
from transcribed.errors import ConfigError
from transcribed.settings import ModelSettings, load_settings

if TYPE_CHECKING:
    from transcribed.model.engine import Engine
    from transcribed.servers.vllm_engine import RemoteEngine

DEFAULT_BENCH_JOBS = 4  # recordings at once in `bench` without a GPU, as jobs_at_once's default


def bench(args: argparse.Namespace) -> int:
    keys = ("model", "device", "batch_size", "diarizer", "engine")
    overrides = {k: v for k in keys if (v := getattr(args, k))}
    settings = load_settings(args.config, ModelSettings, **overrides)
    if args.simulate_servers:
        return _bench_pool(args, settings)
    if args.stand_in:
        return _bench_stand_in(args, settings)
    if not args.synthetic_weights:
        check_model_files(settings)
    check_device(settings.device)
    offline_unless(settings.allow_download)
    if not engine_kind(settings).model_on_disk and args.synthetic_weights:
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
    print_result(dataclasses.asdict(report), args.json, bench.render(report))
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
    print_result(dataclasses.asdict(report), args.json, bench.render(report))
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
    kind = engine_kind(settings)
    if not kind.model_on_disk:  # the servers': sized for the jobs the bench runs at once
        import threading

        from transcribed.servers.vllm_engine import recording_batch

        window = recording_batch(settings, args.jobs_at_once or DEFAULT_BENCH_JOBS)
        remote = kind.recognizer(settings, window, threading.Event())
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
    print_result(dataclasses.asdict(report), args.json, pool_bench.render(report))
    return 0


VERB = Verb(
    "bench",
    help="measure throughput end to end on this machine (CPU or GPU)",
    description="Write a backlog of compressed recordings to a scratch folder and time "
    "the daemon's own pipeline from files on disk to published transcripts. Model load "
    "and warm-up are reported apart. --synthetic-weights measures the full-size model "
    "with random weights (no download); its transcripts are meaningless. --stand-in "
    "drives the pipeline with a model that costs what a GPU would and computes nothing.",
    run=bench,
    log_level="WARNING",  # the table, not every job
    arguments=(
        argument("--hours", type=float, default=0.5, help="audio in the backlog (0.5)"),
        argument(
            "--synthetic-weights",
            choices=["tiny", "1.7b", "0.6b"],
            help="random weights of this size instead of the configured model (tiny: the "
            "tests' model, for a dry run); built once under $XDG_CACHE_HOME/transcribed",
        ),
        argument(
            "--stand-in",
            metavar="GPU-SIZE",
            help="no model: a stand-in that costs what this GPU would for this size "
            "(h100-1.7b, h100-0.6b, h200-1.7b, h200-0.6b) and computes nothing",
        ),
        argument(
            "--stand-in-scale",
            type=float,
            default=1.0,
            help="slow the stand-in's GPU this many times: as if this machine's CPU were that "
            "much faster (1)",
        ),
        argument(
            "--tokens-per-second",
            type=float,
            help="tokens written per audio second (default 4 with --synthetic-weights; "
            "otherwise the model decides)",
        ),
        argument(
            "--jobs-at-once",
            type=int,
            help="recordings at once (default: from config; on a GPU, from its batch ceiling)",
        ),
        argument(
            "--batch-size",
            type=int,
            help="chunks each recording gathers per call (default: from config; on a GPU, "
            "from its batch ceiling)",
        ),
        argument("--model", help="hub id or local folder (default: from config)"),
        argument(
            "--diarizer", help="also label speakers with this diarizer (default: from config)"
        ),
        argument("--device", help="auto | cpu | cuda | cuda:N (default: from config)"),
        argument(
            "--engine",
            choices=sorted(ENGINES),
            help="the resident model, or the configured vLLM servers (default: from config)",
        ),
        argument(
            "--simulate-servers",
            metavar="K,K,…",
            help="measure the dispatcher instead: K stand-in vLLM servers (each its own "
            "process, next to no CPU), e.g. 1,2,4,8; reports what the daemon achieves with "
            "them beside its own ceiling (stand-ins of unbounded capacity)",
        ),
        argument(
            "--server-speed",
            type=float,
            default=5.0,
            help="each stand-in request's speed in audio seconds per second (5: a 30 s chunk "
            "takes 6 s; capacity = speed x vllm_max_in_flight)",
        ),
        argument("--scratch", type=Path, help="folder for the backlog (default: a temp one)"),
        JSON,
    ),
)
