"""The page's views: one method per page or action. Reading goes through `web_catalog`
(read-only); the only writes are uploads (`web_upload`) and retries (`overview.retry`, the path
`transcribed jobs retry` takes).

Every POST checks the session's CSRF token first. Templates escape everything they are given:
file names, reasons and transcript text are all untrusted.
"""

import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from transcribed.errors import ConfigError
from transcribed.files.names import display_name
from transcribed.logs import get_logger
from transcribed.output.search_index import Hit, clock, highlight, query_terms
from transcribed.settings import Settings
from transcribed.state import overview
from transcribed.state.queue import Job, JobState
from transcribed.web.auth import (
    Credentials,
    LoginThrottle,
    RateLimit,
    Sessions,
    client_key,
    csrf_ok,
    csrf_token,
    end_session,
    logged_in,
    start_session,
)
from transcribed.web.catalog import (
    Catalog,
    NotAvailable,
    language_card,
    paragraphs,
    segments,
)
from transcribed.web.files import TEXT_TYPES, attachment, playable
from transcribed.web.upload import (
    Folder,
    TooLarge,
    UploadRefused,
    checked_name,
    receive,
    upload_folders,
)

log = get_logger(__name__)

_FORM_BYTES = 64 * 1024  # logins and buttons: nothing larger is a real form
_FOLLOWED = 20  # recordings one follow page tracks
_FINAL = (JobState.DONE, JobState.FAILED)
LISTED_ON_STATUS = 50  # queued (and waiting) files the status page names; the rest are counted
_LARGEST_ID = 2**63 - 1  # SQLite's largest integer: a larger id names no job


