"""The recipients' unsubscribe and preference pages (DESIGN.md §3 "Unsubscribe endpoint").

    GET  /u/{token}   shows what the person gets and a form; changes nothing (link scanners
                      prefetch links in mail)
    POST /u/{token}   `List-Unsubscribe=One-Click` (RFC 8058): withdraws the campaign's
                      purpose and answers 200 with a tiny body, no redirect; or the page's
                      form (`action=stop_kind|stop_all|keep`, `keep=<purpose>`...): applies
                      it and shows what the person will and will not receive
    GET  /health      200 {"status": "ok"} after a trivial query, 503 without a database

Handlers are thin: they verify the token (mailer/tokens.py), call campaigns/preferences.py
off the event loop (sync SQLAlchemy), and render templates/pages/. On PostgreSQL each
request is one short transaction in Starlette's thread pool; on SQLite one thread does all
the database work and commits whatever requests have queued together (SqliteWorker).

Privacy and security:
- No cookies, no scripts, no third-party assets. The one inline <style> is allowed by its
  sha256 in a strict Content-Security-Policy; every response also says nosniff,
  no-referrer (the token must not leak to the policy link's site) and no-store.
- No IP address is written anywhere: uvicorn's access log is off, the app logs no client
  address, and nothing (rate limit included) is keyed by one.
- Bodies are read with a cap (MAX_BODY bytes, 413 past it), whatever Content-Length says.
- Rate limit: RATE_LIMIT POSTs per RATE_WINDOW seconds per (token, choice), in memory, per
  process. It cannot lock a real person out: GET is never limited; it is keyed by the
  token, never by an address, so nobody without the person's own link can touch their
  budget; and it is counted per choice, so a flood of one choice (already applied: every
  POST is idempotent) never blocks a different one. It only sheds floods.
- A bad token (forged, altered, truncated, of another kind) is 400; a genuine one whose
  contact is unknown or erased, or that came in no real delivery, is 404: one page for
  all, so nothing tells whether an address exists. Nothing changes in either case.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaigns import preferences
from campaigns.config import Settings
from campaigns.db import session_scope
from campaigns.preferences import Action, ChoiceError, PreferencesView
from campaigns.purposes import Purpose
from mailer.tokens import TokenKind, TokenSigner, signer_from_settings

PAGES = Path(__file__).resolve().parent.parent / "templates" / "pages"
MAX_BODY = 16 * 1024
MAX_FIELDS = 20
RATE_LIMIT = 30
# Worker threads for database work on PostgreSQL (SQLite has its own single thread).
DB_THREADS = 10
RATE_WINDOW = 60.0
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
URLENCODED = "application/x-www-form-urlencoded"
FORM_TYPES = frozenset({URLENCODED, "multipart/form-data"})

log = logging.getLogger("campaigns.web")
T = TypeVar("T")


@dataclass(frozen=True)
class PurposeText:
    value: str
    label: str
    about: str
    # "a promotional email": how the campaign that brought the person here is named.
    article: str


TEXTS: dict[Purpose, PurposeText] = {
    Purpose.PROMOTIONAL: PurposeText(
        "promotional",
        "Promotional offers",
        "news about our events and services, and special offers",
        "a promotional email",
    ),
    Purpose.RESEARCH: PurposeText(
        "research",
        "Market research surveys",
        "invitations to tell us what you think in a survey",
        "an invitation to a market research survey",
    ),
    Purpose.THIRD_PARTY: PurposeText(
        "third_party",
        "Offers from partners",
        "offers from other companies, sent by us; we never give them your details",
        "an offer from one of our partners",
    ),
}

ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "This link does not work",
        "The link may have been cut short or changed. Please open it again from the email, "
        "copying the whole link, or reply to the email and ask us to stop. Nothing was changed.",
    ),
    404: (
        "We could not find these preferences",
        "This link does not lead to any mail preferences we hold. It may come from a test "
        "message, or we no longer keep this address. Nothing was changed.",
    ),
    405: ("Not allowed", "This page cannot be used that way."),
    413: ("Too much data", "The request was too large. Nothing was changed."),
    415: (
        "Unsupported request",
        "Please use the form on the preferences page. Nothing was changed.",
    ),
    429: (
        "Too many requests",
        "This link was used very many times in the last minute. Please wait a minute and "
        "try again.",
    ),
    500: ("Something went wrong", "Please try again in a few minutes."),
    503: ("Temporarily unavailable", "Please try again in a few minutes. Nothing was changed."),
}


class RateLimiter:
    """A fixed-window counter per key, in memory (one process; used on the event loop only).

    Memory is bounded: past `max_keys`, expired windows are dropped, then the oldest ones;
    forgetting a counter only ever lets a request through, never blocks one.
    """

    def __init__(
        self,
        limit: int = RATE_LIMIT,
        window: float = RATE_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[Hashable, list[float]] = {}

    def hit(self, key: Hashable) -> float | None:
        """Count a request: None when allowed, else seconds until the window ends."""
        now = self.clock()
        entry = self._windows.get(key)
        if entry is None or now - entry[0] >= self.window:
            # Re-insert so the dict stays ordered by window start (oldest first).
            self._windows.pop(key, None)
            self._windows[key] = [now, 1]
            if len(self._windows) > self.max_keys:
                self._prune(now)
            return None
        if entry[1] < self.limit:
            entry[1] += 1
            return None
        return max(self.window - (now - entry[0]), 0.0)

    def _prune(self, now: float) -> None:
        # Oldest windows come first: drop the expired ones, and the oldest live ones while
        # there are still too many.
        for key in list(self._windows):
            if len(self._windows) <= self.max_keys and now - self._windows[key][0] < self.window:
                break
            del self._windows[key]


def security_headers(csp: str) -> dict[str, str]:
    return {
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        # The token is in the URL: it must not reach the policy link's site.
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "x-frame-options": "DENY",
        "cross-origin-resource-policy": "same-origin",
    }


class SecurityHeaders:
    """Adds the privacy and security headers to every response, and drops any cookie."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in security_headers(csp).items()
        ]
        self._names = {name for name, _ in self.headers} | {b"set-cookie"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in self._names
                ]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, cap: int = MAX_BODY) -> bytes:
    """The body, read from the stream; raises BodyTooLarge past `cap` bytes.

    Content-Length is only used to refuse early: a lying or absent one changes nothing.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(request: Request, body: bytes) -> FormData | None:
    """The urlencoded or multipart form in `body`, or None when it cannot be parsed."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # A fresh request over the bytes already read: Starlette's parsers, our cap.
    copy = Request(request.scope, replay)
    try:
        form = await copy.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_BODY)
    except Exception:  # Starlette's HTTPException(400), python-multipart's own errors
        return None
    for value in form.values():
        if not isinstance(value, str):  # a file part; none is ever expected
            await form.close()
            return None
    return form


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Choice:
    """What a POST asks for; `key` is its rate-limit bucket within the token."""

    one_click: bool
    action: Action | None = None
    keep: frozenset[Purpose] = frozenset()

    @property
    def key(self) -> Hashable:
        if self.one_click:
            return "one-click"
        return (self.action, self.keep if self.action is Action.KEEP else None)


