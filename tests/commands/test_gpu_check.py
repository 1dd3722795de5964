"""The GPU check script runs here in its dry form: the same steps, on the CPU."""

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from transcribed.commands.bench import BenchReport

SCRIPT = Path(__file__).parents[2] / "gpu" / "check.sh"


def test_the_gpu_check_runs_dry_on_the_cpu_and_saves_its_json(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry"], env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "cuda-tests: ok" in summary and "bench-tiny-cpu: ok" in summary, summary
    assert summary.count("would run: bench --synthetic-weights") == 4  # 1.7b, 0.6b; eager, compile
    report = json.loads((tmp_path / "bench-tiny-cpu.json").read_text())
    assert set(report) == {field.name for field in fields(BenchReport)}
    assert len(list(tmp_path.iterdir())) <= 8  # what a run can bring back from $OUT