@dataclass
class Views:
    settings: Settings
    credentials: Credentials
    templates: jinja2.Environment
    sessions: Sessions
    catalog: Catalog = field(init=False)
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    uploads: RateLimit = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.settings)
        self.uploads = RateLimit(self.settings.web.uploads_per_hour, 3600.0)
        self.folders = upload_folders([rule.path for rule in self.settings.folders])

    # --- rendering ----------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        page = self.templates.get_template(template)
        # Messages are for the next whole page; a live part (a "_" template) leaves them.
        flashes = [] if template.startswith("_") else request.session.pop("flash", [])
        html = page.render(
            csrf=csrf_token(request.session),
            logged_in=logged_in(request.session, self.sessions),
            login_required=self.credentials.required,
            flashes=flashes if isinstance(flashes, list) else [],
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def live_or_page(self, request: Request, page: str, fragment: str, **context: Any) -> Response:
        """The live part alone when the page's script asks for it (`?live=1`), else the page."""
        if request.query_params.get("live") == "1":
            return self.render(request, fragment, **context)
        return self.render(request, page, **context)

    @staticmethod
    def flash(request: Request, text: str, kind: str = "info") -> None:
        request.session.setdefault("flash", []).append({"text": text, "kind": kind})

    # --- status ---------------------------------------------------------------------------

    def status(self, request: Request) -> Response:
        try:
            report = self.catalog.status()
        except NotAvailable as missing:
            return self.render(
                request, "status.html", here="status", report=None, note=str(missing)
            )
        return self.live_or_page(
            request,
            "status.html",
            "_status.html",
            here="status",
            report=_bounded(report, ("queued", "waiting"), LISTED_ON_STATUS),
            note=None,
        )

    # --- transcripts ----------------------------------------------------------------------

    def transcripts(self, request: Request) -> Response:
        params = request.query_params
        folder, language, state = params.get("folder"), params.get("language"), params.get("state")
        chosen_state = JobState(state) if state in set(JobState) else None
        note: str | None = None
        try:
            rows = self.catalog.listing(
                folder if folder is not None and folder != "*" else None,
                language or None,
                chosen_state,
            )
            everything = self.catalog.listing(None, None, None)
        except NotAvailable as missing:
            rows, everything, note = [], [], str(missing)
        return self.render(
            request,
            "transcripts.html",
            here="transcripts",
            rows=rows,
            note=note,
            folder=folder if folder is not None else "*",
            language=language or "",
            state=chosen_state or "",
            folders=sorted({row.folder for row in everything} | {f.path for f in self.folders}),
            languages=sorted({row.language for row in everything if row.language}),
            states=[s for s in JobState if s != JobState.CLAIMING],
        )

    def job(self, request: Request) -> Response:
        job = self._job(request)
        context: dict[str, Any] = {"here": "transcripts", "job": job, "name": _name(job)}
        context["same_as"] = self._same_recording(job)
        context |= self._transcript_context(job)
        context["original"] = self.catalog.has_original(job)
        return self.live_or_page(request, "job.html", "_job_state.html", **context)

    def _transcript_context(self, job: Job) -> dict[str, Any]:
        try:
            data = self.catalog.transcript(job)
        except NotAvailable as missing:
            return {"data": None, "missing": str(missing) if job.outputs else None}
        return {
            "data": data,
            "card": language_card(data),
            "paragraphs": paragraphs(data),
            "segments": segments(data),
            "formats": self.catalog.formats(job),
            "missing": None,
        }

    def download(self, request: Request) -> Response:
        job = self._job(request)
        extension = request.path_params["format"]
        if extension not in TEXT_TYPES:
            raise HTTPException(404, "no such format")
        try:
            fd, name = self.catalog.output(job, extension)
        except NotAvailable as missing:
            raise HTTPException(404, str(missing)) from None
        return attachment(fd, name, TEXT_TYPES[extension])

    def audio(self, request: Request) -> Response:
        """The original from the archive, with byte ranges so the player can seek."""
        job = self._job(request)
        try:
            fd = self.catalog.original(job)
        except NotAvailable as missing:
            raise HTTPException(404, str(missing)) from None
        return playable(fd, Path(job.disposed_to or "").suffix, request.headers.get("range"))

    async def retry(self, request: Request) -> Response:
        await self.checked_form(request)
        job_id = _job_id(request)
        since = time.time()
        try:
            target = overview.retry(overview.open_queue(self.settings), self.settings.inbox, job_id)
        except (overview.OperatorError, ConfigError, OSError, sqlite3.Error) as error:
            self.flash(request, f"Could not retry: {error}", "error")
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        relpath = os.path.relpath(target, self.settings.inbox)
        log.info("web.retry", job=job_id, file=display_name(relpath), client=_client(request))
        self.flash(request, f"{display_name(relpath)} is back in the inbox; following it here.")
        return RedirectResponse(self._follow_url([relpath], since), status_code=303)

    def _job(self, request: Request) -> Job:
        try:
            return self.catalog.job(_job_id(request))
        except (KeyError, NotAvailable):
            raise HTTPException(404, "no such job") from None

    def _same_recording(self, job: Job) -> dict[str, Any] | None:
        """For a copy of a recording dropped before: that one's name, whether it had this
        name too (the copy then adds nothing), and the job whose transcript to open (the
        copy's own when it has one)."""
        original: Job | None = None
        if job.duplicate_of is not None:
            try:
                original = self.catalog.job(job.duplicate_of)
            except (KeyError, NotAvailable, sqlite3.Error):
                original = None
        name = _name(original) if original is not None else self._reused_from(job)
        if name is None:
            return None
        return {
            "name": name,
            "job": original.id if original is not None else None,
            "same_name": original is not None and original.relpath == job.relpath,
            "transcript": job.id if job.outputs else (original.id if original else None),
        }

    # --- search ---------------------------------------------------------------------------

    def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()[:200]
        hits, note = self.catalog.search(query) if query else ([], self.catalog.index_repair.note())
        terms = query_terms(query)
        groups: dict[tuple[int | None, str], list[Any]] = {}
        linked: dict[tuple[int | None, str], bool] = {}
        for hit in hits:
            key = (hit.job_id, hit.json_path)
            if key not in linked:
                linked[key] = self._still_published(hit)
            job_id = hit.job_id if linked[key] else None
            groups.setdefault((job_id, hit.name), []).append(
                {"hit": hit, "pieces": highlight(hit.text, terms)}
            )
        return self.render(
            request,
            "search.html",
            here="search",
            query=query,
            groups=groups,
            count=len(hits),
            indexed=self.catalog.search_index.path.exists(),
            note=note,
        )

    def _still_published(self, hit: Hit) -> bool:
        """The hit's job still names its transcript: a forgotten job's id may have been given
        to a newer recording, which the hit must not link to."""
        if hit.job_id is None:
            return False
        try:
            return hit.json_path in self.catalog.job(hit.job_id).outputs
        except (KeyError, NotAvailable):
            return False

    # --- upload ---------------------------------------------------------------------------

    def upload_page(self, request: Request) -> Response:
        return self.render(
            request,
            "upload.html",
            here="upload",
            folders=self.folders,
            max_bytes=self.settings.web.max_upload_bytes,
            max_mb=self.settings.web.max_upload_mb,
        )

    async def upload(self, request: Request) -> Response:
        """The body is the file itself (sent by the page's script); the folder and name are
        query parameters, checked against the configured folders and the rules for names."""
        if not csrf_ok(request.session, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "the page's security token is missing or stale: reload")
        client = _client(request)
        try:
            folder, name = self._upload_target(request)
            self._admit_upload(request, client_key(client))
            since = time.time()
            relpath, size = await receive(
                request.stream(),
                self.settings.inbox,
                folder,
                name,
                self.settings.web.max_upload_bytes,
            )
        except UploadRefused as refused:
            log.warning("web.upload_refused", reason=str(refused), client=client)
            return JSONResponse(
                {"error": str(refused)}, status_code=413 if isinstance(refused, TooLarge) else 400
            )
        except ClientDisconnect:
            log.info("web.upload_cut_short", client=client)
            return Response(status_code=400)
        except OSError as error:  # the folder is unwritable, full, or a symlink
            log.error("web.upload_failed", error=str(error), client=client)
            message = f"cannot write into that inbox folder: {error.strerror or error}"
            return JSONResponse({"error": message}, status_code=500)
        log.info("web.upload", file=display_name(relpath), bytes=size, client=client)
        return JSONResponse(
            {"file": relpath, "since": since, "follow": self._follow_url([relpath], since)}
        )

    def _upload_target(self, request: Request) -> tuple[Folder, str]:
        wanted = request.query_params.get("folder", "")
        folder = next((f for f in self.folders if f.path == wanted), None)
        if folder is None:
            raise UploadRefused("choose one of the folders the page offers")
        return folder, checked_name(request.query_params.get("name", ""))

    def _admit_upload(self, request: Request, client: str) -> None:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.settings.web.max_upload_bytes:
            limit = self.settings.web.max_upload_mb
            raise TooLarge(f"the file is larger than the {limit} MiB allowed")
        if wait := self.uploads.retry_after(client):
            raise UploadRefused(f"too many uploads from here; try again in {clock(wait)}")
        self.uploads.record(client)

    @staticmethod
    def _follow_url(relpaths: list[str], since: float) -> str:
        """The follow page for recordings put into the inbox at `since` (seconds, epoch)."""
        return "/follow?" + urlencode([("since", f"{since:.3f}"), *(("file", p) for p in relpaths)])

    def follow(self, request: Request) -> Response:
        """The recordings just uploaded (or retried), as they go from the inbox to done."""
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            raise HTTPException(400, "since must be a time in seconds") from None
        wanted = request.query_params.getlist("file")[:_FOLLOWED]
        cards = [self._follow_card(relpath, since) for relpath in wanted]
        return self.live_or_page(
            request,
            "follow.html",
            "_follow.html",
            here="upload",
            cards=cards,
            final=all(card["final"] for card in cards),
        )

    def _follow_card(self, relpath: str, since: float) -> dict[str, Any]:
        card: dict[str, Any] = {"name": display_name(relpath), "job": None, "final": False}
        try:
            job = self.catalog.job_since(os.fsencode(relpath), since)
        except (NotAvailable, sqlite3.Error):  # no database yet, or a damaged one
            job = None
        if job is not None:
            return card | {
                "job": job,
                "final": job.state in _FINAL,
                "percent": _percent(job),
                "same_as": self._same_recording(job),
            }
        card["in_inbox"] = self._still_in_inbox(relpath)
        return card

    def _reused_from(self, job: Job) -> str | None:
        """The recording whose transcript this one's copies: the same audio, dropped before."""
        if job.state not in (JobState.PUBLISHED, JobState.DONE):
            return None
        try:
            reused = self.catalog.transcript(job).get("reused_from")
        except (NotAvailable, OSError):
            return None
        return reused if isinstance(reused, str) else None

    def _still_in_inbox(self, relpath: str) -> bool:
        """Only for a name an upload could have made (a configured folder and a plain name):
        the request's text is never a path into anywhere else."""
        folder, _slash, name = relpath.rpartition("/")
        if folder not in {f.path for f in self.folders}:
            return False
        try:
            checked = checked_name(name)
        except UploadRefused:
            return False
        return os.path.lexists(self.settings.inbox / folder / checked)

    # --- login ----------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.render(
            request, "login.html", here="login", next=_local(request.query_params.get("next"))
        )

    async def login(self, request: Request) -> Response:
        form = await self.checked_form(request)
        client = _client(request)
        if wait := self.logins.retry_after(client_key(client)):
            log.warning("web.login_refused", client=client, retry_in=round(wait))
            return self._login_again(request, form, 429, _wait_line(wait), wait)
        if not self.credentials.check(form.get("password", "")):
            wait = self.logins.failed(client_key(client))
            log.warning("web.login_failed", client=client, retry_in=round(wait))
            error = "That is not the password or the access token."
            if wait:
                error += " " + _wait_line(wait)
            return self._login_again(request, form, 401, error, wait)
        self.logins.succeeded(client_key(client))
        start_session(request.session, self.sessions)
        log.info("web.login", client=client)
        return RedirectResponse(_local(form.get("next")), status_code=303)

    def _login_again(
        self, request: Request, form: dict[str, str], status: int, error: str, wait: float
    ) -> Response:
        response = self.render(
            request,
            "login.html",
            status_code=status,
            here="login",
            next=_local(form.get("next")),
            error=error,
        )
        if wait:
            response.headers["Retry-After"] = str(int(wait) + 1)
        return response

    async def logout(self, request: Request) -> Response:
        await self.checked_form(request)
        end_session(request.session, self.sessions)
        return RedirectResponse("/login" if self.credentials.required else "/", status_code=303)

    async def checked_form(self, request: Request) -> dict[str, str]:
        """A small urlencoded form whose CSRF token matches the session's; 403 otherwise."""
        if request.headers.get("content-type", "").split(";")[0].strip() not in (
            "application/x-www-form-urlencoded",
            "",
        ):
            raise HTTPException(415, "send the form as the page does")
        body = await self._small_body(request)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not csrf_ok(request.session, form.get("csrf")):
            raise HTTPException(403, "the page's security token is missing or stale: reload")
        return form

    async def _small_body(self, request: Request) -> bytes:
        """A form's body, which must arrive within the header deadline as its header did: a
        client sending it a byte at a time would otherwise hold its connection for ever."""
        body = b""
        with anyio.move_on_after(self.settings.web.header_timeout_seconds) as deadline:
            async for block in request.stream():
                body += block
                if len(body) > _FORM_BYTES:
                    raise HTTPException(413, "form too large")
        if deadline.cancelled_caught:
            raise HTTPException(408, "the form took too long to arrive: send it again")
        return body


