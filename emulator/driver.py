"""The asyncio driver of one phone: it owns the sockets, files and timers its core asks for.

Rules of this module:
- The core (emulator/core.py) decides; the driver carries out its actions and feeds back
  what happened, stamped with the phone's Clock. Nothing here reads the system clock.
- Events are fed on the loop thread from a timer callback, a task's completion or a
  ``call_soon``, never from inside another feed, so a batch of actions is carried out
  whole and in order, and a cancelled timer never fires.
- One I/O operation is out at a time (the core asks for no more). Each gets a number;
  power loss and restarts move the number on, so a late answer from before is dropped.
- Every socket leaves from the phone's own address (resolver and HTTPS client are made for
  it). The HTTPS client lives only while an exchange is in progress: an idle phone holds
  no session, connection or TLS context, and what phones can share (trusted CA, TLS
  contexts, vendor certificates) `LeaseNetwork` makes once for all of them.
- Downloads live in the phone's own directory under ``workdir``, one file per module, and
  are deleted when the core discards them. A large image is hashed in a worker thread.
- Faults (emulator/faults.py) and a user's sign-in are scheduled here by trigger: a time
  after the first power-on, or the first time the phone enters a state.
- What a person asks of the phone outside its own cycle (a support engineer pulling its
  log) is I/O the core never asked for: it is done here, beside the core's exchanges, on a
  client of its own, and only the phone log hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import posixpath
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from emulator.clock import Clock, to_datetime
from emulator.codec import parse_diagnostics
from emulator.core import Phone
from emulator.errors import (
    CertificateError,
    DownloadInterruptedError,
    DriverError,
    FirmwareError,
    FleetError,
    MalformedAnswerError,
    NetworkError,
    ResolutionError,
    ServiceStatusError,
    VendorCertificateError,
    WaitTimeoutError,
)
from emulator.events import (
    Action,
    Boot,
    BootFailed,
    CallEnded,
    CallStarted,
    CancelTimer,
    CatalogVerified,
    ClockOffsetChanged,
    ConnectionFailed,
    Credentials,
    DiscardDownloads,
    DownloadFinished,
    DownloadInterrupted,
    Event,
    Flash,
    ImageVerified,
    PowerLost,
    PowerOn,
    ResolutionFailed,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    SignIn,
    SignOut,
    StartDownload,
    StartTimer,
    Timer,
    TimerFired,
    UserActivity,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.faults import AnyFault, BootFailure, Fault, Trigger
from emulator.firmware import CatalogEntry, check_image_file, check_received, verify_catalog
from emulator.lease import Lease
from emulator.net.client import HTTPSClient
from emulator.net.https import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    PhoneHTTPSClient,
)
from emulator.net.resolver import DEFAULT_TIMEOUT, DEFAULT_TRIES, DNSResolver, Resolver
from emulator.net.tls import CertificateChecker, PhoneTLSContext, phone_context
from emulator.phonelog import (
    MAX_LOG_FILE_SIZE,
    LogCode,
    LogFacts,
    LogLevel,
    celog_file_name,
    render_celog,
)
from emulator.routes import is_address
from emulator.states import BUSY, QUIET, UP, PhoneState

S = PhoneState
LARGE_IMAGE = 4 * 1024 * 1024
"""Images from this size on are hashed in a worker thread, off the event loop."""
EXCHANGES = frozenset({S.CHECKING, S.SIGNING_IN, S.DOWNLOADING})
"""States in which the phone talks HTTPS; out of them its client is closed."""
SETTLED = frozenset({S.IDLE, S.OFF})
LOG_TYPE = "CELog"
"""The log type a phone's log is uploaded as."""
LOG_HANDLER = "ucdevicelog.upx"
"""The log upload handler, beside the update check (``ucdevice.upx``) on either site."""
LOG_TOPIC = "log upload"


class Network(Protocol):
    """Where a driver gets its phone's I/O: a resolver, HTTPS clients, vendor certificates."""

    def resolver(self, source: str) -> Resolver:
        """A resolver asking the lease's DNS server from ``source``."""
        ...

    async def open_client(self, source: str, resolver: Resolver) -> HTTPSClient:
        """An HTTPS client from ``source`` for one exchange (it may wait for a free place)."""
        ...

    async def close_client(self, client: HTTPSClient) -> None:
        """Close a client ``open_client`` gave, freeing its place."""
        ...

    def vendor_certificate(self, vendor: str) -> bytes:
        """The PEM certificate of ``vendor`` the phone image trusts; VendorCertificateError."""
        ...


