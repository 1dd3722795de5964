"""What `doctor` and the job commands say, in words a user understands: plurals, no CUDA
advice for a CPU chosen on purpose, hook programs checked, whole sentences (issue 21)."""

import json
import re
import subprocess

import pytest
import torch

from conftest import hashed
from running import CLI, cli
from transcribed.commands.doctor import Finding, render
from transcribed.state.overview import OperatorError, forget
from transcribed.state.queue import JobQueue


def _doctor(env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "doctor", *options], env=env, capture_output=True, text=True, timeout=120
    )


def _findings(done: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    return {row["check"]: row for row in json.loads(done.stdout)}


def test_doctor_counts_in_words_and_gives_no_gpu_advice_for_device_cpu(folders, tiny_model) -> None:
    """ "1 inbox folder", "1 warning", not "1 inbox folders", "1 warnings"; and choosing the
    CPU is a choice: no warning, no "install CUDA torch"."""
    text = _doctor(folders.env(tiny_model, TRANSCRIBED_DEVICE="cpu")).stdout
    assert re.search(r"ok +inotify .* for 1 inbox folder\n", text), text
    assert re.search(r"ok +gpu ", text) and "CUDA" not in text, text
    assert "1 warnings" not in text
    one = render([Finding("disk", "warn", "low"), Finding("gpu", "ok", "fine")])
    assert one.endswith("0 failed, 1 warning")
    assert render([Finding("a", "warn", "x"), Finding("b", "warn", "y")]).endswith("2 warnings")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_cpu_fallback_warning_says_how_to_choose_the_cpu(folders, tiny_model) -> None:
    """device = "auto" on a machine without a GPU warns on every run: the hint says how to
    choose the CPU on purpose, which ends the warning."""
    found = _findings(_doctor(folders.env(tiny_model, TRANSCRIBED_DEVICE="auto"), "--json"))
    assert found["gpu"]["level"] == "warn"
    assert 'set device = "cpu"' in found["gpu"]["hint"]


def test_doctor_fails_hook_programs_that_cannot_run(folders, tiny_model, tmp_path) -> None:
    """`on_done = ["/nonexistent/notify"]` used to pass; a script without x is caught too."""
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    env = folders.env(
        tiny_model, TRANSCRIBED_ON_DONE="/nonexistent/notify", TRANSCRIBED_ON_FAILED=str(script)
    )
    done = _doctor(env, "--json")
    found = _findings(done)
    assert done.returncode == 1 and found["hooks"]["level"] == "fail"
    assert "on_done: /nonexistent/notify does not exist" in found["hooks"]["message"]
    assert f"on_failed: {script} is not executable" in found["hooks"]["message"]


def test_run_refuses_a_hook_program_that_does_not_exist(folders, tiny_model) -> None:
    """One line before anything starts, instead of a failed hook per recording."""
    done = cli("run", env=folders.env(tiny_model, TRANSCRIBED_ON_DONE="/nonexistent/notify"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "on_done: /nonexistent/notify does not exist" in done.stderr


def test_forgetting_a_running_job_says_a_whole_sentence(tmp_path) -> None:
    """ "job 1 is running; only done or failed jobs" stopped mid-sentence."""
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    job = jobs.begin_claim(b"talk.wav", "w1")
    jobs.finish_claim(job, hashed("ab" * 32, 10))
    jobs.next_job()
    with pytest.raises(OperatorError) as refused:
        forget(jobs, job)
    assert f"job {job} is running; only done or failed jobs can be forgotten" in str(refused.value)
