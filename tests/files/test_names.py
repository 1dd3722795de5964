"""Which inbox names are picked up, and how names are shown in logs."""

import pytest

from transcribed.files.names import display_name, is_candidate


@pytest.mark.parametrize(
    "name",
    [
        "a.wav",
        "x/y/Meeting 1.MP3",
        "会议.flac",
        "a.opus",
        "b.wma",
        "c.amr",
        "d.webm",
        "e.m4a",
        "f.aac",
        "g.mp4",
        "h.ogg",
        "i.oga",
        "phone memo.3gp",
        "j.3G2",
        "audiobook.m4b",
        "meeting capture.mkv",
        "call.mov",
    ],
)
def test_audio_names_are_candidates(name: str) -> None:
    assert is_candidate(name)


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.wav",
        "a.wav.part",
        "a.wav.tmp",
        "~lock.wav",
        ".a.wav.Xy12Zq",
        "a.wav.crdownload",
        "x.syncthing.a.wav.tmp",
        ".goutputstream-ABC",
        "notes.txt",
        "a.wav/.cache/b.wav",
        ".transcribed-work/1.wav",
        "noextension",
    ],
)
def test_temporary_hidden_and_non_audio_names_are_not(name: str) -> None:
    assert not is_candidate(name)


def test_display_name_escapes_newlines_control_chars_and_invalid_utf8() -> None:
    shown = display_name(b"evil\nname\x1b[31m\xff.wav")
    assert "\n" not in shown and "\x1b" not in shown
    assert shown == "evil\\x0aname\\x1b[31m\\xff.wav"


def test_display_name_escapes_what_would_make_a_name_read_otherwise() -> None:
    """An adversary's finding: a right-to-left override made `jobs list` show
    "report_exe.jpg" for a file whose name ends in ".exe"; a line separator split a row."""
    assert display_name("report_\u202egpj.exe") == "report_\\u202egpj.exe"
    assert display_name("a\u2028b\u2067c\u200fd.wav") == "a\\u2028b\\u2067c\\u200fd.wav"
    assert display_name("Grüße - 会議 ✓.wav") == "Grüße - 会議 ✓.wav", "the rest shown as it is"


def test_display_name_tells_a_literal_backslash_from_an_escaped_byte() -> None:
    """An adversary's finding: `q\\xffq.wav` (typed with a backslash) and the name with the
    byte 0xFF both showed as `q\\xffq.wav`, in the logs and in the transcript's source name,
    so one transcript named the other recording."""
    typed, byte = display_name(rb"q\xffq.wav"), display_name(b"q\xffq.wav")
    assert (typed, byte) == ("q\\\\xffq.wav", "q\\xffq.wav")
    assert display_name(rb"a\b.wav") == "a\\\\b.wav"