class LeaseNetwork:
    """The real network of every phone on one lease and clock; what phones can share is shared.

    The trusted CA is read once, a TLS context is made once per clock offset (its checks
    read the shared clock plus that offset), and vendor certificates are read once. A
    context's list of refused certificates is shared too; drivers always name the address
    they connect to, so they never read it. At most ``max_clients`` phones hold an HTTPS
    client at once (each live TLS connection costs a few hundred KiB of buffers); the
    others wait their turn, as on a congested network.
    """

    def __init__(
        self,
        lease: Lease,
        clock: Clock,
        *,
        dns_timeout: float = DEFAULT_TIMEOUT,
        dns_tries: int = DEFAULT_TRIES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_clients: int | None = None,
    ) -> None:
        if max_clients is not None and max_clients < 1:
            raise FleetError(f"at least one phone must be able to connect, not {max_clients}")
        self.lease = lease
        self.clock = clock
        self.max_clients = max_clients
        self._places = asyncio.Semaphore(max_clients) if max_clients else None
        self.dns_timeout = dns_timeout
        self.dns_tries = dns_tries
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._trusted = (
            CertificateChecker.from_file(lease.ca_cert, clock.datetime).trusted
            if lease.ca_cert is not None
            else ()
        )
        self._contexts: dict[float, PhoneTLSContext] = {}
        self._vendor_certs: dict[str, bytes] = {}

    def resolver(self, source: str) -> Resolver:
        """A resolver asking the lease's DNS server from ``source``."""
        return DNSResolver.from_lease(
            self.lease, source, timeout=self.dns_timeout, tries=self.dns_tries
        )

    async def open_client(self, source: str, resolver: Resolver) -> HTTPSClient:
        """An HTTPS client from ``source`` trusting the lease's CA, once a place is free."""
        if self._places is not None:
            await self._places.acquire()
        return self.https_client(source, resolver)

    async def close_client(self, client: HTTPSClient) -> None:
        """Close ``client`` and free its place."""
        try:
            await client.close()
        finally:
            if self._places is not None:
                self._places.release()

    def https_client(self, source: str, resolver: Resolver) -> PhoneHTTPSClient:
        """An HTTPS client from ``source`` trusting the lease's CA, with shared TLS contexts."""
        return PhoneHTTPSClient(
            source=source,
            resolver=resolver,
            ca_cert=None,
            clock=self.clock,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            tls=self.tls_context,
            namespaces=self.lease.netns,
        )

    def tls_context(self, offset: float) -> PhoneTLSContext:
        """The TLS context of phones whose clocks are ``offset`` seconds from true time."""
        context = self._contexts.get(offset)
        if context is None:
            clock = self.clock

            def phone_time() -> datetime:
                return to_datetime(clock.now() + offset)

            context = phone_context(CertificateChecker(self._trusted, phone_time))
            self._contexts[offset] = context
        return context

    def vendor_certificate(self, vendor: str) -> bytes:
        """The certificate of ``vendor`` named by the lease, read once."""
        cert = self._vendor_certs.get(vendor)
        if cert is None:
            path = self.lease.vendor_certs.get(vendor)
            if path is None:
                raise VendorCertificateError(
                    f"the lease names no certificate for vendor {vendor}, so the phone "
                    "cannot check any firmware"
                )
            try:
                cert = path.read_bytes()
            except OSError as exc:
                raise VendorCertificateError(
                    f"cannot read the {vendor} certificate {path}: {exc.strerror}"
                ) from None
            self._vendor_certs[vendor] = cert
        return cert


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a phone's timeline: from ``time`` on it is in ``state``, running ``version``."""

    time: float
    state: PhoneState
    version: str


ChangeObserver = Callable[["PhoneDriver"], None]
"""Told after anything that may have changed a phone's state or whether it is settled."""
Condition = Callable[["PhoneDriver"], bool]


