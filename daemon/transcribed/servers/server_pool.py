"""A pool of vLLM servers that share the daemon's work, kept busy and watched.

One asyncio loop on its own thread drives one long-lived `httpx.AsyncClient` (HTTP/1.1
keep-alive, explicit timeouts, TLS verified against the system's CAs or a pinned one). Job
threads hand in request bodies with `submit` and get `concurrent.futures.Future`s back.

- Each request goes to the server with the fewest requests outstanding among those that are
  up and below `max_in_flight`; when all are full it waits for a free slot.
- A request that fails (connection refused or reset, a timeout, a 5xx, a 429) is retried on
  another server when there is one, after a backoff with jitter, up to `max_tries` times.
  A chunk's answer depends only on the chunk and its parameters, so repeating it is safe.
- A server that refuses connections, rejects the API key or does not serve the model is
  marked down at once; one that fails `DOWN_AFTER` times in a row too, and any failure gets
  the server checked at once. Servers that are up are checked every `HEALTH_SECONDS`
  (`GET /v1/models`: reachable, key accepted, model served); down ones are probed with
  growing intervals and come back when that and a small real request (`probe`) succeed.
- With no server up a request waits `connect_timeout_seconds` for a probe to bring one back,
  then fails with `EngineUnavailable`, a `TransientError`: the job goes back to the queue,
  its original untouched, and is retried later.

The API key is sent as a bearer token and never logged; neither are request bodies.
"""

import asyncio
import concurrent.futures
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from transcribed.backoff import backoff
from transcribed.errors import TranscribedError, TransientError
from transcribed.logs import get_logger

log = get_logger(__name__)

DOWN_AFTER = 3  # failures in a row that mark a server down
HEALTH_SECONDS = 10.0  # how often servers that are up are checked
PROBE_SECONDS = (1.0, 30.0)  # first and longest wait between probes of a down server
MODELS_PATH = "/v1/models"


class EngineUnavailable(TransientError):
    """No engine server could answer: the job waits and is retried later."""


class RequestRejected(TranscribedError):
    """A server refused this request itself (a 4xx other than auth): retrying will not help."""


@dataclass(frozen=True)
class PoolSettings:
    servers: tuple[str, ...]
    model: str  # the served model name every request names
    api_key: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    max_in_flight: int = 64
    timeout_seconds: float = 300.0
    connect_timeout_seconds: float = 5.0
    max_tries: int = 4
    backoff_seconds: float = 0.5
    # A small real request (path, JSON body) a down server must answer before it is up
    # again: answering the model listing does not prove it can do the work.
    probe: tuple[str, dict[str, Any]] | None = None


@dataclass
class Server:
    url: str
    up: bool = False
    outstanding: int = 0
    failures: int = 0  # in a row
    problem: str | None = "not checked yet"
    failed_probes: int = 0  # in a row, while down: the wait before the next one doubles
    next_check: float = 0.0
    answered: int = 0
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "up": self.up,
            "outstanding": self.outstanding,
            "answered": self.answered,
            "problem": self.problem,
        }


def read_api_key(path: Path | None) -> str | None:
    """The key in `path` (surrounding whitespace removed). A ValueError says what is wrong
    with the file, never what is in it."""
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except OSError as error:
        raise ValueError(f"cannot read vllm_api_key_file {path}: {error.strerror}") from None
    if not key or any(ch.isspace() for ch in key):
        raise ValueError(f"vllm_api_key_file {path} must hold one key on one line")
    return key


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs, or only against `ca_file` (pinned)."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot use vllm_ca_file {ca_file}: {error}") from None


