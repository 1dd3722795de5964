"""The real `transcribed web` process under connections a browser would never make: many
half-open ones (slowloris), one client hogging connections, requests h11 cannot parse, and
names a header cannot carry. And where it says it can be opened from when it listens on every
address."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_web_security import publish

from conftest import Folders
from transcribed.settings.web import WebSettings
from transcribed.state.queue import JobQueue
from transcribed.web.app import CONTENT_SECURITY_POLICY, _announce
from transcribed.web.connections import PER_CLIENT
from webpage import WebPage

HALF_A_HEADER = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"
HOSTILE = b"minutes\nof the\tmeeting\r"  # a recording's real name (as Linux allows)


def make_folders(root: Path) -> Folders:
    folders = Folders(*(root / name for name in ("inbox", "outbox", "archive", "failed", "state")))
    for folder in vars(folders).values():
        folder.mkdir()
    return folders


def start_page(folders: Folders, log: Path, *args: str, **web: object) -> WebPage:
    env = folders.env(Path("unused"), TRANSCRIBED_WEB=json.dumps(web))
    return WebPage(env, log, *args)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Iterator[tuple[WebPage, int]]:
    """A page (no login: loopback only) whose one job's transcript has a hostile name."""
    root = tmp_path_factory.mktemp("server")
    folders = make_folders(root)
    txt = os.path.join(os.fsencode(folders.outbox), HOSTILE + b".txt")
    with open(txt, "wb") as handle:
        handle.write(b"hello\n")
    jobs = JobQueue(folders.state / "jobs.sqlite3")
    job = publish(jobs, HOSTILE + b".wav", [Path(os.fsdecode(txt))])
    jobs.close()
    web = start_page(folders, root / "web.log", header_timeout_seconds=60)
    try:
        yield web, job
    finally:
        web.stop()


def address(web: WebPage) -> tuple[str, int]:
    host, port = web.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def half_open(web: WebPage, source: str) -> socket.socket:
    """A connection from `source` (any 127.x address is this machine) that sends half a
    request header and then nothing."""
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.bind((source, 0))
    connection.settimeout(10)
    connection.connect(address(web))
    connection.sendall(HALF_A_HEADER)
    return connection


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """True when the server hangs up within `within` seconds (the read sees the end)."""
    connection.settimeout(within)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def turned_away(web: WebPage, source: str) -> bool:
    """A new connection from `source` is closed by the server at once."""
    try:
        with half_open(web, source) as connection:
            return closed_by_server(connection, 5)
    except (BrokenPipeError, ConnectionResetError):  # closed before the bytes went out
        return True


def get(url: str) -> tuple[int, bytes, Message]:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310  (a local test URL)
        return answer.status, answer.read(), answer.headers


def test_eighty_half_open_connections_leave_the_page_answering(page):
    """80 clients each holding half a header made every other request a 503 for as long as
    they liked (uvicorn's limit_concurrency counted them); now they wait for their header
    deadline and everyone else is answered."""
    web, _job = page
    held = [half_open(web, f"127.0.0.{number}") for number in range(2, 82)]
    try:
        for _ in range(3):
            status, body, _headers = get(web.url + "/")
            assert status == 200 and b"The daemon is" in body
        assert not any(closed_by_server(c, 0.01) for c in held), "all 80 still held"
    finally:
        for connection in held:
            connection.close()


def test_one_client_holds_at_most_its_share_of_connections(page):
    web, _job = page
    held = [half_open(web, "127.0.0.200") for _ in range(PER_CLIENT)]
    try:
        for _ in range(3):
            assert turned_away(web, "127.0.0.200"), "one more from that address is refused"
        assert get(web.url + "/")[0] == 200, "another address is answered"
    finally:
        for connection in held:
            connection.close()
    refused = [e for e in web.events() if e["event"] == "web.connections_refused"]
    assert [e["client"] for e in refused] == ["127.0.0.200"], "told once, not per connection"
    assert refused[0]["open"] == PER_CLIENT


def test_a_half_sent_header_is_cut_off_at_its_deadline(tmp_path):
    """Bytes that trickle in do not extend the deadline; a connection that sends nothing is
    cut off too; a whole request is answered as ever."""
    web = start_page(make_folders(tmp_path), tmp_path / "web.log", header_timeout_seconds=1)
    try:
        with (
            socket.create_connection(address(web), timeout=10) as silent,
            half_open(web, "127.0.0.1") as trickling,
        ):
            started = time.monotonic()
            for _ in range(4):
                time.sleep(0.3)
                try:
                    trickling.sendall(b"w")
                except OSError:
                    break
            assert closed_by_server(trickling, 5) and closed_by_server(silent, 5)
            assert time.monotonic() - started < 4
        assert get(web.url + "/")[0] == 200
        # A form's body has the same deadline: a login sent a byte at a time is answered 408.
        with socket.create_connection(address(web), timeout=10) as slow_form:
            slow_form.sendall(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf="
            )
            started = time.monotonic()
            assert slow_form.recv(4096).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 4
    finally:
        web.stop()


