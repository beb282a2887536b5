"""Routes to the service, and the walk over them: internal URL first, address by address.

A phone talks to the service through an ordered list of routes (URLs). For each route it
resolves the host and tries the addresses in the order DNS gave them, except that a server
it still has a connection open to (same host name and port, from the request before) comes
first, as any HTTP client sends on the connection it holds: a 503 or a connection failure
moves to the next address. When a route ends without any server having
answered (no DNS answer, no connection), the phone moves to the next route: that is how an
inside phone falls back from the internal URL to the external one. When a server did
answer (busy, errors), trying another route would reach the same pool: the walk ends and
the phone backs off instead. A walk logs each failure with its reason (and its log code and
facts) and names the next step; the phone core (emulator/core.py) turns steps into actions.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from emulator.codec import Diagnostics, describe_status, parse_diagnostics
from emulator.errors import CertificateProblem
from emulator.events import Purpose
from emulator.phonelog import LogCode, LogFacts, LogLevel, PhoneLog


class RouteKind(enum.Enum):
    """Where a URL came from, which decides the order of the routes."""

    DISCOVERY = "discovery"
    INTERNAL = "internal"
    EXTERNAL = "external"


@dataclass(frozen=True)
class Route:
    """One URL to try, with its host and port taken apart."""

    url: str
    kind: RouteKind

    # Taken apart once: every exchange of every phone asks a route for them.
    @functools.cached_property
    def host(self) -> str:
        """The URL's host name (or address literal), lower-case."""
        return (urlsplit(self.url).hostname or "").lower()

    @functools.cached_property
    def port(self) -> int:
        """The URL's port (443 when it names none)."""
        return urlsplit(self.url).port or 443

    @functools.cached_property
    def is_address(self) -> bool:
        """Whether the host is an IP address literal, which needs no DNS lookup."""
        return is_address(self.host)


_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF.:%")


def is_address(host: str) -> bool:
    """Whether ``host`` is an IP address literal (v4, or v6 without brackets)."""
    if not _ADDRESS_CHARACTERS.issuperset(host[: host.find("%")] if "%" in host else host):
        return False  # a host name, told apart without the cost of a refused parse
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Phase(enum.Enum):
    """What the walk waits for."""

    RESOLVING = "a DNS answer"
    REQUESTING = "an answer to a request"


@dataclass(frozen=True)
class Lookup:
    """Next step: look up this host name (to reach it on this port)."""

    host: str
    port: int


@dataclass(frozen=True)
class Attempt:
    """Next step: send the request to the walk's current route and address."""


@dataclass(frozen=True)
class Succeeded:
    """The server answered 200: the caller reads the body."""


@dataclass(frozen=True)
class Refused:
    """The service refused (401/403 or another 4xx): no retry; ``message`` says why.

    ``code`` is DENIED (401/403) or REQUEST_REFUSED (another 4xx), for the log line.
    """

    message: str
    code: LogCode
    status: int
    diagnostics: Diagnostics | None


@dataclass(frozen=True)
class Exhausted:
    """Every route and address failed: back off (at least ``retry_after`` seconds, if set)."""

    retry_after: float | None


Step = Lookup | Attempt | Succeeded | Refused | Exhausted


