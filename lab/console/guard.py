"""Who may use the console, and from where: the rules every request passes first.

- **Host**: the console answers only requests addressed to its own ``127.0.0.1:PORT``. A
  page on another site that rebinds its own name to 127.0.0.1 (DNS rebinding) sends its
  own name as Host and is refused.
- **Session**: the console makes a random login key at start and prints
  ``/login?key=...``; the first request with it gets a session cookie (HttpOnly,
  SameSite=Strict, named after the port so two consoles in one browser keep theirs), and
  the key is spent. Every page, fragment and event stream needs that session; the static
  files (style sheet, script) hold nothing and need none.
- **Actions** (any method but GET and HEAD) also need the session's CSRF token (rendered
  into the page; sent back in the ``X-CSRF-Token`` header or a ``_csrf`` form field) and
  an Origin (or, without one, a Referer) of the console's own origin.

Refusals are 403 with a sentence saying what is missing. The admin token stays in this
process: the browser never sees it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOGIN_PATH = "/login"
STATIC_PREFIX = "/static/"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_SESSIONS = 64
"""Sessions kept at once; the oldest goes first (each needs a login key the operator gave)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


@dataclass(frozen=True)
class Session:
    """A browser that logged in with a key: its cookie value and its CSRF token."""

    id: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


class Guard:
    """Login keys, sessions and the checks of every request (see the module's rules)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self.port = 0

    def bind(self, port: int) -> None:
        """The port the console got: its Host and origin follow from it."""
        self.port = port

    @property
    def host(self) -> str:
        """The only Host header the console answers."""
        return f"127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """The console's own origin."""
        return f"http://{self.host}"

    @property
    def cookie(self) -> str:
        """The session cookie's name (per port: cookies are shared by every port of a host)."""
        return f"lab_console_{self.port}"

    def new_login_key(self) -> str:
        """A fresh key for one login."""
        key = secrets.token_urlsafe(32)
        self._keys.add(key)
        return key

    def login_url(self) -> str:
        """A URL that logs one browser in, once."""
        return f"{self.origin}{LOGIN_PATH}?key={self.new_login_key()}"

    def _spend(self, key: str) -> bool:
        for known in self._keys:
            if hmac.compare_digest(known.encode(), key.encode()):
                self._keys.discard(known)
                return True
        return False

    def session_of(self, request: web.Request) -> Session | None:
        """The request's session, if its cookie names one."""
        given = request.cookies.get(self.cookie)
        return self._sessions.get(given) if given else None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Check Host, then the session, then (for actions) origin and CSRF token."""
        if request.host != self.host:
            return refuse(
                f"this console answers only at {self.origin}; the request was addressed to "
                f"{request.host or 'no host'}"
            )
        if request.path == LOGIN_PATH:
            return self._login(request)
        if request.path.startswith(STATIC_PREFIX) and request.method in SAFE_METHODS:
            return await handler(request)
        session = self.session_of(request)
        if session is None:
            return refuse(
                "no console session: open the login link the console printed when it started "
                "(each link works once)"
            )
        if request.method not in SAFE_METHODS:
            problem = await self._action_problem(request, session)
            if problem:
                return refuse(problem)
        return await handler(request)

    def _login(self, request: web.Request) -> web.StreamResponse:
        if request.method not in SAFE_METHODS or not self._spend(request.query.get("key", "")):
            return refuse(
                "this login link is not valid: it was used already or mistyped. Each start of "
                "the console prints a new one."
            )
        session = Session()
        if len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[session.id] = session
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(self.cookie, session.id, httponly=True, samesite="Strict", path="/")
        return response

    async def _action_problem(self, request: web.Request, session: Session) -> str:
        origin = request.headers.get("Origin")
        if origin is None:
            referer = urlsplit(request.headers.get("Referer", ""))
            origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
        if origin != self.origin:
            return (
                f"actions are accepted only from the console's own page ({self.origin}); "
                f"this one came from {origin or 'an unknown origin'}"
            )
        token = request.headers.get(CSRF_HEADER)
        if token is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            # aiohttp keeps the parsed form for the handler.
            token = str((await request.post()).get(CSRF_FIELD, ""))
        if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            return "the action carries no valid CSRF token: reload the console's page and retry"
        return ""


def refuse(message: str) -> web.Response:
    """403 with a readable sentence."""
    return web.Response(status=403, text=f"403 Forbidden: {message}\n")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer carries: no framing, no sniffing, scripts and styles from here
    only, nothing kept in caches but the static files."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if not request.path.startswith(STATIC_PREFIX):
        response.headers["Cache-Control"] = "no-store"
