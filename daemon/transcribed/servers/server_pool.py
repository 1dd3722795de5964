"""A pool of vLLM servers that share the daemon's work, kept busy and watched.

One asyncio loop on its own thread drives one long-lived `aiohttp.ClientSession` (HTTP/1.1
keep-alive, explicit timeouts, TLS verified against the system's CAs or a pinned one). Job
threads hand in request bodies with `submit`, with a `read` function that checks the answer
and makes it what they need, and get `concurrent.futures.Future`s back. (aiohttp, not httpx:
with 64 requests in flight per server, httpx's connection pool cost 5 ms of CPU a request
with one server and 20 ms with eight, on the one loop thread; aiohttp's about 0.5 ms.)

- Each request goes to the server with the fewest requests outstanding among those that are
  up and below `max_in_flight`; when all are full it waits for a free slot.
- A request has one deadline (`timeout_seconds`) for the whole exchange, and its answer is
  read as a stream and abandoned past `max_answer_bytes`: a server dripping bytes, or
  sending gigabytes, costs one slot for a while, never the daemon's memory or a job.
- Whatever goes wrong on one server is that server's failure and the request goes to
  another one, after a backoff with jitter: a refused or reset connection, the deadline, a
  5xx or 429, a proxy's redirect or error page, an answer that is not JSON or that `read`
  rejects (`BadAnswer`: the wrong shape, not a transcription). A chunk's answer depends only
  on the chunk and its parameters, so repeating it is safe. A request fails for good
  (`RequestRejected`) only when every server that is up has rejected it with a 4xx of its
  own (none is asked twice); when the servers are down or keep failing, it fails with
  `EngineUnavailable`, a `TransientError`: the job goes back to the queue, its original
  untouched.
- A server that refuses connections, rejects the API key or does not serve the model is
  marked down at once; one that fails `DOWN_AFTER` times in a row too (the reason is kept
  for `status` and the page), and any failure gets the server checked at once. Servers that
  are up are checked every `HEALTH_SECONDS` (`GET /v1/models`: reachable, key accepted,
  model served); down ones are probed with growing intervals and come back when that and a
  small real request (`probe`) succeed. Any exception in a check is the server's problem;
  the watcher itself is guarded and logs when it fails.

The API key is sent as a bearer token and never logged; neither are request bodies. Every
text a server sends back passes through one redaction (`Redactor`) before it is logged,
stored or shown.
"""

import asyncio
import concurrent.futures
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from transcribed.backoff import backoff
from transcribed.errors import ShutdownRequested, TranscribedError, TransientError
from transcribed.logs import get_logger
from transcribed.servers.redaction import Redactor

log = get_logger(__name__)

T = TypeVar("T")

DOWN_AFTER = 3  # failures in a row that mark a server down
HEALTH_SECONDS = 10.0  # how often servers that are up are checked
PROBE_SECONDS = (1.0, 30.0)  # first and longest wait between probes of a down server
BACKOFF_CAP_SECONDS = 4.0  # the longest wait before a request is tried again
MODELS_PATH = "/v1/models"
LISTING_MAX_BYTES = 1 << 20  # a model listing is a few hundred bytes
ERROR_PAGE_BYTES = 64 << 10  # of an error answer, only the start is read (for its message)
_SHOWN_CHARS = 200  # of a server's own message, in a problem


class EngineUnavailable(TransientError):
    """No engine server could answer: the job waits and is retried later."""


class RequestRejected(TranscribedError):
    """Every server refused this request itself (a 4xx other than auth): retrying will not
    help."""


class BadAnswer(Exception):
    """An answer that is not what was asked for (the message says how): the server's fault."""


class ServerFailure(Exception):
    """One request failed on one server; `problem` says how (already redacted), on one line."""

    def __init__(self, problem: str, at_once: bool = False, rejected: bool = False) -> None:
        problem = " ".join(problem.split())
        super().__init__(problem)
        self.problem = problem
        self.at_once = at_once  # the server is down now: refused, or the key or model is wrong
        self.rejected = rejected  # it refused this request (a 4xx): the request may be at fault


