"""`transcribed bench` on the CPU with the tiny checkpoint, and the full-size architectures it
builds for `--synthetic-weights`."""

import json
import re
import shutil

import pytest
import torch

from support.running import cli
from transcribed.commands.bench import BenchReport, ffmpeg_program_seconds, render
from transcribed.model.synthetic import FULL_SIZES, _config, _tokenizer


@pytest.mark.slow
def test_bench_measures_a_backlog_end_to_end_on_the_cpu(
    folders, tiny_model, tiny_diarizer, tmp_path
) -> None:
    done = cli(
        "bench",
        "--hours",
        "0.05",
        "--jobs-at-once",
        "2",
        "--json",
        "--scratch",
        str(tmp_path),
        env=folders.env(tiny_model),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["recordings"] >= 2 and report["audio_seconds"] == pytest.approx(180, abs=1)
    assert report["times_real_time"] > 0 and report["wall_seconds"] > 0
    assert 0 < report["model_seconds"] < report["wall_seconds"]
    assert report["gpu_memory_peak_mib"] is None and report["host_rss_peak_mib"] > 0
    assert report["synthetic"] is False and report["device"] == "cpu"
    # Every recording went through the whole pipeline: transcripts published, originals moved.
    assert len(list((tmp_path / "model" / "outbox").glob("*.json"))) == report["recordings"]
    assert len(list((tmp_path / "model" / "archive").iterdir())) == report["recordings"]
    assert report["pipeline_alone_times_real_time"] > report["times_real_time"]
    assert report["batch_ceiling"] == report["batch_size"]  # the CPU: no GPU memory to fill
    # The ffmpeg program's own time on the same files, where it is installed.
    assert (report["ffmpeg_program_seconds"] is None) == (shutil.which("ffmpeg") is None)
    assert report["diarizer"] is None  # none configured: no speaker labels, no figures
    # With speaker labels, the diarizer's own cost is reported apart.
    diarizer = ("--diarizer", str(tiny_diarizer), "--json")
    labelled = json.loads(
        cli("bench", "--hours", "0.01", *diarizer, env=folders.env(tiny_model)).stdout
    )
    assert labelled["diarizer"] == str(tiny_diarizer)
    assert 0 < labelled["diarizer_seconds"] < labelled["wall_seconds"]
    assert labelled["diarizer_times_real_time"] > 0 and labelled["diarizer_load_seconds"] > 0
    table = render(BenchReport(**labelled))
    assert "x real time" in table and "NOTE" not in table
    assert re.search(r"in the diarizer +\d", table) and "diarizer load" in table


@pytest.mark.parametrize(("size", "billions"), [("1.7b", 2.0), ("0.6b", 0.78)])
def test_synthetic_weights_have_the_published_size(size: str, billions: float) -> None:
    """Parameter counts of the architectures built on the meta device (no memory used)."""
    from transformers import Qwen3ASRForConditionalGeneration

    audio, text = FULL_SIZES[size]
    config = _config(_tokenizer(), audio=audio, text=text | {"vocab_size": 151_936})
    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters()) / 1e9
    assert count == pytest.approx(billions, rel=0.1)


def test_an_ffmpeg_that_fails_on_the_files_gives_no_baseline(tmp_path, monkeypatch) -> None:
    """A broken ffmpeg must not stop the bench, nor count as a (too fast) baseline."""
    broken = tmp_path / "bin" / "ffmpeg"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(broken.parent))
    assert ffmpeg_program_seconds([tmp_path / "a.ogg"]) is None
