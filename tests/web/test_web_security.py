"""The page against a hostile client: traversal, script in transcripts and names, forged POSTs,
strangers without a login, oversized and too many uploads. The real app in process (Starlette's
TestClient) over a real job database, search index and files; no daemon needed."""

import http.cookiejar
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from conftest import hashed
from support.recordings import write_soundfile
from support.running import CLI
from support.webpage import WebPage
from transcribed.output.search_index import SearchIndex
from transcribed.settings import Settings
from transcribed.settings.web import WebSettings
from transcribed.state.queue import FailureKind, JobQueue
from transcribed.web.app import CONTENT_SECURITY_POLICY, build_app
from transcribed.web.auth import Credentials, hash_password

LOCAL = "http://127.0.0.1:8750"
STRANGER = ("203.0.113.9", 40000)  # a documentation address: some other machine
SCRIPT = "<script>alert('x')</script>"
PASSWORD = "correct horse battery"  # noqa: S105  (the test's own password)


@dataclass
class Site:
    settings: Settings
    done: int  # a published, archived job whose transcript holds SCRIPT
    failed: int  # a failed job whose name and reason hold markup
    outside: Path  # a file outside every folder of the daemon


def publish(jobs: JobQueue, relpath: bytes, outputs: list[Path]) -> int:
    job = jobs.begin_claim(relpath, f"w{len(outputs)}{relpath.hex()}")
    jobs.finish_claim(job, hashed(os.urandom(32).hex(), 10))
    jobs.next_job()
    jobs.mark_published(job, [str(path) for path in outputs], 2.0, 1.0)
    return job


@pytest.fixture
def site(folders, tmp_path) -> Site:
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
        folders=[{"path": "team"}],
        web=WebSettings(max_upload_mb=1, uploads_per_hour=3),
    )
    jobs = JobQueue(settings.database)
    transcript = {
        "text": SCRIPT,
        "language": "en",
        "language_confidence": 0.9,
        "languages": {"en": 1.0},
        "segments": [{"start": 0.0, "end": 2.0, "text": SCRIPT, "language": "en"}],
        "duration": 2.0,
        "source": {"name": "<i onclick=alert(1)>x.wav", "sha256": "0" * 64, "size": 1},
    }
    json_path = folders.outbox / "evil.json"
    json_path.write_text(json.dumps(transcript))
    (folders.outbox / "evil.txt").write_text(SCRIPT + "\n")
    done = publish(jobs, b"<i onclick=alert(1)>x.wav", [json_path, folders.outbox / "evil.txt"])
    original = write_soundfile(folders.archive / "x.wav", 1, 16000, "PCM_16")
    jobs.record_disposal_target(done, str(original))
    jobs.mark_done(done)
    SearchIndex(settings.search_database).add(json_path, done)

    failed = jobs.begin_claim(b"<b onmouseover=alert(1)>b.mp3", "w-failed")
    jobs.finish_claim(failed, hashed("f" * 64, 5))
    jobs.next_job()
    jobs.mark_failed(failed, "bad <img src=x onerror=alert(1)>", FailureKind.UNREADABLE)
    jobs.close()
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the page\n")
    return Site(settings, done, failed, outside)


def client_for(settings: Settings, credentials: Credentials | None = None, **kw) -> TestClient:
    app = build_app(settings, credentials or Credentials(None, None))
    return TestClient(app, base_url=kw.pop("base_url", LOCAL), **kw)


@pytest.fixture
def client(site) -> Iterator[TestClient]:
    with client_for(site.settings, client=("127.0.0.1", 50000)) as page:
        yield page


def token(page: TestClient, path: str = "/") -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.get(path).text)
    assert found
    return found.group(1)


# --- escaping -------------------------------------------------------------------------------


