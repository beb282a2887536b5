"""The lab demo (`make demo`, `lab demo`): how phones update, told to a colleague as it happens.

The story, in chapters, on one lab and one event loop (lab.harness):

1. How a phone finds the service: ``ucupdates-r2.<domain>`` asked from an inside and an
   outside address gets the front ends or the edge (split-horizon DNS, and the firewall
   toggle moving a phone out and back).
2. Before the update: the users the fleet names sign in, so their phones keep in-band
   provisioning (the service's internal and external URLs) in flash; then they are
   unplugged. The lab has no firmware yet, so nothing is installed.
3. The administrator builds a vendor cab, imports it into every front end and approves
   it; imports a newer one and leaves it pending; names each test device by its MAC.
4. Every phone of the fleet is plugged in (a few seconds apart) and does what its entry
   says: DNS discovery inside, in-band provisioning when signed in, refused outside with
   nobody signed in, NTLM through the edge when signed in outside, the pending version on a
   test device, and a call holding a busy phone's restart.
5. A summary (what each phone should end as, what it ended as) and every phone's System
   Information screen. The demo succeeds only if every phone ended as it should.

The story runs straight through, or one chapter at a time: ``between_chapters`` is awaited
before each chapter after the first (`lab demo --step` waits for Enter there, the console
for its Next button). A `Narrator` tells it on a console; a `RecordingNarrator` keeps its
lines instead, in plain text, with the chapter each belongs to.

Rules of this module: the fleet comes from the config (``config.fleet``), so a user's own
config with another fleet works too; what a phone *should* end as is derived from its
entry alone (`expected_outcome`), what it *did* end as from the codes and facts of its own
log (never the log's sentences, which are for people) and the front ends' audit records
alone (`observed_outcome`), and the two are compared as plain words.
Phones run on a ScaledClock (``scale`` phone seconds per real second), or on the loop's
time when ``scale`` is None (tests under looptime): the code path is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import ipaddress
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

from emulator import (
    AnyFault,
    Call,
    Credentials,
    FleetError,
    HTTPSClient,
    LogCode,
    LogEntry,
    LogLevel,
    Network,
    PhoneDriver,
    PhoneState,
    Resolver,
    RouteKind,
    Trigger,
    get_model,
    system_information,
    to_datetime,
)
from emulator import (
    Download as DownloadResult,
)
from lab.errors import ConfigError, LabStateError, PortInUseError
from lab.models import phone_model
from lab.net.config import FleetPhone, LabConfig
from lab.net.dnsprobe import query, summarise
from lab.net.firewall import Zone
from lab.net.netns import LabNetwork, socket_at
from lab.net.pki import verify_vendor_signature
from lab.ops.harness import (
    NEW,
    ClockHold,
    ForwardingClient,
    Phones,
    RunningLab,
    phones_on,
    running_lab,
)
from lab.ops.runner import RUN_FILE, read_run_file
from lab.service.audit import AuditRecord, audit_time
from lab.store.cab import CAB_NAME, DEFAULT_IMAGE_SIZE, build, read_cab
from lab.store.decision import Action
from lab.store.importer import ImportResult, import_cab
from lab.store.store import Selection

S = PhoneState
DEFAULT_SCALE = 60.0
"""Phone seconds per real second: the five-minute wait before a restart takes five seconds."""
APPROVED = NEW
PENDING = "4.0.7577.4400"
STAGGER = 10.0
"""Phone seconds between two phones being plugged in (the narration stays readable)."""
CALL_AFTER = 60.0
CALL_LENGTH = 480.0
"""A busy phone's call starts a minute into its wait to restart and lasts eight minutes."""
SETTLE_TIME = 3600.0
REAL_ALLOWANCE = 30.0
"""A chapter ends with a failure when its phones have not settled after an hour of phone
time, or after this many real seconds at a high scale, whichever is later."""
MAX_PHONES = 100
STATE_MARKER = ".lab-demo"
MiB = 1024 * 1024
TELLING_TOPICS = frozenset({"sign-in", "update", "install", "call"})
CHAPTERS = (
    "How a phone finds the update service",
    "Before the update: users sign in",
    "The administrator publishes firmware",
    "The phones are plugged in",
    "How every phone ended",
)
"""The chapters' titles, chapter n at position n - 1 (chapter 2 is left out when nobody
in the fleet signs in)."""

BetweenChapters = Callable[[int, str], Awaitable[None]]
"""Awaited before each chapter but the first, with its number and title: the demo goes on
when it returns."""


# --- The fleet and what each phone should end as ----------------------------------------


