"""The phone's sans-IO core: events in, actions out, no sockets, no asyncio, no clock.

`Phone.handle(event)` checks the event against the transition table (emulator/states.py),
updates the phone and returns the actions a driver must carry out. Time only comes in as
``event.now``; randomness (back-off jitter) only from the seeded ``random.Random`` the
phone is given, so a run replays exactly.

How a thin driver runs it (one phone; a fleet is many of these on one loop):

- Make the phone, then feed ``PowerOn(clock.now(), lease)``.
- Carry out each returned action, then feed back what happened, stamped with
  ``clock.now()``: Resolve → Resolved / ResolutionFailed; SendRequest → ResponseReceived /
  ConnectionFailed; StartDownload → DownloadFinished / DownloadInterrupted /
  ResponseReceived / ConnectionFailed; VerifyCatalog → CatalogVerified / VerificationFailed
  (run firmware.verify_catalog with the vendor certificate of the lease); VerifyImage →
  ImageVerified / VerificationFailed (firmware.check_image_file); Flash and Boot need no
  answer (their timers do); DiscardDownloads needs none.
- StartTimer: ``loop.call_at(clock.loop_time(at), ...)`` feeding ``TimerFired(now, timer)``
  (replacing any handle of that timer); CancelTimer: cancel the handle. Feed events from
  loop callbacks and task completions on the loop thread, so a cancelled timer never fires.
- The core has at most one request out at a time; on PowerLost and Boot the driver drops
  whatever is in flight and stops its timers (the core also says CancelTimer for each).
- Faults are events the world delivers: PowerLost during FLASHING (the slot being written
  is left damaged), BootFailed during BOOTING (the phone returns to its backup),
  ClockOffsetChanged (the driver checks certificates against now + `clock_offset`), and
  CallStarted/CallEnded (a call holds off the restart).

An event the table does not allow, or one that does not answer what the core asked
(a DNS answer for another name, a call ending with none in progress), raises
ProtocolError and leaves the phone exactly as it was.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType

from emulator.clock import to_datetime
from emulator.codec import (
    DownloadOffer,
    Provisioning,
    UpdateAnswer,
    parse_provisioning,
    parse_update_response,
)
from emulator.codec import build_update_request as _build_request
from emulator.errors import FirmwareProblem, MalformedAnswerError, ProtocolError
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
    Purpose,
    ResolutionFailed,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    SignIn,
    SignOut,
    StartDownload,
    StartTimer,
    Target,
    Timer,
    TimerFired,
    UserActivity,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.firmware import CatalogEntry
from emulator.lease import SIGN_IN_PATH, Lease
from emulator.models import CATALOG_MODULE, FACTORY_TIMESTAMP, IMAGE_MODULE, DeviceIdentity
from emulator.phonelog import (
    NO_FACTS,
    CheckTrigger,
    LogCode,
    LogFacts,
    LogLevel,
    PhoneLog,
    format_duration,
    format_time,
)
from emulator.routes import (
    Attempt,
    Exhausted,
    Lookup,
    Phase,
    Refused,
    Route,
    RouteKind,
    Step,
    Succeeded,
    Walk,
)
from emulator.settings import PhoneSettings
from emulator.slots import ImageSlots, Slot, SlotName, SlotStatus
from emulator.states import BUSY, TRANSITIONS, PhoneState, event_key, key_name

S = PhoneState
TIME_SLACK = 0.01
"""Seconds a timer may fire early, or time may step back, from float rounding in a driver."""


@dataclass
class _Download:
    """How much of one module the phone has: for resume, per version."""

    version: str
    offset: int = 0
    etag: str | None = None
    complete: bool = False


@dataclass
class _Update:
    """The update being fetched: the version, what the service offered, the route it came by."""

    version: str
    answer: UpdateAnswer
    kind: RouteKind
    module: str = CATALOG_MODULE


@dataclass(frozen=True)
class _Retry:
    """A failed exchange to try again at ``at``."""

    purpose: Purpose
    at: float


class Phone:
    """One phone: identity, two image slots, what it was provisioned with, and what it is doing."""

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        rng: random.Random,
        settings: PhoneSettings | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings or PhoneSettings()
        self.log = PhoneLog()
        self._rng = rng
        self._state = S.OFF
        self._now: float | None = None
        # Kept across power cycles, as a phone keeps them in flash.
        self._slots = ImageSlots(identity.model.factory_version)
        self._provisioning: Provisioning | None = None
        self._credentials: Credentials | None = None
        self._user: str | None = None
        self._last_update: float | None = None
        self._failed_versions: dict[str, float] = {}
        self._clock_offset = 0.0
        self._update_server: str | None = None
        # Lost with power.
        self._lease: Lease | None = None
        self._timers: dict[Timer, float] = {}
        self._walk: Walk | None = None
        self._update: _Update | None = None
        self._downloads: dict[str, _Download] = {}
        self._staged: SlotName | None = None
        # When the new image was ready (its download verified, or the backup chosen) or the
        # phone was last in use, the later: the five quiet minutes before a restart count
        # from here, installing included.
        self._quiet_since: float | None = None
        self._booting: SlotName | None = None
        self._boot_is_update = False
        self._calls = 0
        # A check owed once the current activity ends, and why (a sign-in, or a periodic
        # check that fell due meanwhile).
        self._check_due: CheckTrigger | None = None
        self._retry: _Retry | None = None
        self._retries = 0
        self._pending_sign_in: Credentials | None = None
        self._signing_in: Credentials | None = None

    # --- What a driver, a screen or a test reads -------------------------------------------

    @property
    def state(self) -> PhoneState:
        """What the phone is doing."""
        return self._state

    @property
    def slots(self) -> Mapping[SlotName, Slot]:
        """Both image slots."""
        return self._slots.snapshot()

    @property
    def active_slot(self) -> SlotName:
        """The slot of the image the phone runs (or last ran)."""
        return self._slots.active

    @property
    def current_version(self) -> str:
        """The version of the running image."""
        return self._slots.current_version

    @property
    def backup_version(self) -> str | None:
        """The version kept in the other slot, when it holds a usable image."""
        return self._slots.backup_version

    @property
    def staged_version(self) -> str | None:
        """The version installed and waiting for the restart, if any."""
        return None if self._staged is None else self._slots[self._staged].version

    @property
    def last_update(self) -> float | None:
        """When the phone last started a new version (phone time), or None."""
        return self._last_update

    @property
    def provisioning(self) -> Provisioning | None:
        """The in-band provisioning kept from the last sign-in, if any."""
        return self._provisioning

    @property
    def signed_in_user(self) -> str | None:
        """The signed-in user's URI, if a user signed in."""
        return self._user

    @property
    def clock_offset(self) -> float:
        """How far the phone's own clock is from true time, in seconds."""
        return self._clock_offset

    @property
    def lease(self) -> Lease | None:
        """The DHCP lease of this power cycle."""
        return self._lease

    @property
    def update_server(self) -> str | None:
        """The update-check URL that last answered, else the one the phone would try first."""
        if self._update_server is not None:
            return self._update_server
        if self._provisioning is not None or self._lease is not None:
            routes = self._check_routes()
            return routes[0].url if routes else None
        return None

    @property
    def timers(self) -> Mapping[Timer, float]:
        """The armed timers and the phone time each fires at."""
        return MappingProxyType(dict(self._timers))

    @property
    def calls_in_progress(self) -> int:
        """How many calls are in progress."""
        return self._calls

    @property
    def failed_versions(self) -> Mapping[str, float]:
        """Versions that did not start on this phone, and when."""
        return MappingProxyType(dict(self._failed_versions))

    def download_progress(self, module: str) -> tuple[int, str | None] | None:
        """How much of ``module`` the phone holds (offset, ETag), if it has started it."""
        download = self._downloads.get(module)
        return None if download is None else (download.offset, download.etag)

    # --- The one entry point ----------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; the actions the driver must carry out, in order."""
        key = event_key(event)
        allowed = TRANSITIONS.get((self._state, key))
        if allowed is None:
            raise ProtocolError(self._state.name, key_name(key))
        now = self._event_time(event)
        self._check_answers(event)
        if isinstance(event, TimerFired):
            del self._timers[event.timer]
        actions = self._dispatch(event, now)
        self._now = now
        assert self._state in allowed, f"{key_name(key)} led to {self._state.name}"
        return actions

    def _event_time(self, event: Event) -> float:
        """The time of an event, checked: finite, not earlier than the last, timers on time."""
        now = event.now
        if not math.isfinite(now):
            raise self._protocol_error(event, f"time {now} is not a finite number")
        if self._now is not None:
            if now < self._now - TIME_SLACK:
                raise self._protocol_error(event, f"time went backwards: {now} after {self._now}")
            now = max(now, self._now)
        if isinstance(event, TimerFired):
            at = self._timers.get(event.timer)
            if at is None:
                raise self._protocol_error(event, f"timer {event.timer.name} is not running")
            if now < at - TIME_SLACK:
                raise self._protocol_error(event, f"timer fired at {now}, before its time {at}")
            now = max(now, at)
        return now

    def _check_answers(self, event: Event) -> None:
        """Refuse an event that does not answer what the core asked for (before any change)."""
        if isinstance(event, Resolved | ResolutionFailed):
            walk = self._walking
            if walk.phase is not Phase.RESOLVING:
                raise self._protocol_error(event, "no DNS lookup is in progress")
            if event.host.rstrip(".").lower() != walk.route.host:
                raise self._protocol_error(
                    event, f"answer for {event.host} but the phone looked up {walk.route.host}"
                )
        elif isinstance(
            event, ConnectionFailed | ResponseReceived | DownloadFinished | DownloadInterrupted
        ):
            walk = self._walking
            if walk.phase is not Phase.REQUESTING:
                raise self._protocol_error(event, "no request is in progress")
            is_download = walk.purpose is Purpose.DOWNLOAD
            if isinstance(event, ResponseReceived) and is_download and event.status in (200, 206):
                raise self._protocol_error(
                    event, "a download's 200/206 comes as DownloadFinished or DownloadInterrupted"
                )
            if isinstance(event, DownloadFinished | DownloadInterrupted):
                size = event.size if isinstance(event, DownloadFinished) else event.offset
                if size < 0:
                    raise self._protocol_error(event, f"a file cannot hold {size} bytes")
        elif isinstance(event, CallEnded) and self._calls == 0:
            raise self._protocol_error(event, "no call is in progress")

    @property
    def _walking(self) -> Walk:
        """The walk of the exchange in progress (there is one in every walking state)."""
        assert self._walk is not None
        return self._walk

    def _protocol_error(self, event: Event, problem: str) -> ProtocolError:
        return ProtocolError(self._state.name, key_name(event_key(event)), problem)

    def _dispatch(self, event: Event, now: float) -> list[Action]:
        match event:
            case PowerOn(lease=lease):
                return self._power_on(now, lease)
            case PowerLost():
                return self._power_lost(now)
            case TimerFired(timer=timer):
                return self._timer_fired(now, timer)
            case BootFailed(reason=reason):
                return self._boot_failed(now, reason)
            case Resolved(addresses=addresses, kept=kept):
                return self._step(now, self._walking.resolved(now, addresses, kept))
            case ResolutionFailed(reason=reason, answer=answer):
                return self._step(now, self._walking.resolution_failed(now, reason, answer))
            case ConnectionFailed(reason=reason, certificate=certificate):
                return self._step(now, self._walking.connection_failed(now, reason, certificate))
            case ResponseReceived():
                return self._response(now, event)
            case DownloadFinished(size=size, etag=etag):
                return self._download_finished(now, size, etag)
            case DownloadInterrupted():
                return self._download_interrupted(now, event)
            case CatalogVerified(files=files):
                return self._catalog_verified(now, files)
            case ImageVerified():
                return self._image_verified(now)
            case VerificationFailed(reason=reason, problem=problem):
                return self._refuse_update(now, reason, problem)
            case SignIn(credentials=credentials):
                return self._sign_in(now, credentials)
            case SignOut():
                return self._sign_out(now)
            case CallStarted():
                return self._call_started(now)
            case CallEnded():
                return self._call_ended(now)
            case UserActivity():
                return self._used(now)
            case ClockOffsetChanged(offset=offset):
                return self._clock_changed(now, offset)
        raise AssertionError(f"no handler for {type(event).__name__}")  # pragma: no cover

    # --- Power, boot, restart ---------------------------------------------------------------

    def _power_on(self, now: float, lease: Lease) -> list[Action]:
        self._lease = lease
        dns = f"{lease.dns[0]}:{lease.dns[1]}"
        self._info(
            now,
            "power",
            f"power on; DHCP lease: domain {lease.domain}, DNS server {dns}, "
            f"SIP server {lease.sip_server}",
            LogCode.POWER_ON,
        )
        backup = self._slots[self._slots.inactive]
        if backup.status in (SlotStatus.CORRUPT, SlotStatus.FAILED):
            self._warn(
                now,
                "image",
                f"slot {self._slots.inactive.value} holds {backup.describe()}: "
                "the phone has no backup image until its next update",
                LogCode.BACKUP_DAMAGED,
                LogFacts(version=backup.version, slot=self._slots.inactive),
            )
        slot = self._slots.bootable()
        if slot is None:
            message = "no slot holds an image that can start; the phone stays off"
            self._error(now, "image", message, LogCode.NO_IMAGE_STARTS)
            self._lease = None
            return []
        return self._boot(now, slot, update=False)

    def _boot(self, now: float, slot: SlotName, *, update: bool) -> list[Action]:
        version = self._slots[slot].version
        assert version is not None
        self._state = S.BOOTING
        self._booting = slot
        self._boot_is_update = update
        message = f"starting image {version} from slot {slot.value}"
        self._info(now, "power", message, LogCode.STARTING, LogFacts(version=version, slot=slot))
        return [Boot(slot, version), self._arm(Timer.BOOT, now + self.settings.boot_time)]

    def _booted(self, now: float) -> list[Action]:
        slot = self._booting
        assert slot is not None
        previous = self.current_version
        self._slots.activate(slot)
        self._booting = None
        if self._boot_is_update:
            self._last_update = now
            self._info(
                now,
                "update",
                f"update complete: now running {self.current_version}; "
                f"{previous} kept as the backup in slot {slot.other.value}",
                LogCode.UPDATED,
                LogFacts(version=self.current_version, previous=previous, slot=slot),
            )
        running = LogFacts(version=self.current_version, slot=slot)
        self._info(now, "power", f"running {self.current_version}", LogCode.RUNNING, running)
        if not self._updates_enabled:
            message = "device update is disabled by in-band provisioning"
            self._info(now, "update", message, LogCode.UPDATES_DISABLED)
            return self._settle(now)
        return self._start_check(now, CheckTrigger.POWER_ON)

    def _boot_failed(self, now: float, reason: str) -> list[Action]:
        slot = self._booting
        assert slot is not None
        failed = self._slots.mark_failed(slot)
        assert failed.version is not None
        self._failed_versions[failed.version] = now
        self._error(
            now,
            "power",
            f"image {failed.version} in slot {slot.value} did not start: {reason}",
            LogCode.BOOT_FAILED,
            LogFacts(version=failed.version, slot=slot),
        )
        actions = self._cancel(Timer.BOOT)
        other = slot.other
        if self._slots[other].usable:
            self._warn(
                now,
                "power",
                f"returning to the backup image {self._slots[other].version} in slot {other.value}",
                LogCode.RETURNING_TO_BACKUP,
                LogFacts(version=self._slots[other].version, slot=other),
            )
            return actions + self._boot(now, other, update=False)
        message = "no other image can start; the phone stays off"
        self._error(now, "power", message, LogCode.NO_IMAGE_STARTS)
        self._state = S.OFF
        self._booting = None
        self._lease = None
        return actions

    def _power_lost(self, now: float) -> list[Action]:
        if self._state is S.FLASHING:
            damaged = self._slots.damage_write()
            self._error(
                now,
                "power",
                f"power lost while writing {damaged.version} into slot "
                f"{self._slots.inactive.value}: that slot is damaged; the phone keeps "
                f"running {self.current_version}",
                LogCode.POWER_CUT_INSTALLING,
                LogFacts(version=damaged.version, slot=self._slots.inactive),
            )
        else:
            message = f"power lost while {self._state.value}"
            self._warn(now, "power", message, LogCode.POWER_LOST)
        actions = self._reset_volatile()
        self._state = S.OFF
        self._lease = None
        return actions

    def _reset_volatile(self) -> list[Action]:
        """Forget what power loss or a restart wipes; the actions that stop it in the driver."""
        actions: list[Action] = [CancelTimer(timer) for timer in self._timers]
        if self._downloads:
            actions.append(DiscardDownloads(tuple(self._downloads)))
        self._timers.clear()
        self._walk = None
        self._update = None
        self._downloads.clear()
        self._staged = None
        self._quiet_since = None
        self._booting = None
        self._calls = 0
        self._check_due = None
        self._retry = None
        self._retries = 0
        self._pending_sign_in = None
        self._signing_in = None
        return actions

    def _restart(self, now: float) -> list[Action]:
        staged = self._staged
        assert staged is not None
        self._info(
            now,
            "update",
            f"no call or use for {format_duration(self.settings.idle_wait)}: restarting into "
            f"{self._slots[staged].version}",
            LogCode.RESTARTING,
            LogFacts(version=self._slots[staged].version, slot=staged),
        )
        return self._reset_volatile() + self._boot(now, staged, update=True)

    # --- Timers -----------------------------------------------------------------------------

    def _timer_fired(self, now: float, timer: Timer) -> list[Action]:
        match timer:
            case Timer.BOOT:
                return self._booted(now)
            case Timer.FLASH:
                return self._flashed(now)
            case Timer.REBOOT:
                return self._restart(now)
            case Timer.RETRY:
                return self._retry_now(now)
            case Timer.CHECK:
                return self._check_timer(now)

    def _check_timer(self, now: float) -> list[Action]:
        if self._state in (S.IDLE, S.BACKING_OFF):
            return self._start_check(now, CheckTrigger.PERIODIC)
        if self._check_due is None:  # a sign-in's check, already owed, covers this one
            self._check_due = CheckTrigger.DUE
        if self._state is S.AWAITING_REBOOT:
            message = "periodic check postponed: the restart will check"
        else:
            message = f"periodic check due; it waits until {self._state.value} ends"
        self._info(now, "update", message, LogCode.CHECK_POSTPONED)
        return []

    def _retry_now(self, now: float) -> list[Action]:
        retry = self._retry
        assert retry is not None
        self._retry = None
        message = f"retrying the {retry.purpose.value}"
        self._info(now, "update", message, LogCode.RETRYING, LogFacts(purpose=retry.purpose))
        if retry.purpose is Purpose.DOWNLOAD and self._update is not None:
            return self._start_download(now)
        return self._start_check(now, CheckTrigger.RETRY, scheduled=False)

    def _arm(self, timer: Timer, at: float) -> StartTimer:
        self._timers[timer] = at
        return StartTimer(timer, at)

    def _cancel(self, timer: Timer) -> list[Action]:
        if self._timers.pop(timer, None) is None:
            return []
        return [CancelTimer(timer)]

    # --- Settling: what the phone owes once an activity ends --------------------------------

    def _settle(self, now: float) -> list[Action]:
        if self._state is S.SIGNING_IN:
            # A sign-in is use, and like a call it holds the restart until it ends.
            self._quiet_since = now
        self._walk = None
        if self._pending_sign_in is not None:
            credentials, self._pending_sign_in = self._pending_sign_in, None
            return self._start_sign_in(now, credentials)
        if self._staged is not None:
            self._state = S.AWAITING_REBOOT
            return self._hold_or_arm_restart(now)
        if self._retry is not None:
            self._state = S.BACKING_OFF
            return [self._arm(Timer.RETRY, max(now, self._retry.at))]
        if self._check_due is not None and self._updates_enabled:
            return self._start_check(now, self._check_due)
        self._check_due = None
        self._state = S.IDLE
        return []

    def _hold_or_arm_restart(self, now: float) -> list[Action]:
        """Restart idle_wait after the phone was last used, or hold it during a call."""
        if self._calls:
            return self._cancel(Timer.REBOOT)
        quiet_since = now if self._quiet_since is None else self._quiet_since
        return [self._arm(Timer.REBOOT, max(now, quiet_since + self.settings.idle_wait))]

    # --- Calls, use, clock ------------------------------------------------------------------

    def _call_started(self, now: float) -> list[Action]:
        self._calls += 1
        self._info(now, "call", "call started", LogCode.CALL_STARTED)
        if self._state is S.AWAITING_REBOOT:
            self._info(now, "update", "restart held: a call is in progress", LogCode.RESTART_HELD)
            return self._cancel(Timer.REBOOT)
        return []

    def _call_ended(self, now: float) -> list[Action]:
        self._calls -= 1
        self._quiet_since = now
        self._info(now, "call", "call ended", LogCode.CALL_ENDED)
        if self._state is S.AWAITING_REBOOT and not self._calls:
            return self._restart_moved(now)
        return []

    def _used(self, now: float) -> list[Action]:
        self._quiet_since = now
        if self._state is S.AWAITING_REBOOT and not self._calls:
            return self._restart_moved(now)
        return []

    def _restart_moved(self, now: float) -> list[Action]:
        actions = self._hold_or_arm_restart(now)
        at = self._timers[Timer.REBOOT]
        message = f"phone in use: the restart waits until {format_time(at)}"
        self._info(now, "update", message, LogCode.RESTART_MOVED, LogFacts(at=at))
        return actions

    def _clock_changed(self, now: float, offset: float) -> list[Action]:
        self._clock_offset = offset
        self._warn(
            now,
            "clock",
            f"phone clock now reads {format_time(now + offset)} ({offset:+.0f} s from true "
            "time); certificates are checked against it",
            LogCode.CLOCK_CHANGED,
            LogFacts(clock_offset=offset),
        )
        return []

    # --- Sign-in ----------------------------------------------------------------------------

    def _sign_in(self, now: float, credentials: Credentials) -> list[Action]:
        if self._state in BUSY:
            self._pending_sign_in = credentials
            self._info(
                now,
                "sign-in",
                f"sign-in of {credentials.account} starts when {self._state.value} ends",
                LogCode.SIGN_IN_WAITING,
                LogFacts(user=credentials.account),
            )
            return []
        actions = self._cancel(Timer.RETRY) + self._cancel(Timer.REBOOT)
        return actions + self._start_sign_in(now, credentials)

    def _start_sign_in(self, now: float, credentials: Credentials) -> list[Action]:
        lease = self._lease
        assert lease is not None
        self._signing_in = credentials
        external = self._provisioning.external_url if self._provisioning else None
        # The lease names no external web server; before the first sign-in the discovery
        # name stands in for it (outside, DNS points it at the edge).
        external_host = Route(external, RouteKind.EXTERNAL).host if external else None
        routes = (
            Route(lease.url(lease.sip_server, SIGN_IN_PATH), RouteKind.INTERNAL),
            Route(
                lease.url(external_host or lease.discovery_host, SIGN_IN_PATH), RouteKind.EXTERNAL
            ),
        )
        self._info(
            now,
            "sign-in",
            f"signing in {credentials.account} at {routes[0].url}",
            LogCode.SIGNING_IN,
            LogFacts(user=credentials.account, url=routes[0].url),
        )
        return self._begin_walk(now, Purpose.SIGN_IN, routes)

    def _sign_out(self, now: float) -> list[Action]:
        """Forget the user, their credentials and a sign-in waiting to start (an outside
        phone's checks are then refused); the in-band provisioning stays, as a phone keeps
        it in flash. With nobody signed in it changes nothing."""
        pending = self._pending_sign_in
        user = self._user or (pending.account if pending is not None else None)
        if user is None:
            return []
        self._user = None
        self._credentials = None
        self._pending_sign_in = None
        self._info(
            now,
            "sign-in",
            f"{user} signed out; the phone keeps its in-band provisioning",
            LogCode.SIGNED_OUT,
            LogFacts(user=user),
        )
        return []

    def _signed_in(self, now: float, provisioning: Provisioning) -> list[Action]:
        credentials = self._signing_in
        lease = self._lease
        assert credentials is not None
        assert lease is not None
        self._signing_in = None
        self._provisioning = provisioning
        self._credentials = credentials
        self._user = provisioning.user_uri or f"{credentials.username}@{lease.sip_domain}"
        self._update_server = None
        enabled = "enabled" if provisioning.enabled else "disabled"
        self._info(
            now,
            "sign-in",
            f"signed in as {self._user}; in-band provisioning: internal URL "
            f"{provisioning.internal_url or '(none)'}, external URL "
            f"{provisioning.external_url or '(none)'}, device update {enabled}, "
            f"check every {format_duration(self._check_interval)}",
            LogCode.SIGNED_IN,
            LogFacts(user=self._user, interval=self._check_interval),
        )
        self._retry = None
        self._retries = 0
        if not provisioning.enabled:
            self._check_due = None
            return self._cancel(Timer.CHECK) + self._settle(now)
        # The check at sign-in runs as soon as nothing else is in progress.
        self._check_due = CheckTrigger.SIGN_IN
        return self._settle(now)

    # --- Update checks ----------------------------------------------------------------------

    @property
    def _updates_enabled(self) -> bool:
        return self._provisioning is None or self._provisioning.enabled

    @property
    def _check_interval(self) -> float:
        configured = self._provisioning.check_interval if self._provisioning else None
        return configured or self.settings.check_interval

    def _check_routes(self) -> tuple[Route, ...]:
        provisioning = self._provisioning
        if provisioning is not None:
            urls = (
                (provisioning.internal_url, RouteKind.INTERNAL),
                (provisioning.external_url, RouteKind.EXTERNAL),
            )
            return tuple(Route(url, kind) for url, kind in urls if url)
        assert self._lease is not None
        return (Route(self._lease.discovery_url, RouteKind.DISCOVERY),)

    def _start_check(
        self, now: float, trigger: CheckTrigger, *, scheduled: bool = True
    ) -> list[Action]:
        actions = self._cancel(Timer.RETRY)
        self._retry = None
        self._update = None
        self._check_due = None
        if scheduled:
            self._retries = 0
            actions.append(self._arm(Timer.CHECK, now + self._check_interval))
        routes = self._check_routes()
        source = "in-band provisioning" if self._provisioning else "DNS discovery"
        self._info(
            now,
            "update",
            f"checking for updates ({_check_words(trigger, self._check_interval)}) with "
            f"{self.current_version}; service from {source}: {routes[0].url}",
            LogCode.CHECKING,
            LogFacts(
                version=self.current_version,
                trigger=trigger,
                interval=self._check_interval,
                route=routes[0].kind,
                url=routes[0].url,
            ),
        )
        return actions + self._begin_walk(now, Purpose.CHECK, routes)

    def _checked(self, now: float, answer: UpdateAnswer) -> list[Action]:
        walk = self._walking
        self._update_server = walk.route.url
        self._retries = 0
        current = self.current_version
        version = answer.version
        offer = replace(walk.facts(), version=version, previous=current)
        if version is None:
            message = f"{walk.where} has no update for {current}"
            facts = replace(walk.facts(), version=current)
            self._info(now, "update", message, LogCode.UP_TO_DATE, facts)
            return self._settle(now)
        if version == current:
            message = f"the service offers {version}, which is running"
            self._info(now, "update", message, LogCode.UP_TO_DATE, offer)
            return self._settle(now)
        if version in self._failed_versions:
            when = format_time(self._failed_versions[version])
            self._warn(
                now,
                "update",
                f"the service offers {version}, which did not start on this phone at {when}; "
                "not installing it again",
                LogCode.NOT_REINSTALLED,
                offer,
            )
            return self._settle(now)
        backup = self._slots.inactive
        if self._slots.backup_version == version:
            self._info(
                now,
                "update",
                f"the service offers {version}, the backup image in slot {backup.value}: "
                "switching to it without a download",
                LogCode.BACKUP_OFFERED,
                replace(offer, slot=backup),
            )
            self._staged = backup
            # Nothing to download: the quiet minutes count from now, not from a use before.
            self._quiet_since = now
            return self._settle(now)
        missing = [m for m in (CATALOG_MODULE, IMAGE_MODULE) if answer.offer(m) is None]
        if missing:
            self._error(
                now,
                "update",
                f"the service offers {version} without {' or '.join(missing)}; ignoring it",
                LogCode.OFFER_INCOMPLETE,
                offer,
            )
            return self._settle(now)
        message = f"{walk.where} offers an update: {current} -> {version}"
        self._info(now, "update", message, LogCode.OFFERED, offer)
        self._update = _Update(version, answer, walk.route.kind)
        return self._start_download(now)

    # --- Downloads --------------------------------------------------------------------------

    def _start_download(self, now: float) -> list[Action]:
        update = self._update
        assert update is not None
        for offer in update.answer.downloads:
            download = self._downloads.get(offer.module)
            if download is None or download.version != update.version:
                download = self._downloads[offer.module] = _Download(update.version)
            if not download.complete:
                break
        else:
            return self._start_verification(now)
        update.module = offer.module
        resume = f", resuming at byte {download.offset}" if download.offset else ""
        self._info(
            now,
            "download",
            f"downloading {offer.module} {offer.version} ({offer.size} bytes{resume})",
            LogCode.DOWNLOADING,
            LogFacts(
                module=offer.module,
                version=offer.version,
                size=offer.size,
                offset=download.offset,
                purpose=Purpose.DOWNLOAD,
            ),
        )
        return self._begin_walk(now, Purpose.DOWNLOAD, self._download_routes(offer, update.kind))

    @staticmethod
    def _download_routes(offer: DownloadOffer, kind: RouteKind) -> tuple[Route, ...]:
        internal = (offer.base_url, RouteKind.INTERNAL)
        external = (offer.external_base_url, RouteKind.EXTERNAL)
        # The URL of the side the check went through comes first: outside, the internal
        # names do not resolve at all.
        order = (external, internal) if kind is RouteKind.EXTERNAL else (internal, external)
        return tuple(Route(url, side) for url, side in order if url)

    def _download_finished(self, now: float, size: int, etag: str | None) -> list[Action]:
        update, walk = self._update, self._walking
        assert update is not None
        download = self._downloads[update.module]
        download.offset, download.etag, download.complete = size, etag, True
        self._retries = 0
        self._info(
            now,
            "download",
            f"downloaded {update.module} ({size} bytes) from {walk.route.host} ({walk.address})",
            LogCode.DOWNLOADED,
            replace(walk.facts(), module=update.module, version=update.version, size=size),
        )
        return self._start_download(now)

    def _download_interrupted(self, now: float, event: DownloadInterrupted) -> list[Action]:
        update, walk = self._update, self._walking
        assert update is not None
        download = self._downloads[update.module]
        download.offset, download.etag = event.offset, event.etag
        message = (
            f"download of {update.module} from {walk.where} cut at byte {event.offset}: "
            f"{event.reason}; it will resume from there"
        )
        facts = replace(
            walk.facts(), module=update.module, version=update.version, offset=event.offset
        )
        return self._step(now, walk.interrupted(now, message, facts))

    # --- Verification and install -----------------------------------------------------------

    def _start_verification(self, now: float) -> list[Action]:
        update = self._update
        assert update is not None
        self._walk = None
        self._state = S.VERIFYING_CATALOG
        model = self.identity.model
        return [
            VerifyCatalog(
                CATALOG_MODULE,
                self.identity.vendor,
                model.name,
                model.revision,
                model.locale,
                update.version,
            )
        ]

    def _catalog_verified(self, now: float, files: tuple[CatalogEntry, ...]) -> list[Action]:
        entry = next((f for f in files if f.name == IMAGE_MODULE), None)
        if entry is None:
            return self._refuse_update(now, f"the catalog does not list {IMAGE_MODULE}")
        update = self._update
        assert update is not None
        self._info(
            now,
            "verify",
            f"catalog signature verified with the {self.identity.vendor} certificate",
            LogCode.CATALOG_VERIFIED,
            LogFacts(version=update.version, module=CATALOG_MODULE),
        )
        self._state = S.VERIFYING_IMAGE
        return [VerifyImage(IMAGE_MODULE, entry.size, entry.sha256)]

    def _image_verified(self, now: float) -> list[Action]:
        update = self._update
        assert update is not None
        self._info(
            now,
            "verify",
            f"{IMAGE_MODULE} {update.version} matches its catalog (size and SHA-256)",
            LogCode.IMAGE_VERIFIED,
            LogFacts(version=update.version, module=IMAGE_MODULE),
        )
        slot = self._slots.begin_write(update.version, now)
        # The download is verified: the quiet minutes before the restart start now and run
        # on while the image is installed (the INSTALLED line says so).
        self._quiet_since = now
        message = f"installing {update.version} into slot {slot.value}"
        facts = LogFacts(version=update.version, slot=slot)
        self._info(now, "install", message, LogCode.INSTALLING, facts)
        self._state = S.FLASHING
        return [
            Flash(slot, IMAGE_MODULE, update.version),
            self._arm(Timer.FLASH, now + self.settings.flash_time),
        ]

    def _flashed(self, now: float) -> list[Action]:
        slot = self._slots.finish_write()
        self._staged = slot
        self._update = None
        modules = tuple(self._downloads)
        self._downloads.clear()
        self._info(
            now,
            "install",
            f"{self._slots[slot].version} installed in slot {slot.value}; the phone restarts "
            f"after {format_duration(self.settings.idle_wait)} without a call or use, counted "
            "from when the download was verified",
            LogCode.INSTALLED,
            LogFacts(version=self._slots[slot].version, slot=slot),
        )
        return [DiscardDownloads(modules), *self._settle(now)]

    def _refuse_update(
        self, now: float, reason: str, problem: FirmwareProblem = FirmwareProblem.DOES_NOT_VERIFY
    ) -> list[Action]:
        update = self._update
        assert update is not None
        self._error(
            now,
            "verify",
            f"update to {update.version} refused: {reason}; keeping {self.current_version}",
            LogCode.UPDATE_REFUSED,
            LogFacts(version=update.version, previous=self.current_version, firmware=problem),
        )
        modules = tuple(self._downloads)
        self._downloads.clear()
        self._update = None
        return [DiscardDownloads(modules), *self._settle(now)]

    # --- Walking routes and addresses -------------------------------------------------------

    def _begin_walk(self, now: float, purpose: Purpose, routes: tuple[Route, ...]) -> list[Action]:
        self._state = {
            Purpose.CHECK: S.CHECKING,
            Purpose.SIGN_IN: S.SIGNING_IN,
            Purpose.DOWNLOAD: S.DOWNLOADING,
        }[purpose]
        if not routes:
            self._error(
                now, purpose.value, "no URL to use", LogCode.NO_URL, LogFacts(purpose=purpose)
            )
            return self._walk_failed(now, purpose, None)
        self._walk = Walk(purpose, routes, self.log)
        return self._step(now, self._walk.start())

    def _step(self, now: float, step: Step) -> list[Action]:
        """Turn the walk's next step into actions."""
        walk = self._walking
        match step:
            case Lookup(host=host, port=port):
                return [Resolve(host, port)]
            case Attempt():
                return self._send(walk)
            case Succeeded():
                raise AssertionError("a success is read by the caller")  # pragma: no cover
            case Refused(message=message, code=code, status=status, diagnostics=diagnostics):
                if walk.purpose is not Purpose.SIGN_IN:
                    message += f"; the phone keeps {self.current_version}"
                facts = replace(walk.facts(), status=status, diagnostics=diagnostics)
                self._error(now, walk.purpose.value, message, code, facts)
                return self._give_up(now, walk.purpose)
            case Exhausted(retry_after=retry_after):
                return self._walk_failed(now, walk.purpose, retry_after)

    def _send(self, walk: Walk) -> list[Action]:
        route = walk.route
        target = Target(route.url, route.host, route.port, walk.address, self._clock_offset)
        match walk.purpose:
            case Purpose.CHECK:
                body = _build_request(
                    self.identity,
                    self.current_version,
                    timestamp=self._image_timestamp(),
                    last_signed_in_user=self._user,
                )
                return [
                    SendRequest(Purpose.CHECK, target, "POST", body, "text/xml", self._credentials)
                ]
            case Purpose.SIGN_IN:
                return [SendRequest(Purpose.SIGN_IN, target, "POST", b"", None, self._signing_in)]
            case Purpose.DOWNLOAD:
                update = self._update
                assert update is not None
                download = self._downloads[update.module]
                etag = download.etag if download.offset else None
                return [
                    StartDownload(update.module, target, download.offset, etag, self._credentials)
                ]

    def _image_timestamp(self) -> datetime:
        """The build date the running image reports: the factory's, or when it was installed."""
        written = self._slots[self._slots.active].written_at
        return FACTORY_TIMESTAMP if written is None else to_datetime(written)

    def _response(self, now: float, event: ResponseReceived) -> list[Action]:
        walk = self._walking
        step = walk.response(now, event.status, event.diagnostics, event.retry_after)
        if not isinstance(step, Succeeded):
            return self._step(now, step)
        try:
            if walk.purpose is Purpose.CHECK:
                answer = parse_update_response(event.body)
            else:
                provisioning = parse_provisioning(event.body)
        except MalformedAnswerError as exc:
            return self._step(now, walk.malformed(now, str(exc)))
        if walk.purpose is Purpose.CHECK:
            return self._checked(now, answer)
        return self._signed_in(now, provisioning)

    def _give_up(self, now: float, purpose: Purpose) -> list[Action]:
        """End an exchange the service refused: no retry until the next scheduled check."""
        self._retries = 0
        self._retry = None
        self._signing_in = None
        self._update = None if purpose is Purpose.DOWNLOAD else self._update
        return self._settle(now)

    def _walk_failed(self, now: float, purpose: Purpose, retry_after: float | None) -> list[Action]:
        if purpose is Purpose.SIGN_IN:
            message = "sign-in failed: no server could be reached"
            self._error(now, "sign-in", message, LogCode.SIGN_IN_FAILED)
            self._signing_in = None
            return self._settle(now)
        limit = self.settings.max_retries
        if self._retries >= limit:
            self._error(
                now,
                purpose.value,
                f"{purpose.value} failed {self._retries + 1} times in a row; giving up "
                "until the next scheduled check",
                LogCode.GAVE_UP,
                LogFacts(purpose=purpose),
            )
            self._retries = 0
            self._retry = None
            self._update = None if purpose is Purpose.DOWNLOAD else self._update
            return self._settle(now)
        delay = self.settings.backoff.delay(self._retries, self._rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self._retries += 1
        self._retry = _Retry(purpose, now + delay)
        self._warn(
            now,
            purpose.value,
            f"{purpose.value} failed; retry {self._retries} of {limit} in {delay:.1f} s",
            LogCode.RETRY_SCHEDULED,
            LogFacts(purpose=purpose, at=now + delay, retry_after=retry_after),
        )
        return self._settle(now)

    # --- Log --------------------------------------------------------------------------------

    # Every line gets its code and facts where it is written: what programs judge by.

    def _info(
        self, now: float, topic: str, message: str, code: LogCode, facts: LogFacts = NO_FACTS
    ) -> None:
        self.log.add(now, LogLevel.INFO, topic, message, code=code, facts=facts)

    def _warn(
        self, now: float, topic: str, message: str, code: LogCode, facts: LogFacts = NO_FACTS
    ) -> None:
        self.log.add(now, LogLevel.WARNING, topic, message, code=code, facts=facts)

    def _error(
        self, now: float, topic: str, message: str, code: LogCode, facts: LogFacts = NO_FACTS
    ) -> None:
        self.log.add(now, LogLevel.ERROR, topic, message, code=code, facts=facts)


def _check_words(trigger: CheckTrigger, interval: float) -> str:
    """Why a check started, as the log says it (``interval``: the check interval, seconds)."""
    match trigger:
        case CheckTrigger.POWER_ON:
            return "at power-on"
        case CheckTrigger.PERIODIC:
            return "every " + format_duration(interval)
        case CheckTrigger.SIGN_IN:
            return "at sign-in"
        case CheckTrigger.RETRY:
            return "retry"
        case CheckTrigger.DUE:
            return "periodic, due during another activity"
