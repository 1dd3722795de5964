"""systemd's notify protocol, heard on a real datagram socket given to the real daemon."""

import itertools
import time

import pytest

from support.recordings import write_soundfile
from support.running import Daemon, Listener, events
from transcribed.host.notify import Notifier, _watchdog_seconds
from transcribed.state.overview import status_line

pytestmark = pytest.mark.slow


def test_ready_status_watchdog_and_stopping_in_order(folders, tiny_model, tmp_path) -> None:
    listener = Listener()
    listener.start()
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        NOTIFY_SOCKET=str(listener.path),
        WATCHDOG_USEC="2000000",
    )
    try:
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            daemon.wait_for(lambda: "READY=1" in listener.lines(), 60)
            ready_at = time.monotonic()
            for seed in range(2):
                path = write_soundfile(
                    folders.inbox / f".r{seed}.wav", 2, 16000, "PCM_16", seed=seed
                )
                path.rename(folders.inbox / f"r{seed}.wav")
            daemon.wait_for(
                lambda: any(
                    line.startswith("STATUS=0 queued, 0 running, 2 done, 0 failed; last r")
                    for line in listener.lines()
                ),
                60,
            )
            time.sleep(3)
        finally:
            assert daemon.stop() == 0
        time.sleep(0.3)
    finally:
        listener.close()
    lines = listener.lines()
    stopping = lines.index("STOPPING=1")
    assert lines.index("READY=1") < stopping == len(lines) - 3
    assert lines[stopping + 1] == "STATUS=stopping"
    assert lines[stopping + 2].startswith("EXTEND_TIMEOUT_USEC="), "time for the batch to end"
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in lines[: lines.index("READY=1")])
    statuses = [line for line in lines if line.startswith("STATUS=")]
    assert "STATUS=0 queued, 0 running, 0 done, 0 failed" in statuses
    assert len(set(statuses)) >= 3, "the status changes as files are processed"
    pings = [at for at, message in listener.messages if message == "WATCHDOG=1"]
    assert pings and pings[0] - ready_at < 1.5
    assert max(b - a for a, b in itertools.pairwise(pings)) <= 1.0 + 0.5  # half of 2 s


def test_without_notify_socket_nothing_is_sent_and_the_watchdog_is_for_this_process() -> None:
    quiet = Notifier({})
    assert quiet.watchdog_seconds is None
    quiet.ready("x")  # no socket: a no-op, no error
    assert _watchdog_seconds({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert _watchdog_seconds({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert Notifier({"NOTIFY_SOCKET": "@abstract"})._address == "\0abstract"
    assert status_line({"queued": 2, "claiming": 1, "done": 5, "failed": 1, "running": 1}) == (
        "3 queued, 1 running, 5 done, 1 failed"
    )


def test_a_dead_observer_stops_the_watchdog_pings(folders, tiny_model, tmp_path) -> None:
    """Under systemd's watchdog the observer is not restarted in-process: the pings stop, so
    systemd restarts the whole service."""
    listener = Listener()
    listener.start()
    env = folders.env(
        tiny_model,
        NOTIFY_SOCKET=str(listener.path),
        WATCHDOG_USEC="2000000",
        # The observer thread raises (uncaught) on the event for this name, and dies.
        TRANSCRIBED_TEST_FAULTS="watch.event~kill-observer=raise",
    )
    try:
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            daemon.wait_for(lambda: "READY=1" in listener.lines(), 60)
            time.sleep(2)
            (folders.inbox / "kill-observer.txt").write_text("x")
            daemon.wait_for(lambda: '"health.unhealthy"' in daemon.log_path.read_text(), 30)
            died_at = time.monotonic()
            time.sleep(4)  # two watchdog intervals
            assert daemon.process.poll() is None, "the daemon stays up; systemd decides"
        finally:
            assert daemon.stop() == 0
    finally:
        listener.close()
    pings = [at for at, message in listener.messages if message == "WATCHDOG=1"]
    assert pings and pings[0] < died_at, "it was pinging before"
    assert not [at for at in pings if at > died_at + 0.1], "no ping after the observer died"
    assert "the inbox watcher is not running" in daemon.log_path.read_text()
    assert [e for e in events(daemon.log_path) if e["event"] == "thread.died"], "logged as JSON"


def test_an_inbox_gone_stops_the_pings_until_it_is_back(folders, tiny_model, tmp_path) -> None:
    """Findings 2 and 6: the inbox renamed away (or unmounted) under the daemon: intake stops
    and health says so, so systemd's watchdog restarts the service; the same folder back
    at its path, the daemon carries on by itself."""
    listener = Listener()
    listener.start()
    env = folders.env(tiny_model, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="2000000")
    try:
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            daemon.wait_for(lambda: "READY=1" in listener.lines(), 60)
            time.sleep(2)
            folders.inbox.rename(tmp_path / "away")
            daemon.wait_for(lambda: '"health.unhealthy"' in daemon.log_path.read_text(), 30)
            gone_at = time.monotonic()
            time.sleep(4)  # two watchdog intervals
            back_at = time.monotonic()
            (tmp_path / "away").rename(folders.inbox)
            daemon.wait_for(lambda: '"health.healthy"' in daemon.log_path.read_text(), 30)
            write_soundfile(folders.inbox / ".a.wav", 1, 16000, "PCM_16").rename(
                folders.inbox / "a.wav"
            )
            daemon.wait_for(lambda: (folders.archive / "a.wav").exists(), 60)
        finally:
            assert daemon.stop() == 0
    finally:
        listener.close()
    pings = [at for at, message in listener.messages if message == "WATCHDOG=1"]
    assert not [at for at in pings if gone_at + 0.1 < at < back_at], "pinged while gone"
    assert [at for at in pings if at > back_at], "pings again once it is back"
    assert "is gone (renamed, removed or unmounted)" in daemon.log_path.read_text()
    assert "inbox.replaced" not in daemon.log_path.read_text()  # the same folder came back
