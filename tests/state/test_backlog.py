"""The backlog's ETA: audio seconds over busy seconds, the running jobs' own estimates
included. Real SQLite, a clock the test moves."""

import itertools
from pathlib import Path

import pytest

from conftest import hashed
from transcribed.state.instance import Holder
from transcribed.state.overview import render_status, status_report
from transcribed.state.queue import JobQueue

NOW = 1_000_000.0
MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(tmp_path: Path, clock: Clock) -> JobQueue:
    return JobQueue(tmp_path / "jobs.sqlite3", clock=clock)


def _live(at: float) -> Holder:
    """A daemon that runs and showed it was alive at `at`: running jobs' progress moves."""
    return Holder(pid=1, since=NOW - 3600, alive_at=at, ready=True)


def _queued(jobs: JobQueue, name: str, size: int) -> int:
    job = jobs.begin_claim(name.encode(), f"{name}.work")
    jobs.finish_claim(job, hashed(name.encode().hex().ljust(64, "0")[:64], size))
    return job


def _finished(
    jobs: JobQueue, clock: Clock, name: str, size: int, audio: float, start: float, took: float
) -> None:
    """A job that ran from `start` for `took` seconds (wall clock) and was published."""
    clock.now = start - 1
    job = _queued(jobs, name, size)
    clock.now = start
    assert jobs.next_job() is not None
    clock.now = start + took
    jobs.mark_published(job, [f"/out/{name}.json"], audio, took)
    jobs.mark_done(job)


def test_the_only_running_job_and_the_backlog_agree(jobs, clock) -> None:
    """A big WAV after small MP3s and an idle gap: the backlog was 14x the job's own ETA."""
    for number in range(10):  # ten one-minute MP3s, 50 minutes ago
        _finished(jobs, clock, f"m{number}.mp3", MB, 60.0, NOW - 3000 + 6 * number, 6.0)
    wav = _queued(jobs, "big.wav", 100 * MB)
    clock.now = NOW - 150
    assert jobs.next_job() is not None
    clock.now = NOW - 10
    jobs.record_progress(wav, 1500.0, 1800.0)
    clock.now = NOW
    report = status_report(jobs, now=NOW, daemon=_live(NOW))
    own = report["running"][0]["eta_seconds"]
    assert own is not None and own < 60
    assert report["backlog"]["eta_seconds"] == own
    assert f"about {own // 60}:{own % 60:02d} to clear" in render_status(report)


def test_parallel_jobs_and_an_idle_hour_do_not_skew_the_pace(jobs, clock) -> None:
    """Four two-minute MP3s done side by side in 30 s, then 49 idle minutes: 16 audio
    seconds per busy second. Two more of the same size wait: about 15 s."""
    for number in range(4):
        _finished(jobs, clock, f"p{number}.mp3", 2 * MB, 120.0, NOW - 3000, 30.0)
    for number in range(2):
        _queued(jobs, f"q{number}.mp3", 2 * MB)
    clock.now = NOW
    backlog = status_report(jobs, now=NOW, daemon=_live(NOW))["backlog"]
    assert backlog["audio_per_second"] == 16.0
    assert backlog["audio_seconds"] == 240
    assert backlog["eta_seconds"] == 15


def test_a_queued_file_is_measured_by_the_bytes_of_its_own_kind(jobs, clock) -> None:
    """A WAV holds far more bytes per second than an MP3: each kind is estimated by its own
    finished jobs (here a WAV from yesterday, MP3s from the last hour)."""
    _finished(jobs, clock, "yesterday.wav", 32 * MB, 1024.0, NOW - 86400, 64.0)
    for number in range(4):
        _finished(jobs, clock, f"p{number}.mp3", 2 * MB, 120.0, NOW - 3000, 30.0)
    _queued(jobs, "next.wav", 16 * MB)
    clock.now = NOW
    backlog = status_report(jobs, now=NOW, daemon=_live(NOW))["backlog"]
    assert backlog["audio_seconds"] == 512  # half yesterday's WAV, not 16 MB of MP3 (960 s)
    assert backlog["eta_seconds"] == 32


def test_without_any_finished_job_the_eta_is_unknown_not_invented(jobs, clock) -> None:
    """Nothing has been measured yet: no ETA rather than a guess."""
    _queued(jobs, "first.mp3", MB)
    report = status_report(jobs, now=NOW, daemon=_live(NOW))
    assert report["backlog"]["eta_seconds"] is None
    assert "backlog" not in render_status(report)


def test_progress_between_answers_nears_the_next_answer_and_never_passes_it(jobs, clock) -> None:
    """`status` moves a running job's figure on at its pace between model answers, toward
    where the next answer reaches at least: an answer later than the pace predicted never
    makes the figure move back (seen in CI when the estimate followed the pace alone)."""
    job = _queued(jobs, "long.wav", 10 * MB)
    assert jobs.next_job() is not None
    clock.now = NOW + 30
    jobs.record_progress(job, 30.0, 900.0, 60.0)  # 1 s of audio a second; 30 s more in flight

    def shown(at: float) -> float:
        return status_report(jobs, now=at, daemon=_live(at))["running"][0]["audio_done_seconds"]

    looks = [shown(NOW + 30 + seconds) for seconds in (0, 5, 10, 20, 40, 80, 160, 600)]
    assert looks[0] == 30 and all(a < b for a, b in itertools.pairwise(looks[:6])), looks
    assert looks[1] > 33, "far from the next answer, it moves at about the job's pace"
    assert looks[-1] < 60, "however late the answer is, the figure stays short of it"
    clock.now = NOW + 630
    jobs.record_progress(job, 60.0, 900.0, None)  # answered; nothing with the model now
    assert shown(NOW + 640) == shown(NOW + 700) == 60 >= looks[-1]


def test_a_job_a_killed_daemon_left_running_stands_where_it_was(jobs, clock) -> None:
    """An adversary's finding: after kill -9, status said the daemon was not running and
    still moved the job's progress on and showed an ETA. Without a daemon at work (none, or
    one silent for long) it shows what the model confirmed, and no ETA."""
    job = _queued(jobs, "long.wav", 10 * MB)
    assert jobs.next_job() is not None
    clock.now = NOW + 30
    jobs.record_progress(job, 30.0, 900.0, 60.0)
    for daemon in (None, _live(NOW)):  # none; one last alive 100 s before the look
        running = status_report(jobs, now=NOW + 100, daemon=daemon)["running"][0]
        assert (running["audio_done_seconds"], running["eta_seconds"]) == (30.0, None)
    moving = status_report(jobs, now=NOW + 40, daemon=_live(NOW + 40))["running"][0]
    assert moving["audio_done_seconds"] > 30 and moving["eta_seconds"] is not None
