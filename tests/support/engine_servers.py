"""Helpers for tests of the vLLM engine: test certificates, a remote engine to talk to
fake servers, and `OddServer`, an OpenAI-compatible server that misbehaves as told (raw
HTTP: anything a proxy, a wrong model, a half-broken host or an overloaded box sends)."""

import contextlib
import json
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcribed.servers.pool_sim import chat_answer
from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.settings import ModelSettings


def make_certificates(folder: Path, addresses: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    """A test CA (`ca.pem`) and a server certificate for `addresses` (`server.pem`,
    `server.key`) in `folder`, made with the openssl program."""
    folder.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    names = ",".join(f"IP:{address}" for address in addresses)
    (folder / "ext.cnf").write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
        "authorityKeyIdentifier=keyid\nextendedKeyUsage=serverAuth\n"
    )
    authority = ["req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]
    request = ["req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=x"]
    sign = ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days"]
    for command in (
        [*authority, "-subj", "/CN=transcribed-test-ca", *ca],
        request,
        [*sign, "2", "-CAcreateserial", "-out", "server.pem", "-extfile", "ext.cnf"],
    ):
        subprocess.run(["openssl", *command], cwd=folder, check=True, capture_output=True)
    return folder


def remote_engine(
    urls: list[str], model: str = "tiny", batch_size: int = 8, **settings: Any
) -> RemoteEngine:
    """A connected engine for these servers (close its pool at the end)."""
    config = ModelSettings(engine="vllm", vllm_servers=urls, model=model, **settings)
    return RemoteEngine.connect(config, batch_size, threading.Event())


# --- servers that misbehave ---------------------------------------------------------------

GOOD_TEXT = "language English<asr_text>hello"


def good_answer(content: str = GOOD_TEXT, finish: str = "stop") -> bytes:
    """A chat completion as vLLM writes it."""
    return json.dumps(chat_answer("tiny", content, finish, [("language", -0.1)])).encode()


def response(
    body: bytes,
    status: str = "200 OK",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> bytes:
    """A raw HTTP/1.1 response: anything a broken host or proxy might send."""
    fields = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    fields |= {"Content-Length": str(length)} if length is not None else {}
    fields |= headers or {}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# What a server does with a request: writes its answer to the socket (slowly, endlessly, …).
Behaviour = Callable[[Request, socket.socket], None]


def answers(raw: bytes) -> Behaviour:
    return lambda request, connection: connection.sendall(raw)


def echoing_headers(status: str = "400 Bad Request") -> Behaviour:
    """An error page that quotes the request's headers, Authorization included."""

    def behave(request: Request, connection: socket.socket) -> None:
        quoted = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
        body = json.dumps({"error": {"message": f"bad request (headers: {quoted})"}}).encode()
        connection.sendall(response(body, status))

    return behave


def dripping(raw: bytes, every: float) -> Behaviour:
    """The answer one byte at a time, `every` seconds apart (until the client gives up)."""

    def behave(request: Request, connection: socket.socket) -> None:
        for index in range(len(raw)):
            connection.sendall(raw[index : index + 1])
            time.sleep(every)

    return behave


class Endless:
    """A 200 that claims `claimed` bytes and streams zeros until the client hangs up (or
    `most` bytes are out); counts what it managed to send."""

    def __init__(self, claimed: int = 1_500_000_000, most: int = 400 << 20) -> None:
        self.claimed, self.most, self.sent = claimed, most, 0

    def __call__(self, request: Request, connection: socket.socket) -> None:
        connection.sendall(response(b"", length=self.claimed))
        block = b"0" * 65536
        while self.sent < self.most:
            connection.sendall(block)
            self.sent += len(block)


class OddServer:
    """An OpenAI-compatible server on a thread that answers as the test says: a healthy model
    listing and a good transcription unless `listing` or `chat` are changed (at any time)."""

    def __init__(self, model: str = "tiny") -> None:
        self.listing: Behaviour = answers(response(json.dumps({"data": [{"id": model}]}).encode()))
        self.chat: Behaviour = answers(response(good_answer()))
        self.requests: list[Request] = []
        self._open: set[socket.socket] = set()  # connections being served
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def chats(self) -> int:
        return sum(request.path.endswith("/chat/completions") for request in self.requests)

    def start(self) -> "OddServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """As a dead server: no new connections, and the open keep-alive ones end too."""
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        odd = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                odd._open.add(self.connection)
                with contextlib.suppress(OSError, ValueError):
                    while (request := _read_request(self.rfile)) is not None:
                        odd.requests.append(request)
                        behave = odd.listing if request.method == "GET" else odd.chat
                        behave(request, self.connection)
                odd._open.discard(self.connection)

        return Handler


def _read_request(stream: Any) -> Request | None:
    line = stream.readline()
    if not line:
        return None
    method, path, _version = line.decode().split(" ", 2)
    headers = {}
    while (field := stream.readline().decode().strip()) != "":
        name, _, value = field.partition(":")
        headers[name.strip()] = value.strip()
    length = int(headers.get("Content-Length", headers.get("content-length", 0)))
    return Request(method, path, headers, stream.read(length))
