"""The settle window: a file is released only after staying unchanged for settle_seconds."""

from transcribed.intake.readiness import Identity, SettleTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_released_only_after_unchanged_for_the_window() -> None:
    clock, files = Clock(), {"a.wav": Identity(1, 2, 10, 5)}
    tracker = SettleTracker(3.0, files.get, clock)
    tracker.arrived("a.wav")
    assert tracker.ready() == []  # first look
    clock.now += 2.9
    assert tracker.ready() == []
    clock.now += 0.2
    assert tracker.ready() == [("a.wav", files["a.wav"])]
    assert "a.wav" not in tracker


def test_growth_restarts_the_window_as_a_slow_writer_appends() -> None:
    clock, files = Clock(), {"a.wav": Identity(1, 2, 10, 5)}
    tracker = SettleTracker(3.0, files.get, clock)
    tracker.arrived("a.wav")
    tracker.ready()
    for size in range(11, 20):  # one append every 2 s: never settles while written
        clock.now += 2
        files["a.wav"] = Identity(1, 2, size, 5 + size)
        assert tracker.ready() == []
    clock.now += 2.9
    assert tracker.ready() == []  # the last append was seen 2.9 s ago
    clock.now += 0.1
    assert [path for path, _ in tracker.ready()] == ["a.wav"]


def test_same_size_but_new_mtime_is_a_change_as_with_preallocated_files() -> None:
    clock, files = Clock(), {"a.wav": Identity(1, 2, 1000, 1)}
    tracker = SettleTracker(1.0, files.get, clock)
    tracker.arrived("a.wav")
    tracker.ready()
    clock.now += 0.9
    files["a.wav"] = Identity(1, 2, 1000, 2)
    clock.now += 0.5
    assert tracker.ready() == []


def test_vanished_files_are_dropped_and_order_is_arrival_order() -> None:
    clock = Clock()
    files = {"b.wav": Identity(1, 3, 1, 1), "a.wav": Identity(1, 2, 1, 1)}
    tracker = SettleTracker(1.0, files.get, clock)
    for name in ("b.wav", "gone.wav", "a.wav"):
        tracker.arrived(name)
    tracker.ready()
    clock.now += 1
    assert [path for path, _ in tracker.ready()] == ["b.wav", "a.wav"]
    assert len(tracker) == 0
