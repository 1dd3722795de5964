"""Stand-ins for vLLM servers that cost this machine next to nothing, for measuring the
daemon itself: `transcribed bench --simulate-servers`.

Each stand-in is a process of its own running one asyncio loop. It never parses a request's
JSON nor decodes its audio: the audio's length comes from the header at the start of the
base64 audio (a WAV's data size and byte rate, a FLAC's sample count and rate), found by a
byte search and decoded from 64 characters. The answer, a fixed transcription in vLLM's
shape, goes out `audio seconds / speed` later, while the loop sleeps; speed 0 answers at
once: a server of unbounded capacity. It counts how busy it was (the time-integral of
requests in flight, on the system-wide monotonic clock) and the bytes it was sent.

    python -m transcribed.servers.stand_in --speed 5   # prints one JSON line with its URL
"""

import argparse
import asyncio
import base64
import binascii
import json
import struct
import sys
import threading
import time
from typing import Any

_DATA = b'"data": "'  # where the base64 audio starts in the daemon's request body
_HEAD_CHARS = 64  # base64 characters that hold a WAV's (44 bytes) or a FLAC's header
_SEARCH_BYTES = 256 * 1024  # a context longer than this before the audio: length from size
_PCM16_BYTES_PER_SECOND = 16_000 * 2
_TOKENS = [("language", -0.01), (" English", -0.05), ("<asr_text>", 0.0), ("hello", -0.1)]


def audio_seconds(head: bytes) -> float | None:
    """Seconds of audio from the first base64 characters of a WAV or FLAC file; None when
    they are not one (or the header does not say)."""
    try:
        raw = base64.b64decode(head[: _HEAD_CHARS // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE" and raw[36:40] == b"data":
        byte_rate = struct.unpack_from("<I", raw, 28)[0]
        size = struct.unpack_from("<I", raw, 40)[0]
        return size / byte_rate if byte_rate else None
    if raw[:4] == b"fLaC" and len(raw) >= 26:
        word = struct.unpack_from(">Q", raw, 18)[0]  # STREAMINFO: rate 20 bits .. samples 36
        rate, samples = word >> 44, word & ((1 << 36) - 1)
        return samples / rate if rate and samples else None
    return None


def chat_answer_bytes(model: str) -> bytes:
    """A chat completion in vLLM's shape: `language English<asr_text>hello`, ended."""
    steps = [{"token": t, "logprob": p, "top_logprobs": []} for t, p in _TOKENS]
    answer = {
        "id": "chatcmpl-stand-in",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "language English<asr_text>hello"},
                "finish_reason": "stop",
                "logprobs": {"content": steps},
            }
        ],
    }
    return json.dumps(answer).encode()


class Counters:
    """How busy the stand-in was, and what it was sent."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self.busy = 0.0  # integral of in_flight over time, in request-seconds
        self.since = time.monotonic()
        self.first: float | None = None  # when the first request came
        self.last: float | None = None  # when the last answer went
        self.body_bytes = 0  # chat requests' bodies
        self.audio_seconds = 0.0

    def count(self, change: int) -> None:
        now = time.monotonic()
        self.busy += self.in_flight * (now - self.since)
        self.since = now
        self.in_flight += change
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if change > 0 and self.first is None:
            self.first = now
        if change < 0:
            self.answered += 1
            self.last = now

    def stats(self) -> dict[str, Any]:
        self.count(0)
        return {
            "busy": self.busy,
            "now": self.since,
            "first": self.first,
            "last": self.last,
            "in_flight": self.in_flight,
            "most_in_flight": self.most_in_flight,
            "answered": self.answered,
            "body_bytes": self.body_bytes,
            "audio_seconds": self.audio_seconds,
        }


class StandIn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time (as httpx sends them)."""

    def __init__(self, model: str, speed: float, counters: Counters, answer: bytes) -> None:
        self._model, self._speed, self._counters, self._answer = model, speed, counters, answer
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._request: tuple[str, str] | None = None  # method, path: the head is read
        self._left = 0  # body bytes still to come
        self._audio: float | None = None
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._request is None:
            self._buffer += data
            self._read_head()
        else:
            self._read_body(data)

    def _read_head(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        self._request, self._left, self._size, self._audio = (method, path), length, length, None
        self._read_body(rest)

    def _read_body(self, data: bytes) -> None:
        take = data[: self._left]
        self._left -= len(take)
        if self._audio is None and len(self._buffer) < _SEARCH_BYTES:
            self._buffer += take
            if (at := self._buffer.find(_DATA)) >= 0:
                start = at + len(_DATA)
                if len(self._buffer) >= start + _HEAD_CHARS or not self._left:
                    self._audio = audio_seconds(bytes(self._buffer[start : start + _HEAD_CHARS]))
                    self._buffer.clear()
        if self._left == 0:
            self._buffer.clear()
            request, self._request = self._request, None
            assert request is not None
            self._respond(*request)
            if len(data) > len(take):  # the next request began in the same read
                self.data_received(data[len(take) :])

    def _respond(self, method: str, path: str) -> None:
        if method == "GET" and path == "/v1/models":
            listing = {"object": "list", "data": [{"id": self._model, "root": self._model}]}
            self._send(json.dumps(listing).encode())
        elif method == "GET" and path in ("/health", "/version"):
            self._send(b'{"version": "stand-in"}')
        elif method == "GET" and path == "/sim/stats":
            self._send(json.dumps(self._counters.stats()).encode())
        elif method == "POST" and path == "/v1/chat/completions":
            self._chat()
        else:
            self._send(b'{"error": {"message": "not found"}}', status="404 Not Found")

    def _chat(self) -> None:
        seconds = self._audio
        if seconds is None:  # not a header it knows: 16-bit PCM, base64
            seconds = self._size * 3 / 4 / _PCM16_BYTES_PER_SECOND
        counters = self._counters
        counters.body_bytes += self._size
        counters.audio_seconds += seconds
        counters.count(+1)
        delay = seconds / self._speed if self._speed > 0 else 0.0
        asyncio.get_running_loop().call_later(delay, self._answered)

    def _answered(self) -> None:
        self._counters.count(-1)
        self._send(self._answer)

    def _send(self, body: bytes, status: str = "200 OK") -> None:
        if self._transport is None or self._transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._transport.write(head.encode() + body)


async def _serve(model: str, speed: float, host: str) -> None:
    counters = Counters()
    answer = chat_answer_bytes(model)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StandIn(model, speed, counters, answer), host, 0, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    closed = asyncio.Event()
    # Until the parent closes our stdin (or dies): read on a thread, never on the loop.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(closed.set)), daemon=True
    ).start()
    await closed.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=5.0, help="audio seconds per second")
    parser.add_argument("--model", default="simulated")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(_serve(args.model, args.speed, args.host))


if __name__ == "__main__":
    main()