@dataclass(frozen=True)
class Probe:
    """A small real request (path, JSON body, how its answer is checked) a down server must
    answer before it is up again: answering the model listing does not prove it can work."""

    path: str
    body: bytes
    read: Callable[[Any], object]


@dataclass(frozen=True)
class PoolSettings:
    servers: tuple[str, ...]
    model: str  # the served model name every request names
    api_key: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    max_in_flight: int = 64
    timeout_seconds: float = 300.0  # the whole exchange, from sending to the answer's last byte
    connect_timeout_seconds: float = 5.0
    max_tries: int = 4  # at least; every server gets its chance at a request
    backoff_seconds: float = 0.5
    max_answer_bytes: int = 1 << 20  # an answer longer than this is abandoned
    probe: Probe | None = None


@dataclass
class Server:
    url: str
    up: bool = False
    outstanding: int = 0
    failures: int = 0  # in a row
    problem: str | None = "not checked yet"
    probes_failed: int = 0  # in a row, while down: the next probe's wait doubles with them
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
    ) -> None:
        self.settings = settings
        self.servers = [Server(url) for url in settings.servers]
        self.redact = Redactor(settings.api_key)
        self._on_change = on_change
        self._loop = asyncio.new_event_loop()
        # A daemon thread: whatever becomes of the pool, it never keeps the process alive.
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-pool", daemon=True
        )
        self._client: aiohttp.ClientSession | None = None
        self._slots: asyncio.Condition | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = threading.Event()

    # --- from any thread ------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop and check every server once; a start that fails closes the pool."""
        self._thread.start()
        try:
            self._call(self._start()).result()
        except BaseException:
            self.close()
            raise

    def running(self) -> bool:
        """Its loop's thread is alive: from `start` until `close`."""
        return self._thread.is_alive()

    def close(self) -> None:
        self._closed.set()
        if not self._thread.is_alive():  # never started, already closed, or its loop died
            if not self._loop.is_running() and not self._loop.is_closed():
                self._close_client_here()
                self._loop.close()
            return
        with contextlib.suppress(Exception):  # a wedged loop still stops below
            self._call(self._stop()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _close_client_here(self) -> None:
        """A loop that died with its tasks and session open: end them on this thread, so
        nothing is left to the garbage collector."""
        if self._client is not None and not self._client.closed:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._stop())

    def submit(
        self, path: str, body: bytes | dict[str, Any], read: Callable[[Any], T]
    ) -> "concurrent.futures.Future[T]":
        """POST `body` (JSON) to `path` on some server; the Future gives what `read` makes of
        the answer's JSON, or raises EngineUnavailable / RequestRejected. Once the pool is
        closing (the daemon stops), ShutdownRequested: the job goes back to the queue."""
        if self._closed.is_set():
            raise ShutdownRequested("the engine servers' pool is closed")
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = self._request(path, content, read)
        try:
            return self._call(request)
        except RuntimeError:  # closed between the check and the call
            request.close()
            raise ShutdownRequested("the engine servers' pool is closed") from None

    def summary(self) -> str:
        """`1 of 2 engine servers up`: for the STATUS= line and `status`."""
        up = sum(server.up for server in self.servers)
        return f"{up} of {len(self.servers)} engine servers up"

    def snapshot(self) -> list[dict[str, Any]]:
        return [server.as_dict() for server in self.servers]

    def _call(self, work: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    # --- on the pool's loop: starting and stopping -----------------------------------------

    async def _start(self) -> None:
        settings = self.settings
        connector = aiohttp.TCPConnector(
            ssl=tls_context(settings.ca_file),
            limit=0,  # `_acquire` keeps each server to max_in_flight; health checks beside
            limit_per_host=settings.max_in_flight + 2,
        )
        self._client = aiohttp.ClientSession(
            connector=connector,
            # Each request's deadline is its own (`_attempt`); a connection is given this long.
            timeout=aiohttp.ClientTimeout(sock_connect=settings.connect_timeout_seconds),
            headers={"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {},
            trust_env=False,  # no proxies or netrc from the environment: only these servers
        )
        self._slots = asyncio.Condition()
        await asyncio.gather(*(self._check(server) for server in self.servers))
        self._tell()  # how they stand, also when none changed (all down from the start)
        self._watch = asyncio.create_task(self._watch_servers())

    async def _stop(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:  # the watcher, and requests nobody waits for any more
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    # --- on the pool's loop: requests -----------------------------------------------------

    async def _request(self, path: str, body: bytes, read: Callable[[Any], T]) -> T:
        tried: set[str] = set()
        rejected: set[str] = set()  # servers that refused it (a 4xx): not asked again
        problem: str | None = None
        for attempt in range(max(self.settings.max_tries, len(self.servers))):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            try:
                server = await self._acquire(tried, rejected)
            except EngineUnavailable:
                raise self._unavailable(problem) from None
            tried.add(server.url)
            try:
                answer = await self._attempt(
                    server, path, body, read, self.settings.timeout_seconds
                )
            except ServerFailure as failure:
                problem = failure.problem
                self._failed(server, problem, at_once=failure.at_once)
                if failure.rejected:
                    rejected.add(server.url)
                if rejected and all(s.url in rejected for s in self.servers if s.up):
                    raise RequestRejected(f"every engine server rejected it: {problem}") from None
                continue
            finally:
                await self._release(server)
            self._answered(server)
            return answer
        raise self._unavailable(problem)

    def _unavailable(self, problem: str | None) -> EngineUnavailable:
        """Why a request could not be done: its last failure, or why the servers are down."""
        problem = problem or next((s.problem for s in self.servers if s.problem), None)
        return EngineUnavailable(f"{problem}; {self.summary()}" if problem else self.summary())

    async def _attempt(
        self, server: Server, path: str, body: bytes, read: Callable[[Any], T], deadline: float
    ) -> T:
        """One request on one server within `deadline` seconds, its answer checked by `read`;
        a ServerFailure says what went wrong."""
        try:
            async with asyncio.timeout(deadline):
                status, payload = await self._exchange(
                    "POST", server.url + path, body, self.settings.max_answer_bytes
                )
        except TimeoutError:
            raise ServerFailure(f"no complete answer within {deadline:g} s") from None
        if status != 200:
            raise self._status_failure(status, payload)
        try:
            answer = json.loads(payload)
        except ValueError:
            raise ServerFailure(f"its answer is not JSON ({self._begins(payload)})") from None
        try:
            return read(answer)
        except BadAnswer as error:
            raise ServerFailure(self.redact(f"its answer is not usable: {error}")) from None
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            shape = f"its answer has an unexpected shape ({type(error).__name__})"
            raise ServerFailure(shape) from None

    async def _exchange(
        self, method: str, url: str, body: bytes | None, limit: int
    ) -> tuple[int, bytes]:
        """Status and body of one HTTP exchange, the body read as a stream: past `limit`
        bytes (decompressed) an answer is abandoned, an error page cut short. Transport
        errors become ServerFailures."""
        assert self._client is not None
        data = _Body(body) if body is not None else None
        try:
            async with self._client.request(method, url, data=data, allow_redirects=False) as reply:
                return reply.status, await _read_capped(reply, limit)
        except aiohttp.ClientConnectorError as error:  # refused, unreachable, TLS refused
            problem = self.redact(f"cannot connect ({type(error).__name__}: {error})")
            raise ServerFailure(problem, at_once=True) from None
        except aiohttp.ServerTimeoutError as error:
            # Not down at once: a loaded server can be slow to accept, and is checked.
            raise ServerFailure(f"no answer in time ({type(error).__name__})") from None
        except aiohttp.ClientError as error:  # reset, broken framing, a bad Content-Encoding…
            problem = self.redact(f"the exchange failed ({type(error).__name__}: {error})")
            raise ServerFailure(problem) from None

    def _status_failure(self, status: int, payload: bytes) -> ServerFailure:
        problem = self._describe(status, payload)
        if status in (401, 403, 404):  # the key or the model: this server, at once
            return ServerFailure(problem, at_once=True)
        if 400 <= status < 500 and status not in (408, 429):
            return ServerFailure(problem, rejected=True)  # the request itself, maybe
        return ServerFailure(problem)  # 5xx, 429, 408, a redirect: the server (or its proxy)

    async def _acquire(self, tried: set[str], refused: set[str]) -> Server:
        """A slot on the least busy server that is up, one not yet tried when possible, never
        one that `refused` the request."""
        assert self._slots is not None
        grace = time.monotonic() + self.settings.connect_timeout_seconds
        async with self._slots:
            while True:
                up = [s for s in self.servers if s.up and s.url not in refused]
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
        return backoff(attempt, self.settings.backoff_seconds, BACKOFF_CAP_SECONDS, jitter=0.5)

    # --- on the pool's loop: the servers' state ----------------------------------------------

    def _answered(self, server: Server) -> None:
        server.answered += 1
        server.failures = 0
        server.probes_failed = 0  # it works: a later fall is probed soon again

    def _failed(self, server: Server, problem: str, at_once: bool = False) -> None:
        server.failures += 1
        log.warning("engine.request_failed", server=server.url, problem=problem)
        if server.up and (at_once or server.failures >= DOWN_AFTER):
            self._mark(server, up=False, problem=problem)
        elif server.up:
            server.next_check = 0.0  # check it now: a dead server is found before more is sent

    def _mark(self, server: Server, up: bool, problem: str | None) -> None:
        changed = server.up != up
        told = changed or server.problem != problem  # a down server's reason may change
        server.up, server.problem = up, problem
        if up:
            server.failures = 0
            server.next_check = time.monotonic() + HEALTH_SECONDS
        else:
            # The first probe a second after the fall; each failed one doubles the wait, to
            # 30 s; jitter spreads the probes of servers that fell together.
            wait = backoff(server.probes_failed + 1, *PROBE_SECONDS, jitter=0.2)
            server.next_check = time.monotonic() + wait
        if told:
            self._tell()
        if not changed:
            return
        if up:
            log.info("engine.server_up", server=server.url, summary=self.summary())
        else:
            log.warning(
                "engine.server_down", server=server.url, problem=problem, summary=self.summary()
            )
        if up and self._slots is not None:
            asyncio.get_running_loop().create_task(self._wake_waiters())

    def _tell(self) -> None:
        """Hand the servers' state to `on_change` (the status file): a failure there (a full
        disk) is logged, never the pool's end."""
        try:
            self._on_change(self.snapshot())
        except Exception as error:
            log.warning("engine.status_not_written", error=f"{type(error).__name__}: {error}")

    async def _wake_waiters(self) -> None:
        assert self._slots is not None
        async with self._slots:
            self._slots.notify_all()

    async def _watch_servers(self) -> None:
        """Check servers that are up every HEALTH_SECONDS, probe down ones with backoff. A
        failure of the watcher itself is logged, and it carries on."""
        while True:
            try:
                now = time.monotonic()
                due = [server for server in self.servers if server.next_check <= now]
                await asyncio.gather(*(self._check(server) for server in due))
            except Exception as error:
                message = self.redact(f"{type(error).__name__}: {error}")
                log.error("engine.watcher_failed", error=message, hint="it carries on")
                await asyncio.sleep(1.0)
            await asyncio.sleep(0.2)

    async def _check(self, server: Server) -> None:
        """Up when it answers `GET /v1/models` with the key accepted and the model served."""
        problem = await self._health_problem(server)
        if problem is None and server.up:
            # Reachable, and serving the model: its failures in a row still count (a server
            # that lists the model fine can still answer every request badly).
            server.next_check = time.monotonic() + HEALTH_SECONDS
            return
        if problem is None:
            self._mark(server, up=True, problem=None)
            return
        if server.up:
            self._failed(server, problem, at_once=True)
        else:
            server.probes_failed += 1
            self._mark(server, up=False, problem=problem)

    async def _health_problem(self, server: Server) -> str | None:
        """What is wrong with `server`, or None. Any exception is the server's problem."""
        timeout = self.settings.connect_timeout_seconds * 2
        try:
            async with asyncio.timeout(timeout):
                status, payload = await self._exchange(
                    "GET", server.url + MODELS_PATH, None, LISTING_MAX_BYTES
                )
            if status != 200:
                return self._describe(status, payload)
            if (problem := self._listing_problem(payload)) is not None:
                return problem
            probe = self.settings.probe
            if not server.up and probe is not None:
                await self._attempt(server, probe.path, probe.body, probe.read, timeout)
        except ServerFailure as failure:
            return failure.problem
        except TimeoutError:
            return f"no answer to GET {MODELS_PATH} within {timeout:g} s"
        except Exception as error:
            return self.redact(f"its health check failed ({type(error).__name__}: {error})")
        return None

    def _listing_problem(self, payload: bytes) -> str | None:
        try:
            listing = json.loads(payload)
        except ValueError:
            return f"its model listing is not JSON ({self._begins(payload)})"
        served = served_models(listing)
        if self.settings.model in served:
            return None
        shown = self.redact(", ".join(served)[:_SHOWN_CHARS])
        return f"it serves {shown or 'no model'}, not {self.settings.model}"

    def _describe(self, status: int, payload: bytes) -> str:
        """`HTTP 401: the API key was not accepted`-style summary of a failed answer (the
        server's message cut short and redacted: a proxy may echo our headers)."""
        if status in (401, 403):
            return f"HTTP {status}: the API key was not accepted"
        if 300 <= status < 400:
            return f"HTTP {status}: it redirects elsewhere (a proxy in front of it?)"
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        message = _message(answer) or payload.decode("utf-8", "replace")
        return self.redact(f"HTTP {status}: {' '.join(message.split())[:_SHOWN_CHARS]}")

    def _begins(self, payload: bytes) -> str:
        start = " ".join(payload[:60].decode("utf-8", "replace").split())
        return self.redact(f"it begins {start!r}") if start else "it is empty"


class _Body(aiohttp.payload.Payload):
    """A JSON request body already in memory, handed to the transport in one write: it
    copies what the socket does not take at once. (aiohttp's own bytes payload warns past
    1 MiB and suggests BytesIO, whose 64 KiB writes cost 1.5 ms of CPU a 30 s chunk, against
    0.5 ms for the whole request this way.)"""

    def __init__(self, value: bytes) -> None:
        super().__init__(value, content_type="application/json")
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: "aiohttp.abc.AbstractStreamWriter") -> None:
        await writer.write(self._value)


async def _read_capped(reply: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, decompressed; a 200 past `limit` bytes is abandoned (a ServerFailure), any
    other answer is cut at ERROR_PAGE_BYTES (its start says enough)."""
    ok = reply.status == 200
    limit = limit if ok else min(limit, ERROR_PAGE_BYTES)
    declared = reply.content_length
    if ok and declared is not None and declared > limit:
        raise ServerFailure(f"its answer would be {declared} bytes: over {limit}, abandoned")
    body = bytearray()
    async for piece in reply.content.iter_chunked(64 * 1024):
        body += piece
        if len(body) > limit:
            if ok:
                raise ServerFailure(f"its answer passed {limit} bytes: abandoned")
            break
    return bytes(body)


def _message(answer: Any) -> str | None:
    """The message in an OpenAI-style error answer, if it is one."""
    if not isinstance(answer, dict):
        return None
    error = answer.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    message = message or answer.get("message") or answer.get("detail")
    return str(message) if message else None


def served_models(listing: Any) -> list[str]:
    """Model names in a `GET /v1/models` answer."""
    try:
        return [str(entry["id"]) for entry in listing["data"]]
    except (KeyError, TypeError, IndexError):
        return []
