"""The page in a real browser (Debian's chromium, driven by Playwright) beside the real daemon
(tiny checkpoint): what a person does, seen as they see it. One daemon, one page process and
one browser for the whole module; screenshots of every page at desktop and phone size are
kept (the folder is printed)."""

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import srt

from conftest import Folders
from recordings import write_soundfile
from running import Daemon, cli, events
from transcribed.web.auth import FIRST_DELAY_SECONDS, FREE_FAILURES, hash_password
from webpage import CHROMIUM, WebPage, chromium, screenshot_folder

pytestmark = [
    pytest.mark.slow,
    # Skipped only outside CI: .ci/run installs chromium, and there it must run.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed (apt-get install chromium)",
    ),
]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MEETING_SECONDS = 90  # long enough that an upload waits in the queue behind it
EXPECT_MS = 120_000  # the longest a person is asked to wait for the daemon


@dataclass
class Rig:
    folders: Folders
    env: dict[str, str]
    daemon: Daemon
    web: WebPage
    browser: Any
    shots: Path
    pages: dict[str, Any] = field(default_factory=dict)

    def page(self, size: str = "desktop") -> Any:
        """One tab per size, kept across tests like a person's."""
        if size not in self.pages:
            context = self.browser.new_context(
                viewport=DESKTOP if size == "desktop" else PHONE,
                is_mobile=size == "phone",
                has_touch=size == "phone",
                accept_downloads=True,
            )
            context.set_default_timeout(30_000)
            self.pages[size] = context.new_page()
        return self.pages[size]

    def shot(self, page: Any, name: str, size: str = "desktop") -> None:
        page.screenshot(path=self.shots / f"{name}-{size}.png", full_page=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, tiny_model, tiny_diarizer, request) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("web")
    folders = Folders(*(root / name for name in ("inbox", "outbox", "archive", "failed", "state")))
    for folder in vars(folders).values():
        folder.mkdir()
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.5",
        TRANSCRIBED_MAX_ATTEMPTS="1",
        TRANSCRIBED_JOBS_AT_ONCE="1",
        TRANSCRIBED_BATCH_SIZE="1",
        TRANSCRIBED_CHUNK_SECONDS="5",
        TRANSCRIBED_FORMATS='["txt", "json", "srt", "vtt"]',
        TRANSCRIBED_FOLDERS='[{"path": "team"}]',
        TRANSCRIBED_DIARIZER=str(tiny_diarizer),  # speaker labels, as the page must show them
        # The tiny model is far faster than a real one: 2 s more per 5 s of audio keeps the
        # meeting running while the first tests watch it and queue behind it.
        TRANSCRIBED_TEST_FAULTS="model.batch=sleep2",
    )
    shots = screenshot_folder(root / "screenshots")
    daemon = Daemon(env, root / "daemon.log")
    try:  # whatever fails below, no daemon or page outlives the tests
        web = WebPage(env, root / "web.log")
        try:
            daemon.wait_ready()
            # A long recording dropped into the share, as most people do: it keeps the
            # daemon busy while the tests upload.
            drop(folders.inbox, "meeting.wav", MEETING_SECONDS, seed=11)
            with chromium() as browser:
                yield Rig(folders, env, daemon, web, browser, shots)
        finally:
            page_exit = web.stop()
    finally:
        daemon.stop()
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\nweb page screenshots: {shots}")
    # uvicorn finishes open requests, then ends by the SIGTERM it caught (as systemd expects).
    assert page_exit in (0, -signal.SIGTERM)
    logged = json.dumps(web.events())
    assert "lazy" not in logged and "guten" not in logged, "no transcript text in the page's log"


def drop(inbox: Path, name: str, seconds: float, seed: int) -> None:
    """A recording written under a hidden name and renamed in, as a careful copier does."""
    hidden = write_soundfile(inbox / f".{name}", seconds, 16000, "PCM_16", seed=seed)
    hidden.rename(inbox / name)


