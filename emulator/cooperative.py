"""A phone driver for cooperative workers: gevent greenlets, as in Locust's workers.

The sans-IO core (emulator.core) does no I/O; the asyncio driver (emulator.driver) carries
its actions out on an event loop. This driver carries them out on gevent's hub instead: one
greenlet per phone takes the events from a queue and feeds them to the core; each action's
I/O runs in a greenlet of its own, in blocking calls that gevent's monkey patching makes
cooperative (the phone's DNS lookups with ``DNSResolver.resolve_blocking``, its HTTPS with
emulator.net.blocking_https); each timer is a greenlet started later. Time is the phone
clock's (`emulator.clock.ScaledClock` over ``time.monotonic``), so a fleet can run faster
than real time as ``emulator run`` does.

What happens is told to the caller as it happens: ``on_request`` for every DNS lookup,
check, sign-in and download (what Locust records as a request), ``on_state`` for every
change of state, ``on_converged`` once, when the phone is first idle on a new version.
Faults are the asyncio driver's business; this one runs phones as they are.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent
from gevent.queue import Queue

from emulator.clock import ScaledClock
from emulator.core import Phone
from emulator.driver import (
    LeaseNetwork,
    catalog_event,
    connection_failed,
    download_failed,
    image_event,
    status_event,
)
from emulator.errors import (
    DownloadInterruptedError,
    FirmwareError,
    MalformedAnswerError,
    NetworkError,
    ResolutionError,
    ServiceStatusError,
)
from emulator.events import (
    Action,
    Boot,
    CancelTimer,
    Credentials,
    DiscardDownloads,
    DownloadFinished,
    Event,
    PowerOn,
    Purpose,
    ResolutionFailed,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    SignIn,
    StartDownload,
    StartTimer,
    Timer,
    TimerFired,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.firmware import CatalogEntry, check_received
from emulator.lease import Lease
from emulator.net.blocking_https import BlockingHTTPSClient
from emulator.net.https import DEFAULT_USER_AGENT
from emulator.net.resolver import DEFAULT_TIMEOUT, DEFAULT_TRIES, DNSResolver
from emulator.states import PhoneState

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class RequestReport:
    """One exchange, as a load tester records it: its kind and name, how long it took (real
    milliseconds), how much came back, and what went wrong (None when it went well)."""

    kind: str
    name: str
    milliseconds: float
    size: int
    error: str | None


class CooperativePhone:
    """One phone driven on gevent's hub until `stop`."""

    def __init__(
        self,
        phone: Phone,
        *,
        lease: Lease,
        network: LeaseNetwork,
        clock: ScaledClock,
        address: str,
        workdir: Path,
        on_request: Callable[[RequestReport], None] | None = None,
        on_state: Callable[[CooperativePhone, PhoneState], None] | None = None,
        on_converged: Callable[[CooperativePhone], None] | None = None,
    ) -> None:
        self.phone = phone
        self.lease = lease
        self.network = network
        self.clock = clock
        self.address = address
        self.directory = workdir / phone.identity.mac.replace("-", "")
        self.on_request = on_request
        self.on_state = on_state
        self.on_converged = on_converged
        self.powered_on_at: float | None = None
        self.converged_at: float | None = None
        self._events: Queue[Event] = Queue()
        self._timers: dict[Timer, gevent.Greenlet] = {}
        self._work: gevent.Greenlet | None = None
        self._received: dict[str, tuple[int, str]] = {}
        self._pending_sign_in: Credentials | None = None
        self._dns = DNSResolver(
            lease.dns, address, timeout=DEFAULT_TIMEOUT, tries=DEFAULT_TRIES, namespaces=lease.netns
        )
        self._https = BlockingHTTPSClient(
            source=address,
            tls=network.tls_context,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            user_agent=DEFAULT_USER_AGENT,
            namespaces=lease.netns,
        )

    # -- the phone's life -------------------------------------------------------------------------

    def run(self, credentials: Credentials | None = None) -> None:
        """Power the phone on and drive it (signing ``credentials`` in once it is first idle)
        until the greenlet running this is killed."""
        self._pending_sign_in = credentials
        self.directory.mkdir(parents=True, exist_ok=True)
        self.powered_on_at = self.clock.now()
        self._feed(PowerOn(self.powered_on_at, self.lease))
        try:
            while True:
                self._feed(self._events.get())
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every timer and exchange, close the connection, drop the downloads."""
        for timer in list(self._timers.values()):
            timer.kill(block=False)
        self._timers.clear()
        if self._work is not None:
            self._work.kill(block=False)
            self._work = None
        self._https.drop_connections()
        for path in self.directory.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def _feed(self, event: Event) -> None:
        before = self.phone.state
        actions = self.phone.handle(event)
        after = self.phone.state
        if after is not before:
            self._changed(after)
        for action in actions:
            self._carry_out(action)

    def _changed(self, state: PhoneState) -> None:
        if state is PhoneState.IDLE and self._pending_sign_in is not None:
            credentials, self._pending_sign_in = self._pending_sign_in, None
            self._events.put(SignIn(self.clock.now(), credentials))
        if (
            state is PhoneState.IDLE
            and self.converged_at is None
            and self.phone.current_version != self.phone.identity.model.factory_version
        ):
            self.converged_at = self.clock.now()
            if self.on_converged is not None:
                self.on_converged(self)
        if self.on_state is not None:
            self.on_state(self, state)

    # -- actions ----------------------------------------------------------------------------------

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, StartTimer):
            self._arm(action.timer, action.at)
        elif isinstance(action, CancelTimer):
            timer = self._timers.pop(action.timer, None)
            if timer is not None:
                timer.kill(block=False)
        elif isinstance(action, Resolve):
            self._start(lambda: self._resolve(action))
        elif isinstance(action, SendRequest):
            self._start(lambda: self._send(action))
        elif isinstance(action, StartDownload):
            self._start(lambda: self._download(action))
        elif isinstance(action, VerifyCatalog):
            self._events.put(self._verify_catalog(action))
        elif isinstance(action, VerifyImage):
            self._events.put(self._verify_image(action))
        elif isinstance(action, Boot):
            self._https.drop_connections()
        elif isinstance(action, DiscardDownloads):
            for module in action.modules:
                self._received.pop(module, None)
                (self.directory / module).unlink(missing_ok=True)
        # Flash needs no answer: its timer says when it is done.

    def _arm(self, timer: Timer, at: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.kill(block=False)
        delay = max(0.0, self.clock.loop_time(at) - time.monotonic())

        def fire() -> None:
            self._timers.pop(timer, None)
            self._events.put(TimerFired(self.clock.now(), timer))

        self._timers[timer] = gevent.spawn_later(delay, fire)

    def _start(self, work: Callable[[], Event]) -> None:
        """Run one exchange in a greenlet of its own; its event goes to the queue."""

        def run() -> None:
            event = work()
            self._work = None
            self._events.put(event)

        self._work = gevent.spawn(run)

    def _report(self, kind: str, name: str, started: float, size: int, error: str | None) -> None:
        if self.on_request is not None:
            took = (time.monotonic() - started) * 1000
            self.on_request(RequestReport(kind, name, took, size, error))

    def _resolve(self, action: Resolve) -> Event:
        started = time.monotonic()
        try:
            addresses = self._dns.resolve_blocking(action.host, "A")
        except ResolutionError as exc:
            self._report("DNS", "A", started, 0, exc.answer)
            return ResolutionFailed(self.clock.now(), action.host, str(exc), answer=exc.answer)
        self._report("DNS", "A", started, len(addresses), None)
        kept = self._https.kept_address(action.host, action.port)
        return Resolved(self.clock.now(), action.host, tuple(addresses), kept)

    def _send(self, action: SendRequest) -> Event:
        target = action.target
        name = "update check" if action.purpose is Purpose.CHECK else action.purpose.value
        started = time.monotonic()
        try:
            answer = self._https.post_xml(
                target.url,
                action.body,
                address=target.address,
                credentials=action.credentials,
                clock_offset=target.clock_offset,
            )
        except ServiceStatusError as exc:
            self._report(action.method, name, started, len(exc.body), _failure(exc))
            return status_event(self.clock.now(), exc)
        except (NetworkError, MalformedAnswerError) as exc:
            self._report(action.method, name, started, 0, _failure(exc))
            return connection_failed(self.clock.now(), exc)
        self._report(action.method, name, started, len(answer.body), None)
        return ResponseReceived(self.clock.now(), answer.status, answer.body)

    def _download(self, action: StartDownload) -> Event:
        target = action.target
        path = self.directory / action.module
        self._received.pop(action.module, None)
        started = time.monotonic()
        try:
            result = self._https.download(
                target.url,
                path,
                address=target.address,
                offset=action.offset,
                etag=action.etag,
                credentials=action.credentials,
                clock_offset=target.clock_offset,
            )
        except (NetworkError, MalformedAnswerError, OSError) as exc:
            got = exc.offset if isinstance(exc, DownloadInterruptedError) else 0
            self._report("GET", "download", started, got, _failure(exc))
            return download_failed(self.clock.now(), exc, action.module, path)
        self._report("GET", "download", started, result.received, None)
        if result.sha256 is not None:
            self._received[action.module] = (result.size, result.sha256)
        return DownloadFinished(self.clock.now(), result.size, result.etag)

    def _verify_catalog(self, action: VerifyCatalog) -> Event:
        path = self.directory / action.module
        return catalog_event(self.clock.now(), path, self.network.vendor_certificate, action)

    def _verify_image(self, action: VerifyImage) -> Event:
        now = self.clock.now()
        received = self._received.get(action.module)
        if received is None:
            return VerificationFailed(now, f"{action.module} was not received whole")
        entry = CatalogEntry(action.module, action.size, action.sha256)
        try:
            check_received(*received, entry)
        except FirmwareError as exc:
            return image_event(now, exc)
        return image_event(now, None)


def _failure(exc: Exception) -> str:
    """A failed exchange as a load tester's statistics name it: the status the service
    answered, ``interrupted`` for a cut download, else the kind of error."""
    if isinstance(exc, ServiceStatusError):
        return str(exc.status)
    if isinstance(exc, DownloadInterruptedError):
        return "interrupted"
    return type(exc).__name__
