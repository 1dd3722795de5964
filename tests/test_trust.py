"""Faults nobody scripted, found by trying the daemon the way machines and people break it
(issue "Trust"), each against the real daemon process. Findings 4, 8, 9, 11, 13, 14 and 15
are tested closer to their code (test_worker, test_queue, test_intake, test_disposal,
test_outbox); the chaos campaign (test_chaos.py) mixes them all."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support.invariants import digest
from support.recordings import speechlike, write_pyav, write_soundfile
from support.running import CLI, Daemon, cli, events

pytestmark = pytest.mark.slow


def _env(folders, tiny_model, **extra: str) -> dict[str, str]:
    return folders.env(
        tiny_model, TRANSCRIBED_SETTLE_SECONDS="0.3", TRANSCRIBED_RETRY_SECONDS="0.3", **extra
    )


def _status(env: dict[str, str]) -> dict:
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _drop(staging: Path, inbox: Path, *paths: Path) -> dict[str, str]:
    """Move finished files in from outside the inbox at once; name -> sha256."""
    dropped = {}
    for path in paths:
        dropped[path.name] = digest(path)
        shutil.move(path, inbox / path.name)
    return dropped


def _pending(folders) -> list[Path]:
    return [p for p in folders.inbox.rglob("*") if p.is_file()]


def _event_names(log: Path) -> list[str]:
    return [str(event["event"]) for event in events(log)]


def test_five_recordings_with_one_stem_get_five_transcripts_at_once(
    folders, tiny_model, tmp_path
) -> None:
    """Finding 1: meeting.flac/.m4a/.mp3/.ogg/.wav dropped together with jobs_at_once = 4:
    three transcripts were overwritten and `jobs list` pointed at other recordings' files."""
    staging = tmp_path / "staging"
    staging.mkdir()
    made = [
        write_soundfile(staging / "meeting.flac", 3, 16000, "PCM_16", "FLAC", seed=1),
        write_pyav(staging / "meeting.m4a", 3.5, 44100, "aac", "mp4"),
        write_soundfile(staging / "meeting.mp3", 4, 44100, "MPEG_LAYER_III", "MP3", seed=3),
        write_soundfile(staging / "meeting.ogg", 4.5, 44100, "VORBIS", "OGG", seed=4),
        write_soundfile(staging / "meeting.wav", 5, 16000, "PCM_16", seed=5),
    ]
    env = _env(folders, tiny_model, TRANSCRIBED_JOBS_AT_ONCE="4")
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        dropped = _drop(staging, folders.inbox, *made)
        daemon.wait_for(lambda: _status(env)["counts"].get("done") == 5, 120)
    finally:
        assert daemon.stop() == 0
    transcripts = sorted(folders.outbox.glob("meeting*.json"))
    assert len(transcripts) == 5
    sources = {json.loads(path.read_text())["source"]["name"]: path for path in transcripts}
    assert sorted(sources) == sorted(dropped)
    for row in json.loads(cli("jobs", "list", "--json", env=env).stdout):
        [own] = [output for output in row["outputs"] if output.endswith(".json")]
        assert json.loads(Path(own).read_text())["source"]["name"] == row["file"]
        assert json.loads(Path(own).read_text())["source"]["sha256"] == dropped[row["file"]]


def test_an_inbox_renamed_mid_job_strands_nothing_and_is_reopened(
    folders, tiny_model, tmp_path
) -> None:
    """Findings 2 and 6: the inbox renamed (and a new one made) while a job ran: the job was
    marked done with no archive copy (under delete: reported erased), the recording stayed in
    the old work folder forever, and new files failed to claim on every rescan."""
    staging = tmp_path / "staging"
    staging.mkdir()
    log = tmp_path / "daemon.log"
    env = _env(
        folders,
        tiny_model,
        TRANSCRIBED_JOBS_AT_ONCE="1",
        TRANSCRIBED_RESCAN_SECONDS="2",
        TRANSCRIBED_TEST_FAULTS="outbox.fsynced~first=sleep4",
    )
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        _drop(staging, folders.inbox, write_soundfile(staging / "first.wav", 2, 16000, "PCM_16"))
        daemon.wait_for(lambda: "job.started" in _event_names(log), 30)
        time.sleep(1)  # transcribing; the fault holds it just after publishing
        folders.inbox.rename(tmp_path / "inbox.old")
        folders.inbox.mkdir()
        daemon.wait_for(lambda: "inbox.replaced" in _event_names(log), 30)
        second = write_soundfile(staging / "second.wav", 2, 16000, "PCM_16", seed=2)
        _drop(staging, folders.inbox, second)
        daemon.wait_for(lambda: (folders.archive / "second.wav").exists(), 60)
        daemon.wait_for(lambda: _status(env)["counts"].get("failed") == 1, 30)
        report = _status(env)
    finally:
        assert daemon.stop() == 0
    [failed] = report["failed"]
    assert failed["file"] == "first.wav" and failed["kind"] == "vanished"
    assert "vanished from the work folder" in failed["reason"]
    assert report["counts"] == {"done": 1, "failed": 1}  # no leaked claiming rows
    assert report["daemon"] == {"running": True, "silent_seconds": None} | {
        key: report["daemon"][key] for key in ("pid", "since", "up_seconds")
    }
    assert not (folders.archive / "first.wav").exists()
    left = list((tmp_path / "inbox.old/.transcribed-work").iterdir())
    assert len(left) == 1 and left[0].name.endswith(".first.wav")  # untouched, and reported
    [replaced] = [e for e in events(log) if e["event"] == "inbox.replaced"]
    assert replaced["files_left"] == 1 and "inbox.old" in str(replaced["old_work_folder"])
    assert (folders.outbox / "first.json").exists()  # its transcript was durable: kept


