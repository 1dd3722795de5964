"""`jobs prune`: old done and failed records go, nothing else does; `jobs list` shows the
language. Real SQLite, the real CLI entry point."""

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import hashed
from running import cli
from transcribed.jobs.retention import parse_age, prune
from transcribed.state.queue import FailureKind, JobQueue, JobState

DAY = 86400.0


def _job(jobs: JobQueue, name: str, sha: str, work: str | None = None) -> int:
    job_id = jobs.begin_claim(name.encode(), work or f"{name}.work")
    jobs.finish_claim(job_id, hashed(sha, 10))
    return job_id


def _done(jobs: JobQueue, name: str, sha: str, language: str | None = "en") -> int:
    job_id = _job(jobs, name, sha)
    jobs.next_job()
    jobs.mark_published(job_id, [f"/out/{name}.json"], 2.0, 0.5, language=language)
    jobs.mark_done(job_id)
    return job_id


def test_prune_forgets_old_finished_jobs_only(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    now = time.time()
    jobs._now = lambda: now - 100 * DAY
    old_done = _done(jobs, "old.wav", "a")
    old_failed = _job(jobs, "bad.wav", "b")
    jobs.mark_failed(old_failed, "not audio", FailureKind.UNREADABLE)
    waited_on = _done(jobs, "original.wav", "c")
    old_queued = _job(jobs, "waiting.wav", "d")
    jobs._now = lambda: now - DAY
    recent = _done(jobs, "recent.wav", "e")
    copy = _job(jobs, "original.wav", "c", "again.work")  # a duplicate waiting for disposal
    assert jobs.get(copy).duplicate_of == waited_on

    assert prune(tmp_path / "jobs.sqlite3", now - 90 * DAY, dry_run=True) == {
        "done": 1,
        "failed": 1,
    }
    assert len(jobs.listing(limit=100)) == 6, "a dry run deletes nothing"
    assert prune(tmp_path / "jobs.sqlite3", now - 90 * DAY) == {"done": 1, "failed": 1}
    left = {job.id for job in jobs.listing(limit=100)}
    assert left == {waited_on, old_queued, recent, copy}
    assert old_done not in left and old_failed not in left

    # What pruning a done job costs: its content is no longer recognised.
    again = jobs.get(_job(jobs, "old.wav", "a", "old again.work"))
    assert again.state == JobState.QUEUED and again.duplicate_of is None


def test_a_finished_duplicate_keeps_its_record_without_the_link(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    now = time.time()
    jobs._now = lambda: now - 100 * DAY
    original = _done(jobs, "a.wav", "same")
    jobs._now = lambda: now
    copy = _job(jobs, "a.wav", "same", "again.work")
    jobs.mark_done(copy)  # disposed of, as the disposal thread does for a duplicate
    assert prune(tmp_path / "jobs.sqlite3", now - 90 * DAY) == {"done": 1, "failed": 0}
    assert jobs.get(copy).duplicate_of is None
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with pytest.raises(KeyError):
        jobs.get(original)


def test_ages_are_read_with_a_unit() -> None:
    assert parse_age("90d") == 90 * DAY and parse_age("12h") == 12 * 3600
    assert parse_age("2w") == 14 * DAY and parse_age("30min") == 1800
    assert parse_age("6mo") == 180 * DAY and parse_age("6 months") == 180 * DAY
    for wrong in ("90", "d", "-1d", "1y"):
        with pytest.raises(ValueError, match="not an age"):
            parse_age(wrong)


def test_a_bare_m_is_refused_with_both_meanings_spelt_out() -> None:
    """`6m` is six months to some and six minutes to others: neither is guessed."""
    with pytest.raises(ValueError) as refused:
        parse_age("6m")
    assert "ambiguous" in str(refused.value)
    assert "6min for 6 minutes" in str(refused.value) and "6mo for 6 months" in str(refused.value)


def test_prune_with_a_bare_m_forgets_nothing_from_the_cli(tmp_path) -> None:
    """The first-hour mistake end to end: `--older-than 1m` used to forget every job older
    than a minute; now it is refused and every record stays."""
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    now = time.time()
    jobs._now = lambda: now - 600
    _done(jobs, "ten minutes ago.wav", "a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    env["TRANSCRIBED_STATE_DIR"] = str(tmp_path)
    done = cli("jobs", "prune", "--older-than", "1m", env=env)
    assert done.returncode == 2 and "1min for 1 minute or 1mo for 1 month" in done.stderr
    assert "Traceback" not in done.stderr
    assert jobs.counts() == {"done": 1}


def test_jobs_list_shows_the_language_and_prune_works_from_the_cli(tmp_path) -> None:
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    now = time.time()
    jobs._now = lambda: now - 100 * DAY
    _done(jobs, "zh.wav", "a", language="zh")
    jobs._now = lambda: now
    _done(jobs, "silence.wav", "b", language=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    state = ("--state-dir", str(tmp_path))
    text = cli("jobs", "list", *state, env=env).stdout
    assert text.splitlines()[0].split() == ["ID", "STATE", "UPDATED", "LANG", "FILE"]
    assert " zh    zh.wav" in text and " -     silence.wav" in text
    rows = json.loads(cli("jobs", "list", "--json", *state, env=env).stdout)
    assert [row["language"] for row in rows] == [None, "zh"]
    pruned = cli("jobs", "prune", "--older-than", "90d", *state, env=env)
    assert pruned.returncode == 0 and "forgot 1 done and 0 failed jobs" in pruned.stdout
    assert [job.language for job in jobs.listing()] == [None]
