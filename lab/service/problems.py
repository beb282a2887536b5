"""Every error answer of the service: status, X-Ms-Diagnostics code and a plain-text reason.

A handler raises ``Problem``; ``as_problem`` turns anything else a handler raises
(aiohttp's own HTTP errors, and anything unexpected) into one, and ``problem_response``
answers it in the one shape docs/wire-protocol.md promises:
``X-Ms-Diagnostics: <code>;reason="<text>"`` and the reason as a ``text/plain`` body.
The codes are the status followed by two digits, one per distinct reason, in this table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from lab.errors import ServiceError
from lab.net.guard import FaultLog

log = logging.getLogger(__name__)
# Failures serving requests, logged as counts with a sample (never a traceback each).
FAULTS = FaultLog(log)

DIAGNOSTICS_HEADER = "X-Ms-Diagnostics"


class Diagnostic(Enum):
    """Why a request was refused: (HTTP status, X-Ms-Diagnostics code)."""

    MALFORMED_REQUEST = (400, 40001)
    BAD_PATH = (400, 40002)
    NTLM_REQUIRED = (401, 40101)
    NTLM_FAILED = (401, 40102)
    NO_SIGNED_IN_USER = (403, 40301)
    ACCOUNT_LOCKED = (403, 40302)
    INTERNAL_PATH_FROM_OUTSIDE = (403, 40303)
    FILE_NOT_FOUND = (404, 40401)
    UNKNOWN_MODEL = (404, 40402)
    NO_SUCH_PATH = (404, 40403)
    METHOD_NOT_ALLOWED = (405, 40501)
    PRECONDITION_FAILED = (412, 41201)
    BODY_TOO_LARGE = (413, 41301)
    LOG_TYPE_NOT_ACCEPTED = (415, 41501)
    LOG_EXTENSION_NOT_ACCEPTED = (415, 41502)
    RANGE_NOT_SATISFIABLE = (416, 41601)
    TOO_MANY_FAILURES = (429, 42901)
    INTERNAL_ERROR = (500, 50001)
    # The edge's own answers, when no front end can give one (lab.service.edge).
    FRONT_END_UNREACHABLE = (502, 50201)
    FRONT_END_UNTRUSTED = (502, 50202)
    FRONT_END_NO_ANSWER = (502, 50203)
    IN_MAINTENANCE = (503, 50301)
    STORE_UNAVAILABLE = (503, 50302)
    NO_SERVER_IN_PRODUCTION = (503, 50303)
    FRONT_END_TIMEOUT = (504, 50401)

    @property
    def status(self) -> int:
        """The HTTP status."""
        return self.value[0]

    @property
    def code(self) -> int:
        """The X-Ms-Diagnostics code."""
        return self.value[1]


class Problem(ServiceError):
    """A request the service refuses; answered by problem_response."""

    def __init__(
        self,
        diagnostic: Diagnostic,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(reason)
        self.diagnostic = diagnostic
        self.reason = reason
        self.headers = dict(headers or {})
        self.close = close


def diagnostics_value(code: int, reason: str) -> str:
    """The X-Ms-Diagnostics value for ``code`` and ``reason`` (quotes and newlines made safe)."""
    clean = " ".join(reason.replace("\\", "\\\\").replace('"', "'").split())
    return f'{code};reason="{clean}"'


def problem_response(problem: Problem) -> web.Response:
    """The answer for ``problem``."""
    headers = {
        **problem.headers,
        DIAGNOSTICS_HEADER: diagnostics_value(problem.diagnostic.code, problem.reason),
    }
    response = web.Response(
        status=problem.diagnostic.status,
        text=problem.reason + "\n",
        content_type="text/plain",
        headers=headers,
    )
    if problem.close:
        response.force_close()
    return response


class DiagnosedRequestHandler(RequestHandler):
    """aiohttp's connection handler whose own error answers also carry X-Ms-Diagnostics.

    Malformed HTTP (a bad request line, a header too long, a body that does not match its
    framing) is answered by aiohttp before any application code runs; this keeps those
    answers in the shape every other error has.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's error answer, with the diagnostics header added."""
        response = super().handle_error(request, status, exc, message)
        diagnostic = _BY_STATUS.get(status, Diagnostic.MALFORMED_REQUEST)
        if status >= 500:
            diagnostic = Diagnostic.INTERNAL_ERROR
        reason = str(exc or message or diagnostic.name.lower().replace("_", " "))
        response.headers[DIAGNOSTICS_HEADER] = diagnostics_value(diagnostic.code, reason)
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's report of a request that failed: a peer gone is no fault of ours, and
        anything else is counted with a sample (lab.guard.FaultLog), not one traceback
        per request."""
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("a peer went away during a request: %s", exc)
            return
        sample = (args[0] % args[1:]) if args else "a request failed"
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else ""
        FAULTS.fault("request failed in the HTTP layer", f"{sample} {detail}".strip(), None)


_BY_STATUS = {
    404: Diagnostic.NO_SUCH_PATH,
    405: Diagnostic.METHOD_NOT_ALLOWED,
    413: Diagnostic.BODY_TOO_LARGE,
}


def as_problem(request: web.BaseRequest, exc: Exception) -> Problem | None:
    """The Problem that answers ``exc`` raised while serving ``request``; None when ``exc``
    must go on (a redirect, or a peer that is gone and has no one to answer)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        diagnostic = _BY_STATUS.get(exc.status, Diagnostic.MALFORMED_REQUEST)
        if exc.status >= 500:
            diagnostic = Diagnostic.INTERNAL_ERROR
        reason = exc.reason if exc.status != 404 else f"no resource at {request.path}"
        kept = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
        return Problem(diagnostic, reason, headers=kept)
    if isinstance(exc, ConnectionError | TimeoutError):
        # The peer went away (or was cut on purpose); there is no one to answer.
        return None
    FAULTS.fault(
        "unexpected failure serving a request",
        f"{request.method} {request.path}: {type(exc).__name__}: {exc}",
        exc,
    )
    return Problem(Diagnostic.INTERNAL_ERROR, "the server failed unexpectedly", close=True)