def _stop_with_jobs_claimed(env: dict[str, str], log: Path, folders, names: list[str]) -> None:
    """A daemon that claims everything, publishes one transcript and is killed before it
    disposes of it: the others stay queued in the work folder."""
    daemon = Daemon({**env, "TRANSCRIBED_TEST_FAULTS": "db.disposal_target@1=exit"}, log)
    daemon.wait_exit(120)
    work = folders.inbox / ".transcribed-work"
    assert len(list(work.iterdir())) == len(names)


def test_a_lost_or_damaged_database_strands_nothing_and_transcribes_nothing_twice(
    folders, tiny_model, tmp_path
) -> None:
    """Finding 3: the state database deleted while stopped (start said ready with no jobs,
    the claimed recordings stayed in the work folder forever), or overwritten with garbage
    (a traceback at every start: a restart loop)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    env = _env(folders, tiny_model, TRANSCRIBED_JOBS_AT_ONCE="1")
    log = tmp_path / "daemon.log"
    names = [f"talk {n}.wav" for n in range(3)]
    dropped = _drop(
        staging,
        folders.inbox,
        *(
            write_soundfile(staging / name, 2, 16000, "PCM_16", seed=n)
            for n, name in enumerate(names)
        ),
    )
    _stop_with_jobs_claimed(env, log, folders, names)
    database = folders.state / "jobs.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.write_bytes(b"this is not a database " * 200)

    refused = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "damaged" in refused.stderr and "transcribed recover" in refused.stderr
    recovered = cli("recover", env=env)
    assert recovered.returncode == 0, recovered.stderr
    assert "1 published transcripts" in recovered.stdout
    assert "3 recordings in the work folder" in recovered.stdout

    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: len(list(folders.archive.iterdir())) == 3, 120)
    finally:
        assert daemon.stop() == 0
    transcripts = {
        json.loads(p.read_text())["source"]["name"] for p in folders.outbox.glob("*.json")
    }
    assert transcripts == set(names) and len(list(folders.outbox.glob("*.json"))) == 3
    assert sorted(digest(p) for p in folders.archive.iterdir()) == sorted(dropped.values())
    assert list((folders.inbox / ".transcribed-work").iterdir()) == []
    models_run = [e for e in events(log) if e["event"] == "job.published" and not e["reused"]]
    assert len(models_run) == 3, "each recording transcribed exactly once, across both runs"

    # Lost outright (deleted while stopped): the same, without any command.
    more = [
        write_soundfile(staging / f"more {n}.wav", 2, 16000, "PCM_16", seed=10 + n)
        for n in range(2)
    ]
    _drop(staging, folders.inbox, *more)
    _stop_with_jobs_claimed(env, log, folders, [p.name for p in more])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: len(list(folders.archive.iterdir())) == 5, 120)
        assert _status(env)["counts"] == {"done": 5}
    finally:
        assert daemon.stop() == 0
    assert "recover.database_rebuilt" in _event_names(log)
    assert len(list(folders.outbox.glob("*.json"))) == 5


def test_a_database_deleted_under_the_running_daemon_is_said_and_mended_by_a_restart(
    folders, tiny_model, tmp_path
) -> None:
    """Found in review: the state folder emptied while the daemon ran. It went on writing to
    a database nobody could see (`status`: "no job database") and said it was healthy."""
    env = _env(folders, tiny_model)
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        write_soundfile(folders.inbox / ".a.wav", 2, 16000, "PCM_16").rename(
            folders.inbox / "a.wav"
        )
        daemon.wait_for(lambda: (folders.archive / "a.wav").exists(), 60)
        for part in folders.state.glob("jobs.sqlite3*"):
            part.unlink()
        daemon.wait_for(lambda: "health.unhealthy" in _event_names(log), 30)
    finally:
        assert daemon.stop() == 0
    problem = next(e["problem"] for e in events(log) if e["event"] == "health.unhealthy")
    assert "job database" in problem and "restart" in problem
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        assert _status(env)["counts"] == {"done": 1}  # indexed again from the disk
    finally:
        assert daemon.stop() == 0


def test_a_second_daemon_on_the_same_state_folder_refuses_to_start(
    folders, tiny_model, tmp_path
) -> None:
    """Finding 5: it requeued the first one's running job, transcribed it again, ran hooks
    twice and deleted the first one's temp files."""
    env = _env(folders, tiny_model)
    first = Daemon(env, tmp_path / "first.log")
    try:
        first.wait_ready()
        second = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"PID {first.process.pid}" in second.stderr
        write_soundfile(folders.inbox / ".a.wav", 2, 16000, "PCM_16").rename(
            folders.inbox / "a.wav"
        )
        first.wait_for(lambda: (folders.archive / "a.wav").exists(), 60)
        assert _status(env)["daemon"]["pid"] == first.process.pid
    finally:
        assert first.stop() == 0
    assert _status(env)["daemon"] == {"running": False}
    assert "not running" in cli("status", env=env).stdout