@dataclass
class DemoPhone:
    """One phone of the demo fleet: its entry, who signs in, its driver and what we last saw."""

    number: int
    entry: FleetPhone
    place: int
    """Which phone of its segment it is (from 1): the n-th takes x.y.1.n of it."""
    credentials: Credentials | None
    upn: str | None
    driver: PhoneDriver = field(init=False)
    """Made once the lab is up (its address comes from the lease)."""
    seen: int = 0
    state: PhoneState = S.OFF
    last_line: str = ""
    download: tuple[str, int, int | None] | None = None
    error_told: bool = False

    @property
    def label(self) -> str:
        """``#3 HP4120``."""
        return f"#{self.number} {self.entry.model}"

    @property
    def address(self) -> str:
        """The phone's own address (once its driver is made)."""
        return self.driver.address

    def role(self) -> str:
        """What this phone is in the story, in words."""
        where = self.entry.location
        if self.upn is None:
            role = f"{where}, never signed in: " + (
                "finds the service through DNS" if where == "inside" else "must be refused"
            )
        else:
            role = f"{where}, {self.upn} signed in: " + (
                "uses in-band provisioning" if where == "inside" else "NTLM through the edge"
            )
        if self.entry.test_device:
            role += "; a test device"
        if self.entry.busy:
            role += "; busy in a call"
        return role


def demo_fleet(config: LabConfig) -> list[DemoPhone]:
    """The phones of ``config.fleet``, numbered, each with its place in its segment."""
    entries = [entry for entry in config.fleet for _ in range(entry.count)]
    if not entries:
        raise ConfigError(config.source, "fleet", "the demo needs a fleet ([[fleet]] entries)")
    if len(entries) > MAX_PHONES:
        raise ConfigError(
            config.source,
            "fleet",
            f"{len(entries)} phones are too many to narrate (at most {MAX_PHONES}); "
            "`emulator run` runs large fleets",
        )
    taken = {"inside": 0, "outside": 0}
    phones: list[DemoPhone] = []
    for number, entry in enumerate(entries, start=1):
        taken[entry.location] += 1
        credentials, upn = None, None
        if entry.user is not None:
            user = config.user(entry.user)
            credentials = Credentials(user.name, user.domain, nt_hash=user.nt_hash)
            upn = user.upn
        phones.append(
            DemoPhone(
                number=number,
                entry=entry,
                place=taken[entry.location],
                credentials=credentials,
                upn=upn,
            )
        )
    return phones


def make_drivers(
    phones: Sequence[DemoPhone], on: Phones, narrator: Narrator, config: LabConfig
) -> None:
    """Make every demo phone's driver on ``on`` (stopped with its phones), told by ``narrator``.

    ConfigError when the config's segments have no room for the fleet.
    """
    for phone in phones:
        faults: list[AnyFault] = []
        if phone.entry.busy:
            faults.append(
                Call(trigger=Trigger(on=S.AWAITING_REBOOT, delay=CALL_AFTER), duration=CALL_LENGTH)
            )
        try:
            phone.driver = on.phone(
                phone.entry.model,
                index=phone.number,
                inside=phone.entry.location == "inside",
                number=phone.place,
                seed=phone.number,
                faults=faults,
                observer=narrator.observe,
            )
        except FleetError as exc:
            raise ConfigError(config.source, "fleet", str(exc)) from None
        narrator.follow(phone)


def expected_outcome(phone: DemoPhone) -> str:
    """What ``phone`` should end as, from its fleet entry alone."""
    entry = phone.entry
    if entry.location == "outside" and phone.upn is None:
        return f"refused (HTTP 403), kept {get_model(entry.model).factory_version}"
    version, source = (PENDING, "pending") if entry.test_device else (APPROVED, "approved")
    if phone.upn is None:
        route = "DNS discovery"
    else:
        route = "in-band, internal" if entry.location == "inside" else "in-band, edge + NTLM"
    outcome = f"{version} ({source}) via {route}"
    return outcome + ("; restart waited for the call" if entry.busy else "")


def observed_outcome(driver: PhoneDriver, checks: Sequence[AuditRecord]) -> str:
    """What the phone did end as, in `expected_outcome`'s words, from its log's codes and
    facts and ``checks``.

    ``checks`` are the front ends' audit records of this phone's update checks, in order.
    """
    core = driver.phone
    version = core.current_version
    if driver.error is not None:
        return f"stopped with {version}: {driver.error}"
    if not driver.settled:
        return f"still {core.state.value} with {version}"
    served = [r for r in checks if r.status == 200 and r.decision == version]
    if core.last_update is None or not served:
        if checks and checks[-1].status != 200:
            return f"refused (HTTP {checks[-1].status}), kept {version}"
        return f"stayed on {version}"
    record = served[-1]
    source = record.served_from
    if _check_source(driver, version) == "DNS discovery":
        route = "DNS discovery"
    elif record.site == "internal":
        route = "in-band, internal"
    else:
        route = "in-band, edge + NTLM" if record.last_signed_in_user else "in-band, edge"
    outcome = f"{version} ({source}) via {route}"
    if core.log.coded(LogCode.RESTART_HELD):
        ended = [e.time for e in core.log.coded(LogCode.CALL_ENDED)]
        restarts = [e.time for e in core.log.coded(LogCode.RESTARTING)]
        # Compared exactly: a phone stamps a timer's event no earlier than the timer's time,
        # and sets its restart after a call for the call's end plus the idle wait, or later.
        waited = bool(ended and restarts) and restarts[-1] >= ended[-1] + core.settings.idle_wait
        outcome += "; restart waited for the call" if waited else "; restarted during a call"
    return outcome