def _name(job: Job) -> str:
    return display_name(os.path.basename(job.relpath))


def _job_id(request: Request) -> int:
    """The job id in the path; 404 for one no job can have (the route takes digits only)."""
    job_id = int(request.path_params["job"])
    if not 0 < job_id <= _LARGEST_ID:
        raise HTTPException(404, "no such job")
    return job_id


def _bounded(report: dict[str, Any], keys: tuple[str, ...], shown: int) -> dict[str, Any]:
    """The report with at most `shown` items in each list of `keys`, and `<key>_more`: how
    many were left out (the page stays small, whatever the backlog)."""
    bounded = dict(report)
    for key in keys:
        items = report.get(key) or []
        bounded[key] = items[:shown]
        bounded[f"{key}_more"] = max(0, len(items) - shown)
    return bounded


def _wait_line(wait: float) -> str:
    """Rounded up: 1.2 s left reads "0:02", never "0:00"."""
    seconds = max(1, math.ceil(wait))
    return f"Too many failed logins from this address: try again in {clock(seconds)}."


def _percent(job: Job) -> int | None:
    if job.state != JobState.RUNNING or not job.expected_seconds:
        return None
    return min(100, round(100 * (job.progress_seconds or 0) / job.expected_seconds))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _local(target: str | None) -> str:
    """Only a path on this site to go to after logging in: never another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def when(timestamp: float | None) -> str:
    """Local date and time of a job event, for people."""
    if not timestamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
