"""Connections before they become requests: a deadline for each request's header, and a cap
on the connections one client may hold, so half-open connections cannot keep the page from
anyone else.

uvicorn has neither: a connection that sends half a header is held for as long as its client
likes (its keep-alive timeout starts only after a response), and its `limit_concurrency` counts
such connections, so 64 of them made every other request a 503. The guard lives in the HTTP
protocol (uvicorn's h11 one, subclassed), below the app: it sees a connection the moment it
is accepted, before anything in it can be parsed.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from transcribed.logs import get_logger
from transcribed.web.auth import client_key, in_networks

log = get_logger(__name__)

PER_CLIENT = 32  # a browser opens ~6; people behind one NAT share an address
TOTAL = 512  # keeps file descriptors for the files the page serves


@dataclass
class ConnectionCount:
    """Open connections, in all and per client; trusted proxies are counted in all only
    (every client behind one arrives from its address)."""

    exempt: tuple[str, ...] = ()  # addresses or networks: [web] trusted_proxies
    per_client: int = PER_CLIENT
    total: int = TOTAL
    _open: Counter[str] = field(default_factory=Counter)
    _refusing: set[str] = field(default_factory=set)  # told in the log once per episode

    def admit(self, client: str) -> bool:
        key = client_key(client)
        if self._open.total() >= self.total or (
            self._open[key] >= self.per_client and not in_networks(client, self.exempt)
        ):
            if key not in self._refusing:
                self._refusing.add(key)
                log.warning(
                    "web.connections_refused",
                    client=client,
                    open=self._open[key],
                    in_all=self._open.total(),
                )
            return False
        self._open[key] += 1
        return True

    def release(self, client: str) -> None:
        key = client_key(client)
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
            self._refusing.discard(key)


def guarded_protocol(
    header_timeout: float, count: ConnectionCount, security_headers: dict[str, str]
) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with the deadline and the cap (one class per page process)."""
    extra_headers = [(name.encode(), value.encode()) for name, value in security_headers.items()]

    class GuardedProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            client = self.client[0] if self.client else "unknown"
            if not count.admit(client):
                transport.close()
                return
            self._counted = client
            self._watch_header()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_header()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                count.release(self._counted)
                self._counted = None
            super().connection_lost(exc)

        def _watch_header(self) -> None:
            """The clock runs from the connection's start, or from the first byte of its next
            request, until that request's header is complete; more bytes never reset it."""
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._header_timer is None:
                    self._header_timer = self.loop.call_later(header_timeout, self._too_slow)
            else:
                self._disarm()

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            # Idle between requests is uvicorn's keep-alive timeout's to end, not ours.
            self._disarm()
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse: the same answer, with the page's headers."""
            event = h11.Response(
                status_code=400,
                headers=[
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"connection", b"close"),
                    *extra_headers,
                ],
                reason=b"Bad Request",
            )
            for part in (event, h11.Data(data=msg.encode("ascii")), h11.EndOfMessage()):
                self.transport.write(self.conn.send(part) or b"")
            self.transport.close()

    return GuardedProtocol


def uvicorn_options(protocol: type[H11Protocol]) -> dict[str, Any]:
    """The uvicorn settings that go with the guard: its protocol, and no concurrency limit of
    uvicorn's own (it counted idle connections: the guard's caps replace it)."""
    return {"http": protocol, "limit_concurrency": None, "timeout_keep_alive": 5}