def _check_source(driver: PhoneDriver, version: str) -> str | None:
    """Where the phone took the URL of the check that offered ``version`` from."""
    log = driver.phone.log
    offers = [e for e in log.coded(LogCode.OFFERED) if e.facts.version == version]
    if not offers:
        return None
    return "DNS discovery" if offers[-1].facts.route is RouteKind.DISCOVERY else "in-band"


def explaining_line(entries: Sequence[LogEntry], changed: bool) -> LogEntry | None:
    """Of the log lines since the last turn, the one that says why the phone did it.

    Trouble first; then, for a change of state, the first line about updates, sign-in,
    installing or calls (the cause, not the next step), and within a state all of those
    lines as one (``call ended; phone in use: the restart waits until ...``); otherwise
    the last line.
    """
    trouble = [e for e in entries if e.level is not LogLevel.INFO]
    if trouble:
        return trouble[-1]
    telling = [e for e in entries if e.topic in TELLING_TOPICS or e.code is LogCode.POWER_ON]
    if telling and changed:
        return telling[0]
    if telling:
        return replace(telling[-1], message="; ".join(e.message for e in telling))
    return entries[-1] if entries else None


# --- Watching downloads -------------------------------------------------------------------

DownloadWatch = Callable[[str, str, int, int | None], None]
"""Told as a download grows: the phone's address, the module, bytes so far, the full size."""


class WatchedClient(ForwardingClient):
    """A phone's HTTPS client whose downloads report their progress."""

    def __init__(self, inner: HTTPSClient, source: str, watch: DownloadWatch) -> None:
        super().__init__(inner)
        self.source = source
        self.watch = watch

    async def download(self, url: str, path: Path, **options: Any) -> DownloadResult:
        """The inner client's download, reported to ``watch`` as it grows."""
        module = url.rsplit("/", 1)[-1]
        options["progress"] = lambda size, total: self.watch(self.source, module, size, total)
        return await super().download(url, path, **options)


class WatchedNetwork:
    """The phones' network (real, or held under fake time) with downloads watched."""

    def __init__(self, inner: Network, watch: DownloadWatch) -> None:
        self.inner = inner
        self.watch = watch

    def resolver(self, source: str) -> Resolver:
        """The inner network's resolver."""
        return self.inner.resolver(source)

    async def open_client(self, source: str, resolver: Resolver) -> HTTPSClient:
        """The inner network's client, watched."""
        return WatchedClient(await self.inner.open_client(source, resolver), source, self.watch)

    async def close_client(self, client: HTTPSClient) -> None:
        """Close a client open_client gave."""
        assert isinstance(client, WatchedClient)
        await self.inner.close_client(client.inner)

    def vendor_certificate(self, vendor: str) -> bytes:
        """The inner network's vendor certificate."""
        return self.inner.vendor_certificate(vendor)


# --- Narration ----------------------------------------------------------------------------


