"""`transcribed web`: the page, in its own process so the daemon keeps no network at all.

Built from Starlette (routing, signed-cookie sessions), Jinja2 (templates that escape
everything) and served by uvicorn. Every response carries a strict Content-Security-Policy:
the page loads its own style sheet and script and nothing else, from nowhere else; error
answers (404, 429, a 500 from a bug) carry it too.
"""

import logging
import os
import socket
import sqlite3
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from transcribed.errors import ConfigError
from transcribed.logs import get_logger
from transcribed.output.search_index import clock
from transcribed.settings import Settings
from transcribed.settings.access import state_access_problem, user_name
from transcribed.settings.web import WebSettings, is_loopback
from transcribed.web.addresses import WILDCARDS, page_urls
from transcribed.web.auth import (
    Credentials,
    Sessions,
    Verdict,
    check_listening,
    logged_in,
    session_secret,
    verdict,
)
from transcribed.web.connections import ConnectionCount, guarded_protocol, uvicorn_options
from transcribed.web.upload import remove_stale_uploads
from transcribed.web.views import Views, when

log = get_logger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer a form POST carries "Origin: null".
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
SESSION_COOKIE = "transcribed_session"
_SAFE_METHODS = ("GET", "HEAD")


class SecurityHeaders:
    """Adds the headers above to every response; pages are private, so nothing is cached
    except the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


class Gate:
    """Lets a request through, sends it to the login page, or refuses it (`web_auth.verdict`);
    a POST from another site's page (an Origin that is not ours) is refused outright."""

    def __init__(self, app: ASGIApp, login_required: bool, sessions: Sessions) -> None:
        self.app = app
        self.login_required = login_required
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client = scope.get("client")
        decision = verdict(
            self.login_required,
            logged_in(scope["session"], self.sessions),
            client[0] if client else None,
            headers.get("host", ""),
            scope["path"],
        )
        refusal = self._refusal(decision, scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    @staticmethod
    def _refusal(decision: Verdict, scope: Scope, headers: Headers) -> Response | None:
        if decision is Verdict.FORBIDDEN:
            return PlainTextResponse(
                "This page answers only on this machine (127.0.0.1) until a login is set up.", 403
            )
        if decision is Verdict.LOGIN:
            if scope["method"] in _SAFE_METHODS:
                query = scope.get("query_string", b"").decode("latin-1")
                here = scope["path"] + (f"?{query}" if query else "")
                return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)
            return PlainTextResponse("Log in first.", 401)
        origin = headers.get("origin")
        if (
            scope["method"] not in _SAFE_METHODS
            and origin
            and origin != _own_origin(scope, headers)
        ):
            return PlainTextResponse("Refused: the request came from another site.", 403)
        return None


def _own_origin(scope: Scope, headers: Headers) -> str:
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