class PhoneDriver:
    """Runs one phone's core on the running loop: its sockets, files, timers and faults."""

    def __init__(
        self,
        phone: Phone,
        *,
        lease: Lease,
        clock: Clock,
        network: Network,
        address: str,
        workdir: Path,
        faults: Sequence[AnyFault] = (),
        hash_in_thread_from: int = LARGE_IMAGE,
        observer: ChangeObserver | None = None,
    ) -> None:
        self.phone = phone
        self.lease = lease
        self.clock = clock
        self.network = network
        self.address = address
        self.workdir = workdir
        self.hash_in_thread_from = hash_in_thread_from
        self.observer = observer
        self.timeline: list[Change] = []
        self.powered_on_at: float | None = None
        """Phone time of the first power-on."""
        self.error: DriverError | None = None
        self.bytes_downloaded = 0
        self.files_downloaded = 0
        self.boots = 0
        self._loop = asyncio.get_running_loop()
        self._resolver: Resolver | None = None
        self._client: HTTPSClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._op = 0
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._scheduled: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        self._at_power_on: list[tuple[float, Callable[[], None]]] = []
        self._on_state: list[tuple[Trigger, Callable[[], None]]] = []
        self._boot_failures: list[_BootFailures] = []
        self._sign_in: Credentials | None = None
        # The core keeps the signed-in user's credentials to itself; the driver remembers
        # what it last fed and binds it when a sign-in brings new provisioning.
        self._offered: Credentials | None = None
        self._provisioned: object | None = None
        self._credentials: Credentials | None = None
        self._waiters: list[tuple[Condition, asyncio.Future[float]]] = []
        self._closed = False
        # The size and SHA-256 of each module file as its last download wrote it: an
        # image is verified from these, without reading it again.
        self._received: dict[str, tuple[int, str]] = {}
        self._last = -math.inf
        for fault in faults:
            self._add_fault(fault)

    @property
    def name(self) -> str:
        """The phone as the driver's messages name it (``Polycom CX600 00-04-F2-00-00-01``)."""
        return f"{self.phone.identity.display_name} {self.phone.identity.mac}"

    @property
    def directory(self) -> Path:
        """Where this phone's downloads are kept."""
        return self.workdir / self.phone.identity.mac.replace("-", "")

    @property
    def credentials(self) -> Credentials | None:
        """The credentials of the user signed in on the phone, or None before a sign-in."""
        return self._credentials

    @property
    def settled(self) -> bool:
        """Whether the phone has nothing left to do: idle (or off) with nothing scheduled."""
        if self.error is not None:
            return True
        return (
            self.powered_on_at is not None
            and self.phone.state in SETTLED
            and not self._scheduled
            and self._task is None
            and self._sign_in is None
        )

    # --- What the world does to the phone ---------------------------------------------------

    def power_on(self) -> None:
        """Plug the phone in: it gets the lease and boots (nothing if it is already on)."""
        if self.phone.state is not S.OFF:
            return
        now = self._now()
        if self.powered_on_at is None:
            self.powered_on_at = now
            for at, callback in self._at_power_on:
                self._schedule(now + at, callback)
            self._at_power_on.clear()
        self._feed(PowerOn(now, self.lease))

    def power_off(self) -> None:
        """Cut the power: whatever is in flight is dropped (nothing if the phone is off)."""
        if self.phone.state is S.OFF:
            return
        self._drop_in_flight()
        self._feed(PowerLost(self._now()))

    def sign_in(self, credentials: Credentials) -> None:
        """A user signs in; while the phone cannot take it (off, booting) it waits."""
        self._sign_in = credentials
        if self._can_sign_in():
            self._feed_sign_in()

    def sign_out(self) -> None:
        """The user signs out, if the phone is up and not signing in (a sign-in on the wire
        ends first; an unplugged phone keeps its user); a sign-in still waiting is dropped
        whatever the state."""
        self._sign_in = None
        state = self.phone.state
        if state in UP and state is not S.SIGNING_IN:
            self._offered = None
            self._credentials = None
            self._feed(SignOut(self._now()))

    def start_call(self) -> None:
        """A call starts, if the phone is up."""
        if self.phone.state in UP:
            self._feed(CallStarted(self._now()))

    def end_call(self) -> None:
        """A call ends, if one is in progress."""
        if self.phone.state in UP and self.phone.calls_in_progress:
            self._feed(CallEnded(self._now()))

    def use(self) -> None:
        """Someone uses the phone (keys, handset), if it is up."""
        if self.phone.state in UP:
            self._feed(UserActivity(self._now()))

    def set_clock_offset(self, offset: float) -> None:
        """The phone's own clock now reads ``offset`` seconds away from true time."""
        self._feed(ClockOffsetChanged(self._now(), offset))

    def at(self, t: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at phone time ``t`` (events it feeds are stamped ``t`` or later)."""
        self._schedule(t, callback)

    def after(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``seconds`` of phone time from now (a fault's second half)."""
        self._schedule(self._now() + seconds, callback)

    def when(self, trigger: Trigger, callback: Callable[[], None]) -> None:
        """Run ``callback`` when ``trigger`` fires (once)."""
        if trigger.on is not None:
            self._on_state.append((trigger, callback))
        elif self.powered_on_at is None:
            self._at_power_on.append((trigger.at or 0.0, callback))
        else:
            self._schedule(self.powered_on_at + (trigger.at or 0.0), callback)

    def _add_fault(self, fault: AnyFault) -> None:
        if isinstance(fault, BootFailure):
            if fault.after >= self.phone.settings.boot_time:
                raise FleetError(
                    f"{fault.describe()}: a boot takes {self.phone.settings.boot_time:g} s, "
                    "so the failure must come before it ends"
                )
            self._boot_failures.append(_BootFailures(fault, fault.times))
            return
        trigger = fault.trigger
        flash_time = self.phone.settings.flash_time
        if trigger.on is S.FLASHING and trigger.delay >= flash_time:
            raise FleetError(
                f"{fault.describe()}: installing takes {flash_time:g} s, so the fault must "
                "strike before it ends"
            )
        self.when(trigger, _striker(fault, self))

    async def upload_log(self, *, max_bytes: int = MAX_LOG_FILE_SIZE) -> str:
        """Upload the phone log as a CELog to the service the phone last used; where it went.

        A support engineer asks for it, so it is I/O done here and not in the sans-IO core
        (whose cycle never asks for it). It goes beside the last update check, on the same
        site, addresses and TLS checks: inside the internal URL's host, outside the
        external one with the signed-in user's NTLM credentials. Returns the service's
        answer (the stored file); raises ServiceStatusError with the service's reason
        when it refuses (415 type, 413 size, 401/403 no user), the last NetworkError when
        no server could be reached, and DriverError when the phone is off or knows no service.
        It works after ``aclose`` too: the core and its log outlive the driver's timers.
        """
        phone = self.phone
        if phone.state is S.OFF:
            raise DriverError(f"{self.name} is off: it cannot upload its log")
        check_url = phone.update_server
        if check_url is None:
            raise DriverError(f"{self.name} knows no update service to upload its log to")
        now = self._now()
        identity = phone.identity
        file_name = celog_file_name(identity, now)
        url = log_upload_url(check_url, file_name, identity.mac)
        body = render_celog(phone.log, identity, now, max_bytes=max_bytes).encode("utf-8")
        phone.log.add(
            now,
            LogLevel.INFO,
            LOG_TOPIC,
            f"uploading the log as {LOG_TYPE} {file_name} ({len(body)} bytes) to {url}",
            code=LogCode.LOG_UPLOADING,
            facts=LogFacts(url=url, size=len(body)),
        )
        try:
            stored, address = await self._post_log(url, body)
        except ServiceStatusError as exc:
            refused = type(exc)(
                f"{self.name}: the service refused its log: {exc}",
                status=exc.status,
                reason=exc.reason,
                diagnostics=exc.diagnostics,
                retry_after=exc.retry_after,
                body=exc.body,
            )
            diagnostics = parse_diagnostics(exc.diagnostics)
            facts = LogFacts(url=url, status=exc.status, diagnostics=diagnostics)
            code = LogCode.LOG_NOT_UPLOADED
            phone.log.add(self._now(), LogLevel.ERROR, LOG_TOPIC, str(exc), code=code, facts=facts)
            raise refused from None
        except (NetworkError, MalformedAnswerError) as exc:
            phone.log.add(
                self._now(),
                LogLevel.ERROR,
                LOG_TOPIC,
                f"log not uploaded: {exc}",
                code=LogCode.LOG_NOT_UPLOADED,
                facts=LogFacts(url=url),
            )
            raise
        host = urlsplit(url).hostname
        phone.log.add(
            self._now(),
            LogLevel.INFO,
            LOG_TOPIC,
            f"{host} ({address}): {stored}",
            code=LogCode.LOG_UPLOADED,
            facts=LogFacts(url=url, host=host, address=address),
        )
        return stored

    async def _post_log(self, url: str, body: bytes) -> tuple[str, str]:
        """POST the log to each address of the URL's host in turn; the answer and the address.

        As an update check walks them: a connection failure, a 5xx (maintenance, a broken
        server) or an unusable answer moves to the next address; a refusal ends the walk,
        since every front end of the pool would refuse alike.
        """
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        if is_address(host):
            addresses = [host]
        else:
            addresses = list(dict.fromkeys(await self._dns().resolve(host, "A")))
            if not addresses:
                raise NetworkError(f"the DNS answer for {host} holds no address")
        client = await self.network.open_client(self.address, self._dns())
        failure: NetworkError | MalformedAnswerError | None = None
        try:
            for address in addresses:
                try:
                    answer = await client.post_log(
                        url,
                        body,
                        address=address,
                        credentials=self._credentials,
                        clock_offset=self.phone.clock_offset,
                    )
                except ServiceStatusError as exc:
                    if exc.status < 500:
                        raise
                    failure = exc
                except (NetworkError, MalformedAnswerError) as exc:
                    failure = exc
                else:
                    return answer.body.decode("utf-8", "replace").strip(), address
                problem = f"{host} at {address}:{port}: {failure}"
                status = failure.status if isinstance(failure, ServiceStatusError) else None
                self.phone.log.add(
                    self._now(),
                    LogLevel.WARNING,
                    LOG_TOPIC,
                    problem,
                    code=LogCode.LOG_UPLOAD_FAILED,
                    facts=LogFacts(url=url, host=host, address=address, status=status),
                )
        finally:
            await self.network.close_client(client)
        assert failure is not None  # the DNS answer held at least one address
        raise failure

    # --- Waiting ----------------------------------------------------------------------------

    async def wait_for(
        self, condition: Condition, *, until: float | None = None, what: str = "the condition"
    ) -> float:
        """Wait until ``condition(driver)`` holds; the phone time it did.

        WaitTimeoutError when phone time ``until`` passes first; DriverError if the driver stops.
        """
        self._raise_if_failed()
        if condition(self):
            return self._now()
        future: asyncio.Future[float] = self._loop.create_future()
        waiter = (condition, future)
        self._waiters.append(waiter)
        deadline: asyncio.TimerHandle | None = None
        if until is not None:
            deadline = self._loop.call_at(
                self.clock.loop_time(until), self._expire, future, until, what
            )
        try:
            return await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if deadline is not None:
                deadline.cancel()

    async def wait_until(self, t: float) -> None:
        """Let phone time reach ``t`` (to act at an exact moment)."""
        future: asyncio.Future[None] = self._loop.create_future()
        handle = self._loop.call_at(self.clock.loop_time(t), _resolve, future)
        try:
            await future
        finally:
            handle.cancel()

    def _expire(self, future: asyncio.Future[float], until: float, what: str) -> None:
        if not future.done():
            future.set_exception(
                WaitTimeoutError(
                    f"{self.name}: {what} did not happen by {to_datetime(until).isoformat()} "
                    f"(the phone is {self.phone.state.value})"
                )
            )

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    # --- Shutting down ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the phone's timers and I/O and close its client; the core keeps its state."""
        self._closed = True
        self._stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- Feeding the core -------------------------------------------------------------------

    def _feed(self, event: Event) -> None:
        if self._closed or self.error is not None:
            return
        previous = self.phone.state
        try:
            actions = self.phone.handle(event)
            for action in actions:
                self._carry_out(action)
        except Exception as exc:
            # A refused event or a broken action is a bug in this driver or its caller:
            # stop this phone, and say so to whoever waits on it.
            self._fail(DriverError(f"{self.name}: stopped at {type(event).__name__}: {exc}"), exc)
            return
        self._changed(event.now, previous)

    def _changed(self, now: float, previous: PhoneState) -> None:
        state, version = self.phone.state, self.phone.current_version
        last = self.timeline[-1] if self.timeline else None
        if last is None or last.state is not state or last.version != version:
            self.timeline.append(Change(now, state, version))
        if self.phone.provisioning is not self._provisioned:
            self._provisioned = self.phone.provisioning
            self._credentials = self._offered
        if state is not previous:
            self._state_entered(state)
            if state not in EXCHANGES and self._task is None:
                self._release_client()
        if self._sign_in is not None and self._can_sign_in():
            self.after(0.0, self._feed_sign_in)
        self._notify()

    def _notify(self) -> None:
        for condition, future in list(self._waiters):
            if not future.done() and condition(self):
                future.set_result(self._now())
        if self.observer is not None:
            self.observer(self)

    def _state_entered(self, state: PhoneState) -> None:
        due = [(t, c) for t, c in self._on_state if t.on is state]
        if due:
            self._on_state = [(t, c) for t, c in self._on_state if t.on is not state]
            for trigger, callback in due:
                self.after(trigger.delay, callback)

    def _fail(self, error: DriverError, cause: BaseException) -> None:
        error.__cause__ = cause
        self.error = error
        self._stop()
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        if self.observer is not None:
            self.observer(self)

    def _stop(self) -> None:
        """Drop what is in flight, every timer and everything scheduled, and the client."""
        self._drop_in_flight()
        for handle in (*self._timers.values(), *self._scheduled.values()):
            handle.cancel()
        self._timers.clear()
        self._scheduled.clear()
        self._release_client()

    def _can_sign_in(self) -> bool:
        return self.phone.state in QUIET or self.phone.state in BUSY

    def _feed_sign_in(self) -> None:
        credentials = self._sign_in
        if credentials is not None and self._can_sign_in():
            self._sign_in = None
            self._offered = credentials
            self._feed(SignIn(self._now(), credentials))

    # --- Scheduling -------------------------------------------------------------------------

    def _now(self, due: float | None = None) -> float:
        """The phone time to stamp an event with: the clock's, never before the last one.

        A loop's clock can be coarser than phone time is fast (uvloop counts milliseconds;
        at a scale of 3600 that is 3.6 s), so a timer can run while the clock still reads
        a little before the time it was armed for: it is stamped with that time.
        """
        now = max(self.clock.now(), self._last, due if due is not None else -math.inf)
        self._last = now
        return now

    def _schedule(self, at: float, callback: Callable[[], None]) -> None:
        key = next(self._ids)
        self._scheduled[key] = self._loop.call_at(
            self.clock.loop_time(at), self._run_scheduled, key, callback, at
        )

    def _run_scheduled(self, key: int, callback: Callable[[], None], at: float) -> None:
        del self._scheduled[key]
        self._now(at)
        callback()
        # Even when nothing was fed, the phone may now be settled.
        self._notify()

    def _arm(self, timer: Timer, at: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        self._timers[timer] = self._loop.call_at(self.clock.loop_time(at), self._fire, timer, at)

    def _fire(self, timer: Timer, at: float) -> None:
        del self._timers[timer]
        self._feed(TimerFired(self._now(at), timer))

    # --- Carrying out actions ---------------------------------------------------------------

    def _carry_out(self, action: Action) -> None:
        match action:
            case Resolve(host=host, port=port):
                self._start(lambda: self._resolve(host, port))
            case SendRequest():
                self._start(lambda: self._send(action))
            case StartDownload():
                self._start(lambda: self._download(action))
            case VerifyCatalog():
                self._answer(self._verify_catalog(action))
            case VerifyImage():
                self._verify_image(action)
            case DiscardDownloads(modules=modules):
                self._discard(modules)
            case Flash():
                pass  # the slot is the core's; writing it takes Timer.FLASH
            case Boot(version=version):
                self._boot(version)
            case StartTimer(timer=timer, at=at):
                self._arm(timer, at)
            case CancelTimer(timer=timer):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case _:
                raise DriverError(f"{self.name}: no way to carry out {action!r}")

    def _start(self, work: Callable[[], Coroutine[Any, Any, Event]]) -> None:
        # The coroutine is made once the task runs: a task cancelled before its first step
        # (the phone stopped) then leaves no coroutine behind that was never awaited.
        self._op += 1
        task = self._loop.create_task(self._run(self._op, work))
        self._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, op: int, work: Callable[[], Coroutine[Any, Any, Event]]) -> None:
        try:
            event = await work()
        except Exception as exc:
            if op == self._op:
                self._fail(DriverError(f"{self.name}: I/O failed unexpectedly: {exc!r}"), exc)
            return
        self._deliver(op, event)

    def _answer(self, event: Event) -> None:
        """Feed a result computed at once, after the rest of the current batch of actions."""
        self._op += 1
        self._loop.call_soon(self._deliver_later, self._op, event)

    def _deliver_later(self, op: int, event: Event) -> None:
        # Stamped again: a timer may have been fed since the result was computed.
        self._deliver(op, dataclasses.replace(event, now=self._now()))

    def _deliver(self, op: int, event: Event) -> None:
        if op != self._op:
            return  # asked before a power loss or restart: nobody waits for it any more
        self._task = None
        self._feed(event)

    def _drop_in_flight(self) -> None:
        self._op += 1
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def _boot(self, version: str) -> None:
        self._drop_in_flight()
        self._release_client()
        self.boots += 1
        running = self.phone.current_version
        for failures in self._boot_failures:
            if failures.left and failures.fault.spoils(version, running):
                failures.left -= 1
                self.after(failures.fault.after, self._boot_failer(self.boots, failures.fault))
                break

    def _boot_failer(self, boot: int, fault: BootFailure) -> Callable[[], None]:
        def fail() -> None:
            # Only the boot it was meant for: the phone may have lost power meanwhile.
            if self.boots == boot and self.phone.state is S.BOOTING:
                self._feed(BootFailed(self._now(), fault.reason))

        return fail

    # --- I/O --------------------------------------------------------------------------------

    async def _https(self) -> HTTPSClient:
        if self._client is None:
            self._client = await self.network.open_client(self.address, self._dns())
        return self._client

    def _dns(self) -> Resolver:
        if self._resolver is None:
            self._resolver = self.network.resolver(self.address)
        return self._resolver

    def _release_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            task = self._loop.create_task(self.network.close_client(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, host: str, port: int) -> Event:
        try:
            addresses = await self._dns().resolve(host, "A")
        except ResolutionError as exc:
            return ResolutionFailed(self._now(), host, str(exc), answer=exc.answer)
        # Asked once the answer is in: the server may have closed it meanwhile.
        kept = self._client.kept_address(host, port) if self._client is not None else None
        return Resolved(self._now(), host, tuple(addresses), kept)

    async def _send(self, action: SendRequest) -> Event:
        target = action.target
        try:
            client = await self._https()
            answer = await client.post_xml(
                target.url,
                action.body,
                address=target.address,
                credentials=action.credentials,
                clock_offset=target.clock_offset,
            )
        except ServiceStatusError as exc:
            return status_event(self._now(), exc)
        except (NetworkError, MalformedAnswerError) as exc:
            return connection_failed(self._now(), exc)
        return ResponseReceived(self._now(), answer.status, answer.body)

    async def _download(self, action: StartDownload) -> Event:
        target = action.target
        path = self._file(action.module)
        self._received.pop(action.module, None)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            client = await self._https()
            result = await client.download(
                target.url,
                path,
                address=target.address,
                offset=action.offset,
                etag=action.etag,
                credentials=action.credentials,
                clock_offset=target.clock_offset,
            )
        except (NetworkError, MalformedAnswerError, OSError) as exc:
            return download_failed(self._now(), exc, action.module, path)
        self.bytes_downloaded += result.received
        self.files_downloaded += 1
        if result.sha256 is not None:
            self._received[action.module] = (result.size, result.sha256)
        return DownloadFinished(self._now(), result.size, result.etag)

    def _verify_catalog(self, action: VerifyCatalog) -> Event:
        return catalog_event(
            self._now(), self._file(action.module), self.network.vendor_certificate, action
        )

    def _verify_image(self, action: VerifyImage) -> None:
        entry = CatalogEntry(action.module, action.size, action.sha256)
        path = self._file(action.module)
        received = self._received.get(action.module)
        if received is not None:
            # Hashed as it was written: the same bytes, without reading them again.
            self._answer(image_event(self._now(), _problem(check_received, *received, entry)))
        elif action.size < self.hash_in_thread_from:
            self._answer(image_event(self._now(), _problem(check_image_file, path, entry)))
        else:
            self._start(lambda: self._verify_image_in_thread(path, entry))

    async def _verify_image_in_thread(self, path: Path, entry: CatalogEntry) -> Event:
        problem = await asyncio.to_thread(_problem, check_image_file, path, entry)
        return image_event(self._now(), problem)

    def _discard(self, modules: tuple[str, ...]) -> None:
        for module in modules:
            self._received.pop(module, None)
            self._file(module).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only once it is empty: thousands of phones, few folders

    def _file(self, module: str) -> Path:
        return self.directory / module


@dataclass
class _BootFailures:
    """A boot failure fault and how many more boots it spoils."""

    fault: BootFailure
    left: int


def log_upload_url(check_url: str, file_name: str, mac: str) -> str:
    """The CELog upload URL of the site of ``check_url`` (same host, port and handler folder)."""
    parts = urlsplit(check_url)
    path = posixpath.join(posixpath.dirname(parts.path) or "/", LOG_HANDLER)
    query = urlencode({"type": LOG_TYPE, "file": file_name, "mac": mac})
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def _striker(fault: Fault, target: PhoneDriver) -> Callable[[], None]:
    return lambda: fault.strike(target)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def status_event(now: float, exc: ServiceStatusError) -> ResponseReceived:
    """What an error status the service answered tells the core."""
    return ResponseReceived(now, exc.status, exc.body, exc.diagnostics, exc.retry_after)


def connection_failed(now: float, exc: NetworkError | MalformedAnswerError) -> ConnectionFailed:
    """What a failed exchange (no connection, TLS, a malformed answer) tells the core."""
    certificate = exc.kind if isinstance(exc, CertificateError) else None
    return ConnectionFailed(now, str(exc), certificate=certificate)


def download_failed(
    now: float, exc: NetworkError | MalformedAnswerError | OSError, module: str, path: Path
) -> Event:
    """What a download of ``module`` into ``path`` that did not finish tells the core: cut
    (it can resume), an error status, a failed exchange, or a file it could not write."""
    if isinstance(exc, DownloadInterruptedError):
        return DownloadInterrupted(now, exc.offset, exc.etag, str(exc))
    if isinstance(exc, ServiceStatusError):
        return status_event(now, exc)
    if isinstance(exc, NetworkError | MalformedAnswerError):
        return connection_failed(now, exc)
    return ConnectionFailed(now, f"cannot write {module} to {path}: {exc.strerror or exc}")


def catalog_event(
    now: float, path: Path, certificate: Callable[[str], bytes], action: VerifyCatalog
) -> Event:
    """Verify the catalog downloaded to ``path`` as ``action`` asks, with the certificate of
    its vendor; CatalogVerified, or VerificationFailed saying why."""
    try:
        catalog = verify_catalog(
            path.read_bytes(),
            certificate(action.vendor),
            vendor=action.vendor,
            model=action.model,
            revision=action.revision,
            locale=action.locale,
            version=action.version,
        )
    except OSError as exc:
        return VerificationFailed(now, f"cannot read {action.module}: {exc.strerror}")
    except FirmwareError as exc:
        return VerificationFailed(now, str(exc), problem=exc.problem)
    return CatalogVerified(now, catalog.files)


def _problem(check: Callable[..., object], *args: object) -> FirmwareError | None:
    """What ``check(*args)`` finds wrong with an image (its FirmwareError), or None; safe to
    run in a worker thread."""
    try:
        check(*args)
    except FirmwareError as exc:
        return exc
    return None


def image_event(now: float, problem: FirmwareError | None) -> Event:
    """ImageVerified, or VerificationFailed with ``problem``."""
    if problem is None:
        return ImageVerified(now)
    return VerificationFailed(now, str(problem), problem=problem.problem)
