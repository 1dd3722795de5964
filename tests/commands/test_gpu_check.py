"""The GPU check script runs here in its dry form: the same steps and code, on the CPU."""

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from transcribed.commands.bench import BenchReport

SCRIPT = Path(__file__).parents[2] / "gpu" / "check.sh"


def test_the_gpu_check_runs_dry_on_the_cpu_and_reports_in_one_file(tmp_path: Path) -> None:
    """Every step passes within its budget; results.json holds the sweep (tiny model, four
    batch sizes), the out-of-memory demo (recovered), and the bench, whose rows all ended
    (none retried in halves); at most 8 files come back."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CHECK_WORK": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry"], env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    verdicts = {step["step"]: step["verdict"] for step in results["steps"]}
    assert verdicts == {"cuda-tests": "ok", "sweep-tiny": "ok", "bench": "ok"}, (
        verdicts,
        (out / "check.log").read_text()[-3000:],
    )
    sweep = results["sweep-tiny"]
    assert [run["rows"] for run in sweep["batches"]] == [2, 3, 4, 6]
    assert all(run["steps"] > 0 and run["times_real_time"] > 0 for run in sweep["batches"])
    assert sweep["parameter_dtypes"] == {"float32": sweep["parameter_dtypes"]["float32"]}
    assert results["oom"]["recovered"] is True and results["oom"]["kind"] == "injected"
    bench = results["bench"]
    assert set(bench) == {field.name for field in fields(BenchReport)}
    assert bench["model_rows"] == bench["chunks"] > 0
    summary = (out / "summary.txt").read_text()
    assert "sweep-tiny" in summary and "6 rows" in summary and "recovered True" in summary
    assert summary in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["check.log", "results.json", "summary.txt"]
