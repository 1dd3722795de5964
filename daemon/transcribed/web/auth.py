"""Who may use the page: passwords and tokens, failed-login limits, CSRF tokens, and the rule
that decides whether a request needs a login.

The rule: with a password or token configured, every page needs a login, from any address
(a reverse proxy on this machine makes every client look local). Without one, the page may only
listen on loopback, answers only loopback clients, and only under a loopback host name, so a
web site cannot reach it through DNS rebinding.
"""

import base64
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from transcribed.errors import ConfigError
from transcribed.settings.web import PASSWORD_SCHEME, WebSettings, is_loopback

# scrypt at N=2^15, r=8, p=1: 32 MiB and about 0.1 s per guess on a desktop CPU.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD_CHARS = 10
MIN_TOKEN_CHARS = 24
SESSION_USER = "user"
SESSION_CSRF = "csrf"


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64), for `[web] password_hash`."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        [PASSWORD_SCHEME, str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, hashed: str) -> bool:
    scheme, n, r, p, salt, digest = hashed.split("$")
    if scheme != PASSWORD_SCHEME:
        return False
    found = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(found, base64.b64decode(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def read_new_password() -> str:
    """A new password: asked twice on a terminal, read once from a pipe."""
    if sys.stdin.isatty():
        first = getpass.getpass("password for the page: ")
        if getpass.getpass("the same again: ") != first:
            raise ConfigError("the two passwords differ; nothing was printed")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"choose a password of at least {MIN_PASSWORD_CHARS} characters")
    return first


def read_token(path: Path) -> str:
    """The access token in `token_file`: long, and readable by its owner alone."""
    try:
        info = path.stat()
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"cannot read web token_file {path}: {error.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"web token_file {path} is readable by others: chmod 600 {path}")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"web token_file {path} holds a token of under {MIN_TOKEN_CHARS} characters; "
            'make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return token


@dataclass
class Credentials:
    """What opens the page: the password hash and the token, either or both."""

    password_hash: str | None
    token: str | None

    @classmethod
    def from_settings(cls, web: WebSettings) -> "Credentials":
        token = read_token(web.token_file) if web.token_file is not None else None
        return cls(web.password_hash, token)

    @property
    def required(self) -> bool:
        return self.password_hash is not None or self.token is not None

    def check(self, presented: str) -> bool:
        """True when `presented` is the password or the token (both always checked, so the
        time taken does not tell which one exists)."""
        by_token = self.token is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )
        by_password = self.password_hash is not None and verify_password(
            presented, self.password_hash
        )
        return by_token or by_password


def check_listening(web: WebSettings, credentials: Credentials) -> None:
    """Refuse to listen beyond loopback without a login."""
    if not is_loopback(web.host) and not credentials.required:
        raise ConfigError(
            f"the page would listen on {web.host} without a login: set [web] password_hash "
            "(`transcribed web-password` makes one) or token_file, or keep host = 127.0.0.1"
        )


@dataclass
class RateLimit:
    """At most `limit` events per `window` seconds for each key (a client address)."""

    limit: int
    window: float
    clock: Callable[[], float] = time.monotonic
    _events: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        events = self._recent(key)
        if len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.window - self.clock())

    def record(self, key: str) -> None:
        self._recent(key).append(self.clock())

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def _recent(self, key: str) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= self.clock() - self.window:
            events.popleft()
        return events


# Wrong guesses a client may make before it has to wait; then each wait doubles.
FREE_FAILURES = 5
FIRST_DELAY_SECONDS = 2.0
LONGEST_DELAY_SECONDS = 900.0
_FORGET_FAILURES_AFTER = 86400.0  # a client quiet this long starts afresh
_CLIENTS_TRACKED = 10_000  # memory bound: the longest-quiet clients are forgotten first


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    wait_until: float = 0.0


