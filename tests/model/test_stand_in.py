"""The stand-in engine: the real decode loop, costed as an H100 would cost it. With audio
waiting, the model thread keeps decoding steps at the ceiling and the modelled GPU busy."""

import json
import threading
import time

import numpy as np
import pytest

from running import cli
from transcribed.model.batching import SharedRecognizer
from transcribed.model.stand_in import GPUS, CostModelBackend, ModelShape, StandInEngine


def test_the_cost_model_follows_the_architecture() -> None:
    big, small = ModelShape.of("1.7b"), ModelShape.of("0.6b")
    assert big.decode_parameters == pytest.approx(1.72e9, rel=0.02)
    assert small.decode_parameters == pytest.approx(0.60e9, rel=0.02)
    assert big.kv_bytes_per_token == small.kv_bytes_per_token == 28 * 2 * 8 * 128 * 2
    h100 = CostModelBackend(GPUS["h100"], big)
    h200 = CostModelBackend(GPUS["h200"], big)
    assert h100.slots == 256 and h100.length >= big.prompt_tokens(30) + 264
    # A step reads the weights once and each row's cache: more rows cost more, but less
    # than proportionally; the faster memory of an H200 shows.
    assert (
        h100.step_seconds(16, 512) < h100.step_seconds(256, 512) < 16 * h100.step_seconds(16, 512)
    )
    assert h200.step_seconds(256, 512) < h100.step_seconds(256, 512)
    assert 2e-3 < h100.prefill_seconds([30.0]) / 1 < 20e-3  # host time bounds one row
    assert h100.prefill_seconds([30.0] * 64) / 64 == pytest.approx(3.8e-3, rel=0.2)


def _jobs(shared: SharedRecognizer, jobs: int, batches: int, rows: int) -> list[threading.Thread]:
    """Each job keeps two batches of 30 s chunks outstanding, as a recording with its next
    batch decoded does."""
    chunk = np.full(30 * 16_000, 0.1, np.float32)

    def job() -> None:
        with shared.job():
            for _ in range(batches):
                assert len(shared.transcribe([chunk] * rows)) == rows

    return [threading.Thread(target=job) for _ in range(2 * jobs)]


def test_with_audio_waiting_steps_run_at_the_ceiling_and_the_model_is_busy() -> None:
    """16 recordings of 32-chunk batches against an H100 stand-in for 1.7B (its clock
    halved to keep the test short): until the first recording runs dry, at least 90% of
    the decoding steps have every slot of the ceiling in use (a refill's worth of slots
    excepted) and the modelled GPU is busy at least 95% of the time."""
    engine = StandInEngine("h100", "1.7b", batch_size=32, scale=0.5)
    stop = threading.Event()
    shared = SharedRecognizer(engine, stop)
    model = threading.Thread(target=shared.serve)
    model.start()
    threads = _jobs(shared, jobs=8, batches=6, rows=32)
    started, busy_before = time.monotonic(), engine.backend.busy
    for thread in threads:
        thread.start()
    try:
        while all(thread.is_alive() for thread in threads):
            time.sleep(0.01)
        window = time.monotonic() - started
        busy = engine.backend.busy - busy_before
        counters = engine.counters
        full = counters.full_steps / counters.steps
    finally:
        for thread in threads:
            thread.join(60)
        stop.set()
        model.join(10)
    assert full >= 0.9, (full, counters)
    assert busy / window >= 0.95, (busy, window)


@pytest.mark.slow
def test_bench_drives_the_pipeline_with_a_stand_in(folders, tiny_model, tmp_path) -> None:
    """`bench --stand-in`: the daemon's pipeline against the stand-in, the GPU defaults
    taken from its ceiling, the busy share and the steps at the ceiling reported."""
    done = cli(
        "bench",
        "--stand-in",
        "h100-1.7b",
        "--stand-in-scale",
        "8",
        "--hours",
        "0.1",
        "--json",
        "--scratch",
        str(tmp_path),
        env=folders.env(tiny_model),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["batch_ceiling"] == 256 and report["synthetic"] is True
    assert report["model_rows"] == report["chunks"] > 0  # rows end: none retried
    assert 0 < report["model_busy_share"] <= 1 and report["steps_at_ceiling_share"] is not None
    assert report["stand_in_scale"] == 8 and report["stand_in_times_real_time"] > 0
    bad = cli("bench", "--stand-in", "h900-3b", env=folders.env(tiny_model))
    assert bad.returncode == 2 and "h100" in bad.stderr and "Traceback" not in bad.stderr