class Narrator:
    """Says what each phone does as it happens: one line per turn, and on a terminal a live
    table of the phones (location, state, version, download progress, last log line)."""

    def __init__(self, console: Console, phones: Sequence[DemoPhone]) -> None:
        self.console = console
        self.phones = list(phones)
        self._by_address: dict[str, DemoPhone] = {}

    def follow(self, phone: DemoPhone) -> None:
        """Tell what ``phone`` does from now on (its driver is made, so its address known)."""
        self._by_address[phone.address] = phone

    def chapter(self, number: int, title: str) -> None:
        """Start chapter ``number``."""
        self.section(f"{number}. {title}")

    def section(self, title: str) -> None:
        """Start a part of a chapter under its own heading."""
        self.console.print()
        self.console.rule(f"[bold]{escape(title)}", align="left")

    def say(self, text: str) -> None:
        """One line of the story (rich markup allowed)."""
        self.console.print(text, soft_wrap=True)

    def observe(self, driver: PhoneDriver) -> None:
        """Driver observer: tell a change of state, a call, or trouble, with its log line."""
        phone = self._by_address[driver.address]
        core = driver.phone
        if driver.error is not None:
            if not phone.error_told:
                phone.error_told = True
                self._turn(phone, driver.clock.now(), f"stopped: {driver.error}", LogLevel.ERROR)
            return
        entries = core.log.entries[phone.seen :]
        changed = core.state is not phone.state
        if not changed and not any(
            e.topic == "call" or e.level is not LogLevel.INFO for e in entries
        ):
            return  # the next turn explains it
        phone.seen += len(entries)
        phone.state = core.state
        line = explaining_line(entries, changed)
        if line is not None:
            phone.last_line = line.message
        when = driver.timeline[-1].time if changed else (line.time if line else driver.clock.now())
        self._turn(phone, when, line.message if line else "", line.level if line else LogLevel.INFO)

    def _turn(self, phone: DemoPhone, when: float, message: str, level: LogLevel) -> None:
        style = {LogLevel.ERROR: "red", LogLevel.WARNING: "yellow"}.get(level, "")
        text = Text.assemble(
            (f"{to_datetime(when):%H:%M:%S}  ", "dim"),
            (f"{phone.label:<10} ", "bold"),
            (f"{phone.state.value:<22}", "cyan"),
            (message, style),
        )
        self.console.print(text, soft_wrap=True, highlight=False)

    def progress(self, address: str, module: str, size: int, total: int | None) -> None:
        """Download watch: remember how far the phone's download is."""
        phone = self._by_address.get(address)
        if phone is not None:
            phone.download = (module, size, total)

    def table(self) -> Table:
        """The phones as they are now."""
        # Fixed widths: the table should not jump about as the phones change.
        table = Table(
            Column("phone", min_width=10),
            Column("where", min_width=7),
            "user",
            Column("state", min_width=21),
            Column("version", min_width=13),
            Column("download", min_width=20),
            Column("what it last did", overflow="ellipsis", no_wrap=True),
        )
        for phone in self.phones:
            core = phone.driver.phone
            table.add_row(
                phone.label,
                phone.entry.location,
                phone.upn or "-",
                core.state.value,
                core.current_version,
                _download_cell(phone),
                phone.last_line,
            )
        return table

    @contextlib.asynccontextmanager
    async def live(self) -> AsyncIterator[None]:
        """On a terminal, show the live table while the block runs; elsewhere nothing."""
        if not self.console.is_terminal:
            yield
            return
        # Refreshed from the loop (not rich's thread): the phones change on the loop.
        with Live(self.table(), console=self.console, auto_refresh=False) as live:
            refresher = asyncio.get_running_loop().create_task(self._refresh(live))
            try:
                yield
            finally:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
                live.update(self.table(), refresh=True)

    async def _refresh(self, live: Live) -> None:
        while True:
            live.update(self.table(), refresh=True)
            await asyncio.sleep(0.1)


def _download_cell(phone: DemoPhone) -> str:
    core = phone.driver.phone
    if core.state is S.DOWNLOADING and phone.download is not None:
        module, size, total = phone.download
        if total:
            return f"{module} {100 * size // total}% of {total / MiB:.1f} MiB"
        return f"{module} {size / MiB:.1f} MiB"
    got = phone.driver.bytes_downloaded
    return f"{got / MiB:.1f} MiB" if got else ""


@dataclass
class Chapter:
    """A chapter of the demo as told so far: its number, its title and its lines."""

    number: int
    title: str
    lines: list[str] = field(default_factory=list)
    """Plain text (no ANSI), tables included, as a console of the narrator's width shows them."""


class RecordingNarrator(Narrator):
    """A narrator that keeps the story instead of printing it: each line in plain text with
    the chapter it belongs to (``preamble`` before the first); ``on_change`` is told of each
    line and each new chapter."""

    def __init__(self, *, width: int = 120, on_change: Callable[[], None] | None = None) -> None:
        self.preamble: list[str] = []
        self.chapters: list[Chapter] = []
        self.on_change = on_change
        console = Console(
            file=_LineSink(self._line), width=width, color_system=None, force_terminal=False
        )
        super().__init__(console, [])

    def chapter(self, number: int, title: str) -> None:
        """Start chapter ``number``: its title is kept with it, not printed as a line."""
        self.chapters.append(Chapter(number, title))
        if self.on_change is not None:
            self.on_change()

    def _line(self, line: str) -> None:
        (self.chapters[-1].lines if self.chapters else self.preamble).append(line)
        if self.on_change is not None:
            self.on_change()


class _LineSink(io.StringIO):
    """A text file that hands on each complete line written to it (trailing blanks removed)
    and keeps nothing."""

    def __init__(self, line: Callable[[str], None]) -> None:
        super().__init__()
        self._take = line
        self._partial = ""

    def write(self, text: str) -> int:
        """Hand on the lines ``text`` completes; keep the rest for the next write."""
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._take(line.rstrip())
        return len(text)


# --- Chapter 1: split-horizon discovery ---------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One question asked during the demo and what the answer had to be."""

    label: str
    source: str
    transport: str
    expected: frozenset[str]
    got: frozenset[str]
    line: str

    @property
    def ok(self) -> bool:
        """True when the answer held exactly the expected addresses."""
        return self.got == self.expected


