"""The HTTP endpoints of a front end's two sites (paths and rules of docs/wire-protocol.md).

Internal site: the update check and image downloads are anonymous; sign-in is NTLM.
External site (reached through the edge): everything is NTLM, on the connection. An
update check with no credentials is refused with 403 when the phone reports no signed-in
user (it has nothing to authenticate with) and with a 401 NTLM challenge otherwise;
internal download paths are refused (403). A front end out of production answers every
new request with 503 and ``Retry-After``. Every request to these endpoints is reported
through ``ServiceContext.on_request`` as an audit record, and every answered update check
through ``ServiceContext.on_check`` as a sighting for the phone inventory. Device log
uploads follow the same site rules (anonymous inside, NTLM outside); lab.service.logs
holds their own.

The update check is the request a fleet makes most, so its path is kept short: the site
routes its few fixed paths itself on aiohttp's low-level server (no application, router
or middleware), and one place answers refusals and writes the audit record. Nothing is
remembered per request or by object identity: audit records and sightings are built by
keyword for every request, at the time the service's clock gives (``ServiceContext.now``).
A check is decided on the store snapshot in hand, and its answer comes from the pool's one
answer cache (lab.service.updates: keyed explicitly, per snapshot generation, bounded in
bytes).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from lab.net.config import User
from lab.net.firewall import Zone
from lab.service.audit import AuditRecord, audit_time
from lab.service.frontend import FrontEndServer, Mode, Role, SiteHandler
from lab.service.inventory import Sighting
from lab.service.logs import EXTERNAL_LOG_PATH, LOG_PATH, LogUpload, parse_log_upload
from lab.service.ntlm import (
    Authenticated,
    Challenge,
    NtlmSession,
    Rejected,
    Throttled,
    parse_authorization,
)
from lab.service.problems import Diagnostic, Problem, as_problem, problem_response
from lab.service.sites import answer_expect
from lab.service.updates import Answer, answer_key
from lab.service.xmlio import (
    MAX_REQUEST_BYTES,
    DeviceUpdateRequest,
    Download,
    XMLRequestError,
    parse_update_request,
    provisioning_document,
    update_response,
)
from lab.store.decision import Decision

CHECK_PATH = "/RequestHandler/ucdevice.upx"
EXTERNAL_CHECK_PATH = "/RequestHandlerExt/ucdevice.upx"
SIGNIN_PATH = "/Provisioning/signin"
INTERNAL_FILES = "/DeviceUpdateFiles_Int"
EXTERNAL_FILES = "/DeviceUpdateFiles_Ext"
XML_TYPE = "text/xml"
CHECK_CONTENT_TYPE = f"{XML_TYPE}; charset=utf-8"
SERVER_HEADER = "X-MS-Server-Fqdn"

Handler = Callable[[web.BaseRequest, "Note"], Awaitable[web.StreamResponse]]


class Note:
    """What serving one request learnt on the way, for its audit record."""

    __slots__ = ("answer", "named", "parsed", "rest", "time", "upload", "user")

    def __init__(self, time: datetime) -> None:
        # When the request came, on the service's clock: its audit line's and sighting's.
        self.time = time
        # The rest of the path after a route's prefix (a file path), "" for exact routes.
        self.rest = ""
        self.parsed: DeviceUpdateRequest | None = None
        self.answer: Answer | None = None
        self.user: User | None = None
        self.upload: LogUpload | None = None
        # Whether the answer already names the front end (X-MS-Server-Fqdn).
        self.named = False


def make_handler(server: FrontEndServer, role: Role) -> SiteHandler:
    """What ``server``'s site for ``role`` answers (for an aiohttp ``web.Server``)."""
    return Endpoints(server, role)


def arrived_body(request: web.BaseRequest, limit: int = MAX_REQUEST_BYTES) -> bytes | None:
    """The request body if it is within ``limit`` and has all arrived; None otherwise
    (then read_body waits for it, or refuses it)."""
    length = request.content_length
    content = request.content
    if length is not None and length <= limit and content.is_eof():
        return content.read_nowait()
    return None


