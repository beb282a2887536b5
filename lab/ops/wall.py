"""The phone wall: emulated phones hosted inside a running lab, driven through its admin API.

A trainer at the console (or anyone at a terminal, `lab phone`) adds phones to the running
lab and acts on them as a person at the phone would: plug it in, unplug it, sign a user in
or out, start and end a call, cut its power while it installs. The wall says what each
phone is doing, and why, on cards the console and the CLI show.

Rules of this module:
- The wall belongs to the running lab (lab.ops.runner.Lab), which starts it once DNS, the
  pool and the lease are up and stops it first. Its phones are made the one way the lab
  makes phones, lab.ops.labphones.Phones (the emulator's PhoneBuilder on the lab's lease
  and clock), and driven through the emulator's public API only.
- One address scheme: the n-th phone of a segment sits at x.y.1.n. A new phone takes the
  lowest free n of its segment and the lowest free index of its model (which makes its
  MAC and serial number), so a removed phone's place is used again.
- Every operation checks its input first and changes nothing when it refuses: ValueError
  for bad input (a MAC that is no MAC, an unknown model or user, a count out of range),
  WallError when the phone's state does not allow it (a call on an unplugged phone),
  UnknownPhoneError when no phone on the wall has the MAC. A user signs in with the NT
  hash the lab's config holds for them: no password is ever asked for or passed.
- Events on the lab's bus, so a console refreshes without polling: ``phone.added`` and
  ``phone.removed`` once per phone; ``phone.changed`` once per change of what a card shows
  (state, versions, user, calls, a stop); ``phone.progress`` while a file downloads, at
  most one per PROGRESS_INTERVAL of real time per phone (and the last bytes always).
- Nothing blocks the loop: the audit files are read, and a removed phone's files
  deleted, in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from emulator import (
    Credentials,
    FleetError,
    Location,
    PhoneDriver,
    PhoneState,
    PowerCut,
    format_duration,
    get_model,
    load_lease,
    system_information,
)
from lab.clock import LabClock
from lab.errors import LabError, LabStateError
from lab.events import EventBus
from lab.lifecycle import Service
from lab.models import normalise_mac
from lab.net.config import LabConfig, User
from lab.net.firewall import FirewallPolicy
from lab.ops.labphones import HeldNetwork, Phones
from lab.service.audit import read_audit

S = PhoneState

MAX_PHONES = 2_000
"""Phones a wall holds: enough for a thousand-phone demo, few enough for one process."""
PAGE_SIZE = 100
"""Cards in a page of the snapshot unless the caller asks for another number."""
MAX_PAGE_SIZE = 1_000
LOG_LINES = 200
"""The newest phone log lines a phone's detail shows."""
AUDIT_LINES = 100
"""The newest audit lines a phone's detail shows."""
PROGRESS_INTERVAL = 0.25
"""Real seconds between two ``phone.progress`` events of one phone."""
MAX_CLIENTS = 128
"""Phones of the wall in an HTTPS exchange at once; the others wait their turn, as with
`emulator run`. They share the lab's process: a thousand TLS handshakes at once would
starve its DNS server and front ends."""
POWER_BACK_AFTER = PowerCut().off_for
"""Phone seconds a cut power stays off, as the emulator's PowerCut fault does."""
WORKDIR = "wall"
"""The wall's folder in the state directory: its phones' downloads."""

UP = frozenset(S) - {S.OFF, S.BOOTING}
"""States in which a phone runs an image and can be used (calls, sign-out)."""
QUIET = frozenset({S.IDLE, S.BACKING_OFF, S.AWAITING_REBOOT})
"""Up states with nothing in flight: a sign-in starts at once (else when the work ends)."""
ACTIONS = (
    "plug-in",
    "unplug",
    "sign-in",
    "sign-out",
    "call-start",
    "call-end",
    "power-cut",
)
"""What can be done to a phone on the wall (``act``), besides removing it."""