def phone_address(segment: ipaddress.IPv4Network, index: int) -> str:
    """A probing phone's address in ``segment``: x.y.1.250 on, among the phones' addresses
    (x.y.1.n) but clear of the demo fleet's, as the lab's own network has room for phones
    only there."""
    return str(segment.network_address + 256 + 250 + index)


async def show_discovery(running: RunningLab, narrator: Narrator, hold: ClockHold) -> bool:
    """Ask for ``ucupdates-r2`` from both sides of the firewall and show the answers."""
    config, lab = running.config, running.lab
    name = config.ucupdates_names[0]
    inside, outside = phone_address(config.inside, 0), phone_address(config.outside, 0)
    # ucupdates-r2 names one pool: inside, its front ends answer.
    front_ends = frozenset(str(fe.address) for fe in config.discovery_pool.front_ends)
    edge = frozenset({str(config.edge.address)})

    async def probe(label: str, source: str, tcp: bool, expected: frozenset[str]) -> Probe:
        # Held: under fake time the answer's real-time wait must not count as a timeout.
        with hold.held():
            answer = await query(name, lab.dns.address, source, tcp=tcp)
        got = frozenset(str(rr.rdata) for rr in answer.rr)
        return Probe(label, source, "tcp" if tcp else "udp", expected, got, summarise(answer))

    narrator.say(f"A phone no user ever signed in to looks up [bold]{name}[/] (its DHCP domain).")
    probes: list[Probe] = []
    for tcp in (False, True):
        probes.append(await probe("inside phone", inside, tcp, front_ends))
        probes.append(await probe("outside phone", outside, tcp, edge))
    lab.firewall.set_zone(inside, Zone.OUTSIDE)
    probes.append(await probe("inside phone, firewall moved it out", inside, False, edge))
    lab.firewall.clear(inside)
    probes.append(await probe("inside phone, moved back", inside, False, front_ends))

    table = Table("asked by", "from", "via", "answer", "as expected")
    for p in probes:
        mark = "[green]yes[/]" if p.ok else "[red]NO[/]"
        table.add_row(p.label, p.source, p.transport, escape(p.line), mark)
    narrator.console.print(table)
    narrator.say(
        f"Inside, DNS answers with the front ends of {config.ucupdates_pool}; outside, with "
        "the edge (split horizon)."
    )
    return all(p.ok for p in probes)


# --- Chapter 3: the administrator's part --------------------------------------------------


async def publish(
    running: RunningLab, models: Sequence[str], version: str, image_size: int
) -> tuple[int, ImportResult]:
    """Build a vendor cab of ``models`` at ``version``, check it and import it everywhere.

    Returns the cab's size and what the import did. The work (hashing, signing,
    compressing) runs in worker threads, off the loop the lab serves on.
    """
    pki = running.lab.pki
    items = [(phone_model(model), version) for model in models]
    data, _ = await asyncio.to_thread(build, items, pki.vendor, image_size)
    contents = await asyncio.to_thread(
        read_cab,
        data,
        CAB_NAME,
        lambda vendor: pki.vendor(vendor).certificate_pem(),
        verify_vendor_signature,
    )
    result = await asyncio.to_thread(
        partial(
            import_cab,
            running.state_dir,
            contents,
            serving_pools(running.config),
            now=running.lab.clock.now,
        )
    )
    running.store_changed()
    return len(data), result


def serving_pools(config: LabConfig) -> list[str]:
    """The pools the demo fleet is served by, which its cabs are imported into: the one
    ``ucupdates-r2`` names, the one the edge publishes, and the home pools of its users."""
    users = [config.user(entry.user) for entry in config.fleet if entry.user is not None]
    names = [config.ucupdates_pool, config.edge.pool, *(user.pool for user in users)]
    return list(dict.fromkeys(names))


async def administer(
    running: RunningLab, phones: Sequence[DemoPhone], narrator: Narrator, image_size: int
) -> None:
    """Publish the approved and the pending version, and name the test devices."""
    models = list(dict.fromkeys(phone.entry.model for phone in phones))
    pools = serving_pools(running.config)
    others = [pool.fqdn for pool in running.config.pools if pool.fqdn not in pools]
    where = ", ".join(pools) + (
        f" (the pool that serves every demo phone; {', '.join(others)} gets none)" if others else ""
    )
    vendors = ", ".join(dict.fromkeys(get_model(m).vendor.name for m in models))
    for version, approve in ((APPROVED, True), (PENDING, False)):
        size, result = await publish(running, models, version, image_size)
        narrator.say(
            f"built {CAB_NAME} ({size / MiB:.1f} MiB): {', '.join(models)} at [bold]{version}"
            f"[/], catalogs signed by {vendors}"
        )
        narrator.say(
            f"  checked it as an import does (member names, signatures, sizes, SHA-256) and "
            f"imported it into {where}: {len(result.changes)} rules now hold {version} pending"
        )
        if approve:
            with running.store() as store:
                changes = store.change(Action.APPROVE, Selection(all_=True))
            approved = [c for c in changes if c.action != "skipped"]
            narrator.say(
                f"  approved {version} on {len(approved)} rules: phones of these models get it "
                "at their next check (at power-on, at sign-in, every 24 hours)"
            )
        else:
            narrator.say(f"  left {version} pending: only test devices get it")
    with running.store() as store:
        for phone in phones:
            if phone.entry.test_device:
                identity = phone.driver.phone.identity
                store.add_test_device(mac=identity.mac, name=f"{phone.label} (demo)")
                narrator.say(
                    f"named test device {identity.mac}: {phone.label}, {identity.display_name}"
                )


