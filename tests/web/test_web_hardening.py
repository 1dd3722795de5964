"""The page around its edges (issue 25), in process over a real job database and real files:
failed logins that must not lock out the person with the password, sessions that logout ends,
hostile file names and ids, error answers with the security headers, a long queue, and copies
of recordings dropped before."""
# ruff: noqa: F401, F811  (the fixtures `site` and `client` come from test_web_security)

import os
import re
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from starlette.testclient import TestClient
from test_web_security import (
    LOCAL,
    PASSWORD,
    SCRIPT,
    STRANGER,
    Site,
    client,
    client_for,
    publish,
    site,
    token,
)

from conftest import hashed
from transcribed.settings.web import WebSettings
from transcribed.state.queue import JobQueue
from transcribed.web.app import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from transcribed.web.auth import (
    FIRST_DELAY_SECONDS,
    FREE_FAILURES,
    LONGEST_DELAY_SECONDS,
    Credentials,
    LoginThrottle,
    Sessions,
    client_key,
    hash_password,
)
from transcribed.web.views import LISTED_ON_STATUS


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    return Credentials(hash_password(PASSWORD), None)


def log_in(page: TestClient, password: str, **headers: str):
    return page.post(
        "/login",
        data={"csrf": token(page, "/login"), "password": password},
        headers=headers,
        follow_redirects=False,
    )


# --- failed logins ----------------------------------------------------------------------------


def test_guesses_from_many_addresses_never_lock_out_the_password(site, credentials):
    """Ten addresses guessing 5 times each (the old global ceiling of 50) leave a fresh
    address's right password accepted at once."""
    app = client_for(site.settings, credentials).app
    for last in range(2, 12):
        with TestClient(app, base_url=LOCAL, client=(f"127.0.0.{last}", 1)) as guesser:
            for _ in range(5):
                assert log_in(guesser, "wrong guess").status_code == 401
    with TestClient(app, base_url=LOCAL, client=("127.0.0.12", 1)) as owner:
        assert log_in(owner, PASSWORD).status_code == 303
        assert owner.get("/").status_code == 200


def test_a_guessing_address_waits_longer_after_each_guess_and_says_how_long(site, credentials):
    """Past the free tries, the guesser (only) is refused with 429, a Retry-After and a line
    that says when to try again; another address logs in meanwhile."""
    app = client_for(site.settings, credentials).app
    with TestClient(app, base_url=LOCAL, client=STRANGER) as guesser:
        for _ in range(FREE_FAILURES - 1):
            assert log_in(guesser, "wrong").status_code == 401
        last = log_in(guesser, "wrong")
        assert last.status_code == 401 and "try again in 0:02" in last.text
        refused = log_in(guesser, PASSWORD)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 3
        assert "Too many failed logins from this address: try again in 0:02." in refused.text
    with TestClient(app, base_url=LOCAL, client=("198.51.100.7", 1)) as owner:
        assert log_in(owner, PASSWORD).status_code == 303


def test_the_wait_doubles_up_to_a_quarter_hour_and_a_login_clears_it():
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    waits = [throttle.failed("a") for _ in range(FREE_FAILURES + 12)]
    assert waits[: FREE_FAILURES - 1] == [0.0] * (FREE_FAILURES - 1)
    assert waits[FREE_FAILURES - 1 : FREE_FAILURES + 2] == [2.0, 4.0, 8.0]
    assert waits[-1] == LONGEST_DELAY_SECONDS == 900.0
    assert throttle.retry_after("b") == 0.0, "other clients are not slowed"
    now[0] += LONGEST_DELAY_SECONDS
    assert throttle.retry_after("a") == 0.0
    throttle.succeeded("a")
    assert throttle.failed("a") == 0.0, "a login forgets the failures"
    assert FIRST_DELAY_SECONDS == 2.0


def test_an_ipv6_client_counts_as_its_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1" == client_key("192.0.2.1")


def test_behind_a_trusted_proxy_each_client_is_throttled_by_its_own_address(site, credentials):
    """Every client of a reverse proxy on this machine arrives from 127.0.0.1: with
    trusted_proxies the address it passes is the client, so one guesser waits alone (before,
    5 wrong guesses through the proxy locked everyone out)."""
    web = WebSettings(trusted_proxies=("127.0.0.1",))
    settings = site.settings.model_copy(update={"web": web})
    with client_for(settings, credentials, client=("127.0.0.1", 1)) as proxy:
        for _ in range(FREE_FAILURES + 1):
            log_in(proxy, "wrong", **{"X-Forwarded-For": "192.0.2.50"})
        assert log_in(proxy, PASSWORD, **{"X-Forwarded-For": "192.0.2.50"}).status_code == 429
        # A client that forges the header still counts as what the proxy saw: its address last.
        forged = {"X-Forwarded-For": "192.0.2.99, 192.0.2.50"}
        assert log_in(proxy, PASSWORD, **forged).status_code == 429
        assert log_in(proxy, PASSWORD, **{"X-Forwarded-For": "192.0.2.51"}).status_code == 303


