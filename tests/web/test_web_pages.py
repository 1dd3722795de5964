"""What the transcript pages show, from a transcript richer than the tiny model writes: a
language card with shares, paragraphs split at pauses, words from the aligner, and the
transcripts list filtered by folder, language and status."""

import json
import re
from html import unescape

import pytest
from test_web_security import LOCAL, client_for, publish

from transcribed.output.outbox import Outbox, render_txt
from transcribed.output.search_index import SearchIndex
from transcribed.output.transcript import ModelInfo, Segment, SourceInfo, Transcript
from transcribed.settings import Settings
from transcribed.state.queue import JobQueue

MIXED = {
    "text": "我们讨论预算。 The budget is late.",
    "language": "zh",
    "language_confidence": 0.93,
    "languages": {"zh": 0.7, "en": 0.3},
    "language_forced": False,
    "status": "ok",
    "duration": 10.0,
    "segments": [
        {
            "start": 0.0,
            "end": 4.0,
            "text": "我们讨论",
            "language": "zh",
            "words": [
                {"text": "我们", "start": 0.0, "end": 1.5},
                {"text": "讨论", "start": 1.5, "end": 4.0},
            ],
        },
        {"start": 4.0, "end": 7.0, "text": "预算。", "language": "zh", "pause_before": 0.3},
        {
            "start": 9.5,
            "end": 10.0,
            "text": "The budget is late.",
            "language": "en",
            "pause_before": 2.5,
        },
    ],
    "source": {"name": "mixed.wav", "sha256": "1" * 64, "size": 1},
}


@pytest.fixture
def site(folders):
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
    )
    (folders.outbox / "team").mkdir()
    mixed = folders.outbox / "team" / "mixed.json"
    mixed.write_text(json.dumps(MIXED, ensure_ascii=False))
    english = folders.outbox / "plain.json"
    english.write_text(json.dumps(MIXED | {"language": "en", "languages": {"en": 1.0}}))
    jobs = JobQueue(settings.database)
    ids = {
        "mixed": publish(jobs, b"team/mixed.wav", [mixed]),
        "plain": publish(jobs, b"plain.wav", [english]),
    }
    index = SearchIndex(settings.search_database)
    index.add(mixed, ids["mixed"])
    index.add(english, ids["plain"])
    with client_for(settings, client=("127.0.0.1", 1), base_url=LOCAL) as page:
        yield page, ids


def test_the_language_card_paragraphs_and_words(site):
    page, ids = site
    html = page.get(f"/jobs/{ids['mixed']}").text
    card = html[html.index('class="language-card"') : html.index("</aside>")]
    assert '<span lang="zh">zh</span>' in card and "detected" in card
    assert "Confidence 93%" in card
    assert re.findall(r"<span class=\"code\">(\w+)</span> <meter", card) == ["zh", "en"]
    assert "70%" in card and "30%" in card
    text = html[html.index('id="text"') : html.index("</section>", html.index('id="text"'))]
    paragraphs = re.findall(r"<p data-paragraph>(.*?)</p>", text)
    assert paragraphs == ["我们讨论预算。", "The budget is late."]
    words = re.findall(r'<span class="word" data-start="([\d.]+)">(.*?)</span>', html)
    assert words == [("0.0", "我们"), ("1.5", "讨论")]
    assert html.count('<li id="seg-') == 3


def test_the_list_filters_by_folder_language_and_status(site):
    page, ids = site

    def listed(**params: str) -> list[str]:
        html = page.get("/transcripts", params=params).text
        return re.findall(r'<a href="/jobs/(\d+)">', html)

    assert listed() == [str(ids["plain"]), str(ids["mixed"])]
    assert listed(folder="team") == [str(ids["mixed"])]
    assert listed(folder="") == [str(ids["plain"])]
    assert listed(language="zh") == [str(ids["mixed"])]
    assert listed(language="en") == [str(ids["plain"])]
    assert listed(state="published") == [str(ids["plain"]), str(ids["mixed"])]
    assert listed(state="failed") == []


def test_speakers_are_shown_as_the_txt_has_them(folders):
    """With a diarizer the .txt names each speaker where the speaker changes; the page once
    showed none. Its paragraphs (what "Copy text" copies) now read exactly as the .txt."""
    segments = (
        Segment(0.0, 2.0, "Thanks for joining.", "en", speaker="S1"),
        Segment(2.0, 4.0, "Let's start.", "en", speaker="S1"),
        Segment(4.0, 6.0, "Sure.", "en", speaker="S2"),
        Segment(8.5, 9.0, "The rest is new.", "en", speaker="S2", pause_before=2.5),
        Segment(9.0, 9.5, "", "en", speaker="S1", no_speech=True),
        Segment(9.5, 10.0, "Backups?", "en", speaker="S1"),
    )
    transcript = Transcript(
        text="…",
        language="en",
        language_confidence=0.9,
        languages={"en": 1.0},
        segments=segments,
        duration=10.0,
        status="ok",
        source=SourceInfo("meeting.wav", "2" * 64, 1),
        model=ModelInfo("m", "cpu", "float32"),
        created="2026-01-01T00:00:00+00:00",
        processing_seconds=1.0,
        speakers={"S1": {"seconds": 5.0, "share": 0.5}, "S2": {"seconds": 5.0, "share": 0.5}},
    )
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
    )
    outputs = Outbox(folders.outbox, mode=0o640).publish(transcript, "meeting.wav")
    jobs = JobQueue(settings.database)
    job = publish(jobs, b"meeting.wav", outputs)
    with client_for(settings, client=("127.0.0.1", 1), base_url=LOCAL) as page:
        html = page.get(f"/jobs/{job}").text
        txt = page.get(f"/jobs/{job}/files/txt").text
    shown = re.findall(r"<p data-paragraph>(.*?)</p>", html)
    as_copied = "\n\n".join(unescape(re.sub(r"<[^>]+>", "", p)) for p in shown) + "\n"
    assert as_copied == txt == render_txt(transcript).decode()
    assert shown[0] == '<span class="speaker">S1:</span> Thanks for joining. Let&#39;s start.'
    assert re.findall(r'<span class="speaker">(S\d)</span>', html) == [
        "S1",
        "S1",
        "S2",
        "S2",
        "S1",
        "S1",
    ]