def test_script_in_a_transcript_name_or_reason_is_shown_as_text(client, site):
    pages = {
        "job": client.get(f"/jobs/{site.done}").text,
        "search": client.get("/search", params={"q": "alert"}).text,
        "status": client.get("/").text,
        "failed": client.get(f"/jobs/{site.failed}").text,
        "list": client.get("/transcripts").text,
    }
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages["job"]
    assert "&lt;i onclick=alert(1)&gt;x.wav" in pages["job"]
    assert "<mark>alert</mark>" in pages["search"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages["status"]
    for name, html in pages.items():
        scripts = re.findall(r"<script[^>]*>", html)
        assert scripts == ['<script src="/static/page.js" defer>'], name
        assert "<img" not in html and "<b " not in html and "<i " not in html, name


def test_a_search_hit_links_only_to_the_job_that_published_it(client, site):
    """Job ids are reused after `jobs forget`: an old transcript's hit must not lead to the
    newer recording that now has its id."""
    stale = site.settings.outbox / "stale.json"
    stale.write_text(json.dumps({"segments": [{"start": 0, "end": 1, "text": "zebra"}]}))
    SearchIndex(site.settings.search_database).add(stale, site.failed)
    page = client.get("/search", params={"q": "zebra"}).text
    assert "<mark>zebra</mark>" in page and f'href="/jobs/{site.failed}' not in page
    assert f'href="/jobs/{site.done}' in client.get("/search", params={"q": "alert"}).text


def test_status_shows_waiting_files_and_whether_the_daemon_runs(client, site, monkeypatch):
    """Waiting files are shown escaped; whether the daemon runs is read from its lock, as
    `transcribed status` reads it (the page once always said "not running")."""
    from transcribed.state import overview
    from transcribed.state.instance import InstanceLock

    plain = overview.status_report

    def with_waiting(jobs, now=None, daemon=None):
        return plain(jobs, now, daemon) | {
            "waiting": [{"file": "<u>half.wav</u>", "reason": "still being written"}]
        }

    monkeypatch.setattr(overview, "status_report", with_waiting)
    page = client.get("/").text
    assert "&lt;u&gt;half.wav&lt;/u&gt;" in page and "still being written" in page
    assert "The daemon is not running" in page
    lock = InstanceLock(site.settings.state_dir)
    lock.acquire()  # as the running daemon holds it
    try:
        assert "The daemon is running" in client.get("/").text
    finally:
        lock.release()
    assert "The daemon is not running" in client.get("/").text


def test_every_response_carries_a_strict_content_security_policy(client, site):
    for path in (
        "/",
        "/transcripts",
        f"/jobs/{site.done}",
        "/search",
        "/upload",
        "/static/page.js",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert (
        "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    )
    assert client.get("/").headers["cache-control"] == "no-store"


def test_a_download_is_an_attachment_of_plain_text(client, site):
    response = client.get(f"/jobs/{site.done}/files/txt")
    assert response.text == SCRIPT + "\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="evil.txt"')


# --- traversal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/1/files/..%2f..%2fsecret.txt",
        "/jobs/1/files/../../secret.txt",
        "/jobs/1/files/%2e%2e",
        "/jobs/1/files/txt%00",
        "/jobs/1/files/sh",
        "/jobs/999/files/txt",
        "/jobs/-1/audio",
        "/jobs/1%2f..%2f..%2fsecret.txt/audio",
        "/static/../web_app.py",
        "/static/%2e%2e/web_app.py",
        "/static/..%2f..%2f..%2fsecret.txt",
    ],
)
def test_no_path_from_the_request_reaches_a_file(client, site, path):
    response = client.get(path)
    assert response.status_code == 404, path
    assert "not for the page" not in response.text


def test_a_job_row_pointing_outside_its_folders_serves_nothing(client, site):
    """Even a tampered database (outputs and original pointing outside) serves nothing."""
    jobs = JobQueue(site.settings.database)
    stray = publish(jobs, b"stray.wav", [site.outside, site.settings.outbox / "../secret.txt"])
    jobs.record_disposal_target(stray, str(site.outside))
    jobs.mark_done(stray)
    for path in (f"/jobs/{stray}/files/txt", f"/jobs/{stray}/audio", f"/jobs/{site.failed}/audio"):
        assert client.get(path).status_code == 404, path


def test_symlinks_in_the_outbox_or_archive_are_not_followed(client, site):
    outbox, archive = site.settings.outbox, site.settings.archive_dir
    assert archive is not None
    (outbox / "evil.txt").unlink()
    (outbox / "evil.txt").symlink_to(site.outside)
    (archive / "x.wav").unlink()
    (archive / "x.wav").symlink_to(site.outside)
    assert client.get(f"/jobs/{site.done}/files/txt").status_code == 404
    assert client.get(f"/jobs/{site.done}/audio").status_code == 404
    # A symlinked folder on the way counts too.
    jobs = JobQueue(site.settings.database)
    (outbox / "linked").symlink_to(site.outside.parent)
    linked = publish(jobs, b"l.wav", [outbox / "linked" / "secret.txt"])
    assert client.get(f"/jobs/{linked}/files/txt").status_code == 404


def test_the_original_plays_with_byte_ranges(client, site):
    whole = client.get(f"/jobs/{site.done}/audio")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    part = client.get(f"/jobs/{site.done}/audio", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole.content[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
    tail = client.get(f"/jobs/{site.done}/audio", headers={"Range": "bytes=-4"})
    assert tail.content == whole.content[-4:]
    beyond = client.get(f"/jobs/{site.done}/audio", headers={"Range": "bytes=999999-"})
    assert beyond.status_code == 416


# --- forged requests ------------------------------------------------------------------------


def post_routes(page: TestClient) -> list[str]:
    paths = [r.path for r in page.app.routes if "POST" in (getattr(r, "methods", None) or ())]
    return [path.replace("{job:int}", "2") for path in paths]


def test_every_post_without_the_csrf_token_is_refused(client, site):
    routes = post_routes(client)
    assert sorted(routes) == ["/jobs/2/retry", "/login", "/logout", "/upload"]
    real = token(client)
    for path in routes:
        assert client.post(path, data={}).status_code == 403, path
        assert client.post(path, data={"csrf": real + "x"}).status_code == 403, path
    upload = client.post("/upload", params={"name": "a.wav"}, content=b"RIFF")
    assert upload.status_code == 403
    assert os.listdir(site.settings.inbox) == []


def test_a_post_from_another_site_is_refused_even_with_the_token(client, site):
    real = token(client)
    forged = client.post(
        f"/jobs/{site.failed}/retry", data={"csrf": real}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    JobQueue(site.settings.database).get(site.failed)  # still there: nothing was retried


# --- who may look ---------------------------------------------------------------------------


def test_without_a_login_only_this_machine_is_answered(site):
    with client_for(site.settings, client=STRANGER) as stranger:
        assert stranger.get("/").status_code == 403
        assert stranger.get(f"/jobs/{site.done}/files/txt").status_code == 403
    # DNS rebinding: a web site whose name now points at 127.0.0.1.
    with client_for(
        site.settings, client=("127.0.0.1", 1), base_url="http://evil.example"
    ) as rebound:
        assert rebound.get("/").status_code == 403


def test_with_a_login_a_stranger_must_log_in_and_failures_are_limited(site):
    credentials = Credentials(hash_password(PASSWORD), None)
    with client_for(site.settings, credentials, client=STRANGER) as stranger:
        response = stranger.get("/transcripts?state=done", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Ftranscripts%3Fstate%3Ddone"
        assert (
            stranger.get(f"/jobs/{site.done}/files/txt", follow_redirects=False).status_code == 303
        )
        assert stranger.post(f"/jobs/{site.failed}/retry").status_code == 401
        assert stranger.get("/static/page.css").status_code == 200
        csrf = token(stranger, "/login")
        with capture_logs() as logged:
            for _ in range(5):
                wrong = stranger.post("/login", data={"csrf": csrf, "password": "guess"})
                assert wrong.status_code == 401
            blocked = stranger.post("/login", data={"csrf": csrf, "password": PASSWORD})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        failures = [e for e in logged if e["event"] == "web.login_failed"]
        assert len(failures) == 5 and failures[0]["client"] == STRANGER[0]
        assert "guess" not in repr(logged)


def test_a_login_opens_the_page_and_starts_a_fresh_session(site):
    credentials = Credentials(hash_password(PASSWORD), None)
    with client_for(site.settings, credentials, client=STRANGER) as stranger:
        before = token(stranger, "/login")
        done = stranger.post(
            "/login",
            data={"csrf": before, "password": PASSWORD, "next": "//evil.example/"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and done.headers["location"] == "/"
        assert stranger.get(f"/jobs/{site.done}").status_code == 200
        assert token(stranger) != before, "a new CSRF token after logging in"


def test_a_token_file_opens_the_page(site, tmp_path):
    secret = "t" * 40
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    web = WebSettings(token_file=token_file)
    credentials = Credentials.from_settings(web)
    with client_for(site.settings, credentials, client=STRANGER) as stranger:
        csrf = token(stranger, "/login")
        assert stranger.post("/login", data={"csrf": csrf, "password": secret}).status_code == 200
        assert stranger.get("/").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])  # noqa: S104  (refused)
def test_listening_beyond_this_machine_without_a_login_is_refused(folders, host):
    env = folders.env(Path("unused"))
    done = subprocess.run(
        [*CLI, "web", "--host", host], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "without a login" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_token_file_others_can_read_is_refused(folders, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t" * 40)
    token_file.chmod(0o644)
    env = folders.env(Path("unused"), TRANSCRIBED_WEB=json.dumps({"token_file": str(token_file)}))
    done = subprocess.run([*CLI, "web"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_https_with_a_certificate_and_secure_cookies(folders, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert), "-subj", "/CN=transcribed-test"],
        check=True,
        capture_output=True,
    )
    tls = {"tls_certfile": str(cert), "tls_keyfile": str(key)}
    page = WebPage(folders.env(Path("unused"), TRANSCRIBED_WEB=json.dumps(tls)), tmp_path / "log")
    try:
        assert page.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # a test certificate, trusted by its own file
        https = page.url + "/upload"  # the https:// URL the page itself announced
        with urllib.request.urlopen(https, context=context, timeout=30) as answer:  # noqa: S310
            assert answer.status == 200
            cookie = answer.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    finally:
        page.stop()


def test_web_password_prints_a_hash_that_verifies(tmp_path):
    done = subprocess.run(
        [*CLI, "web-password"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60
    )
    line = done.stdout.strip()
    assert done.returncode == 0 and line.startswith('password_hash = "scrypt$')
    hashed = line.split('"')[1]
    assert Credentials(hashed, None).check(PASSWORD)
    assert not Credentials(hashed, None).check(PASSWORD + "!")
    short = subprocess.run([*CLI, "web-password"], input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "at least" in short.stderr


# --- uploads --------------------------------------------------------------------------------


def upload(page: TestClient, csrf: str, name: str, body, folder: str = "", **headers):
    return page.post(
        "/upload",
        params={"folder": folder, "name": name},
        content=body,
        headers={"X-CSRF-Token": csrf, **headers},
    )


def visible(inbox: Path) -> list[str]:
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


def test_an_oversized_upload_is_refused_and_leaves_nothing(client, site):
    csrf = token(client, "/upload")
    big = b"\0" * (1024 * 1024 + 1)
    assert upload(client, csrf, "big.wav", big).status_code == 413

    def streamed():  # no Content-Length: the limit holds while the bytes arrive
        for _ in range(3):
            yield b"\0" * (512 * 1024)

    refused = upload(client, csrf, "big.wav", streamed())
    assert refused.status_code == 413 and "1 MiB" in refused.json()["error"]
    assert visible(site.settings.inbox) == [], "no temp file left behind"


def test_an_empty_upload_is_refused_at_once(client, site):
    """Found by the adversary: a 0-byte upload was taken (200), then waited an hour in the
    inbox as "still arriving" before it failed."""
    refused = upload(client, token(client, "/upload"), "empty.wav", b"")
    assert refused.status_code == 400 and "empty" in refused.json()["error"]
    assert visible(site.settings.inbox) == [], "nothing left behind"


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("../x.wav", ""),
        ("a/b.wav", ""),
        (".hidden.wav", ""),
        ("notes.txt", ""),
        ("x.wav.part", ""),
        ("ok.wav", "../outside"),
        ("ok.wav", "/tmp"),
        ("ok.wav", "not-configured"),
        ("bad\nname.wav", ""),
    ],
)
def test_upload_names_and_folders_are_checked(client, site, name, folder):
    response = upload(client, token(client, "/upload"), name, b"RIFF", folder)
    assert response.status_code == 400, response.text
    assert visible(site.settings.inbox) == []
    assert not (site.settings.inbox.parent / "outside").exists()


def test_an_upload_is_hidden_until_complete_and_never_overwrites(client, site):
    inbox = site.settings.inbox
    (inbox / "team").mkdir()
    (inbox / "team" / "talk.wav").write_bytes(b"someone else's")
    seen_during: list[list[str]] = []

    def body():
        for _ in range(4):
            seen_during.append(visible(inbox))
            yield b"x" * 1000

    with capture_logs() as logged:
        answer = upload(client, token(client, "/upload"), "talk.wav", body(), "team")
    assert answer.status_code == 200 and answer.json()["file"] == "team/talk-2.wav"
    hidden = [names for names in seen_during if len(names) > 1]
    assert hidden and all(n.startswith("team/.talk.wav.") for names in hidden for n in names[:1])
    assert visible(inbox) == ["team/talk-2.wav", "team/talk.wav"]
    assert (inbox / "team" / "talk.wav").read_bytes() == b"someone else's"
    assert (inbox / "team" / "talk-2.wav").stat().st_size == 4000
    [event] = [e for e in logged if e["event"] == "web.upload"]
    assert event["file"] == "team/talk-2.wav" and event["bytes"] == 4000


def test_an_upload_cut_short_leaves_nothing_in_the_inbox(folders, tmp_path):
    """The real server: a client that sends part of a file and hangs up."""
    page = WebPage(folders.env(Path("unused")), tmp_path / "web.log")
    try:
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        html = browser.open(page.url + "/upload", timeout=30).read().decode()
        csrf = re.search(r'csrf-token" content="([^"]+)"', html)
        assert csrf
        cookies = "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)
        host, port = page.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(
                f"POST /upload?folder=&name=cut.wav HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Cookie: {cookies}\r\nX-CSRF-Token: {csrf.group(1)}\r\n"
                "Content-Length: 1000000\r\n\r\n".encode()
                + b"x" * 100_000
            )
            wait_for(lambda: any(p.name.startswith(".cut.wav.") for p in folders.inbox.iterdir()))
        wait_for(lambda: [e for e in page.events() if e["event"] == "web.upload_cut_short"])
        assert list(folders.inbox.iterdir()) == []
    finally:
        page.stop()


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_uploads_per_client_are_limited(client, site):
    csrf = token(client, "/upload")
    for number in range(3):
        assert upload(client, csrf, f"u{number}.wav", b"RIFF").status_code == 200
    refused = upload(client, csrf, "u9.wav", b"RIFF")
    assert refused.status_code == 400 and "too many uploads" in refused.json()["error"]


def test_a_symlinked_upload_folder_is_not_followed(client, site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site.settings.inbox / "team").symlink_to(elsewhere)
    refused = upload(client, token(client, "/upload"), "a.wav", b"RIFF", "team")
    assert refused.status_code == 500 and "cannot write" in refused.json()["error"]
    assert list(elsewhere.iterdir()) == []


def test_follow_never_looks_outside_the_upload_folders(client, site):
    page = client.get("/follow", params={"since": 0, "file": ["../secret.txt", "/etc/passwd"]})
    assert page.status_code == 200
    assert page.text.count("Being taken in") == 2  # neither was looked up on disk