# --- The demo -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhoneOutcome:
    """How one phone of the fleet ended, next to how it should have."""

    label: str
    model: str
    mac: str
    location: str
    user: str | None
    expected: str
    observed: str
    screen: str
    log: tuple[LogEntry, ...] = ()
    requests: tuple[AuditRecord, ...] = ()
    """What the front ends' audit logs wrote of this phone's requests (its checks, and
    inside its downloads too, which name no phone but come from its address)."""

    @property
    def ok(self) -> bool:
        """True when the phone ended as it should."""
        return self.observed == self.expected

    def trouble(self, last: int = 3) -> list[str]:
        """The phone's last ``last`` error lines, as its log writes them."""
        return [e.render() for e in self.log if e.level is LogLevel.ERROR][-last:]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "phone": self.label,
            "model": self.model,
            "mac": self.mac,
            "location": self.location,
            "user": self.user,
            "expected": self.expected,
            "ended_as": self.observed,
            "ok": self.ok,
            "system_information": self.screen,
            "log": [entry.as_dict() for entry in self.log],
        }


@dataclass(frozen=True)
class DemoResult:
    """What the demo showed: whether discovery and every phone came out as they should."""

    discovery_ok: bool
    phones: tuple[PhoneOutcome, ...]
    started: float
    ended: float
    real_seconds: float
    scale: float | None
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when everything came out as it should."""
        return self.discovery_ok and all(p.ok for p in self.phones) and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "ok": self.ok,
            "discovery_ok": self.discovery_ok,
            "phones": [p.as_dict() for p in self.phones],
            "phone_time": {
                "started": to_datetime(self.started).isoformat(),
                "ended": to_datetime(self.ended).isoformat(),
                "seconds": self.ended - self.started,
            },
            "real_seconds": self.real_seconds,
            "scale": self.scale,
            "problems": list(self.problems),
        }


async def run_demo(
    config: LabConfig,
    state_dir: Path,
    narration: Console | Narrator,
    *,
    scale: float | None = DEFAULT_SCALE,
    image_size: int = DEFAULT_IMAGE_SIZE,
    before_phones: Callable[[RunningLab], None] | None = None,
    between_chapters: BetweenChapters | None = None,
    network: LabNetwork | None = None,
    capture: str | None = None,
) -> DemoResult:
    """Run the whole demo on ``config`` in ``state_dir``, told on ``narration``: a console
    (through a Narrator) or a narrator of the caller's (a RecordingNarrator, say).

    ``scale``: phone seconds per real second, or None for the loop's own time (tests under
    looptime). ``before_phones`` is called once the administrator is done, before the
    phones are plugged in: a test or a trainer can break something there.
    ``between_chapters`` is awaited before each chapter but the first; phone time runs on
    while it waits (the lab stopped before chapter 5, the summary, so the outcome stands).
    ``network`` and ``capture``: the lab's own network (`--netns`) and a capture in it.
    """
    began = time.perf_counter()
    phones = demo_fleet(config)
    if network is None:
        # In a network of its own the servers' ports are in new namespaces, and the admin
        # API's is bound already (by the network, which said so if it could not).
        check_ports(config)
    if isinstance(narration, Narrator):
        narrator = narration
        narrator.phones = list(phones)
    else:
        narrator = Narrator(narration, phones)
    told: list[int] = []

    async def chapter(number: int) -> None:
        title = CHAPTERS[number - 1]
        if told and between_chapters is not None:
            await between_chapters(number, title)
        told.append(number)
        narrator.chapter(number, title)

    async with (
        running_lab(config, state_dir, scale=scale, network=network, capture=capture) as running,
        phones_on(running, state_dir / "phones") as on,
    ):
        on.network = WatchedNetwork(on.network, narrator.progress)
        make_drivers(phones, on, narrator, config)
        settle = max(SETTLE_TIME, (scale or 0.0) * REAL_ALLOWANCE)
        _introduce(running, narrator, scale, len(phones))
        started = on.clock.now()

        await chapter(1)
        discovery_ok = await show_discovery(running, narrator, on.hold)

        problems: list[str] = []
        signers = [p for p in phones if p.credentials is not None]
        if signers:
            await chapter(2)
            problems += await _sign_in_first(signers, narrator, settle)

        await chapter(3)
        await administer(running, phones, narrator, image_size)
        if before_phones is not None:
            before_phones(running)

        await chapter(4)
        for phone in phones:
            narrator.say(f"{phone.label:<10} {phone.role()}")
        plugged = on.clock.now()
        for k, phone in enumerate(phones):
            phone.driver.at(plugged + k * STAGGER, phone.driver.power_on)
        async with narrator.live():
            await _settled(phones, plugged + settle)
        ended = on.clock.now()
        outcomes = tuple(_outcome(phone, running) for phone in phones)
    result = DemoResult(
        discovery_ok,
        outcomes,
        started,
        ended,
        time.perf_counter() - began,
        scale,
        tuple(problems),
    )
    await chapter(5)
    report(result, narrator)
    return result


def _introduce(running: RunningLab, narrator: Narrator, scale: float | None, count: int) -> None:
    config = running.config
    host, port = running.lab.dns.address
    endpoints = running.lab.endpoints()
    pools = "; ".join(
        f"pool {pool.fqdn}: "
        + ", ".join(
            f"{fe.name} internal {endpoints[fe.name]['internal']}, external "
            f"{endpoints[fe.name]['external']}"
            for fe in pool.front_ends
        )
        for pool in config.pools
    )
    narrator.say(
        f"[bold]Device Update Lab demo[/]: lab {config.name} ({escape(config.source)}), "
        f"{count} phones"
    )
    narrator.say(
        f"DNS {host}:{port} (ucupdates-r2 at {config.ucupdates_pool}); {pools}; "
        f"edge {config.edge.fqdn} {endpoints['edge']['https']} publishing {config.edge.pool}"
    )
    if scale is not None:
        narrator.say(
            f"Phone time runs {scale:g} times as fast as real time: the five-minute wait "
            f"before a restart takes {300 / scale:.1f} s."
        )


async def _sign_in_first(
    signers: Sequence[DemoPhone], narrator: Narrator, settle: float
) -> list[str]:
    """Power the signers' phones on, sign their users in, unplug them; what went wrong."""
    users = ", ".join(f"{p.upn} on {p.label} ({p.entry.location})" for p in signers)
    narrator.say(f"{users}. The lab has no firmware yet, so nothing is installed.")
    clock = signers[0].driver.clock
    for phone in signers:
        phone.driver.power_on()
    await _settled(signers, clock.now() + settle)
    for phone in signers:
        assert phone.credentials is not None
        phone.driver.sign_in(phone.credentials)
    await _settled(signers, clock.now() + settle)
    problems = [
        f"{p.label}: {p.upn} did not sign in ({p.driver.phone.state.value})"
        for p in signers
        if p.driver.phone.signed_in_user is None
    ]
    for phone in signers:
        phone.driver.power_off()
    narrator.say(
        "Their phones keep in-band provisioning (the service's internal and external URLs) "
        "and the user's credentials in flash. They are unplugged for now."
    )
    return problems


