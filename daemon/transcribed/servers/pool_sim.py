"""A server that speaks the part of vLLM's OpenAI-compatible API the daemon uses, on threads
(`ApiServer`): the HTTP plumbing of the tests' fake vLLM server, which puts the tiny real
model behind it, and of simple simulated servers (`timed_answer`: answers after `seconds of
audio / speed`, asleep). It parses every request, so it is not what the benchmark measures
against: `stand_in` is, a process per server that costs next to nothing.
"""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAV_HEADER_BYTES = 44
PCM16_BYTES_PER_SECOND = 16_000 * 2
VERSION = "sim"


def audio_seconds(request: dict[str, Any]) -> float:
    """Seconds of 16 kHz 16-bit audio in a chat request, from its base64 length (no decoding)."""
    seconds = 0.0
    for message in request.get("messages", []):
        for part in message.get("content") if isinstance(message.get("content"), list) else []:
            if part.get("type") == "input_audio":
                raw = len(part["input_audio"]["data"]) * 3 // 4 - WAV_HEADER_BYTES
                seconds += max(raw, 0) / PCM16_BYTES_PER_SECOND
    return seconds


def chat_answer(
    model: str, content: str, finish_reason: str, logprobs: list[tuple[str, float]]
) -> dict[str, Any]:
    """A chat completion in vLLM's shape, with per-token log-probabilities."""
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": {
                    "content": [
                        {"token": token, "logprob": logprob, "top_logprobs": []}
                        for token, logprob in logprobs
                    ]
                },
            }
        ],
    }


Answer = Callable[[dict[str, Any]], dict[str, Any]]


class ApiServer(ThreadingHTTPServer):
    """`/health`, `/version`, `/v1/models` and `/v1/chat/completions`, answered by `answer`;
    an API key is checked when given. Counts requests in flight over time."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], model: str, answer: Answer, api_key: str | None = None
    ) -> None:
        super().__init__(address, ApiHandler)
        self.model = model
        self.answer = answer
        self.api_key = api_key
        self._lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self._busy = 0.0  # integral of in_flight over time, in request-seconds
        self._since = time.monotonic()
        self.first: float | None = None  # when the first request came (time.monotonic)
        self.last: float | None = None  # when the last answer went

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gave up on an answer (a timeout, a stop) is no fault here."""

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, change: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._busy += self.in_flight * (now - self._since)
            self._since = now
            self.in_flight += change
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.answered += change < 0
            if change > 0 and self.first is None:
                self.first = now
            if change < 0:
                self.last = now

    def stats(self) -> dict[str, float | None]:
        """Request-seconds in flight so far, at `now` (time.monotonic: one clock for every
        process on the machine), and when the first request came and the last answer went."""
        self.count(0)
        with self._lock:
            return {
                "busy": self._busy,
                "now": self._since,
                "first": self.first,
                "last": self.last,
                "in_flight": self.in_flight,
                "most_in_flight": self.most_in_flight,
                "answered": self.answered,
            }


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the daemon reuses its connections
    server: ApiServer

    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_json(200, {})
        elif self.path == "/version":
            self.send_json(200, {"version": VERSION})
        elif self.path == "/sim/stats":
            self.send_json(200, self.server.stats())
        elif self.path == "/v1/models" and self.authorized():
            self.send_json(200, {"object": "list", "data": [{"id": self.server.model}]})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": {"message": "not found"}})
            return
        if not self.authorized():
            return
        request = json.loads(body)
        if request.get("model") != self.server.model:
            self.send_json(404, {"error": {"message": f"model {request.get('model')} not found"}})
            return
        self.server.count(+1)
        try:
            answer = self.server.answer(request)
        finally:
            self.server.count(-1)
        self.send_json(200, answer)

    def authorized(self) -> bool:
        key = self.server.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.send_json(401, {"error": {"message": "Unauthorized"}})
        return False

    def send_json(self, status: int, data: object) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request log line per chunk would drown the measurement."""


def timed_answer(model: str, speed: float) -> Answer:
    """Answers after audio / speed seconds, asleep, with a fixed English sentence."""
    tokens = [("language", -0.01), (" English", -0.05), ("<asr_text>", 0.0), ("hello", -0.1)]

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(audio_seconds(request) / speed)
        return chat_answer(model, "language English<asr_text>hello", "stop", tokens)

    return answer
