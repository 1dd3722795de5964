"""The measurements `gpu/check.sh` makes on a lent GPU, one step each, as JSON pieces that
`report` gathers into one results.json and a short table.

    python -m transcribed.commands.gpu_check sweep SIZE --batches 16,64,128,256 --out F.json
    python -m transcribed.commands.gpu_check sweep SIZE ... --oom-rows 64 --oom-out oom.json
    python -m transcribed.commands.gpu_check report PIECES --out results.json

`sweep` builds random weights of SIZE once (drawn on the GPU), loads them through the
daemon's own loader and, for each batch of 30 s chunks, times the encoder and prefill, the
decoding steps (the CUDA graphs captured in a first, untimed run), the peak memory and the
whole call's speed, each row writing 4 tokens per audio second as `bench
--synthetic-weights` does. `--oom-rows` then leaves too little GPU memory free on purpose
(on a CPU: an injected out-of-memory) and checks that every row is still answered. With
SIZE `tiny` and `--device cpu`, the same code runs on a CPU (the dry run).
"""

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_SECONDS = 30.0
TOKENS_PER_SECOND = 4.0


def _engine(size: str, device: str) -> Any:
    from transcribed.model.engine import Engine
    from transcribed.model.synthetic import build_synthetic, synthetic_folder

    folder = build_synthetic(synthetic_folder(size), size, device=device)
    engine = Engine.load(str(folder), device, allow_download=False, batch_size=16)
    engine.fixed_tokens_per_second = TOKENS_PER_SECOND
    return engine