class WallError(LabError):
    """The phone wall refuses an operation in its or the phone's current state."""


class UnknownPhoneError(WallError, LookupError):
    """No phone on the wall has the MAC address given."""


@dataclasses.dataclass(eq=False)
class WallPhone:
    """One phone on the wall: its driver, where it is plugged in, what its card last told."""

    driver: PhoneDriver
    location: Location
    number: int
    """The n of x.y.1.n in its segment."""
    added: str
    """The lab day it was added (``YYYYMMDD``): its audit lines are in that day's file or later."""
    shown: tuple[object, ...] = ()
    """What the last ``phone.changed`` told (``_face``)."""
    progress: tuple[int, int | None] | None = None
    """Bytes of the file being downloaded so far, and its size when known."""
    progress_told: float = -math.inf

    @property
    def mac(self) -> str:
        """The phone's MAC address (``00-04-F2-00-00-01``)."""
        return self.driver.phone.identity.mac

    @property
    def model(self) -> str:
        """The model's name (``CX600``)."""
        return self.driver.phone.identity.model.name

    @property
    def label(self) -> str:
        """How the wall names the phone: model and index (``CX600 #3``), unique on it."""
        identity = self.driver.phone.identity
        return f"{identity.model.name} #{identity.index}"

    def order(self) -> tuple[int, int]:
        """Where the phone sorts: inside before outside, then by its place n."""
        return (0 if self.location is Location.INSIDE else 1, self.number)


