"""The full-text index: real SQLite FTS5 over transcript JSON files written like the outbox's."""

import json
import os
from pathlib import Path

import pytest

from conftest import hashed
from running import cli
from transcribed.output.search_index import SearchIndex, published_job_ids, render_hit
from transcribed.state.queue import JobQueue


def write_transcript(path: Path, *texts: str, language: str | None = "en", name: str = "") -> Path:
    """A transcript JSON shaped like the daemon's, one 10-second segment per text."""
    segments = [
        {"start": 10.0 * i, "end": 10.0 * (i + 1), "text": text, "language": language}
        for i, text in enumerate(texts)
    ]
    data = {
        "text": " ".join(texts),
        "language": language,
        "segments": segments,
        "duration": 10.0 * len(texts),
        "source": {"name": name or path.stem + ".wav", "sha256": "0" * 64, "size": 1},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


@pytest.fixture
def index(tmp_path: Path) -> SearchIndex:
    return SearchIndex(tmp_path / "search.sqlite3")


def test_a_word_is_found_with_its_segment_time_whatever_its_case(index, tmp_path):
    meeting = write_transcript(tmp_path / "out" / "meeting.json", "hello all", "the Budget is late")
    index.add(meeting, job_id=7)
    [hit] = index.search("budget")
    assert (hit.job_id, hit.name, hit.start, hit.end, hit.segment) == (7, "meeting.wav", 10, 20, 1)
    assert hit.text == "the Budget is late"
    assert index.search("missing") == []


@pytest.mark.parametrize("query", ["预算", "季度的预算", "算", "プロジェクト", "회의"])
def test_chinese_japanese_and_korean_are_searchable_even_two_characters(index, tmp_path, query):
    texts = ("我们讨论了下季度的预算", "プロジェクトの会議", "회의를 시작합니다")
    cjk = write_transcript(tmp_path / "zh.json", *texts, language="zh")
    index.add(cjk, job_id=1)
    assert [hit.job_id for hit in index.search(query)] == [1]


def test_every_term_must_be_in_the_transcript_not_in_one_segment(index, tmp_path):
    both = write_transcript(tmp_path / "both.json", "about the budget", "the deadline moved")
    one = write_transcript(tmp_path / "one.json", "only the budget here")
    index.add(both, 1)
    index.add(one, 2)
    hits = index.search("budget deadline")
    assert [(hit.job_id, hit.segment) for hit in hits] == [(1, 0), (1, 1)]
    assert {hit.job_id for hit in index.search("budget")} == {1, 2}


@pytest.mark.parametrize("query", ['"', "AND", "a*", "NEAR(x y)", "%", "_", "\\", "' OR 1=1 --"])
def test_query_syntax_is_taken_literally(index, tmp_path, query):
    index.add(write_transcript(tmp_path / "t.json", "plain words"), 1)
    assert index.search(query) == []
    index.add(write_transcript(tmp_path / "odd.json", f"x {query} y"), 2)
    assert [hit.job_id for hit in index.search(query)] == [2]


def test_adding_again_replaces_and_remove_forgets(index, tmp_path):
    path = write_transcript(tmp_path / "t.json", "first version")
    index.add(path, 1)
    write_transcript(path, "second version")
    index.add(path, 1)
    assert index.search("first") == [] and len(index.search("second")) == 1
    assert index.remove(path) and not index.remove(path)
    assert index.search("second") == []


def test_rebuild_from_the_outbox_finds_the_same_and_skips_what_is_not_a_transcript(tmp_path):
    outbox = tmp_path / "out"
    kept = write_transcript(outbox / "team" / "a.json", "quarterly numbers")
    write_transcript(outbox / ".a.json.1234abcd.tmp", "quarterly hidden temp")
    write_transcript(outbox / ".hidden" / "b.json", "quarterly hidden folder")
    (outbox / "notes.json").write_text('{"not": "a transcript"}')
    (outbox / "broken.json").write_text("{")
    outside = write_transcript(tmp_path / "elsewhere" / "c.json", "quarterly outside")
    os.symlink(outside, outbox / "link.json")
    os.symlink(outside.parent, outbox / "linked-folder")
    index = SearchIndex(tmp_path / "search.sqlite3")
    index.add(outside, 99)  # a stale entry: a rebuild starts from nothing
    assert index.rebuild(outbox, {os.fsencode(kept): 5}) == 1
    [hit] = index.search("quarterly")
    assert hit.job_id == 5 and hit.name == "a.wav"


def test_published_job_ids_come_from_the_job_database(tmp_path):
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    job = jobs.begin_claim(b"m.wav", "w1")
    jobs.finish_claim(job, hashed("a" * 64, 10))
    jobs.next_job()
    jobs.mark_published(job, [str(tmp_path / "m.json"), str(tmp_path / "m.txt")], 1.0, 1.0)
    assert published_job_ids(tmp_path / "jobs.sqlite3") == {os.fsencode(tmp_path / "m.json"): job}
    assert published_job_ids(tmp_path / "absent.sqlite3") == {}


def test_add_published_never_raises_and_says_how_to_catch_up(index, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    index.add_published([tmp_path / "x.txt", broken], job_id=3)
    index.add_published([tmp_path / "x.txt"], job_id=4)
    assert index.search("anything") == []


def test_a_reader_never_creates_or_changes_the_index(tmp_path):
    path = tmp_path / "search.sqlite3"
    reader = SearchIndex(path, read_only=True)
    assert reader.search("word") == [] and reader.known_jobs() == {}
    assert not path.exists()
    SearchIndex(path).add(write_transcript(tmp_path / "t.json", "some words"), 1)
    assert [hit.job_id for hit in reader.search("words")] == [1]
    with pytest.raises(Exception, match="readonly"):
        reader.add(tmp_path / "t.json", 2)


def test_a_hit_for_the_terminal_escapes_control_characters(index, tmp_path):
    index.add(write_transcript(tmp_path / "t.json", "evil \x1b[2J text"), 1)
    [hit] = index.search("evil")
    assert render_hit(hit) == "    #1  t.wav  0:00  evil \\x1b[2J text"


def test_the_search_command_rebuilds_finds_and_says_when_nothing_matches(folders):
    env = folders.env(Path("unused"))
    missing = cli("search", "budget", env=env)
    assert missing.returncode == 2 and "search --rebuild" in missing.stderr
    write_transcript(folders.outbox / "team" / "m.json", "hello", "the budget is late")
    rebuilt = cli("search", "--rebuild", env=env)
    assert rebuilt.returncode == 0 and "indexed 1 transcripts" in rebuilt.stderr
    found = cli("search", "BUDGET", env=env)
    assert found.returncode == 0 and found.stdout == "     -  m.wav  0:10  the budget is late\n"
    as_json = json.loads(cli("search", "budget", "--json", env=env).stdout)
    assert [(hit["start"], hit["segment"]) for hit in as_json] == [(10.0, 1)]
    nothing = cli("search", "zebra", env=env)
    assert nothing.returncode == 1 and "no transcript holds that" in nothing.stdout


def test_a_common_word_beside_a_rare_one_still_finds_the_newest_transcript(index, tmp_path):
    """Found in review: each word's matches were capped oldest first, so a word in every
    older transcript crowded the newest out of `the budget`."""
    for n in range(6):
        index.add(write_transcript(tmp_path / f"old{n}.json", *["the plan"] * 1000), job_id=n)
    index.add(write_transcript(tmp_path / "new.json", "the budget"), job_id=99)
    assert [hit.job_id for hit in index.search("the budget")] == [99]
