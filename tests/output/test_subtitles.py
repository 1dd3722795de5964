"""Subtitles and TSV: valid per their specs (parsed back by independent parsers), in order."""

import io
import itertools
import json

import srt
import webvtt

from support.recordings import write_soundfile
from support.running import transcribe_once
from transcribed.output.outbox import Outbox
from transcribed.output.subtitles import cues, render_srt, render_tsv, render_vtt
from transcribed.output.transcript import ModelInfo, Segment, SourceInfo, Transcript

SEGMENTS = (
    Segment(0.0, 28.4, " ".join(["word"] * 60) + " a --> b & <c>", "en"),
    Segment(28.4, 30.0, "", None),  # silence: no cue
    Segment(30.0, 55.5, "今天我们讨论预算" * 8, "zh"),
    Segment(55.5, 61.25, "Done.", "en"),
)


def _transcript(segments: tuple[Segment, ...] = SEGMENTS) -> Transcript:
    return Transcript(
        text=" ".join(s.text for s in segments),
        language="en",
        language_confidence=0.9,
        languages={"en": 0.6, "zh": 0.4},
        segments=segments,
        duration=segments[-1].end,
        status="ok",
        source=SourceInfo("talk.wav", "a" * 64, 1),
        model=ModelInfo("m", "cpu", "float32"),
        created="2026-11-21T00:00:00+00:00",
        processing_seconds=1.0,
    )


def test_cues_are_short_ordered_non_overlapping_and_inside_their_segment() -> None:
    made = cues(SEGMENTS)
    assert all(0 < len(cue.text) <= 84 for cue in made)
    assert all(a.end <= b.start for a, b in itertools.pairwise(made))
    assert made[0].start == 0.0 and made[-1].end == 61.25
    assert "".join(c.text for c in made if 30 <= c.start < 55.5) == "今天我们讨论预算" * 8


def test_srt_parses_back_with_the_same_timing_and_text() -> None:
    parsed = list(srt.parse(render_srt(_transcript()).decode()))
    made = cues(SEGMENTS)
    assert [p.index for p in parsed] == list(range(1, len(made) + 1))
    assert [p.start.total_seconds() for p in parsed] == [c.start for c in made]
    assert [p.content.replace("\n", " ") for p in parsed][-1] == "Done."
    assert all("-->" not in p.content for p in parsed)


def test_vtt_parses_back_and_escapes_markup() -> None:
    captions = webvtt.from_buffer(io.StringIO(render_vtt(_transcript()).decode()))
    made = cues(SEGMENTS)
    assert len(captions) == len(made)
    assert captions[0].start == "00:00:00.000" and captions[-1].end == "00:01:01.250"
    assert "&amp; &lt;c&gt;" in captions[len([c for c in made if c.end <= 28.4]) - 1].raw_text


def test_tsv_has_one_row_per_segment_in_milliseconds() -> None:
    rows = render_tsv(_transcript()).decode().splitlines()
    assert rows[0] == "start\tend\tlanguage\ttext" and len(rows) == 1 + len(SEGMENTS)
    assert rows[-1] == "55500\t61250\ten\tDone."


def test_all_four_formats_appear_with_language_names_and_a_tiling_json(
    tiny_model, tmp_path
) -> None:
    """A recording several minutes long, through the real one-shot CLI."""
    audio = write_soundfile(tmp_path / "meeting.flac", 200, 16000, "PCM_16", "FLAC")
    transcribe_once(
        audio,
        tiny_model,
        formats='["txt", "json", "srt", "vtt"]',
        language_in_names="true",  # the random model detects no language: plain names
    )
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("meeting."))
    assert names == ["meeting.flac", "meeting.json", "meeting.srt", "meeting.txt", "meeting.vtt"]
    data = json.loads((tmp_path / "meeting.json").read_text())
    segments = data["segments"]
    assert len(segments) >= 6 and segments[0]["start"] == 0 and segments[-1]["end"] == 200
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(segments))
    for segment in segments:
        assert {"start", "end", "text", "language", "language_confidence"} <= segment.keys()
    assert {"language", "language_confidence", "languages"} <= data.keys()
    assert data["language_forced"] is False
    srt_cues = list(srt.parse((tmp_path / "meeting.srt").read_text()))
    vtt_cues = webvtt.read(str(tmp_path / "meeting.vtt"))
    assert len(srt_cues) == len(vtt_cues) > 0
    assert srt_cues[-1].end.total_seconds() <= 200


def test_subtitle_names_can_carry_the_language_and_retract_finds_them(tmp_path) -> None:
    outbox = Outbox(tmp_path, formats=("srt", "vtt", "tsv"), language_in_names=True)
    written = outbox.publish(_transcript(), "talk.wav")
    assert [p.name for p in written] == ["talk.json", "talk.en.srt", "talk.en.vtt", "talk.tsv"]
    assert outbox.retract("talk.wav", "a" * 64, "talk.wav") == list(reversed(written))
    assert list(tmp_path.iterdir()) == []


def test_a_users_own_tagged_subtitle_is_never_overwritten(tmp_path) -> None:
    (tmp_path / "talk.en.srt").write_text("mine")
    outbox = Outbox(tmp_path, formats=("srt",), language_in_names=True)
    written = outbox.publish(_transcript(), "talk.wav")
    assert [p.name for p in written] == ["talk-2.json", "talk-2.en.srt"]
    assert (tmp_path / "talk.en.srt").read_text() == "mine"