def test_a_file_in_place_of_the_work_folder_is_refused_with_one_line(
    folders, tiny_model, tmp_path
) -> None:
    """Finding 10: anyone who can write to the drop folder could stop the service with a
    traceback at every start."""
    (folders.inbox / ".transcribed-work").write_text("mischief")
    done = subprocess.run(
        [*CLI, "run"],
        env=_env(folders, tiny_model),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "not the daemon's work folder" in line and "move it away" in line
    assert (folders.inbox / ".transcribed-work").read_text() == "mischief"


def _float_wav(path: Path, damage: dict[int, float]) -> Path:
    samples = speechlike(4, 16000)
    for index, value in damage.items():
        samples[index] = value
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path


def _cut_short(path: Path) -> Path:
    """A recorder that crashed: the header promises more than the file holds."""
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size * 2 // 3)
    return path


def test_damaged_samples_and_recordings_that_never_finish_are_transcribed_or_failed(
    folders, tiny_model, tmp_path
) -> None:
    """Finding 7: one NaN among real speech gave `no_speech` (and the original was disposed
    of); a huge value printed a raw RuntimeWarning into the JSON log. Finding 12: a recording
    that never finished waited in the inbox forever, unseen by `status`."""
    staging = tmp_path / "staging"
    staging.mkdir()
    env = _env(folders, tiny_model, TRANSCRIBED_STALLED_SECONDS="4", TRANSCRIBED_RESCAN_SECONDS="1")
    log = tmp_path / "daemon.log"
    zero_frames = staging / "zero frames.wav"
    sf.write(zero_frames, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        _drop(
            staging,
            folders.inbox,
            _float_wav(staging / "nan.wav", {5000: np.nan}),
            _float_wav(staging / "huge.wav", {5000: 1e30, 9000: -np.inf}),
            _cut_short(write_soundfile(staging / "crashed.wav", 6, 16000, "PCM_16")),
            zero_frames,
        )
        daemon.wait_for(lambda: len(_status(env)["waiting"]) == 2, 30)
        waiting = {row["file"]: row["reason"] for row in _status(env)["waiting"]}
        assert "truncated" in waiting["crashed.wav"] and "zero frames.wav" in waiting
        assert "waiting  crashed.wav: truncated" in cli("status", env=env).stdout
        daemon.wait_for(lambda: not _pending(folders), 60)
        daemon.wait_for(lambda: _status(env)["counts"] == {"done": 3, "failed": 1}, 60)
    finally:
        assert daemon.stop() == 0
    for name in ("nan", "huge"):
        data = json.loads((folders.outbox / f"{name}.json").read_text())
        assert data["status"] == "ok" and data["samples_repaired"] >= 1, name
        assert all(not segment["no_speech"] for segment in data["segments"]), name
    crashed = json.loads((folders.outbox / "crashed.json").read_text())
    assert crashed["source_incomplete"] is True and 3 < crashed["duration"] < 5
    reason = json.loads((folders.failed / "zero frames.wav.error.json").read_text())
    assert "no audio samples" in reason["error"]
    events(log)  # every line of the log is a JSON event: no raw warning


def test_jobs_pruned_to_the_last_one_stay_forgotten_at_the_next_start(
    folders, tiny_model, tmp_path
) -> None:
    """Found in review: the start took a database with no rows for a lost one and indexed
    the whole outbox and failed folder again, bringing every pruned job back."""
    env = _env(folders, tiny_model)
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        write_soundfile(folders.inbox / ".a.wav", 2, 16000, "PCM_16").rename(
            folders.inbox / "a.wav"
        )
        daemon.wait_for(lambda: (folders.archive / "a.wav").exists(), 60)
    finally:
        assert daemon.stop() == 0
    pruned = cli("jobs", "prune", "--older-than", "0min", env=env)
    assert pruned.returncode == 0, pruned.stderr
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        assert _status(env)["counts"] == {}
    finally:
        assert daemon.stop() == 0
    assert "recover.database_rebuilt" not in _event_names(log)
    assert (folders.outbox / "a.json").is_file()  # the transcript stays; only the row went