def test_a_hostile_name_downloads_over_the_real_server(page):
    """A name with a newline, a tab and a carriage return once made h11 refuse the header
    and drop the connection: no download at all."""
    web, job = page
    status, body, headers = get(f"{web.url}/jobs/{job}/files/txt")
    assert status == 200 and body == b"hello\n"
    assert headers["Content-Disposition"].startswith(
        'attachment; filename="minutes_of the_meeting_.txt"; '
        "filename*=UTF-8''minutes%0Aof%20the%09meeting%0D.txt"
    )
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_a_request_the_server_cannot_parse_gets_the_security_headers(page):
    web, _job = page
    with socket.create_connection(address(web), timeout=10) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 400")
    assert f"content-security-policy: {CONTENT_SECURITY_POLICY}".lower() in head
    assert "x-frame-options: deny" in head and "x-content-type-options: nosniff" in head


# --- where it can be opened from ---------------------------------------------------------------


def machine_addresses() -> dict[str, list[list[str]]]:
    """Global-scope addresses per family, per interface (first is the primary), from `ip`."""
    shown = json.loads(subprocess.check_output(["ip", "-j", "addr", "show"], text=True))
    found: dict[str, list[list[str]]] = {"inet": [], "inet6": []}
    for link in shown:
        if link["ifname"].startswith(("docker", "veth", "br-", "virbr")):
            continue
        for family in found:
            addresses = [
                a["local"]
                for a in link.get("addr_info", [])
                if a["family"] == family and a.get("scope") == "global"
            ]
            if addresses:
                found[family].append(addresses)
    return found


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104  (what the test is about)
def test_on_every_address_the_page_names_urls_a_phone_can_open(tmp_path, host):
    """It once logged http://0.0.0.0:8750/, which no phone can open, and said nothing of the
    password crossing the network in plain text."""
    token_file = tmp_path / "token"
    token_file.write_text("t" * 40)
    token_file.chmod(0o600)
    log = tmp_path / "web.log"
    web = start_page(make_folders(tmp_path), log, "--host", host, token_file=str(token_file))
    try:
        [listening] = [e for e in web.events() if e["event"] == "web.listening"]
        port = address(web)[1]
        assert listening["url"] == f"http://127.0.0.1:{port}/"
        assert get(listening["url"] + "login")[0] == 200
    finally:
        web.stop()
    ours = machine_addresses()
    families = ["inet"] + (["inet6"] if host == "::" else [])
    announced = listening["lan_urls"]
    for family in families:
        for addresses in ours[family]:
            urls = [
                f"http://{a}:{port}/" if family == "inet" else f"http://[{a}]:{port}/"
                for a in addresses
            ]
            assert urls[0] in announced, (urls, announced)
    everything = {a for family in families for per_link in ours[family] for a in per_link}
    assert all(url.split("//")[1].rsplit(":", 1)[0].strip("[]") in everything for url in announced)
    printed = log.read_text()
    if announced:
        assert "The page is open to other machines at:" in printed
        assert all(f"\n  {url}\n" in printed + "\n" for url in announced)
    else:
        assert "No network address found" in printed
    assert "0.0.0.0:" not in json.dumps(listening) and "[::]" not in json.dumps(listening)
    warnings = [e for e in web.events() if e["event"] == "web.plain_http"]
    assert len(warnings) == 1 and "Warning: logins here travel over plain HTTP" in printed


def test_with_https_no_plain_http_warning_is_given(tmp_path, capsys):
    web = WebSettings(
        host="0.0.0.0",  # noqa: S104
        tls_certfile=tmp_path / "cert.pem",
        tls_keyfile=tmp_path / "key.pem",
    )
    with capture_logs() as logged:
        _announce(web, 8750)
    [listening] = [e for e in logged if e["event"] == "web.listening"]
    assert listening["url"] == "https://127.0.0.1:8750/"
    assert all(url.startswith("https://") for url in listening["lan_urls"])
    assert not [e for e in logged if e["event"] == "web.plain_http"]
    assert "plain HTTP" not in capsys.readouterr().out