def test_without_trusted_proxies_a_forwarded_for_header_is_ignored(site, credentials):
    with client_for(site.settings, credentials, client=STRANGER) as stranger:
        for number in range(FREE_FAILURES + 1):
            log_in(stranger, "wrong", **{"X-Forwarded-For": f"192.0.2.{number}"})
        assert log_in(stranger, PASSWORD, **{"X-Forwarded-For": "192.0.2.200"}).status_code == 429


def test_trusted_proxies_must_be_addresses():
    with pytest.raises(ValueError, match="not an IP address"):
        WebSettings(trusted_proxies=("proxy.example",))


# --- sessions ---------------------------------------------------------------------------------


def test_logout_ends_the_session_even_for_a_copy_of_its_cookie(site, credentials):
    """A cookie saved before logging out (sniffed on plain HTTP, say) opens nothing after."""
    app = client_for(site.settings, credentials).app
    with TestClient(app, base_url=LOCAL, client=STRANGER) as person:
        assert log_in(person, PASSWORD).status_code == 303
        saved = dict(person.cookies)
        assert person.get("/transcripts").status_code == 200
        done = person.post("/logout", data={"csrf": token(person)}, follow_redirects=False)
        assert done.status_code == 303
    with TestClient(app, base_url=LOCAL, client=("192.0.2.66", 1), cookies=saved) as thief:
        replayed = thief.get("/transcripts", follow_redirects=False)
        assert replayed.status_code == 303 and replayed.headers["location"].startswith("/login")
        assert thief.get(f"/jobs/{site.done}/files/txt", follow_redirects=False).status_code == 303


def test_sessions_expire_and_stay_bounded():
    now = [0.0]
    sessions = Sessions(60.0, clock=lambda: now[0], limit=3)
    first = sessions.open()
    assert sessions.is_open(first) and not sessions.is_open("made-up") and not sessions.is_open(1)
    now[0] = 61.0
    assert not sessions.is_open(first)
    opened = [sessions.open() for _ in range(4)]
    assert [sessions.is_open(s) for s in opened] == [False, True, True, True]


# --- hostile names and ids --------------------------------------------------------------------


def published_as(site: Site, raw_name: bytes, text: str = "hello\n") -> int:
    """A done job whose .txt is named `raw_name` (bytes: names need not be UTF-8)."""
    outbox = os.fsencode(site.settings.outbox)
    path = os.path.join(outbox, raw_name + b".txt")
    with open(path, "wb") as handle:
        handle.write(text.encode())
    jobs = JobQueue(site.settings.database)
    try:
        return publish(jobs, raw_name + b".wav", [Path(os.fsdecode(path))])
    finally:
        jobs.close()


def disposition(header: str) -> tuple[str, str]:
    """(filename, filename* decoded) of a Content-Disposition header."""
    found = re.fullmatch(r"attachment; filename=\"([^\"\\]*)\"; filename\*=UTF-8''(\S+)", header)
    assert found, header
    return found.group(1), unquote(found.group(2), errors="strict")