@dataclass
class LoginThrottle:
    """Wrong passwords, counted per client (`client_key`): after `FREE_FAILURES`, each further
    try must wait twice as long as the one before (2 s, 4 s, 8 s … up to 15 minutes). Only the
    client that guessed waits: there is no ceiling for all clients together, so strangers'
    guesses from any number of addresses never lock out the person who has the password."""

    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, _Failures] = field(default_factory=dict)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        failures = self._clients.get(client)
        return max(0.0, failures.wait_until - self.clock()) if failures else 0.0

    def failed(self, client: str) -> float:
        """Count a wrong guess; returns how long `client` must now wait (0 for a free one)."""
        now = self.clock()
        failures = self._clients.pop(client, None)
        if failures is None or now - failures.last > _FORGET_FAILURES_AFTER:
            failures = _Failures()
        failures.count += 1
        failures.last = now
        beyond = failures.count - FREE_FAILURES
        if beyond >= 0:
            delay = min(LONGEST_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2.0 ** min(beyond, 20))
            failures.wait_until = now + delay
        self._clients[client] = failures  # re-inserted: the dict stays in order of last failure
        while len(self._clients) > _CLIENTS_TRACKED:
            del self._clients[next(iter(self._clients))]
        return max(0.0, failures.wait_until - now)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def client_key(host: str) -> str:
    """Whom a limit counts: the address, except that an IPv6 client counts as its /64 (one
    machine commonly holds a whole /64 and may pick any address in it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def in_networks(host: str, networks: tuple[str, ...]) -> bool:
    """True when `host` is one of `networks` (addresses or networks, as [web] trusted_proxies)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


@dataclass
class Sessions:
    """The logins this page process opened and has not closed. The signed cookie carries a
    random session id, and only an id listed here opens the page: logging out ends the session
    on the server, so a copy of the cookie (one sniffed on plain HTTP) opens nothing after.
    Kept in memory, like the cookie-signing key: a restart ends every login anyway, and the
    page writes nothing for it."""

    lifetime_seconds: float
    clock: Callable[[], float] = time.monotonic
    limit: int = 1000  # open logins at most; the oldest is closed to make room
    _expiry: dict[str, float] = field(default_factory=dict)

    def open(self) -> str:
        now = self.clock()
        self._expiry = {key: end for key, end in self._expiry.items() if end > now}
        while len(self._expiry) >= self.limit:
            del self._expiry[next(iter(self._expiry))]
        session_id = secrets.token_urlsafe(32)
        self._expiry[session_id] = now + self.lifetime_seconds
        return session_id

    def is_open(self, session_id: object) -> bool:
        if not isinstance(session_id, str):
            return False
        return self._expiry.get(session_id, 0.0) > self.clock()

    def close(self, session_id: object) -> None:
        if isinstance(session_id, str):
            self._expiry.pop(session_id, None)


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, made on first use."""
    if not isinstance(session.get(SESSION_CSRF), str):
        session[SESSION_CSRF] = secrets.token_urlsafe(32)
    return str(session[SESSION_CSRF])


def csrf_ok(session: MutableMapping[str, Any], presented: str | None) -> bool:
    expected = session.get(SESSION_CSRF)
    if not isinstance(expected, str) or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def start_session(session: MutableMapping[str, Any], sessions: Sessions) -> None:
    """After a login: a fresh session (no fixation) with a fresh CSRF token."""
    session.clear()
    session[SESSION_USER] = sessions.open()
    csrf_token(session)


def end_session(session: MutableMapping[str, Any], sessions: Sessions) -> None:
    """Logging out: the session is closed on the server, and the cookie emptied."""
    sessions.close(session.get(SESSION_USER))
    session.clear()


def logged_in(session: Mapping[str, Any], sessions: Sessions) -> bool:
    return sessions.is_open(session.get(SESSION_USER))


class Verdict(Enum):
    ALLOW = "allow"
    LOGIN = "login"  # send to the login page
    FORBIDDEN = "forbidden"


def verdict(
    login_required: bool, logged_in: bool, client: str | None, host_header: str, path: str
) -> Verdict:
    """Whether a request may proceed, must log in first, or is refused outright."""
    if not login_required:
        local = client is not None and is_loopback(client)
        return (
            Verdict.ALLOW if local and is_loopback(_host_name(host_header)) else Verdict.FORBIDDEN
        )
    # Without a login: the login page, and the style sheet and script it needs.
    if logged_in or path == "/login" or path.startswith("/static/"):
        return Verdict.ALLOW
    return Verdict.LOGIN


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8750` -> `127.0.0.1`, `[::1]:8750` -> `::1`."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def session_secret() -> str:
    """A new signing key for each start of the page: restarting it logs everyone out, and
    there is no key file to protect."""
    return secrets.token_urlsafe(32)