async def read_body(request: web.BaseRequest, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes; 413 (and the connection closed) beyond."""
    arrived = arrived_body(request, limit)
    if arrived is not None:
        return arrived
    length = request.content_length
    if length is not None and length <= limit:
        # The framing bounds the body: aiohttp's reader stops at its end.
        return await request.content.read()
    too_large = Problem(
        Diagnostic.BODY_TOO_LARGE,
        f"the request body is larger than {limit} bytes",
        close=True,
    )
    if length is not None:
        raise too_large
    data = bytearray()
    while chunk := await request.content.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


class Endpoints:
    """The handlers of one site of one front end, and the routing to them.

    The routes are few and fixed, so they are two tables rather than aiohttp's router
    and application: exact paths, and path prefixes whose rest is a file path. Calling the
    object serves a request: route it, run its handler, answer a refusal (or failure) as
    a Problem, and report the request to the audit seam.
    """

    def __init__(self, server: FrontEndServer, role: Role) -> None:
        self.server = server
        self.role = role
        self.context = server.context
        self._name = server.name
        self._pool = server.front_end.pool
        self._site_name = role.value
        self._fqdn = server.front_end.fqdn
        self._exact: dict[str, dict[str, Handler]] = {}
        # (prefix ending in "/", whether the rest may be empty, handlers by method)
        self._prefixed: list[tuple[str, bool, dict[str, Handler]]] = []
        self._route_all()
        # What every check answered here repeats, made once (the front end's name too,
        # which __call__ adds to every other answer).
        self._check_headers = CIMultiDictProxy(
            CIMultiDict({hdrs.CONTENT_TYPE: CHECK_CONTENT_TYPE, SERVER_HEADER: self._fqdn})
        )
        self._zone = Zone.INSIDE if role is Role.INTERNAL else Zone.OUTSIDE

    def _route_all(self) -> None:
        internal = self.role is Role.INTERNAL
        for path in [CHECK_PATH] if internal else [EXTERNAL_CHECK_PATH, CHECK_PATH]:
            self._exact[path] = {hdrs.METH_POST: self.check}
        if self.server.logs is not None:
            for path in [LOG_PATH] if internal else [EXTERNAL_LOG_PATH, LOG_PATH]:
                self._exact[path] = {hdrs.METH_POST: self.device_log}
        self._exact[SIGNIN_PATH] = {hdrs.METH_POST: self.signin}
        files = INTERNAL_FILES if internal else EXTERNAL_FILES
        downloads: dict[str, Handler] = {
            hdrs.METH_GET: self.download,
            hdrs.METH_HEAD: self.download,
        }
        self._prefixed.append((files + "/", False, downloads))
        if not internal:
            self._prefixed.append((INTERNAL_FILES + "/", True, {"*": self.internal_from_outside}))

    def _route(self, request: web.BaseRequest) -> tuple[Handler, str]:
        """The handler of ``request`` and the rest of its path after a prefix ("" if none)."""
        path = request.path
        handlers = self._exact.get(path)
        rest = ""
        if handlers is None:
            for prefix, may_be_empty, by_method in self._prefixed:
                if path.startswith(prefix) and (may_be_empty or len(path) > len(prefix)):
                    handlers, rest = by_method, path[len(prefix) :]
                    break
            else:
                raise Problem(Diagnostic.NO_SUCH_PATH, f"no resource at {path}")
        handler = handlers.get(request.method) or handlers.get("*")
        if handler is None:
            allowed = ",".join(sorted(handlers))
            raise Problem(
                Diagnostic.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {path}; use {allowed}",
                headers={hdrs.ALLOW: allowed},
            )
        return handler, rest

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve ``request``: route, handle, answer refusals, and report it for the audit."""
        # The body's deadline runs from here (lab.service.sites).
        with self.server.site(self.role).serving(request):
            return await self._serve(request)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        note = Note(self.context.now())
        try:
            # An exact path and its method (every check) are found at once.
            exact = self._exact.get(request.path)
            handler = exact.get(request.method) if exact is not None else None
            if handler is None:
                handler, note.rest = self._route(request)
            if request.headers.get(hdrs.EXPECT):
                await answer_expect(request)
            response = await handler(request, note)
        except Exception as exc:
            problem = as_problem(request, exc)
            if problem is None:
                if isinstance(exc, web.HTTPException):
                    self._report(request, note, exc.status, exc.reason)
                raise
            self._report(request, note, problem.diagnostic.status, problem.reason)
            response = problem_response(problem)
        else:
            self._report(request, note, response.status, "")
        # A check's answer names the front end from the start, and a download names
        # itself before it starts sending; every other answer is named here.
        if not note.named and not response.prepared:
            response.headers[SERVER_HEADER] = self._fqdn
        return response

    # -- endpoints ---------------------------------------------------------------------

    async def check(self, request: web.BaseRequest, note: Note) -> web.StreamResponse:
        """POST ucdevice.upx: what the phone should install, if anything."""
        # Every step is kept to a few operations on the usual path: this runs for every
        # check of every phone.
        server = self.server
        if server.mode is not Mode.PRODUCTION:
            server.ensure_in_service()
        if self.role is Role.EXTERNAL and self._authenticate(request, note) is None:
            await self._refuse_anonymous_check(request, note)
        # A check's small body has usually arrived whole with its headers: taken at once.
        body = arrived_body(request)
        if body is None:
            body = await read_body(request)
        parsed = self._parse(body)
        note.parsed = parsed
        kind = parsed.checked_kind  # checked once per parsed request
        if isinstance(kind, str):
            raise Problem(Diagnostic.UNKNOWN_MODEL, kind)
        context = self.context
        snapshot = context.snapshots.current()
        key = answer_key(snapshot, self._pool, parsed)
        answer = note.answer = context.answers.answer(snapshot, key, self._render)
        observer = context.on_check
        if observer is not None:
            user = note.user
            observer(
                Sighting(
                    mac=parsed.mac,
                    serial=parsed.serial,
                    kind=kind,
                    version=parsed.installed_version,
                    address=request.remote or "",
                    # The internal site admits inside peers only; the external one is the
                    # edge's.
                    zone=self._zone,
                    server=self._name,
                    pool=self._pool,
                    seen=note.time,
                    # The account NTLM signed in is who the phone belongs to now; what the
                    # body claims is only believed where nobody signed in (the audit line
                    # keeps both).
                    user=user.upn if user is not None else parsed.last_signed_in_user,
                )
            )
        note.named = True
        return web.Response(body=answer.body, headers=self._check_headers)

    async def device_log(self, request: web.BaseRequest, note: Note) -> web.StreamResponse:
        """POST ucdevicelog.upx: store a phone's log within the configured limits."""
        self.server.ensure_in_service()
        if self.role is Role.EXTERNAL:
            self._require_user(request, note)
        logs = self.server.logs
        assert logs is not None  # the route exists only with a log store
        upload = parse_log_upload(request.query)
        note.upload = upload
        config = self.context.device_config()
        stored = await logs.receive(upload, request.content, request.content_length, config)
        return web.Response(text=f"stored {stored.path.name} ({stored.size} bytes)\n")

    async def download(self, request: web.BaseRequest, note: Note) -> web.StreamResponse:
        """GET an image file: Range, ETag and If-Range honoured."""
        self.server.ensure_in_service()
        if self.role is Role.EXTERNAL:
            self._require_user(request, note)
        relative = note.rest
        path = self.server.files.resolve(relative)
        with self.server.transfer(request.remote or "", relative, path.stat().st_size) as transfer:
            return await self.server.files.send(
                request, path, progress=transfer.add, headers={SERVER_HEADER: self._fqdn}
            )

    async def signin(self, request: web.BaseRequest, note: Note) -> web.StreamResponse:
        """POST /Provisioning/signin: in-band provisioning for the signed-in user."""
        self.server.ensure_in_service()
        user = self._require_user(request, note)
        # As the registrar does: whichever server the phone reached, it is given the URLs
        # of the pool its user is homed on.
        home = user.pool
        document = provisioning_document(
            internal_url=self.context.internal_url(home, CHECK_PATH),
            external_url=self.context.external_url(home, EXTERNAL_CHECK_PATH),
            user_uri=user.upn,
            check_interval=self.context.check_interval,
        )
        return web.Response(body=document, content_type=XML_TYPE, charset="utf-8")

    async def internal_from_outside(
        self, request: web.BaseRequest, note: Note
    ) -> web.StreamResponse:
        """An internal download path asked for through the edge."""
        raise Problem(
            Diagnostic.INTERNAL_PATH_FROM_OUTSIDE,
            f"{INTERNAL_FILES} is served inside only; use {EXTERNAL_FILES} from outside",
        )

    # -- authentication ------------------------------------------------------------------

    def _authenticate(self, request: web.BaseRequest, note: Note) -> User | None:
        """The user of this connection, stepping NTLM when the request carries a token."""
        conn = self.server.site(self.role).connection(request)
        session = conn.state.get("ntlm")
        if not isinstance(session, NtlmSession):
            origin = self.context.origin(conn.peer, conn.port)
            session = self.context.directory.session(self.server.ntlm_names, origin)
            conn.state["ntlm"] = session
        header = request.headers.get("Authorization")
        user = session.user if header is None else self._step(session, header)
        note.user = user
        return user

    def _step(self, session: NtlmSession, header: str) -> User:
        token = parse_authorization(header)
        if token is None:
            raise _challenge("only NTLM authentication is accepted here")
        outcome = session.step(token)
        if isinstance(outcome, Authenticated):
            return outcome.user
        if isinstance(outcome, Challenge):
            raise Problem(
                Diagnostic.NTLM_REQUIRED,
                "NTLM challenge: answer it on this connection",
                headers={"WWW-Authenticate": "NTLM " + base64.b64encode(outcome.token).decode()},
            )
        if isinstance(outcome, Throttled):
            raise Problem(
                Diagnostic.TOO_MANY_FAILURES,
                f"too many failed sign-ins from {outcome.address}; "
                f"try again in {outcome.retry_after} s",
                headers={"Retry-After": str(outcome.retry_after)},
                close=True,
            )
        assert isinstance(outcome, Rejected)
        if outcome.locked:
            raise Problem(Diagnostic.ACCOUNT_LOCKED, outcome.reason)
        raise Problem(Diagnostic.NTLM_FAILED, outcome.reason, headers={"WWW-Authenticate": "NTLM"})

    def _require_user(self, request: web.BaseRequest, note: Note) -> User:
        user = self._authenticate(request, note)
        if user is None:
            raise _challenge("sign in with NTLM to use this")
        return user

    async def _refuse_anonymous_check(self, request: web.BaseRequest, note: Note) -> None:
        body = await read_body(request)
        try:
            parsed = parse_update_request(body)
        except XMLRequestError:
            parsed = None
        if parsed is not None:
            note.parsed = parsed
            if parsed.last_signed_in_user is None:
                raise Problem(
                    Diagnostic.NO_SIGNED_IN_USER,
                    "update checks from outside need a signed-in user; sign in on the phone",
                )
        raise _challenge("update checks from outside need NTLM credentials")

    def _render(self, decision: Decision) -> Answer:
        """What a check decided ``decision`` is answered (for the pool's answer cache)."""
        downloads = [
            Download(
                module=item.module,
                version=decision.version or "",
                size=item.size,
                sha256=item.sha256,
                base_url=self.context.internal_url(self._pool, f"{INTERNAL_FILES}/{item.path}"),
                external_base_url=self.context.external_url(
                    self._pool, f"{EXTERNAL_FILES}/{item.path}"
                ),
            )
            for item in decision.files
        ]
        return Answer(
            decision=decision,
            body=update_response(downloads),
            modules=" ".join(f.module for f in decision.files),
            version=_decision(decision),
        )

    @staticmethod
    def _parse(body: bytes) -> DeviceUpdateRequest:
        try:
            return parse_update_request(body)
        except XMLRequestError as exc:
            raise Problem(Diagnostic.MALFORMED_REQUEST, exc.reason) from None

    # -- audit ---------------------------------------------------------------------------

    def _report(self, request: web.BaseRequest, note: Note, status: int, reason: str) -> None:
        observer = self.context.on_request
        if observer is None:
            return
        parsed = note.parsed
        answer = note.answer
        user = note.user
        returned = version = served_from = ""
        if answer is not None:
            reason = reason or answer.decision.reason
            returned, version = answer.modules, answer.version
            served_from = answer.decision.source or ""
        upload = note.upload
        if upload is not None:
            reason = reason or upload.summary
        observer(
            AuditRecord(
                time=audit_time(note.time),
                server=self._name,
                client_address=request.remote or "",
                site=self._site_name,
                path=request.path,
                status=status,
                device_type=parsed.device_type if parsed else "",
                mac=parsed.mac if parsed else upload.mac if upload else "",
                serial=parsed.serial if parsed else "",
                vendor=parsed.vendor if parsed else "",
                model=parsed.model if parsed else "",
                revision=parsed.revision if parsed else "",
                locale=parsed.locale if parsed else "",
                installed_modules=parsed.installed_modules if parsed else "",
                modules_returned=returned,
                decision=version,
                served_from=served_from,
                reason=reason,
                last_signed_in_user=(parsed.last_signed_in_user or "") if parsed else "",
                authenticated_user=user.upn if user is not None else "",
            )
        )


def _challenge(reason: str) -> Problem:
    return Problem(Diagnostic.NTLM_REQUIRED, reason, headers={"WWW-Authenticate": "NTLM"})


def _decision(decision: Decision) -> str:
    return decision.version if decision.version is not None else "none"