class Walk:
    """One exchange (check, sign-in, download) over its routes and addresses; logs failures."""

    def __init__(self, purpose: Purpose, routes: tuple[Route, ...], log: PhoneLog) -> None:
        """Walk ``routes`` (at least one) in order, writing failures to ``log``."""
        self.purpose = purpose
        self.routes = routes
        self.route_index = 0
        self.addresses: tuple[str, ...] = ()
        self.address_index = 0
        self.phase = Phase.RESOLVING
        self.answered = False
        """Whether some server on the current route gave an HTTP answer (then no fallback)."""
        self.retry_after: float | None = None
        """The longest Retry-After any server gave during this walk."""
        self._log = log

    @property
    def route(self) -> Route:
        """The route being tried."""
        return self.routes[self.route_index]

    @property
    def address(self) -> str:
        """The address being tried."""
        return self.addresses[self.address_index]

    @property
    def where(self) -> str:
        """The URL and address being tried, for the log."""
        return f"{self.route.url} ({self.address})"

    def start(self) -> Step:
        """Begin the current route: look its host up, or try an address literal at once."""
        if self.route.is_address:
            self.addresses, self.address_index = (self.route.host,), 0
            self.phase = Phase.REQUESTING
            return Attempt()
        self.addresses, self.address_index = (), 0
        self.phase = Phase.RESOLVING
        return Lookup(self.route.host, self.route.port)

    def resolved(self, now: float, addresses: tuple[str, ...], kept: str | None = None) -> Step:
        """The DNS answer: try its first address, or give up on the route if it holds none.

        ``kept`` is the address of a connection the phone still has open to the route's host
        and port: when the answer names it, it is tried first (an HTTP client sends on the
        connection it holds rather than open another), the others after it in DNS order.
        """
        host = self.route.host
        answer = tuple(dict.fromkeys(addresses))
        self.addresses, self.address_index = answer, 0
        self.phase = Phase.REQUESTING
        if not answer:
            message = f"{host}: the DNS answer holds no address"
            facts = LogFacts(host=host, purpose=self.purpose)
            self._log.add(now, LogLevel.ERROR, "dns", message, code=LogCode.NO_ADDRESS, facts=facts)
            return self._route_failed(now)
        message = f"{host} is {', '.join(answer)}"
        if kept is not None and kept in answer and kept != answer[0]:
            self.addresses = (kept, *(a for a in answer if a != kept))
            message += f"; {kept} first, over the connection the phone has open to it"
        facts = LogFacts(host=host, address=self.addresses[0], purpose=self.purpose)
        self._log.add(now, LogLevel.INFO, "dns", message, code=LogCode.RESOLVED, facts=facts)
        return Attempt()

    def resolution_failed(self, now: float, reason: str, answer: str | None = None) -> Step:
        """The lookup failed (``answer``: what the DNS server said): the route cannot be reached."""
        host = self.route.host
        self._log.add(
            now,
            LogLevel.ERROR,
            "dns",
            f"lookup of {host} failed: {reason}",
            code=LogCode.DNS_FAILED,
            facts=LogFacts(host=host, dns_answer=answer, purpose=self.purpose),
        )
        return self._route_failed(now)

    def connection_failed(
        self, now: float, reason: str, certificate: CertificateProblem | None = None
    ) -> Step:
        """No connection (refused, timed out, TLS): try the next address."""
        route = self.route
        message = f"cannot reach {route.host} at {self.address}:{route.port}: {reason}"
        facts = self._facts(certificate=certificate)
        self._add(now, LogLevel.ERROR, message, LogCode.CONNECTION_FAILED, facts)
        return self._next_address(now)

    def interrupted(self, now: float, message: str, facts: LogFacts) -> Step:
        """A transfer was cut: the server was reached, so try its peers, not another route."""
        self.answered = True
        self._add(now, LogLevel.WARNING, message, LogCode.DOWNLOAD_CUT, facts)
        return self._next_address(now)

    def malformed(self, now: float, problem: str) -> Step:
        """A 200 answer the phone cannot use: another server may answer properly."""
        message = f"{self.where} answered nonsense: {problem}"
        self._add(now, LogLevel.ERROR, message, LogCode.MALFORMED_ANSWER, self._facts())
        return self._next_address(now)

    def response(
        self, now: float, status: int, diagnostics: str | None, retry_after: float | None
    ) -> Step:
        """Judge an HTTP answer: success, refusal, or a reason to try the next address."""
        self.answered = True
        if status == 200:
            return Succeeded()
        purpose = self.purpose.value
        parsed = parse_diagnostics(diagnostics)
        described = describe_status(status, parsed)
        if status in (401, 403):
            message = f"{self.where} denied the {purpose}: {described}"
            return Refused(message, LogCode.DENIED, status, parsed)
        if status == 503:
            if retry_after is not None and (
                self.retry_after is None or retry_after > self.retry_after
            ):
                self.retry_after = retry_after
            wait = f"; it asks to retry after {retry_after:g} s" if retry_after else ""
            message = f"{self.where} is unavailable: {described}{wait}"
            facts = self._facts(status=status, diagnostics=parsed, retry_after=retry_after)
            self._add(now, LogLevel.WARNING, message, LogCode.UNAVAILABLE, facts)
            return self._next_address(now)
        if status >= 500 or (status == 404 and self.purpose is Purpose.DOWNLOAD):
            # Another front end may be healthy, or hold the file: import is per server.
            message = f"{self.where} answered {described}"
            facts = self._facts(status=status, diagnostics=parsed)
            self._add(now, LogLevel.ERROR, message, LogCode.SERVER_FAILED, facts)
            return self._next_address(now)
        message = f"{self.where} refused the {purpose}: {described}"
        return Refused(message, LogCode.REQUEST_REFUSED, status, parsed)

    def _next_address(self, now: float) -> Step:
        self.address_index += 1
        if self.address_index < len(self.addresses):
            return Attempt()
        return self._route_failed(now)

    def _route_failed(self, now: float) -> Step:
        failed = self.route
        if self.answered or self.route_index + 1 >= len(self.routes):
            return Exhausted(self.retry_after)
        self.route_index += 1
        self.answered = False
        message = (
            f"{failed.kind.value} URL {failed.url} cannot be reached; trying "
            f"{self.route.kind.value} URL {self.route.url}"
        )
        facts = LogFacts(purpose=self.purpose, route=self.route.kind, url=self.route.url)
        self._add(now, LogLevel.WARNING, message, LogCode.FALLING_BACK, facts)
        return self.start()

    def facts(self) -> LogFacts:
        """The facts of a line about the current route and address (add more with replace)."""
        return self._facts()

    def _facts(
        self,
        *,
        status: int | None = None,
        diagnostics: Diagnostics | None = None,
        retry_after: float | None = None,
        certificate: CertificateProblem | None = None,
    ) -> LogFacts:
        route = self.route
        return LogFacts(
            purpose=self.purpose,
            route=route.kind,
            url=route.url,
            host=route.host,
            address=self.address,
            status=status,
            diagnostics=diagnostics,
            retry_after=retry_after,
            certificate=certificate,
        )

    def _add(
        self, now: float, level: LogLevel, message: str, code: LogCode, facts: LogFacts
    ) -> None:
        self._log.add(now, level, self.purpose.value, message, code=code, facts=facts)