class ServerPool:
    """Balances requests over the servers; `start` before use, `close` at the end."""

    def __init__(
        self,
        settings: PoolSettings,
        on_change: Callable[[list[dict[str, Any]]], None] = lambda servers: None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.servers = [Server(url) for url in settings.servers]
        self._on_change = on_change
        self._transport = transport
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-pool")
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Condition | None = None
        self._watch: asyncio.Task[None] | None = None

    # --- from any thread ------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Start the loop and check every server once (`wait`: before returning)."""
        self._thread.start()
        checked = self._call(self._start())
        if wait:
            checked.result()

    def running(self) -> bool:
        """Its loop's thread is alive: from `start` until `close`."""
        return self._thread.is_alive()

    def close(self) -> None:
        if not self._thread.is_alive():  # never started (or already closed)
            if not self._loop.is_running():
                self._loop.close()
            return
        self._call(self._stop()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def submit(self, path: str, body: dict[str, Any]) -> "concurrent.futures.Future[Any]":
        """POST `body` (JSON) to `path` on some server; the Future gives the answer's JSON,
        or raises EngineUnavailable / RequestRejected."""
        return self._call(self._request(path, body))

    def summary(self) -> str:
        """`1 of 2 engine servers up`: for the STATUS= line and `status`."""
        up = sum(server.up for server in self.servers)
        return f"{up} of {len(self.servers)} engine servers up"

    def snapshot(self) -> list[dict[str, Any]]:
        return [server.as_dict() for server in self.servers]

    def _call(self, work: Coroutine[Any, Any, Any]) -> "concurrent.futures.Future[Any]":
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    # --- on the pool's loop ---------------------------------------------------------------

    async def _start(self) -> None:
        settings = self.settings
        self._client = httpx.AsyncClient(
            verify=tls_context(settings.ca_file),
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=len(self.servers) * settings.max_in_flight + len(self.servers),
                max_keepalive_connections=len(self.servers) * settings.max_in_flight,
            ),
            headers={"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {},
            transport=self._transport,
            trust_env=False,  # no proxies or netrc from the environment: only these servers
        )
        self._slots = asyncio.Condition()
        await asyncio.gather(*(self._check(server) for server in self.servers))
        self._watch = asyncio.create_task(self._watch_servers())

    async def _stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._client is not None:
            await self._client.aclose()

    async def _request(self, path: str, body: dict[str, Any]) -> Any:
        assert self._client is not None
        tried: set[str] = set()
        problem = "no server was tried"
        for attempt in range(self.settings.max_tries):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            server = await self._acquire(tried)
            tried.add(server.url)
            try:
                response = await self._client.post(server.url + path, json=body)
            except httpx.TimeoutException as error:
                # Not down at once: a loaded server can be slow to accept, and is checked.
                problem = f"no answer within the timeout ({type(error).__name__})"
                self._failed(server, problem)
                continue
            except httpx.TransportError as error:
                problem = f"connection failed ({type(error).__name__})"
                self._failed(server, problem, at_once=isinstance(error, httpx.ConnectError))
                continue
            finally:
                await self._release(server)
            if response.status_code == 200:
                self._answered(server)
                return response.json()
            problem = _describe(response)
            if response.status_code in (401, 403, 404):  # the key or the model: this server
                self._failed(server, problem, at_once=True)
            elif response.status_code == 429 or response.status_code >= 500:
                self._failed(server, problem)
            else:
                raise RequestRejected(f"{server.url} rejected the request: {problem}")
        raise EngineUnavailable(f"{problem}; {self.summary()}")

    async def _acquire(self, tried: set[str]) -> Server:
        """A slot on the least busy server that is up, one not yet tried when possible."""
        assert self._slots is not None
        grace = time.monotonic() + self.settings.connect_timeout_seconds
        async with self._slots:
            while True:
                up = [server for server in self.servers if server.up]
                if not up and (left := grace - time.monotonic()) > 0:
                    # A blip (a restart, a burst of failures): the probes may bring one back.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slots.wait(), left)
                    continue
                if not up:
                    raise EngineUnavailable(self.summary())
                free = [s for s in up if s.outstanding < self.settings.max_in_flight]
                fresh = [s for s in free if s.url not in tried] or free
                if fresh:
                    chosen = min(fresh, key=lambda server: server.outstanding)
                    chosen.outstanding += 1
                    return chosen
                await self._slots.wait()

    async def _release(self, server: Server) -> None:
        assert self._slots is not None
        async with self._slots:
            server.outstanding -= 1
            self._slots.notify()

    def _backoff(self, attempt: int) -> float:
        # Jitter: the retries of requests that failed together spread out.
        return backoff(attempt, self.settings.backoff_seconds, jitter=0.5)

    def _answered(self, server: Server) -> None:
        server.answered += 1
        server.failures = 0

    def _failed(self, server: Server, problem: str, at_once: bool = False) -> None:
        server.failures += 1
        log.warning("engine.request_failed", server=server.url, problem=problem)
        if server.up and (at_once or server.failures >= DOWN_AFTER):
            self._mark(server, up=False, problem=problem)
        elif server.up:
            server.next_check = 0.0  # check it now: a dead server is found before more is sent

    def _mark(self, server: Server, up: bool, problem: str | None) -> None:
        changed = server.up != up
        server.up, server.problem = up, problem
        if up:
            server.failures, server.failed_probes = 0, 0
            server.next_check = time.monotonic() + HEALTH_SECONDS
        else:
            first, longest = PROBE_SECONDS
            wait = backoff(server.failed_probes + 1, first, longest, jitter=0.2)
            server.next_check = time.monotonic() + wait
        if not changed:
            return
        if up:
            log.info("engine.server_up", server=server.url, summary=self.summary())
        else:
            log.warning(
                "engine.server_down", server=server.url, problem=problem, summary=self.summary()
            )
        self._on_change(self.snapshot())
        if up and self._slots is not None:
            asyncio.get_running_loop().create_task(self._wake_waiters())

    async def _wake_waiters(self) -> None:
        assert self._slots is not None
        async with self._slots:
            self._slots.notify_all()

    async def _watch_servers(self) -> None:
        """Check servers that are up every HEALTH_SECONDS, probe down ones with backoff."""
        while True:
            now = time.monotonic()
            due = [server for server in self.servers if server.next_check <= now]
            await asyncio.gather(*(self._check(server) for server in due))
            await asyncio.sleep(0.2)

    async def _check(self, server: Server) -> None:
        """Up when it answers `GET /v1/models` with the key accepted and the model served."""
        problem = await self._health_problem(server)
        if problem is None:
            server.failures = 0
            self._mark(server, up=True, problem=None)
            return
        if server.up:
            self._failed(server, problem, at_once=True)
        else:
            server.failed_probes += 1
            self._mark(server, up=False, problem=problem)

    async def _health_problem(self, server: Server) -> str | None:
        assert self._client is not None
        timeout = self.settings.connect_timeout_seconds * 2
        try:
            response = await self._client.get(server.url + MODELS_PATH, timeout=timeout)
            if response.status_code != 200:
                return _describe(response)
            served = served_models(response.json())
            if self.settings.model not in served:
                return f"it serves {', '.join(served) or 'no model'}, not {self.settings.model}"
            if server.up or self.settings.probe is None:
                return None
            path, body = self.settings.probe
            response = await self._client.post(server.url + path, json=body, timeout=timeout)
        except httpx.TransportError as error:
            return f"cannot reach it ({type(error).__name__}: {error})"
        return None if response.status_code == 200 else _describe(response)


def served_models(listing: Any) -> list[str]:
    """Model names in a `GET /v1/models` answer."""
    try:
        return [str(entry["id"]) for entry in listing["data"]]
    except (KeyError, TypeError):
        return []


def _describe(response: httpx.Response) -> str:
    """`HTTP 401: API key rejected`-style summary of a failed answer (server's message cut
    short: it may quote the request, never our audio, which is not echoed)."""
    if response.status_code in (401, 403):
        return f"HTTP {response.status_code}: the API key was not accepted"
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    error = answer.get("error") if isinstance(answer, dict) else None
    message = (error.get("message") if isinstance(error, dict) else None) or (
        answer.get("message") if isinstance(answer, dict) else None
    )
    message = message or response.text
    return f"HTTP {response.status_code}: {' '.join(str(message).split())[:200]}"