@pytest.mark.parametrize(
    ("raw", "fallback", "real"),
    [
        (b"line\nbreak", "line_break.txt", "line\nbreak.txt"),
        (b"carriage\rreturn", "carriage_return.txt", "carriage\rreturn.txt"),
        (b"tab\there", "tab_here.txt", "tab\there.txt"),
        (b"latin-\xff\xfe", "latin-__.txt", "latin-\ufffd\ufffd.txt"),
        (b'quote"and;semi', "quote_and_semi.txt", 'quote"and;semi.txt'),
        ("会议".encode(), "__.txt", "会议.txt"),
    ],
)
def test_a_download_of_a_hostile_name_is_safe_and_keeps_the_real_name(
    client, site, raw, fallback, real
):
    """Control characters and bytes that are not UTF-8 once dropped the connection or gave a
    500; now `filename=` is plain ASCII and `filename*` the real name."""
    job = published_as(site, raw)
    response = client.get(f"/jobs/{job}/files/txt")
    assert response.status_code == 200 and response.text == "hello\n"
    header = response.headers["content-disposition"]
    assert re.fullmatch(r"[\x20-\x7e]+", header), header
    assert disposition(header) == (fallback, real)


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/999999999999999999999/files/json",
        "/jobs/9223372036854775808",
        "/jobs/99999999999999999999999999/audio",
        "/jobs/0",
    ],
)
def test_ids_no_job_can_have_are_not_found(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_retrying_an_id_no_job_can_have_is_not_found(client):
    response = client.post(
        "/jobs/99999999999999999999999/retry", data={"csrf": token(client)}, follow_redirects=False
    )
    assert response.status_code == 404


# --- error answers ----------------------------------------------------------------------------


def test_every_error_answer_carries_the_security_headers(site, credentials, monkeypatch):
    """404, 403, 401, 405, 415, 429 and a 500 from a bug: each with the CSP and the rest."""
    answers = {}
    with client_for(site.settings, client=("127.0.0.1", 1), raise_server_exceptions=False) as page:
        answers[404] = page.get("/no/such/page")
        answers[405] = page.get("/logout")
        answers[415] = page.post("/logout", content=b"x", headers={"content-type": "text/xml"})
        answers[403] = page.post("/logout", data={"csrf": "forged"})
        monkeypatch.setattr(
            "transcribed.web.catalog.Catalog.status", lambda self: 1 / 0, raising=True
        )
        answers[500] = page.get("/")
    with client_for(site.settings, credentials, client=STRANGER) as stranger:
        answers[401] = stranger.post(f"/jobs/{site.failed}/retry")
        for _ in range(FREE_FAILURES):
            log_in(stranger, "wrong")
        answers[429] = log_in(stranger, PASSWORD)
    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (status, name)
        assert response.headers["cache-control"] == "no-store", status
    assert "ZeroDivisionError" not in answers[500].text and "Traceback" not in answers[500].text


# --- the status page with a long queue --------------------------------------------------------


def test_the_status_page_stays_small_whatever_the_queue(client, site):
    """1,934 queued recordings: the live part once listed them all (152 KB every 2 s per
    open tab); now it names the first few and counts the rest."""
    jobs = JobQueue(site.settings.database)
    for number in range(1934):
        job = jobs.begin_claim(f"queued-{number:04d}.wav".encode(), f"q{number}")
        jobs.finish_claim(job, hashed(f"{number:064x}", 1000))
    jobs.close()
    live = client.get("/", params={"live": "1"})
    assert live.status_code == 200
    assert len(live.content) < 20_000, len(live.content)
    assert len(re.findall(r">queued-\d{4}\.wav</a>", live.text)) == LISTED_ON_STATUS
    assert f"and {1934 - LISTED_ON_STATUS:,} more queued" in live.text
    assert "1934 queued" in live.text  # the summary still counts them all


# --- copies of recordings dropped before ------------------------------------------------------


def dropped_again(site: Site) -> tuple[int, int, float]:
    """talk.wav transcribed and done, then the same name and content dropped again and put
    away as adding nothing (done, no transcript of its own): (original, copy, when the copy
    was dropped)."""
    jobs = JobQueue(site.settings.database)
    json_path = site.settings.outbox / "talk.json"
    json_path.write_text('{"segments": [], "text": ""}')
    original = publish(jobs, b"talk.wav", [json_path])
    jobs.mark_done(original)
    since = time.time()
    time.sleep(0.01)
    copy = jobs.begin_claim(b"talk.wav", "again")
    assert jobs.finish_claim(copy, hashed(jobs.get(original).sha256 or "", 10)).state == "duplicate"
    jobs.mark_done(copy)
    jobs.close()
    return original, copy, since


def test_a_copy_dropped_again_is_told_plainly_on_the_follow_and_job_pages(client, site):
    """Once the copy is put away the follow page said "queued … will have its transcript" for
    ever, and its job page showed only a title."""
    original, copy, since = dropped_again(site)
    follow = client.get("/follow", params={"since": since, "file": "talk.wav"}).text
    assert "queued" not in follow and "will have its transcript" not in follow
    text = " ".join(re.sub(r"<[^>]+>", " ", follow).split())
    assert "done Same recording as talk.wav — open its transcript" in text
    assert f'<a href="/jobs/{original}">open its transcript</a>' in follow
    page = client.get(f"/jobs/{copy}").text
    assert "Same recording as talk.wav" in page
    assert f'<a href="/jobs/{original}">open its transcript</a>' in page


def test_a_copy_waiting_for_the_first_says_whose_transcript_it_waits_for(client, site):
    jobs = JobQueue(site.settings.database)
    first = jobs.begin_claim(b"team/talk.wav", "first")
    jobs.finish_claim(first, hashed("a" * 64, 10))
    since = time.time()
    time.sleep(0.01)
    copy = jobs.begin_claim(b"team/talk.wav", "second")
    assert jobs.finish_claim(copy, hashed("a" * 64, 10)).state == "duplicate"
    jobs.close()
    follow = client.get("/follow", params={"since": since, "file": "team/talk.wav"}).text
    assert "the same recording as" in follow and f'href="/jobs/{first}">talk.wav</a>' in follow
    assert "this copy adds nothing" in follow
    assert SCRIPT not in follow