class PhoneWall(Service):
    """Emulated phones hosted in a running lab, on its lease, clock and network."""

    def __init__(
        self,
        *,
        config: LabConfig,
        state_dir: Path,
        lease_file: Path,
        clock: LabClock,
        firewall: FirewallPolicy,
        events: EventBus,
        audit_dirs: Sequence[Path] = (),
        limit: int = MAX_PHONES,
    ) -> None:
        self.config = config
        self.workdir = state_dir / WORKDIR
        self.lease_file = lease_file
        self.clock = clock
        self.firewall = firewall
        self.events = events
        self.audit_dirs = tuple(audit_dirs)
        self.limit = limit
        self._phones: dict[str, WallPhone] = {}
        self._factory: Phones | None = None
        self._running = False
        self._seeds = itertools.count(1)

    # --- Life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take phones from now on (made when the first is added: a lab without phones
        pays nothing for the wall)."""
        self._running = True

    async def stop(self) -> None:
        """Stop every phone; the wall takes no more."""
        self._running = False
        factory, self._factory = self._factory, None
        self._phones.clear()
        if factory is not None:
            await factory.aclose()

    def __len__(self) -> int:
        return len(self._phones)

    async def _phones_factory(self) -> Phones:
        """The lab's phone factory, made at the first phone: on the lease the lab
        published and its clock (the loop's own time under fake time, held while phones
        talk; a ScaledClock at the lab's scale otherwise)."""
        if self._factory is None:
            try:
                lease = load_lease(self.lease_file)
            except ValueError as exc:
                raise LabStateError(f"the wall's phones have no lease: {exc}") from None
            # Downloads of phones of an earlier run of the lab are nobody's any more.
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)
            loop = asyncio.get_running_loop()
            on_loop = self.clock.source == loop.time and self.clock.scale == 1.0
            self._factory = Phones(
                lease,
                self.workdir,
                scale=None if on_loop else self.clock.scale,
                clock=self.clock,
                max_clients=MAX_CLIENTS,
            )
        return self._factory

    # --- Adding and removing ----------------------------------------------------------------

    async def add(
        self,
        model: str,
        *,
        count: int = 1,
        location: str = "inside",
        user: str | None = None,
        plug_in: bool = False,
    ) -> dict[str, Any]:
        """Add ``count`` phones of ``model`` at ``location`` (inside or outside), each with
        ``user`` signing in as soon as it can and plugged in at once with ``plug_in``.
        Returns the MACs added and what happens next."""
        self._check_running()
        kind = _model(model)
        where = _location(location)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= self.limit:
            raise ValueError(
                f"count must be a whole number from 1 to {self.limit:,}, not {count!r}"
            )
        account = self._user(user) if user is not None else None
        factory = await self._phones_factory()
        # Checked after the wait: the lab may have stopped, another add taken the room.
        self._check_running()
        room = self.limit - len(self._phones)
        if count > room:
            raise WallError(
                f"the wall holds at most {self.limit:,} phones and has {len(self._phones):,}: "
                f"room for {room:,} more, not {count:,} (remove some first)"
            )
        numbers = _lowest_free({p.number for p in self._phones.values() if p.location is where})
        places = list(itertools.islice(numbers, count))
        try:
            # Every address first: a segment too small refuses the lot, not the last few.
            addresses = [factory.builder.address(where, n) for n in places]
        except FleetError as exc:
            raise WallError(str(exc)) from None
        used = {p.driver.phone.identity.index for p in self._phones.values() if p.model == kind}
        indices = _lowest_free(used)
        day = f"{self.clock.now():%Y%m%d}"
        added = []
        for number, index in zip(places, indices, strict=False):
            network = HeldNetwork(factory.builder.network, factory.hold)
            driver = factory.phone(
                kind,
                index=index,
                inside=where is Location.INSIDE,
                number=number,
                seed=next(self._seeds),
                observer=self._observe,
                network=network,
            )
            phone = WallPhone(driver, where, number, day)
            # Only the wall's own wrapper: holding the clock is harmless on a real one.
            network.watch = _progress_watch(self, phone)
            self._phones[phone.mac] = phone
            phone.shown = self._face(phone)
            self.events.publish(
                "phone.added",
                mac=phone.mac,
                label=phone.label,
                model=kind,
                address=driver.address,
                location=where.value,
            )
            if account is not None:
                driver.sign_in(_credentials(account))
            if plug_in:
                driver.power_on()
            added.append(phone.mac)
        each = "it" if count == 1 else "each"
        span = addresses[0] if count == 1 else f"{addresses[0]} to {addresses[-1]}"
        message = f"{count} {kind} phone{'' if count == 1 else 's'} added {where.value} at {span}, "
        message += (
            f"plugged in: {each} boots and checks for updates"
            if plug_in
            else "not plugged in yet (plug-in)"
        )
        if account is not None:
            message += f"; {account.upn} signs in on {each} once it is up"
        return {"added": added, "message": message}

    async def remove(self, mac: str) -> dict[str, Any]:
        """Take the phone with ``mac`` off the wall: it stops, its downloads are deleted."""
        phone = self._phone(mac)
        del self._phones[phone.mac]
        factory = self._factory
        if factory is not None:
            await factory.remove(phone.driver)
        await asyncio.to_thread(shutil.rmtree, phone.driver.directory, True)
        self.events.publish("phone.removed", mac=phone.mac, label=phone.label)
        return {"removed": phone.mac, "message": f"{phone.label} ({phone.mac}) removed"}

    # --- What a person does at the phone ----------------------------------------------------

    def act(self, mac: str, action: str, user: str | None = None) -> dict[str, Any]:
        """Do ``action`` (one of ACTIONS) to the phone with ``mac``; its card and what
        happens next, in words."""
        handlers: dict[str, Callable[[WallPhone], str]] = {
            "plug-in": self._plug_in,
            "unplug": self._unplug,
            "sign-in": lambda phone: self._sign_in(phone, user),
            "sign-out": self._sign_out,
            "call-start": self._call_start,
            "call-end": self._call_end,
            "power-cut": self._power_cut,
        }
        handler = handlers.get(action)
        if handler is None:
            raise ValueError(f"no phone action {action!r} (known: {', '.join(ACTIONS)})")
        phone = self._phone(mac)
        installing = phone.driver.phone.state is S.FLASHING
        message = handler(phone)
        result: dict[str, Any] = {"phone": self.card(phone), "message": message}
        if action == "power-cut":
            result["while_installing"] = installing
        return result

    def _plug_in(self, phone: WallPhone) -> str:
        state = phone.driver.phone.state
        if state is not S.OFF:
            raise WallError(f"{phone.label} is already plugged in ({state.value})")
        phone.driver.power_on()
        zone = self.firewall.classify(phone.driver.address).value
        return (
            f"{phone.label} plugged in at {phone.driver.address} ({zone} the firewall): it "
            "boots and checks for updates at power-on"
        )

    def _unplug(self, phone: WallPhone) -> str:
        state = phone.driver.phone.state
        if state is S.OFF:
            raise WallError(f"{phone.label} is already unplugged")
        phone.driver.power_off()
        return (
            f"{phone.label} unplugged while {state.value}: what it was doing is dropped; "
            "it keeps its images, its provisioning and its user"
        )

    def _sign_in(self, phone: WallPhone, user: str | None) -> str:
        if not user:
            raise ValueError("name the user to sign in (a directory user of the lab's config)")
        account = self._user(user)
        state = phone.driver.phone.state
        if state is S.SIGNING_IN:
            raise WallError(f"{phone.label} is signing in already: wait until that ends")
        phone.driver.sign_in(_credentials(account))
        who = account.upn
        if state in (S.OFF, S.BOOTING):
            return f"{who} signs in on {phone.label} once it is up ({state.value} now)"
        if state not in QUIET:
            return f"{who} signs in on {phone.label} when {state.value} ends"
        return f"{who} signing in on {phone.label}: the user's home pool gives it its update URLs"

    def _sign_out(self, phone: WallPhone) -> str:
        core = phone.driver.phone
        state = core.state
        if state is S.OFF:
            raise WallError(f"{phone.label} is unplugged: plug it in to sign out")
        if state is S.BOOTING:
            raise WallError(f"{phone.label} is booting: sign out once it is up")
        if state is S.SIGNING_IN:
            raise WallError(f"{phone.label} is signing in: sign out once that ends")
        user = core.signed_in_user
        if user is None:
            raise WallError(f"no user is signed in on {phone.label}")
        phone.driver.sign_out()
        return (
            f"{user} signed out of {phone.label}; it keeps its in-band provisioning, and "
            "outside the firewall its update checks are now refused"
        )

    def _call_start(self, phone: WallPhone) -> str:
        core = phone.driver.phone
        if core.state not in UP:
            raise WallError(f"{phone.label} is {core.state.value}: a call needs a running phone")
        phone.driver.start_call()
        if core.state is S.AWAITING_REBOOT:
            return (
                f"call started on {phone.label}: the restart into {core.staged_version} waits "
                "until the call ends"
            )
        return f"call started on {phone.label}: a restart to finish an update waits until it ends"

    def _call_end(self, phone: WallPhone) -> str:
        core = phone.driver.phone
        if core.state not in UP or not core.calls_in_progress:
            raise WallError(f"no call is in progress on {phone.label}")
        phone.driver.end_call()
        if core.state is S.AWAITING_REBOOT and not core.calls_in_progress:
            quiet = format_duration(core.settings.idle_wait)
            return (
                f"call ended on {phone.label}: it restarts into {core.staged_version} after "
                f"{quiet} without a call or use"
            )
        return f"call ended on {phone.label}"

    def _power_cut(self, phone: WallPhone) -> str:
        core = phone.driver.phone
        state = core.state
        if state is S.OFF:
            raise WallError(f"{phone.label} is unplugged: there is no power to cut")
        running = core.current_version
        PowerCut().strike(phone.driver)
        back = format_duration(POWER_BACK_AFTER)
        if state is S.FLASHING:
            return (
                f"power cut on {phone.label} while installing: the image slot being written "
                f"is left damaged; power is back in {back}, the phone boots {running} again "
                "and fetches the update anew at its power-on check"
            )
        return (
            f"power cut on {phone.label} while {state.value}, not installing: nothing is "
            f"damaged, it is a restart; power is back in {back} and the phone checks for "
            "updates at power-on (cut power while it is installing to damage the new image)"
        )

    def driver(self, mac: str) -> PhoneDriver:
        """The emulator driver of the phone with ``mac``, for callers in the lab's process
        (a test waiting for a phone to reach a state)."""
        return self._phone(mac).driver

    # --- What the console and the CLI show --------------------------------------------------

    def snapshot(self, offset: int = 0, limit: int = PAGE_SIZE) -> dict[str, Any]:
        """Counts by state, version, model, location and zone, and a page of cards,
        sorted by segment (inside first) and place."""
        for name, value, low, high in (
            ("offset", offset, 0, None),
            ("limit", limit, 1, MAX_PAGE_SIZE),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, not {value!r}")
            if high is not None and value > high:
                raise ValueError(f"{name} must be at most {high:,}, not {value:,}")
        phones = sorted(self._phones.values(), key=WallPhone.order)
        return {
            "count": len(phones),
            "limit": self.limit,
            "aggregates": {
                "by_state": _counts(_state_key(p.driver) for p in phones),
                "by_version": _counts(p.driver.phone.current_version for p in phones),
                "by_model": _counts(p.model for p in phones),
                "by_location": _counts(p.location.value for p in phones),
                "by_zone": _counts(self._zone(p) for p in phones),
            },
            "offset": offset,
            "page_size": limit,
            "phones": [self.card(p) for p in phones[offset : offset + limit]],
        }

    def card(self, phone: WallPhone) -> dict[str, Any]:
        """What the wall shows of one phone."""
        driver = phone.driver
        core = driver.phone
        identity = core.identity
        entries = core.log.entries
        progress = phone.progress if core.state is S.DOWNLOADING else None
        return {
            "label": phone.label,
            "model": identity.model.name,
            "vendor": identity.vendor,
            "mac": identity.mac,
            "serial": identity.serial,
            "address": driver.address,
            "location": phone.location.value,
            "zone": self._zone(phone),
            "user": core.signed_in_user,
            "state": _state_key(driver),
            "state_text": core.state.value if driver.error is None else "stopped",
            "version": core.current_version,
            "backup_version": core.backup_version,
            "pending_version": core.staged_version,
            "calls": core.calls_in_progress,
            "progress": None if progress is None else {"done": progress[0], "total": progress[1]},
            "last_log": entries[-1].as_dict() if entries else None,
            "error": None if driver.error is None else str(driver.error),
        }

    async def detail(self, mac: str) -> dict[str, Any]:
        """One phone: its card, its System Information screen, its newest log lines and
        the audit lines the front ends wrote for its MAC (oldest first)."""
        phone = self._phone(mac)
        core = phone.driver.phone
        lines = core.log.entries[-LOG_LINES:]
        audit = await asyncio.to_thread(
            audit_lines, self.audit_dirs, phone.mac, since=phone.added, limit=AUDIT_LINES
        )
        return {
            "phone": self.card(phone),
            "system_information": system_information(core),
            "log": [entry.as_dict() for entry in lines],
            "log_text": "".join(entry.render() + "\n" for entry in lines),
            "audit": audit,
        }

    # --- Inside -----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise WallError("the lab is not running (or is stopping): its wall takes no phones")

    def _phone(self, mac: str) -> WallPhone:
        normal = normalise_mac(mac)
        self._check_running()
        phone = self._phones.get(normal)
        if phone is None:
            raise UnknownPhoneError(f"no phone {normal} on the wall (lab phone list shows them)")
        return phone

    def _user(self, name: str) -> User:
        """The directory user ``name`` (short name or UPN) of the lab's config."""
        for user in self.config.users:
            if name.lower() in (user.name.lower(), user.upn.lower()):
                return user
        known = ", ".join(user.name for user in self.config.users) or "none"
        raise ValueError(f"no directory user {name!r} in the lab's config (users: {known})")

    def _zone(self, phone: WallPhone) -> str:
        return self.firewall.classify(phone.driver.address).value

    def _face(self, phone: WallPhone) -> tuple[object, ...]:
        """What a card shows that a ``phone.changed`` tells (progress and log lines aside)."""
        core = phone.driver.phone
        return (
            core.state,
            core.current_version,
            core.backup_version,
            core.staged_version,
            core.signed_in_user,
            core.calls_in_progress,
            phone.driver.error is not None,
        )

    def _observe(self, driver: PhoneDriver) -> None:
        """Driver observer: publish ``phone.changed`` when what the card shows changed."""
        phone = self._phones.get(driver.phone.identity.mac)
        if phone is None or phone.driver is not driver or not self._running:
            return
        face = self._face(phone)
        if face == phone.shown:
            return
        phone.shown = face
        if driver.phone.state is not S.DOWNLOADING:
            phone.progress = None
        core = driver.phone
        self.events.publish(
            "phone.changed",
            mac=phone.mac,
            label=phone.label,
            state=_state_key(driver),
            version=core.current_version,
            backup_version=core.backup_version,
            pending_version=core.staged_version,
            user=core.signed_in_user,
            calls=core.calls_in_progress,
        )

    def progress(self, phone: WallPhone, done: int, total: int | None) -> None:
        """A download of ``phone`` has ``done`` bytes of ``total``: kept for its card, and
        published at most once per PROGRESS_INTERVAL (the last bytes always)."""
        phone.progress = (done, total)
        now = time.monotonic()
        if now - phone.progress_told < PROGRESS_INTERVAL and done != total:
            return
        phone.progress_told = now
        if self.events.listened("phone.progress"):
            self.events.publish("phone.progress", mac=phone.mac, done=done, total=total)


def _credentials(user: User) -> Credentials:
    """What ``user`` signs in with: the NT hash the config holds, so a sign-in never needs
    a password typed anywhere."""
    return Credentials(user.name, user.domain, nt_hash=user.nt_hash)


def _progress_watch(wall: PhoneWall, phone: WallPhone) -> Callable[[str, int, int | None], None]:
    """The download watch of ``phone``'s network (the server's address is not needed)."""
    return lambda _server, done, total: wall.progress(phone, done, total)


def audit_lines(
    directories: Iterable[Path], mac: str, *, since: str = "", limit: int = AUDIT_LINES
) -> list[dict[str, str]]:
    """The newest ``limit`` audit records for ``mac`` in the audit logs of ``directories``
    (days ``since`` ``YYYYMMDD`` on), oldest first. Blocking: run it in a thread."""
    records = []
    for directory in directories:
        for path in sorted(directory.glob("RequestHandlerAuditLog_*.log")):
            if path.stem.rsplit("_", 1)[-1] < since:
                continue
            try:
                rows = read_audit(path)
            except (OSError, ValueError):
                continue  # a file cleaned up meanwhile
            # A line being written as the file is read has no value for its last columns.
            records += [r for r in rows if r.get("mac") == mac and None not in r.values()]
    records.sort(key=lambda r: r["time"])
    return records[-limit:]


def _model(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name the phone model (CX600, HP4120, 6725ip, ...)")
    return get_model(name.strip()).name


def _location(text: str) -> Location:
    try:
        return Location(str(text).strip().lower())
    except ValueError:
        raise ValueError(f"location must be inside or outside, not {text!r}") from None


def _lowest_free(used: set[int]) -> Iterable[int]:
    """1, 2, 3, ... without the numbers in ``used``."""
    return (n for n in itertools.count(1) if n not in used)


def _state_key(driver: PhoneDriver) -> str:
    """The state as a program reads it (``awaiting_reboot``), or ``stopped`` for a phone
    whose driver stopped on an error."""
    return "stopped" if driver.error is not None else driver.phone.state.name.lower()


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))