def _chunks(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    one = (0.05 * rng.standard_normal(int(CHUNK_SECONDS * 16_000))).astype(np.float32)
    return [one] * count


def sweep(size: str, device: str, batches: list[int]) -> tuple[Any, dict[str, Any]]:
    """The engine, and what it measured."""
    import torch

    from transcribed.model.synthetic import build_synthetic, synthetic_folder

    started = time.perf_counter()
    build_synthetic(synthetic_folder(size), size, device=device)
    built = time.perf_counter() - started
    started = time.perf_counter()
    engine = _engine(size, device)
    loaded = time.perf_counter() - started
    dtypes = Counter(str(p.dtype).removeprefix("torch.") for p in engine._model.parameters())
    runs = [_timed_batch(engine, rows) for rows in batches if rows <= max(engine.ceiling, 1)]
    steps = engine.loop._backend.steps
    return engine, {
        "size": size,
        "device": engine.info.device,
        "gpu": torch.cuda.get_device_name() if engine.info.device.startswith("cuda") else None,
        "build_seconds": round(built, 2),
        "load_seconds": round(loaded, 2),
        "ceiling": engine.ceiling,
        "cache_tokens": engine.cache_length,
        "memory": engine.memory,
        "parameter_dtypes": dict(dtypes),
        "encoder_attention": engine.encoder.attention.name,
        "cuda_graphs": bool(steps.graphs),
        "batches": runs,
        "implied": _implied(size, runs, engine.cache_length),
    }


def _timed_batch(engine: Any, rows: int) -> dict[str, Any]:
    """One call of `rows` 30 s chunks, after an untimed one that captured its shapes."""
    import torch

    chunks = _chunks(rows)
    engine.transcribe(chunks)  # captures the step shapes; loads the kernels
    backend = engine.loop._backend
    prefill = backend.prefill
    spent = [0.0]

    def timed_prefill(*args: Any) -> Any:
        begun = time.perf_counter()
        try:
            return prefill(*args)  # returns host values: the GPU is done when it returns
        finally:
            spent[0] += time.perf_counter() - begun

    cuda = engine.info.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps_before = engine.counters.steps
    backend.prefill = timed_prefill
    begun = time.perf_counter()
    try:
        engine.transcribe(chunks)
    finally:
        backend.prefill = prefill
    total = time.perf_counter() - begun
    steps = engine.counters.steps - steps_before
    decode = total - spent[0]
    return {
        "rows": rows,
        "seconds": round(total, 4),
        "prefill_seconds": round(spent[0], 4),
        "prefill_ms_per_chunk": round(1000 * spent[0] / rows, 3),
        "steps": steps,
        "step_ms": round(1000 * decode / max(steps, 1), 3),
        "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "times_real_time": round(rows * CHUNK_SECONDS / total, 1),
    }


def _implied(size: str, runs: list[dict[str, Any]], cache_tokens: int) -> dict[str, Any]:
    """The bandwidth and FLOP/s the largest batch's timings imply, in the stand-in's cost
    model (`stand_in.ModelShape`): what to put in `stand_in.GPUS` once measured."""
    from transcribed.model.stand_in import ModelShape
    from transcribed.model.synthetic import FULL_SIZES

    if size not in FULL_SIZES or not runs:
        return {}
    shape, run = ModelShape.of(size), runs[-1]
    prompt = shape.prompt_tokens(CHUNK_SECONDS)
    length = prompt + math.ceil(CHUNK_SECONDS * TOKENS_PER_SECOND) / 2  # the average row
    step_bytes = 2 * shape.decode_parameters + run["rows"] * length * shape.kv_bytes_per_token
    prefill_flops = (
        shape.audio_flops_per_second * CHUNK_SECONDS + shape.text_flops_per_token * prompt
    )
    return {
        "decode_bandwidth_tb_s": round(step_bytes / (run["step_ms"] / 1000) / 1e12, 2),
        "prefill_tflop_s": round(prefill_flops / (run["prefill_ms_per_chunk"] / 1000) / 1e12, 1),
    }


def oom(engine: Any, rows: int) -> dict[str, Any]:
    """Rows that do not fit: a real out-of-memory on a GPU with most of its memory taken,
    an injected one on a CPU. Every row must still be answered."""
    import torch

    from transcribed import faults

    rows = min(rows, engine.ceiling)
    splits_before = engine.counters.out_of_memory
    cuda = engine.info.device.startswith("cuda")
    ballast = _take_memory(engine) if cuda else None
    if not cuda:
        faults._rules = faults._parse("model.batch@1=oom")
    begun = time.perf_counter()
    try:
        texts = engine.transcribe(_chunks(rows))
        error = None
    except Exception as failure:  # the check reports it rather than dying
        texts, error = [], f"{type(failure).__name__}: {failure}"
    seconds = time.perf_counter() - begun
    del ballast
    if cuda:
        torch.cuda.empty_cache()
    return {
        "kind": "real" if cuda else "injected",
        "rows": rows,
        "answered": len(texts),
        "out_of_memory_splits": engine.counters.out_of_memory - splits_before,
        "rows_at_once_after": engine.loop.capacity,
        "seconds": round(seconds, 2),
        "error": error,
        "recovered": error is None
        and len(texts) == rows
        and engine.counters.out_of_memory > splits_before,
    }


def _take_memory(engine: Any) -> Any:
    """Fill the GPU but for room to prefill about 8 rows: a full prefill group (64 rows)
    then runs out of memory, and halving brings it within reach."""
    import torch

    free, _total = torch.cuda.mem_get_info()
    per_row = engine.memory.get("prefill_mib_per_chunk", 100) * 2**20
    room = int(8 * per_row + engine.memory.get("prefill_fixed_mib", 256) * 2**20 + 2**29)
    return torch.empty(max(free - room, 0), dtype=torch.uint8, device="cuda")


def report(pieces: Path) -> dict[str, Any]:
    """Every piece in `pieces` (NAME.json) under its name; `steps.txt` (one line per step:
    name, verdict, seconds, budget) as `steps`."""
    results: dict[str, Any] = {}
    for piece in sorted(pieces.glob("*.json")):
        try:
            results[piece.stem] = json.loads(piece.read_text())
        except ValueError as error:
            results[piece.stem] = {"unreadable": str(error)}
    lines = (
        (pieces / "steps.txt").read_text().splitlines() if (pieces / "steps.txt").exists() else []
    )
    results["steps"] = [
        dict(zip(("step", "verdict", "seconds", "budget"), line.split("|"), strict=False))
        for line in lines
    ]
    return results


def table(results: dict[str, Any]) -> str:
    """The short table check.sh prints: the step verdicts, then speed per size and batch."""
    out = [
        f"{step['step']:<16}{step['verdict']:<30}{step.get('seconds', '?'):>5} s "
        f"of {step.get('budget', '?')} s"
        for step in results.get("steps", [])
    ]
    for name, piece in results.items():
        if name.startswith("sweep-") and isinstance(piece, dict) and "batches" in piece:
            out += _sweep_lines(piece)
    oom_piece = results.get("oom")
    if isinstance(oom_piece, dict) and "recovered" in oom_piece:
        out.append(
            f"out of memory ({oom_piece['kind']}): recovered {oom_piece['recovered']}, "
            f"{oom_piece['answered']}/{oom_piece['rows']} rows answered, "
            f"{oom_piece['out_of_memory_splits']} halvings"
        )
    bench = results.get("bench")
    if isinstance(bench, dict) and "times_real_time" in bench:
        out.append(
            f"bench {bench['model']}: {bench['times_real_time']:,.0f}x real time, model busy "
            f"{bench['model_busy_share']:.0%}, {bench['chunks']} chunks, "
            f"{bench['model_rows']} rows to the model"
        )
    return "\n".join(out)


def _sweep_lines(piece: dict[str, Any]) -> list[str]:
    memory = piece["memory"].get("per_chunk_mib", "?")
    head = (
        f"{piece['size']}: ceiling {piece['ceiling']} ({memory} MiB a chunk), load "
        f"{piece['load_seconds']} s, graphs {piece['cuda_graphs']}, encoder "
        f"{piece['encoder_attention']}, {piece['implied'] or 'no implied figures'}"
    )
    return [head] + [
        f"  {run['rows']:>4} rows: prefill {run['prefill_ms_per_chunk']:.2f} ms a chunk, step "
        f"{run['step_ms']:.2f} ms, {run['times_real_time']:,.0f}x real time, peak "
        f"{run['peak_mib']} MiB"
        for run in piece["batches"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transcribed.commands.gpu_check")
    verbs = parser.add_subparsers(dest="verb", required=True)
    measure = verbs.add_parser("sweep", help="build, load and time random weights of SIZE")
    measure.add_argument("size", help="tiny, 0.6b or 1.7b")
    measure.add_argument("--device", default="cuda")
    measure.add_argument("--out", type=Path, required=True)
    measure.add_argument("--batches", default="16,64,128,256")
    measure.add_argument("--oom-rows", type=int, help="then run out of memory with this many")
    measure.add_argument("--oom-out", type=Path)
    gather = verbs.add_parser("report", help="gather the pieces into one file and a table")
    gather.add_argument("pieces", type=Path)
    gather.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.verb == "report":
        results = report(args.pieces)
        args.out.write_text(json.dumps(results, indent=2))
        print(table(results))
        return 0
    batches = [int(part) for part in args.batches.split(",")]
    engine, measured = sweep(args.size, args.device, batches)
    args.out.write_text(json.dumps(measured, indent=2))
    if args.oom_rows and args.oom_out:
        args.oom_out.write_text(json.dumps(oom(engine, args.oom_rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