async def _settled(phones: Sequence[DemoPhone], until: float) -> None:
    """Wait until every phone has nothing left to do, or phone time ``until`` passes."""
    await asyncio.gather(
        *(p.driver.wait_for(lambda d: d.settled, until=until, what="settling") for p in phones),
        return_exceptions=True,  # a phone that did not settle shows in its outcome
    )


def _outcome(phone: DemoPhone, running: RunningLab) -> PhoneOutcome:
    driver = phone.driver
    core = driver.phone
    checks = [r for r in running.requests(core.identity.mac) if r.path.endswith("ucdevice.upx")]
    return PhoneOutcome(
        label=phone.label,
        model=phone.entry.model,
        mac=core.identity.mac,
        location=phone.entry.location,
        user=phone.upn,
        expected=expected_outcome(phone),
        observed=observed_outcome(driver, checks),
        screen=system_information(core),
        log=core.log.entries,
        requests=tuple(
            r
            for r in running.audit
            if r.mac == core.identity.mac or r.client_address == phone.address
        ),
    )


WIRE_CODES = (
    LogCode.CHECKING,
    LogCode.UP_TO_DATE,
    LogCode.OFFERED,
    LogCode.DOWNLOADING,
    LogCode.DOWNLOADED,
    LogCode.RESTARTING,
)
"""The phone log lines shown beside the audit lines: the exchanges and what followed."""


def wire_table(phone: PhoneOutcome) -> Table:
    """One phone's log lines beside the front ends' audit lines of its requests, in time
    order: the lab's one clock makes them agree to the millisecond."""
    rows = [
        (audit_time(to_datetime(e.time)), f"{e.level.value:<5} {e.topic}: {e.message}", "")
        for e in phone.log
        if e.code in WIRE_CODES
    ]
    rows += [
        (
            r.time,
            "",
            f"{r.server} {r.site}: {r.path.rsplit('/', 1)[-1]} {r.status} {r.decision}".rstrip(),
        )
        for r in phone.requests
    ]
    table = Table(
        "time (UTC)", f"{phone.label}'s log", "front end's audit log", title_justify="left"
    )
    for when, said, written in sorted(rows, key=lambda row: (row[0], row[2] != "")):
        table.add_row(when[11:23], escape(said), escape(written))
    return table


