"""`transcribed bench --simulate-servers`: stand-in servers that cost next to nothing (each a
process of its own that never parses a request or decodes its audio), and the benchmark's
report beside the daemon's own ceiling (issue 24)."""

import io
import json
import os
import threading
import time

import numpy as np
import pytest
import soundfile

from support.running import cli
from transcribed.commands.pool_bench import PoolReport, PoolRun, fetch_stats, render, stand_ins
from transcribed.servers.chat_request import wav
from transcribed.servers.stand_in import audio_seconds
from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.settings import ModelSettings


def _flac(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * 16000), np.float32), 16000, format="FLAC")
    return buffer.getvalue()


def test_the_audio_length_comes_from_the_header_at_the_start_of_the_base64() -> None:
    import base64

    assert audio_seconds(base64.b64encode(wav(np.zeros(48000, np.float32)))) == 3.0
    assert audio_seconds(base64.b64encode(_flac(2.5))) == 2.5
    assert audio_seconds(b"bm90IGF1ZGlvIGF0IGFsbCwganVzdCB0ZXh0IGFuZCBtb3JlIHRleHQ=") is None
    assert audio_seconds(b"!!!") is None


def test_a_stand_in_answers_after_the_audio_over_its_speed_and_counts_what_it_was_sent() -> None:
    """Each in its own process: the daemon's requests, a 30 s chunk answered 1.5 s later at
    speed 20, several at once; the bytes and seconds it heard are counted."""
    with stand_ins(1, speed=20.0) as [url]:
        settings = ModelSettings(engine="vllm", vllm_servers=[url], model="simulated")
        engine = RemoteEngine.connect(settings, 8, threading.Event())
        try:
            chunk = (0.1 * np.random.default_rng(0).standard_normal(30 * 16000)).astype("f4")
            started = time.monotonic()
            texts = engine.transcribe([chunk] * 4, context="a long glossary " * 200)
            took = time.monotonic() - started
        finally:
            engine.pool.close()
        stats = fetch_stats(url)
    assert [text.text for text in texts] == ["hello"] * 4
    assert 1.5 <= took < 6  # the four at once (not one after another), each 30 s / 20
    assert stats["audio_seconds"] == pytest.approx(4 * 30 + 0.5)  # and the probe's silence
    assert stats["most_in_flight"] == 4 and stats["answered"] == 5
    assert stats["body_bytes"] > 4 * 30 * 32000 * 4 / 3  # base64 16-bit PCM, and the JSON


def test_the_report_says_what_was_met_against_which_bound() -> None:
    def run(servers: int, capacity: float, ceiling: float, achieved: float) -> PoolRun:
        bound = min(capacity, ceiling)
        return PoolRun(
            servers=servers,
            capacity_times_real_time=capacity,
            ceiling_times_real_time=ceiling,
            target_times_real_time=0.9 * bound,
            times_real_time=achieved,
            share_of_target=round(achieved / bound, 3),
            busy_while_backlog=0.95,
            busy_whole_run=0.93,
            most_in_flight=8,
            window_per_recording=8,
            wire_bytes_per_audio_second=42_700,
            wall_seconds=10.0,
            load_average=1.2,
            ceiling_daemon_cpu_per_audio_hour=1.5,
            ceiling_decoders_cpu_per_audio_hour=3.0,
        )

    report = PoolReport(
        recordings=16,
        audio_seconds=7200,
        speed=30,
        max_in_flight=8,
        jobs_at_once=4,
        cores=2,
        no_model_times_real_time=1900,
        runs=[run(1, 240, 1700, 230), run(8, 1920, 1700, 1400)],
    )
    table = render(report)
    assert "K=1 met" in table and "K=8 MISSED" in table  # 1,400 is 82% of the ceiling
    assert "850x per CPU core" in table and "its decoders 3.0 s" in table


@pytest.mark.slow
def test_the_benchmark_runs_the_daemon_against_stand_ins_and_its_own_ceiling(
    folders, tiny_model, tmp_path
) -> None:
    env = folders.env(tiny_model, TRANSCRIBED_VLLM_MAX_IN_FLIGHT="4")
    options = ["--simulate-servers", "1,2", "--server-speed", "30", "--hours", "0.05"]
    done = cli("bench", *options, "--json", "--scratch", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cores"] == len(os.sched_getaffinity(0))
    assert [run["servers"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["capacity_times_real_time"] == run["servers"] * 4 * 30
        assert run["ceiling_times_real_time"] > 0 and run["times_real_time"] > 0
        assert run["most_in_flight"] <= 4  # never past vllm_max_in_flight on a server
        assert 40_000 < run["wire_bytes_per_audio_second"] < 50_000  # base64 16-bit 16 kHz
        assert run["ceiling_daemon_cpu_per_audio_hour"] > 0
        assert run["ceiling_decoders_cpu_per_audio_hour"] > 0
    published = (tmp_path / "servers-2-30.0" / "outbox").glob("*.json")
    assert len(list(published)) == report["recordings"] == 2
