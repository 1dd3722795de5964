"""What the transcript pages show, from a transcript richer than the tiny model writes: a
language card with shares, paragraphs split at pauses, words from the aligner, and the
transcripts list filtered by folder, language and status."""

import json
import re

import pytest
from test_web_security import LOCAL, client_for, publish

from transcribed.output.search_index import SearchIndex
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
    assert re.findall(r"<p>(.*?)</p>", text) == ["我们讨论预算。", "The budget is late."]
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
