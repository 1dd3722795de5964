"""Names fitted to NAME_MAX bytes keep whole characters and any non-UTF-8 bytes."""

import os

from transcribed.files.durable import NAME_MAX, fit_name


def test_a_long_name_is_cut_on_a_character_boundary_to_leave_room() -> None:
    stem = "é" * 200  # 400 bytes
    fitted = fit_name(stem, ".error.json")
    assert len(os.fsencode(fitted)) <= NAME_MAX and fitted.endswith(".error.json")
    assert set(fitted.removesuffix(".error.json")) == {"é"}
    assert fit_name("short", ".json") == "short.json"


def test_bytes_that_are_not_utf8_survive_the_cut() -> None:
    stem = os.fsdecode(b"\xff\xfe" + b"a" * 300)
    fitted = fit_name(stem, ".json", reserve=12)
    assert os.fsencode(fitted).startswith(b"\xff\xfe")
    assert len(os.fsencode(fitted)) == NAME_MAX - 12