def read_choice(form: FormData) -> Choice | None:
    """The POST's choice, or None for a body that asks for nothing we know."""
    if [v.strip() for v in form.getlist("List-Unsubscribe")] == ["One-Click"]:
        return Choice(one_click=True)
    actions = form.getlist("action")
    if len(actions) != 1:
        return None
    try:
        action = Action(actions[0])
        keep = frozenset(Purpose(v) for v in form.getlist("keep"))
    except ValueError:
        return None
    return Choice(one_click=False, action=action, keep=keep)


class Pages:
    """Renders templates/pages/ with the sender's branding."""

    def __init__(self, settings: Settings) -> None:
        self.env = Environment(
            loader=FileSystemLoader(PAGES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # The exact text between <style> and </style>: its hash goes into the CSP.
        self.style = self.env.get_template("_style.html").render()
        digest = hashlib.sha256(self.style.encode("utf-8")).digest()
        self.style_hash = "sha256-" + base64.b64encode(digest).decode("ascii")
        policy_url = settings.policy_url.strip()
        self.common: dict[str, Any] = {
            "brand": settings.brand_name,
            "postal_address": settings.postal_address,
            # Only a web link: configuration must not be able to put a script URL here.
            "policy_url": policy_url if policy_url.startswith(("https://", "http://")) else "",
        }

    @property
    def csp(self) -> str:
        return (
            f"default-src 'none'; style-src '{self.style_hash}'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**self.common, **context)
        return HTMLResponse(html, status_code=status_code)

    def error(self, status: int, headers: dict[str, str] | None = None) -> HTMLResponse:
        title, message = ERRORS.get(status, ERRORS[500])
        response = self.render("error.html", status, title=title, message=message, status=status)
        if headers:
            response.headers.update(headers)
        return response

    def preferences(self, token: str, view: PreferencesView) -> HTMLResponse:
        return self.render(
            "preferences.html",
            view=view,
            token=token,
            kind=TEXTS[view.campaign_purpose] if view.campaign_purpose else None,
            receives=[TEXTS[p] for p in Purpose if p in view.receives],
            purposes=[
                _Box(TEXTS[p].value, TEXTS[p].label, TEXTS[p].about, p in view.granted)
                for p in Purpose
            ],
        )

    def done(self, token: str, view: PreferencesView) -> HTMLResponse:
        return self.render(
            "done.html",
            view=view,
            token=token,
            receives=[TEXTS[p] for p in Purpose if p in view.receives],
            not_receives=[TEXTS[p] for p in Purpose if p not in view.receives],
        )


@dataclass(frozen=True)
class _Box:
    """One checkbox of the form: ticked exactly when the purpose is granted."""

    value: str
    label: str
    about: str
    granted: bool


class DatabaseUnavailable(Exception):
    pass


@dataclass
class _Job:
    work: Callable[[Session], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone); the work stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteWorker:
    """All of this process's SQLite work, in one thread, many requests per transaction.

    SQLite has one writer at a time and every transaction here starts with BEGIN
    IMMEDIATE (campaigns/db.py). Threads of a pool would queue in SQLite's busy handler,
    which sleeps in growing steps, and each request would pay for its own transaction.
    Here requests wait in a queue instead; the thread takes whatever has queued (up to
    `max_batch`) and runs it in one short transaction, a group commit. Each request is
    answered only after the commit. If a batch fails for another reason than the database
    itself, its requests are run again one by one, so one bad request fails alone.
    """

    def __init__(self, engine: Engine, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def submit(self, work: Callable[[Session], T]) -> T:
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, loop, future))
        return await future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="campaigns-web-sqlite", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        try:
            with session_scope(self.engine) as session:
                results = [job.work(session) for job in batch]
        except Exception as exc:
            # The database itself failing fails every request alike: no point retrying.
            if len(batch) == 1 or isinstance(exc, OperationalError | PoolTimeout):
                for job in batch:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
                return
            for job in batch:
                self._run_batch([job])
            return
        for job, result in zip(batch, results, strict=True):
            job.loop.call_soon_threadsafe(_settle, job.future, result, None)


class WebApp:
    """The handlers and what they share: settings, engine, signer, pages, rate limiter."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        signer: TokenSigner,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.limiter = limiter
        self.pages = Pages(settings)
        self.sqlite: SqliteWorker | None = (
            SqliteWorker(engine) if engine.dialect.name == "sqlite" else None
        )
        self._threads: anyio.CapacityLimiter | None = None

    # -- database ---------------------------------------------------------------------

    def _in_transaction(self, work: Callable[[Session], T]) -> T:
        with session_scope(self.engine) as session:
            return work(session)

    async def db(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in a transaction off the event loop."""
        try:
            if self.sqlite is not None:
                return await self.sqlite.submit(work)
            if self._threads is None:  # made in the server's event loop, on first use
                # Fewer threads than Starlette's 40: more would only queue for the
                # connection pool and fight over the GIL.
                self._threads = anyio.CapacityLimiter(DB_THREADS)
            return await anyio.to_thread.run_sync(self._in_transaction, work, limiter=self._threads)
        except (OperationalError, PoolTimeout) as exc:
            raise DatabaseUnavailable from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise DatabaseUnavailable from exc
            raise

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()

    # -- routes -----------------------------------------------------------------------

    def _ids(self, request: Request) -> tuple[int, int] | None:
        return self.signer.verify(TokenKind.UNSUBSCRIBE, request.path_params["token"])

    async def unsubscribe(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.change(request)
        return await self.show(request)

    async def show(self, request: Request) -> Response:
        ids = self._ids(request)
        if ids is None:
            return self.pages.error(400)
        contact_id, campaign_id = ids
        try:
            view = await self.db(lambda s: preferences.view(s, contact_id, campaign_id))
        except DatabaseUnavailable:
            return self.pages.error(503)
        if view is None:
            return self.pages.error(404)
        return self.pages.preferences(request.path_params["token"].lower(), view)

    async def change(self, request: Request) -> Response:
        ids = self._ids(request)
        if ids is None:
            return self.pages.error(400)
        if media_type(request) not in FORM_TYPES:
            return self.pages.error(415)
        try:
            body = await read_capped(request)
        except BodyTooLarge:
            return self.pages.error(413)
        if body == ONE_CLICK_BODY and media_type(request) == URLENCODED:
            # What mail clients send: no need for the form parser.
            choice: Choice | None = Choice(one_click=True)
        else:
            form = await parse_form(request, body)
            choice = read_choice(form) if form is not None else None
        if choice is None:
            return self.pages.error(400)
        retry = self.limiter.hit((ids, choice.key))
        if retry is not None:
            return self.pages.error(429, {"Retry-After": str(max(int(retry) + 1, 1))})
        contact_id, campaign_id = ids
        version = self.settings.policy_version
        try:
            if choice.one_click:
                known = await self.db(
                    lambda s: preferences.one_click(s, contact_id, campaign_id, version)
                )
                if not known:
                    return self.pages.error(404)
                # RFC 8058: a plain 200, no redirect; the mail client shows nothing of it.
                return PlainTextResponse("Unsubscribed.\n")
            assert choice.action is not None
            action, keep = choice.action, choice.keep
            view = await self.db(
                lambda s: preferences.apply(
                    s, contact_id, campaign_id, action=action, keep=keep, policy_version=version
                )
            )
        except DatabaseUnavailable:
            return self.pages.error(503)
        except ChoiceError:
            return self.pages.error(400)
        if view is None:
            return self.pages.error(404)
        return self.pages.done(request.path_params["token"].lower(), view)

    async def health(self, request: Request) -> Response:
        try:
            await run_in_threadpool(preferences.check_database, self.engine)
        except Exception as exc:  # any failure to reach the database is "unavailable"
            # One short line: monitors poll this often, and a traceback each time helps no one.
            log.warning("health check: the database is unreachable (%s)", type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    # -- errors -----------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own 404 and 405 (and any other HTTPException) as plain pages."""
        if not isinstance(exc, HTTPException):
            return self.pages.error(500)
        status = exc.status_code if exc.status_code in ERRORS else 404
        allow = (exc.headers or {}).get("Allow")
        return self.pages.error(status, {"Allow": allow} if status == 405 and allow else None)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        # Starlette sends this from outside the middleware stack: add the headers here.
        return self.pages.error(500, security_headers(self.pages.csp))


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    signer: TokenSigner | None = None,
    limiter: RateLimiter | None = None,
) -> Starlette:
    """The unsubscribe app; `signer` and `limiter` may be given by tests."""
    web = WebApp(
        settings,
        engine,
        signer or signer_from_settings(settings),
        limiter or RateLimiter(),
    )
    routes = [
        # One route for both methods, so a 405 names them both in Allow.
        Route("/u/{token}", web.unsubscribe, methods=["GET", "POST"]),
        Route("/health", web.health, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(web.close)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: web.http_error, Exception: web.server_error},
    )
    # "/u/x/" is not a page: answer 404 rather than redirect.
    app.router.redirect_slashes = False
    app.state.web = web
    app.add_middleware(SecurityHeaders, csp=web.pages.csp)
    return app


# uvicorn's own messages go to stderr; its access log (client addresses) is off for good.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        "campaigns": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        # It warns about every malformed body: anyone could fill the log with those.
        "python_multipart": {"level": "ERROR"},
    },
}


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is one clear error line."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_server(settings: Settings, engine: Engine, *, host: str, port: int) -> int:
    """Serve the pages until SIGINT/SIGTERM; 0 after a clean stop, 1 when it cannot listen."""
    import uvicorn  # here: only `campaigns serve` pays for it

    app = create_app(settings, engine)
    try:
        sock = _listen(host, port)
    except OSError as exc:
        print(
            f"campaigns: error: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    config = uvicorn.Config(
        app,
        access_log=False,
        log_config=LOG_CONFIG,
        server_header=False,
        # Client addresses are never used, so forwarded ones need not be trusted either.
        proxy_headers=False,
        lifespan="on",
        # Past this many open connections uvicorn answers 503: a flood cannot pile up
        # requests in memory without bound.
        limit_concurrency=1000,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_BODY,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # SIGINT/SIGTERM are how this server is meant to stop: shut down gracefully
            # and exit 0, where uvicorn would re-raise the signal and die by it.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stops = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    server = Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving the unsubscribe pages on http://{shown}:{port}/ (no access log); Ctrl+C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