def expect_text(page: Any, text: str, timeout: float = EXPECT_MS) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def wait_until(predicate, timeout: float = EXPECT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def record_badges(page: Any) -> None:
    """Have the page note its first card's badge every 0.1 s, as it changes (the test may
    look elsewhere meanwhile)."""
    page.evaluate(
        """() => {
        window.seenBadges = [];
        setInterval(() => {
            const badge = document.querySelector(".card .badge");
            const text = badge ? badge.textContent.trim() : null;
            if (text && window.seenBadges[window.seenBadges.length - 1] !== text) {
                window.seenBadges.push(text);
            }
        }, 100);
    }"""
    )


def badge_states(page: Any, timeout: float) -> list[str]:
    """The badges `record_badges` saw, once the last says done or failed."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = page.evaluate("window.seenBadges")
        if seen and seen[-1] in ("done", "failed"):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the recording never finished; the page showed {seen}")


def test_the_status_page_shows_the_running_recording_and_updates_itself(rig):
    page = rig.page()
    page.goto(rig.web.url + "/")
    running = page.get_by_role("region", name="Transcribing now")
    running.get_by_role("link", name="meeting.wav").wait_for(timeout=EXPECT_MS)
    progress = running.get_by_role("progressbar")
    progress.wait_for(timeout=EXPECT_MS)
    first = int(progress.get_attribute("value") or 0)
    # No reload: the page's own refresh moves the bar.
    page.wait_for_function(
        f"() => Number(document.querySelector('progress').value) > {first}", timeout=EXPECT_MS
    )
    rig.shot(page, "status-running")


def test_an_upload_is_followed_from_queued_to_done(rig):
    page = rig.page()
    page.goto(rig.web.url + "/upload")
    page.get_by_label("Folder").select_option("team")
    recording = write_soundfile(rig.shots.parent / "talk.wav", 3, 16000, "PCM_16", seed=2)
    page.get_by_label("Choose recordings, or drop them here").set_input_files(recording)
    rig.shot(page, "upload")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/follow\?"))
    record_badges(page)
    expect_text(page, "team/talk.wav")
    rig.shot(page, "follow")
    # Meanwhile, in another window: the status page with one running and one queued.
    watcher = rig.browser.new_page(viewport=DESKTOP)
    watcher.goto(rig.web.url + "/")
    queued = watcher.get_by_role("region", name="Queued")
    queued.get_by_role("link", name="talk.wav").wait_for(timeout=EXPECT_MS)
    watcher.get_by_role("region", name="Transcribing now").get_by_role("progressbar").wait_for()
    rig.shot(watcher, "status-busy")
    watcher.close()
    seen = badge_states(page, EXPECT_MS / 1000)
    assert "queued" in seen and seen[-1] == "done", seen
    assert seen.index("queued") < seen.index("done")
    uploaded = rig.folders.archive / "team" / "talk.wav"
    assert uploaded.read_bytes() == recording.read_bytes(), "the bytes arrived whole"
    upload_events = [e for e in rig.web.events() if e["event"] == "web.upload"]
    assert upload_events[-1]["file"] == "team/talk.wav"
    assert upload_events[-1]["bytes"] == recording.stat().st_size
    page.get_by_role("link", name="Open the transcript").click()
    page.get_by_role("heading", name="talk.wav").wait_for()


def test_the_same_recording_uploaded_again_is_told_plainly(rig):
    """talk.wav again, same name and content: it adds nothing. The follow page once said
    "queued … this copy will have its transcript" for ever, and its job page showed a title."""
    talk = rig.folders.archive / "team" / "talk.wav"
    wait_until(talk.exists)
    again = rig.shots.parent / "again" / "talk.wav"
    again.parent.mkdir(exist_ok=True)
    shutil.copy(talk, again)
    page = rig.page()
    page.goto(rig.web.url + "/upload")
    page.get_by_label("Folder").select_option("team")
    page.get_by_label("Choose recordings, or drop them here").set_input_files(again)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/follow\?"))
    card = page.locator(".card").filter(has_text="team/talk.wav")
    card.locator(".badge", has_text="done").wait_for(timeout=EXPECT_MS)
    assert "Same recording as talk.wav" in card.inner_text()
    assert "queued" not in card.inner_text()
    rig.shot(page, "follow-same-recording")
    card.get_by_role("link", name="open its transcript").click()
    page.get_by_role("heading", name="talk.wav").wait_for()
    page.get_by_role("heading", name="Text").wait_for()
    # The copy's own page says the same, and leads to the transcript too.
    listed = json.loads(cli("jobs", "list", "--json", env=rig.env).stdout)
    copy = max((j for j in listed if j["file"] == "team/talk.wav"), key=lambda j: j["id"])
    page.goto(f"{rig.web.url}/jobs/{copy['id']}")
    expect_text(page, "Same recording as talk.wav")
    page.get_by_role("link", name="open its transcript").click()
    page.get_by_role("heading", name="Text").wait_for()


def unlabelled(text: str) -> list[str]:
    """The words of a transcript without its speaker labels ("S2:")."""
    return [word for word in text.split() if not re.fullmatch(r"S\d+:", word)]


def meeting_done(rig: Rig) -> dict[str, Any]:
    wait_until(lambda: (rig.folders.archive / "meeting.wav").exists())
    return json.loads((rig.folders.outbox / "meeting.json").read_text())


def test_a_transcript_page_plays_the_recording_copies_and_downloads(rig):
    transcript = meeting_done(rig)
    page = rig.page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(rig.web.url + "/transcripts")
    rig.shot(page, "transcripts")
    page.get_by_role("link", name="meeting.wav").click()
    page.get_by_role("heading", name="meeting.wav").wait_for()
    page.get_by_role("heading", name="Language").wait_for()
    segments = page.locator(".segments > li")
    assert segments.count() == len(transcript["segments"])
    rig.shot(page, "transcript")

    second = transcript["segments"][1]
    segment = page.locator("#seg-1")  # its own button: with speakers, segments can be short
    segment.get_by_role("button", name=f"Play from 0:{int(second['start']):02d}").click()
    page.wait_for_function(
        f"() => document.getElementById('player').currentTime > {second['start']}"
    )
    page.locator("#seg-1[aria-current='true']").wait_for()
    page.evaluate("document.getElementById('player').pause()")

    # Speakers as the .txt names them (the page once showed none), and "Copy text" is the
    # .txt itself, byte for byte (it once left the labels and the paragraphs' ends out).
    first_speaker = transcript["segments"][0]["speaker"]
    assert (
        first_speaker and page.locator("#text .speaker").first.inner_text() == f"{first_speaker}:"
    )
    page.get_by_role("button", name="Copy text").click()
    expect_text(page, "Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download txt").click()
    assert copied == Path(download.value.path()).read_text(encoding="utf-8")
    assert copied == (rig.folders.outbox / "meeting.txt").read_text(encoding="utf-8")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download srt").click()
    cues = list(srt.parse(Path(download.value.path()).read_text()))
    assert download.value.suggested_filename == "meeting.srt"
    assert len(cues) >= 1
    assert unlabelled(" ".join(c.content for c in cues)) == unlabelled(copied)
    assert unlabelled(copied) == unlabelled(transcript["text"])


def test_search_finds_a_word_of_the_transcript_and_jumps_to_its_time(rig):
    transcript = meeting_done(rig)
    word = max(transcript["text"].split(), key=len)  # the tiny model's text is random
    page = rig.page()
    page.goto(rig.web.url + "/search")
    page.get_by_label("Words to find in every transcript").fill(word)
    page.get_by_role("button", name="Search").click()
    result = page.locator(".result").filter(has=page.get_by_role("link", name="meeting.wav"))
    result.wait_for()
    hits = result.locator(".hits li")
    expected = [s for s in transcript["segments"] if word.lower() in s["text"].lower()]
    assert hits.count() == len(expected) >= 1
    assert result.locator("mark").first.inner_text().lower() == word.lower()
    rig.shot(page, "search")

    from_shell = cli("search", word, "--json", env=rig.env)
    assert from_shell.returncode == 0, from_shell.stderr
    shell_hits = [h for h in json.loads(from_shell.stdout) if h["name"] == "meeting.wav"]
    assert [h["start"] for h in shell_hits] == [s["start"] for s in expected]

    hits.first.get_by_role("link").click()
    page.wait_for_url(re.compile(r"/jobs/\d+\?t=.*#seg-\d+"))
    segment = page.url.rsplit("#", 1)[1]
    assert page.locator(f"#{segment}").inner_text().lower().count(word.lower()) >= 1


def test_a_failed_file_shows_its_reason_and_retry_takes_it_again(rig):
    page = rig.page()
    page.goto(rig.web.url + "/")
    (rig.folders.inbox / "broken.mp3").write_bytes(b"not audio at all" * 100)
    failed = page.get_by_role("region", name="Failed")
    card = failed.locator(".card").filter(has_text="broken.mp3")
    card.wait_for(timeout=EXPECT_MS)  # the status page updates itself: no reload
    assert "not a readable audio file" in card.inner_text()
    card.get_by_role("button", name="Retry").click()
    page.wait_for_url(re.compile(r"/follow\?"))
    record_badges(page)
    expect_text(page, "is back in the inbox")
    assert badge_states(page, EXPECT_MS / 1000)[-1] == "failed"
    expect_text(page, "not a readable audio file")
    started = [
        e
        for e in events(rig.daemon.log_path)
        if e["event"] == "job.started" and e["file"] == "broken.mp3"
    ]
    assert len(started) == 2, "the daemon took it a second time"
    assert sorted(p.name for p in rig.folders.failed.iterdir()) == [
        "broken.mp3",
        "broken.mp3.error.json",
    ]
    # Nothing is moving now: the page and `transcribed status` say the same.
    page.goto(rig.web.url + "/")
    from_shell = json.loads(cli("status", "--json", env=rig.env).stdout)
    assert page.locator(".summary").inner_text().strip() == from_shell["summary"]


def test_a_phone_sized_screen_can_do_everything(rig):
    meeting_done(rig)
    page = rig.page("phone")
    for path, name in (
        ("/", "status"),
        ("/transcripts", "transcripts"),
        ("/search?q=" + max(meeting_done(rig)["text"].split(), key=len), "search"),
        ("/upload", "upload"),
    ):
        page.goto(rig.web.url + path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways on a phone"
        for link in page.get_by_role("navigation", name="Main").get_by_role("link").all():
            box = link.bounding_box()
            assert box is not None and box["height"] >= 36 and box["x"] + box["width"] <= 390
        rig.shot(page, name, "phone")
    page.goto(rig.web.url + "/transcripts")
    page.get_by_role("link", name="meeting.wav").tap()
    page.get_by_role("heading", name="meeting.wav").wait_for()
    player = page.locator("#player").bounding_box()
    assert player is not None and player["width"] >= 300
    rig.shot(page, "transcript", "phone")

    page.goto(rig.web.url + "/upload")
    shutil.copy(rig.folders.archive / "meeting.wav", rig.shots.parent / "from-phone.wav")
    page.get_by_label("Choose recordings, or drop them here").set_input_files(
        rig.shots.parent / "from-phone.wav"
    )
    page.get_by_role("button", name="Upload").tap()
    page.wait_for_url(re.compile(r"/follow\?"))
    rig.shot(page, "follow", "phone")
    # The same recording again: recognised, not transcribed a second time, and said so.
    expect_text(page, "Same recording as meeting.wav")
    page.get_by_role("link", name="open its transcript").tap()
    page.get_by_role("heading", name="from-phone.wav").wait_for()


def test_a_guessing_browser_is_told_when_to_try_again_and_then_gets_in(rig, tmp_path):
    """The lockout as a person meets it: a plain line saying when to try again (it once said
    "Try again in 14:49" to everyone, the right password too), then the password opens the
    page; logging out ends the session."""
    password = "correct horse battery"  # noqa: S105  (the test's own)
    env = rig.env | {"TRANSCRIBED_WEB": json.dumps({"password_hash": hash_password(password)})}
    web = WebPage(env, tmp_path / "web.log")
    try:
        context = rig.browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(web.url + "/")
        page.get_by_role("heading", name="Log in").wait_for()

        def log_in(with_password: str) -> None:
            page.get_by_label("Password or access token").fill(with_password)
            with page.expect_navigation():
                page.get_by_role("button", name="Log in").click()

        for _ in range(FREE_FAILURES):
            log_in("a wrong guess")
        alert = page.get_by_role("alert").inner_text()
        assert "Too many failed logins from this address: try again in 0:02." in alert
        rig.shot(page, "login-wait")
        log_in(password)
        assert "try again in" in page.get_by_role("alert").inner_text()
        time.sleep(FIRST_DELAY_SECONDS + 0.5)  # the wait the page asked for, no more
        log_in(password)
        page.get_by_role("heading", name="Status").wait_for()
        with page.expect_navigation():
            page.get_by_role("button", name="Log out").click()
        page.get_by_role("heading", name="Log in").wait_for()
        context.close()
    finally:
        web.stop()