def report(result: DemoResult, narrator: Narrator) -> None:
    """Chapter 5, once its heading is told: the summary table, the System Information
    screens, and the verdict."""
    console = narrator.console
    table = Table("phone", "location", "user", "expected", "ended as", "ok")
    for p in result.phones:
        mark = "[green]yes[/]" if p.ok else "[red]NO[/]"
        table.add_row(
            p.label, p.location, p.user or "-", escape(p.expected), escape(p.observed), mark
        )
    console.print(table)
    shown = next((p for p in result.phones if p.requests and p.location == "inside"), None)
    if shown is not None:
        narrator.section(f"{shown.label}, from both ends of the wire")
        narrator.say(
            "The phone's log and the front ends' audit logs keep the lab's one clock: each "
            "request's audit line falls between the phone's line that sends it and the one "
            "that reads the answer."
        )
        console.print(wire_table(shown))
    narrator.section("System Information, as each phone shows it")
    console.print(
        Columns(
            [Panel(Text(p.screen.rstrip("\n")), title=p.label, expand=False) for p in result.phones]
        )
    )
    span = result.ended - result.started
    narrator.say(
        f"Phone time {to_datetime(result.started):%H:%M:%S}-{to_datetime(result.ended):%H:%M:%S}"
        f" UTC ({span / 60:.0f} min); real time {result.real_seconds:.1f} s."
    )
    if result.ok:
        narrator.say("[green bold]Every phone ended as it should.[/]")
        return
    narrator.say("[red bold]The demo did not come out as it should:[/]")
    if not result.discovery_ok:
        narrator.say("  DNS discovery: a view answered with other addresses (table above)")
    for problem in result.problems:
        narrator.say(f"  {escape(problem)}")
    for p in result.phones:
        if not p.ok:
            narrator.say(
                f"  {p.label}: expected {escape(p.expected)}, ended as {escape(p.observed)}"
            )
            for line in p.trouble():
                narrator.say(f"    {escape(line)}")


# --- Where the demo runs ------------------------------------------------------------------


def prepare_state_dir(path: Path) -> Path:
    """Make ``path`` a fresh state directory for the demo and return it.

    A directory an earlier demo made (it holds the marker file) is emptied; one that holds
    anything else (a lab's state, say) is refused with LabStateError, never touched.
    """
    if path.exists():
        if not path.is_dir():
            raise LabStateError(f"{path} is not a directory; give the demo a --state-dir")
        if any(path.iterdir()):
            if not (path / STATE_MARKER).exists():
                raise LabStateError(
                    f"{path} holds files the demo did not make (a lab's state?); the demo "
                    "needs a directory of its own: give another --state-dir (make demo "
                    "STATE=DIR), or remove this one"
                )
            if (path / RUN_FILE).exists() and read_run_file(path)["alive"]:
                raise LabStateError(f"another demo is running from {path}")
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    (path / STATE_MARKER).write_text(
        "made by `lab demo`; the next demo run in this directory empties it\n", encoding="utf-8"
    )
    return path


def check_ports(config: LabConfig) -> None:
    """PortInUseError naming the first port of the config that another program holds."""
    ports, tcp = config.ports, socket.SOCK_STREAM
    listeners = [
        ("the DNS server", "dns", str(config.dns_address), ports.dns, socket.SOCK_DGRAM),
        ("the DNS server", "dns", str(config.dns_address), ports.dns, tcp),
        ("the edge", "edge", str(config.edge.address), ports.edge, tcp),
        ("the admin API", "admin", "127.0.0.1", ports.admin, tcp),
    ]
    for fe in config.front_ends:
        listeners += [
            (f"{fe.name}'s internal site", "internal", str(fe.address), ports.internal, tcp),
            (f"{fe.name}'s external site", "external", str(fe.address), ports.external, tcp),
        ]
    for what, key, host, port, kind in listeners:
        if port == 0:
            continue
        with socket_at(host, kind) as sock:
            if kind == tcp:
                # As the lab binds: a port left in TIME_WAIT by an earlier run is free.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue  # not ours to explain: the lab reports it when it binds
                raise PortInUseError(
                    f"port {port} on {host} ({what}: ports.{key} in the config) is already "
                    "in use. Is a lab running (`lab up`), or another demo? Stop it, or run the "
                    f"demo on other ports: copy lab/default.toml, set ports.{key} under "
                    "[ports] (0 picks any free port) and run `lab --config FILE demo`"
                ) from None