def templates() -> jinja2.Environment:
    """Autoescaping on for every template; an undefined name is an error, not blank output."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("transcribed.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["clock"] = clock
    environment.filters["when"] = when
    return environment


class Page(Starlette):
    """The app, with the security headers outside everything, Starlette's own error handling
    included: a 500 from a bug carries them as every other answer does."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def build_app(settings: Settings, credentials: Credentials) -> Starlette:
    sessions = Sessions(settings.web.session_hours * 3600)
    views = Views(settings, credentials, templates(), sessions)
    static = resources.files("transcribed.web") / "static"
    routes = [
        Route("/", views.status),
        Route("/transcripts", views.transcripts),
        Route("/jobs/{job:int}", views.job),
        Route("/jobs/{job:int}/files/{format}", views.download),
        Route("/jobs/{job:int}/audio", views.audio),
        Route("/jobs/{job:int}/retry", views.retry, methods=["POST"]),
        Route("/search", views.search),
        Route("/upload", views.upload_page),
        Route("/upload", views.upload, methods=["POST"]),
        Route("/follow", views.follow),
        Route("/login", views.login_page),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    middleware = [
        *_proxy_headers(settings.web),
        Middleware(
            SessionMiddleware,
            secret_key=session_secret(),
            session_cookie=SESSION_COOKIE,
            max_age=int(settings.web.session_hours * 3600),
            same_site="lax",
            https_only=settings.web.tls_certfile is not None,
        ),
        Middleware(Gate, login_required=credentials.required, sessions=sessions),
    ]

    async def error_page(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return views.render(
            request,
            "error.html",
            status_code=error.status_code,
            here="",
            status=error.status_code,
            detail=error.detail,
        )

    async def failure_page(request: Request, error: Exception) -> Response:
        """A bug: one line in the log (uvicorn adds the traceback), a plain page for people."""
        log.error("web.failed", path=request.url.path, error=type(error).__name__)
        return PlainTextResponse(
            "Something went wrong on the page's side; its log says what.", status_code=500
        )

    async def cannot_read(request: Request, error: Exception) -> Response:
        """Files this process may not read (the page started as the wrong user, or the
        state folder's permissions changed under it): say so, instead of a bare 500."""
        log.error("web.cannot_read", error=str(error))
        return views.render(
            request,
            "error.html",
            status_code=503,
            here="",
            status=503,
            detail=_unreadable(settings, error),
        )

    handlers: dict[Any, Any] = {
        HTTPException: error_page,
        PermissionError: cannot_read,
        sqlite3.OperationalError: cannot_read,
        Exception: failure_page,
    }
    return Page(routes=routes, middleware=middleware, exception_handlers=handlers)


def _unreadable(settings: Settings, error: Exception) -> str:
    if (denied := state_access_problem(settings.state_dir)) is not None:
        return denied.with_command(["web"])
    if isinstance(error, sqlite3.OperationalError):
        return f"the job database cannot be read ({error}); see the page's log"
    me = user_name(os.geteuid())
    return (
        f"the page (running as user {me}) may not read what it needs: {error}; start it "
        "as the daemon's user"
    )


def _proxy_headers(web: WebSettings) -> list[Middleware]:
    """Behind a trusted reverse proxy, the client is the one its X-Forwarded-For names (the
    last address the proxies did not add themselves), and the scheme its X-Forwarded-Proto;
    from any other peer those headers are ignored."""
    if not web.trusted_proxies:
        return []
    return [Middleware(ProxyHeadersMiddleware, trusted_hosts=list(web.trusted_proxies))]


def serve(settings: Settings) -> int:
    """Run the page until SIGTERM or Ctrl-C (uvicorn handles both, finishing open requests)."""
    credentials = Credentials.from_settings(settings.web)
    check_listening(settings.web, credentials)
    if removed := remove_stale_uploads(settings.inbox):
        log.info("web.stale_uploads_removed", files=removed)
    web = settings.web
    protocol = guarded_protocol(
        web.header_timeout_seconds, ConnectionCount(web.trusted_proxies), SECURITY_HEADERS
    )
    config: dict[str, Any] = {
        "host": web.host,
        "port": web.port,
        "log_config": None,  # our structlog setup, not uvicorn's
        "access_log": False,  # URLs carry search words and file names: not for the log
        "server_header": False,
        # The client address is the socket's; behind [web] trusted_proxies, the app reads
        # the one the proxy passes (`_proxy_headers`), never from anyone else.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 5,
        **uvicorn_options(protocol),
    }
    if web.tls_certfile is not None:
        config |= {"ssl_certfile": str(web.tls_certfile), "ssl_keyfile": str(web.tls_keyfile)}
    log.info(
        "web.starting",
        host=web.host,
        port=web.port,
        login=credentials.required,
        https=web.tls_certfile is not None,
    )
    # uvicorn's start-up chatter adds nothing to web.listening; its warnings and errors stay.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    listening = _listen(web.host, web.port)
    _announce(web, listening.getsockname()[1], _dual_stack(listening))
    server = uvicorn.Server(uvicorn.Config(build_app(settings, credentials), **config))
    server.run(sockets=[listening])
    return 0


def _dual_stack(listening: socket.socket) -> bool:
    """An IPv6 socket that takes IPv4 connections too."""
    if listening.family != socket.AF_INET6:
        return False
    return listening.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def _announce(web: WebSettings, port: int, dual_stack: bool = True) -> None:
    """Where to open the page, in the log and on stdout: on all addresses, the URLs other
    machines (a phone on the LAN) can open, and a warning when a password would cross the
    network in plain text."""
    scheme = "https" if web.tls_certfile is not None else "http"
    here, others = page_urls(scheme, web.host, port, dual_stack)
    log.info("web.listening", url=here, lan_urls=others)
    if others:
        print("The page is open to other machines at:", *others, sep="\n  ", flush=True)
    elif web.host in WILDCARDS:
        print(f"No network address found: the page is at {here} on this machine", flush=True)
    if scheme == "http" and not is_loopback(web.host):
        log.warning(
            "web.plain_http",
            hint="the password and the session cookie cross the network unencrypted: set "
            "[web] tls_certfile and tls_keyfile, or serve the page through an HTTPS proxy",
        )
        print(
            "Warning: logins here travel over plain HTTP: anyone on the network can read the "
            "password. Set [web] tls_certfile and tls_keyfile (or use an HTTPS reverse proxy).",
            flush=True,
        )


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is one clear line, not a traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {host} port {port}: {error.strerror or error}; "
            "choose another [web] host or port (or --host / --port)"
        ) from None
    listening.set_inheritable(True)
    return listening
