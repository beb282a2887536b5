"""Troubleshooting scenarios: a named setup, an optional fault, and the outcome to observe.

Everything that makes a scenario run lives here; the catalogue (lab/ops/scenarios/catalogue.py)
is only data. A scenario is run in this order, on one event loop with lab.ops.harness:

1. the lab starts on the scenario's config (the setup's config changes; a certificate fault
   makes the front ends serve faulty certificates from the start);
2. the administrator's setup: publish firmware (build, import, approve), name test devices;
3. the fault, unless the run leaves it out: DNS records removed, files altered, rules
   removed from one front end; then the phones are made (phone time starts), the subject
   with the fault's phone faults (power cut, clock, call) or download watch (maintenance);
4. the script: what the phones (and the administrator) do while the clock runs;
5. the observation: the subject phone's outcome as one short value (``describe_outcome``),
   the virtual timeline, and the phone log lines the scenario names as evidence.

A run passes when the observed value equals the expected one. Outcome values come from one
vocabulary (see ``describe_outcome``), so a run without its fault shows what a healthy lab
does, in the same words, and the comparison tells the two apart. Outcomes and evidence are
chosen by the phone log's codes and facts (emulator.phonelog.LogCode), never by its
sentences: those are for people, and their words may change.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from emulator import (
    AnyFault,
    CertificateProblem,
    CheckTrigger,
    Credentials,
    DriverError,
    FirmwareProblem,
    LogCode,
    LogEntry,
    PhoneDriver,
    PhoneState,
    Purpose,
    RouteKind,
    WaitTimeoutError,
    describe_status,
    format_duration,
    get_model,
    to_datetime,
)
from lab.errors import ScenarioError
from lab.events import Event
from lab.models import phone_model
from lab.net.config import LabConfig
from lab.net.netns import LabNetwork, netns_config
from lab.net.pki import FaultKind
from lab.ops.harness import (
    IMAGE_SIZE,
    NEW,
    HeldNetwork,
    Phones,
    RunningLab,
    lab_clock,
    phones_on,
    started_lab,
)
from lab.ops.runner import Lab
from lab.service.inventory import Flag, read_inventory
from lab.service.problems import Diagnostic
from lab.store.cab import write_file_atomic
from lab.store.catalog import sign_catalog
from lab.store.decision import Action
from lab.store.filestore import FileStore
from lab.store.importer import remove_rules
from lab.store.store import Selection, Store

HOUR = 3600.0
DAY = 86_400.0
SETTLE_WITHIN = 12 * HOUR
"""How long (phone time) a Settle step waits before it reports the phones still busy."""

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


# --- The administrator's setup ----------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """Build a vendor cab for ``model`` at ``version``, import it to every front end, approve."""

    model: str = "CX600"
    version: str = NEW
    approve: bool = True
    size: int = IMAGE_SIZE

    def describe(self) -> str:
        """The step in words."""
        state = "approved" if self.approve else "left pending"
        return f"administrator imports {self.model} {self.version} ({state})"


@dataclass(frozen=True)
class NameTestDevice:
    """Make phone number ``phone`` of the scenario (0-based) a test device, by its MAC."""

    phone: int = 0

    def describe(self) -> str:
        """The step in words."""
        return f"administrator names phone {self.phone + 1} a test device"


AdminStep = Publish | NameTestDevice


@dataclass(frozen=True)
class Setup:
    """Config changes before the lab starts, and what the administrator did before phones run."""

    dhcp_domain: str | None = None
    """The DNS domain DHCP hands out, when it is not the lab's usual one."""
    admin: tuple[AdminStep, ...] = (Publish(),)

    def configure(self, config: LabConfig) -> LabConfig:
        """``config`` with this setup's changes."""
        if self.dhcp_domain is None:
            return config
        return dataclasses.replace(config, dhcp_domain=self.dhcp_domain)


# --- The phones -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhoneSpec:
    """One phone of a scenario: model, number, inside or outside, who signs in on it."""

    model: str = "CX600"
    index: int = 1
    inside: bool = True
    user: str | None = None
    """A directory user of the config who signs in as soon as the phone is up."""

    def label(self) -> str:
        """How the timeline and the log name this phone (``CX600 #1``)."""
        return f"{self.model} #{self.index}"


# --- The script: what happens while the clock runs ------------------------------------------


@dataclass(frozen=True)
class PowerOn:
    """Phones are plugged in: those at the positions given (0-based), or every phone."""

    phones: tuple[int, ...] = ()


@dataclass(frozen=True)
class Settle:
    """Wait until every phone has nothing left to do (at most ``within`` of phone time)."""

    within: float = SETTLE_WITHIN


@dataclass(frozen=True)
class Pass:
    """Let ``seconds`` of phone time pass, whatever the phones do meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Admin:
    """The administrator approves, resets or restores the rules of ``model`` while phones run."""

    action: Action
    model: str = "CX600"


@dataclass(frozen=True)
class Unplug:
    """Phones are unplugged: those at the positions given (0-based), or every phone."""

    phones: tuple[int, ...] = ()


Step = PowerOn | Settle | Pass | Admin | Unplug
UPDATE = (PowerOn(), Settle())
"""The usual script: power the phones on and wait until they are done."""


# --- Faults -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """Something wrong with the lab or a phone, applied after the setup; a run may leave it out.

    Each hook is a point where a fault can act; a fault overrides the ones it needs.
    """

    def describe(self) -> str:
        """The fault in words."""
        raise NotImplementedError

    def certificate(self) -> FaultKind | None:
        """A fault the front ends' certificates have from the start, if any."""
        return None

    def place(self, spec: PhoneSpec) -> PhoneSpec:
        """The subject phone as the fault leaves it (moved outside, for example)."""
        return spec

    def phone_faults(self) -> tuple[AnyFault, ...]:
        """Faults the world does to the subject phone (emulator.faults)."""
        return ()

    def apply(self, lab: RunningLab) -> None:
        """Break the running lab after the setup, before any phone exists."""

    @property
    def watches_downloads(self) -> bool:
        """Whether ``on_download`` must hear of downloads as they grow."""
        return False

    def on_download(self, run: Run, address: str, got: int, total: int | None) -> None:
        """A phone's download from ``address`` has ``got`` bytes of ``total``."""


@dataclass(frozen=True)
class DNSRecordMissing(Fault):
    """A DNS name does not exist (NXDOMAIN from both views)."""

    name: str

    def describe(self) -> str:
        """The fault in words."""
        return f"no {self.name} record in DNS"

    def apply(self, lab: RunningLab) -> None:
        """Remove the name from the lab's DNS."""
        lab.lab.dns.faults.set(self.name, "remove")


@dataclass(frozen=True)
class BadCertificate(Fault):
    """Every front end serves a certificate faulty in one way (lab.net.pki FaultKind)."""

    kind: FaultKind

    def describe(self) -> str:
        """The fault in words."""
        return f"the front ends serve a certificate with the fault {self.kind!r}"

    def certificate(self) -> FaultKind | None:
        """The certificate fault."""
        return self.kind


@dataclass(frozen=True)
class PhoneTrouble(Fault):
    """Something happens to the subject phone: a power cut, a failed boot, a wrong clock, a call."""

    fault: AnyFault

    def describe(self) -> str:
        """The fault in words."""
        return self.fault.describe()

    def phone_faults(self) -> tuple[AnyFault, ...]:
        """The phone fault."""
        return (self.fault,)


@dataclass(frozen=True)
class Outside(Fault):
    """The subject phone is outside the firewall (on the internet, at someone's home)."""

    def describe(self) -> str:
        """The fault in words."""
        return "the phone is outside the corporate network"

    def place(self, spec: PhoneSpec) -> PhoneSpec:
        """The phone, moved outside."""
        return dataclasses.replace(spec, inside=False)


@dataclass(frozen=True)
class NotImportedInto(Fault):
    """The firmware of ``model`` was imported into every pool but ``pool`` (an FQDN)."""

    pool: str
    model: str = "CX600"

    def describe(self) -> str:
        """The fault in words."""
        return f"pool {self.pool} has no {self.model} rule or files (not imported there)"

    def apply(self, lab: RunningLab) -> None:
        """Remove the model's rules, and with them its files, from ``pool``."""
        selection = Selection(pool=self.pool, model=self.model)
        remove_rules(lab.state_dir, selection, now=lab.lab.clock.now)
        lab.store_changed()


@dataclass(frozen=True)
class Maintenance(Fault):
    """The front end serving a download enters maintenance once ``at_byte`` bytes are through."""

    immediate: bool
    at_byte: int = 1024 * 1024

    def describe(self) -> str:
        """The fault in words."""
        how = "immediate maintenance" if self.immediate else "maintenance (drain)"
        return f"the front end serving the image enters {how} during the download"

    @property
    def watches_downloads(self) -> bool:
        """Downloads are watched: the fault strikes part way through one."""
        return True

    def on_download(self, run: Run, address: str, got: int, total: int | None) -> None:
        """Take the serving front end out of production, once, part way through a file."""
        if run.struck or total is None or not self.at_byte <= got < total:
            return
        server = next(fe for fe in run.config.front_ends if str(fe.address) == address)
        run.struck = True
        run.running.lab.pool.enter_maintenance(server.name, immediate=self.immediate)


class ProxyMistake(enum.Enum):
    """A classic mistake in publishing the external web services through a reverse proxy."""

    LISTENER_CERTIFICATE = "its certificate lacks the external web name"
    INTERNAL_PORT = "its publishing rule bridges to the front ends' internal port"
    UNTRUSTED_CA = "it does not trust the CA that issued the front ends' certificates"
    NO_DIRECT_AUTHENTICATION = "its publishing rule does not let clients authenticate directly"


@dataclass(frozen=True)
class EdgeMisconfigured(Fault):
    """The edge (the reverse proxy) publishes the external web services with one ``mistake``."""

    mistake: ProxyMistake

    def describe(self) -> str:
        """The fault in words."""
        return f"the edge is misconfigured: {self.mistake.value}"

    def apply(self, lab: RunningLab) -> None:
        """Reconfigure the running edge as the mistake has it."""
        edge = lab.lab.pool.edge
        if edge is None:
            raise ScenarioError("the lab runs no edge to misconfigure")
        match self.mistake:
            case ProxyMistake.LISTENER_CERTIFICATE:
                faulty = lab.lab.pki.faulty_edge("no-external-web-name")
                edge.present(faulty.server_context())
            case ProxyMistake.INTERNAL_PORT:
                # The internal site's port, on every front end (the lease's https_port).
                edge.rule = dataclasses.replace(edge.rule, bridge_port=lab.lab.pool.https_port)
            case ProxyMistake.UNTRUSTED_CA:
                # A proxy as installed: it trusts the system's public CAs, not the lab's.
                edge.trust(ssl.create_default_context())
            case ProxyMistake.NO_DIRECT_AUTHENTICATION:
                edge.rule = dataclasses.replace(edge.rule, client_may_authenticate=False)


@dataclass(frozen=True)
class AlteredImage(Fault):
    """The image of ``model`` at ``version`` was altered in every front end's file store."""

    model: str = "CX600"
    version: str = NEW

    def describe(self) -> str:
        """The fault in words."""
        return f"one byte of the {self.model} {self.version} image is changed on every server"

    def apply(self, lab: RunningLab) -> None:
        """Flip a byte of the stored image."""
        lab.tamper(self.model, self.version)


@dataclass(frozen=True)
class ForeignSignature(Fault):
    """The catalog served for ``model`` at ``version`` is signed with another vendor's key."""

    signer: str = "HP"
    model: str = "CX600"
    version: str = NEW

    def describe(self) -> str:
        """The fault in words."""
        return f"the {self.model} {self.version} catalog is signed with the {self.signer} key"

    def apply(self, lab: RunningLab) -> None:
        """Sign the stored catalogs again, with the other vendor's key."""
        signer = lab.lab.pki.vendor(self.signer)
        folder = f"{phone_model(self.model).kind().path}/{self.version}/CPE"
        for pool in lab.config.pools:
            path = FileStore(lab.state_dir, pool.fqdn).path(f"{folder}/CPE.cat")
            data = path.read_bytes()
            body = data[: data.rindex(b"signature: ")]
            write_file_atomic(path, sign_catalog(body, signer))


# --- A scenario ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    """What a scenario without a fault owes its outcome to, and how to take it away: steps
    of its setup or script, or its phones, replaced (or dropped, with None), or a fault
    that breaks it. A test runs the scenario without it and sees the outcome change."""

    what: str
    """In words: what the outcome depends on."""
    replace: tuple[
        tuple[AdminStep | Step | PhoneSpec, AdminStep | Step | PhoneSpec | None], ...
    ] = ()
    breaks: Fault | None = None

    def without(self, scenario: Scenario) -> Scenario:
        """``scenario`` with what it depends on taken away (and no dependency of its own)."""
        found: set[int] = set()

        def swapped(items: tuple[Any, ...]) -> tuple[Any, ...]:
            result = []
            for item in items:
                for number, (old, new) in enumerate(self.replace):
                    if item == old:
                        found.add(number)
                        item = new
                        break
                if item is not None:
                    result.append(item)
            return tuple(result)

        changed = dataclasses.replace(
            scenario,
            setup=dataclasses.replace(scenario.setup, admin=swapped(scenario.setup.admin)),
            script=swapped(scenario.script),
            phones=swapped(scenario.phones),
            fault=self.breaks if self.breaks is not None else scenario.fault,
            depends_on=None,
        )
        missing = [old for number, (old, _) in enumerate(self.replace) if number not in found]
        if missing:
            raise ScenarioError(f"{scenario.name}: its dependency names steps it lacks: {missing}")
        return changed


@dataclass(frozen=True)
class Scenario:
    """A named setup, an optional fault, what the phones do, and the outcome to observe.

    Every scenario of the catalogue names what its outcome depends on: its fault, or else
    ``depends_on`` (the catalogue's tests run it without, and see the outcome change).
    """

    name: str
    """Kebab-case, as ``lab scenario run NAME`` takes it."""
    title: str
    symptom: str
    """What a support engineer is told."""
    cause: str
    fix: str
    expected: str
    """The outcome value (``describe_outcome``'s words) the subject phone must show."""
    setup: Setup = Setup()
    fault: Fault | None = None
    phones: tuple[PhoneSpec, ...] = (PhoneSpec(),)
    script: tuple[Step, ...] = UPDATE
    evidence: tuple[LogCode, ...] = ()
    """The log codes whose phone log lines show the outcome (shown to people as written)."""
    subject: int = 0
    """Which phone the outcome is observed on (0-based)."""
    scale: float = 600.0
    """Phone seconds per real second for runs on a scaled clock (the CLI)."""
    depends_on: Dependency | None = None
    """For a scenario without a fault: what its outcome depends on."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ScenarioError(f"scenario name {self.name!r} is not kebab-case")
        if not 0 <= self.subject < len(self.phones):
            raise ScenarioError(f"{self.name}: no phone {self.subject} to observe")
        for step in self.setup.admin:
            if isinstance(step, NameTestDevice) and not 0 <= step.phone < len(self.phones):
                raise ScenarioError(f"{self.name}: no phone {step.phone} to name a test device")
        for turn in self.script:
            if isinstance(turn, PowerOn):
                for phone in turn.phones:
                    if not 0 <= phone < len(self.phones):
                        raise ScenarioError(f"{self.name}: no phone {phone} to power on")

    def as_dict(self) -> dict[str, Any]:
        """What the scenario is, JSON-ready (``lab scenario list --json``)."""
        return {
            "name": self.name,
            "title": self.title,
            "symptom": self.symptom,
            "cause": self.cause,
            "fix": self.fix,
            "fault": self.fault.describe() if self.fault else None,
            "depends_on": self.depends_on.what if self.depends_on else None,
            "expected": self.expected,
        }


def find(scenarios: Sequence[Scenario], name: str) -> Scenario:
    """The scenario called ``name``; ScenarioError naming the known ones otherwise."""
    for scenario in scenarios:
        if scenario.name == name:
            return scenario
    known = ", ".join(s.name for s in scenarios)
    raise ScenarioError(f"no scenario {name!r} (known: {known})")


# --- A run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """A phone log line that shows a run's outcome, and whose phone it is (named when the
    run has several)."""

    phone: str | None
    entry: LogEntry

    @property
    def line(self) -> str:
        """The line as the phone's log writes it, after its phone's name if any."""
        prefix = f"[{self.phone}] " if self.phone is not None else ""
        return prefix + self.entry.render()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the phone, the log entry's code and facts, and the line."""
        return {"phone": self.phone, **self.entry.as_dict(), "line": self.line}


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a run's virtual timeline: when (phone time), who, what."""

    time: float
    who: str
    what: str


@dataclass
class Run:
    """One scenario being run: the lab, its phones, and what happened so far."""

    scenario: Scenario
    running: RunningLab
    phones: Phones
    specs: tuple[PhoneSpec, ...]
    drivers: list[PhoneDriver] = field(default_factory=list)
    notes: list[TimelineEntry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    struck: bool = False
    """Whether a fault that strikes once has struck."""
    settled: bool = True
    """False when a Settle step ran out of time with a phone still busy."""
    on_timeline: Callable[[TimelineEntry], None] | None = None
    """Told each timeline entry as it happens (see run_scenario)."""
    told: dict[int, int] = field(default_factory=dict)
    """How many of each phone's changes (by position) were told to ``on_timeline``."""

    @property
    def config(self) -> LabConfig:
        """The lab's config (with the setup's changes)."""
        return self.running.config

    @property
    def subject(self) -> PhoneDriver:
        """The phone the outcome is observed on."""
        return self.drivers[self.scenario.subject]

    def now(self) -> float:
        """Phone time."""
        return self.phones.clock.now()

    def note(self, what: str, who: str = "lab", at: float | None = None) -> None:
        """Add a line to the timeline, now (or ``at`` a phone time already taken)."""
        entry = TimelineEntry(self.now() if at is None else at, who, what)
        self.notes.append(entry)
        if self.on_timeline is not None:
            self.on_timeline(entry)

    def phone_changed(self, number: int, driver: PhoneDriver) -> None:
        """Driver observer of phone ``number``: tell its new timeline entries, if any."""
        if self.on_timeline is None:
            return
        told = self.told.get(number, 0)
        if len(driver.timeline) > told:
            self.told[number] = len(driver.timeline)
            for entry in _phone_entries(self.specs[number], driver, told):
                self.on_timeline(entry)


@dataclass(frozen=True)
class Observation:
    """What a run of a scenario showed, and whether it is the expected outcome."""

    scenario: Scenario
    fault: str | None
    """The fault as applied, or None when the scenario has none or the run left it out."""
    expected: str
    observed: str
    timeline: tuple[TimelineEntry, ...]
    start: float
    """Phone time at which the phones were made (offsets on the timeline count from it)."""
    log: tuple[Evidence, ...]
    """The phone log lines that show the outcome."""
    virtual_seconds: float
    real_seconds: float
    scale: float | None
    settled: bool

    @property
    def passed(self) -> bool:
        """Whether the observed outcome is the expected one."""
        return self.observed == self.expected

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            # What this run applied and expected, in place of the scenario's own.
            **self.scenario.as_dict(),
            "fault": self.fault,
            "expected": self.expected,
            "observed": self.observed,
            "passed": self.passed,
            "settled": self.settled,
            "timeline": [
                {
                    "offset": round(e.time - self.start, 3),
                    "at": to_datetime(e.time).isoformat(),
                    "who": e.who,
                    "what": e.what,
                }
                for e in self.timeline
            ],
            "log": [line.as_dict() for line in self.log],
            "virtual_seconds": round(self.virtual_seconds, 3),
            "real_seconds": round(self.real_seconds, 3),
            "scale": self.scale,
        }


async def run_scenario(
    scenario: Scenario,
    config: LabConfig,
    workdir: Path,
    *,
    fault: bool = True,
    expected: str | None = None,
    scale: float | None = None,
    on_timeline: Callable[[TimelineEntry], None] | None = None,
    network: LabNetwork | None = None,
    capture: str | None = None,
) -> Observation:
    """Run ``scenario`` on a lab of ``config`` (ports 0) with its state under ``workdir``.

    ``fault=False`` leaves the fault out; ``expected`` replaces the expected outcome. With no
    ``scale`` the phones live on the loop's time (tests under looptime), otherwise on a
    ScaledClock running ``scale`` times faster than real time. ``on_timeline`` is told each
    entry of the timeline as it happens, so a viewer can follow the run: the entries
    ``Observation.timeline`` holds at the end, in the order they happened (the observation
    sorts them by time). It must not raise. With ``network`` (lab.net.netns, built from
    ``config``) the lab runs in it on Lync's ports, recording into ``capture`` if named.
    """
    started = time.monotonic()
    applied = scenario.fault if fault else None
    configured = scenario.setup.configure(config)
    lab = Lab(
        netns_config(configured) if network is not None else configured,
        workdir / "state",
        certificate_fault=applied.certificate() if applied else None,
        clock=lab_clock(scale),
        network=network,
        capture=capture,
    )
    try:
        async with started_lab(lab, scale=scale) as running:
            specs = _placed(scenario, applied)
            # The administrator's setup, on the lab's clock before any phone is made.
            done = [_admin(running, specs, step) for step in scenario.setup.admin]
            if applied is not None:
                applied.apply(running)
                done.append(f"fault: {applied.describe()}")
            async with phones_on(running, workdir / "phones") as phones:
                run = Run(scenario, running, phones, specs, on_timeline=on_timeline)
                start = run.now()
                # The setup was done before phone time began: it stands at the start, not
                # at however much later (real time on a scaled clock) these lines are added.
                for what in done:
                    run.note(what, at=start)
                _make_phones(run, applied)
                unsubscribe = lab.events.subscribe(lambda event: _on_event(run, event))
                try:
                    for step in scenario.script:
                        await _do(run, step)
                finally:
                    unsubscribe()
                observed = describe_outcome(run) + await _inventory_verdict(run)
                end = run.now()
    except DriverError as exc:
        raise ScenarioError(f"{scenario.name}: a phone stopped: {exc}") from exc
    return Observation(
        scenario=scenario,
        fault=applied.describe() if applied else None,
        expected=scenario.expected if expected is None else expected,
        observed=observed,
        timeline=_timeline(run),
        start=start,
        log=_evidence(run),
        virtual_seconds=end - start,
        real_seconds=time.monotonic() - started,
        scale=scale,
        settled=run.settled,
    )


def _placed(scenario: Scenario, applied: Fault | None) -> tuple[PhoneSpec, ...]:
    """The scenario's phones, the subject where the fault puts it."""
    specs = list(scenario.phones)
    if applied is not None:
        specs[scenario.subject] = applied.place(specs[scenario.subject])
    return tuple(specs)


def _admin(running: RunningLab, specs: tuple[PhoneSpec, ...], step: AdminStep) -> str:
    """Do an administrator's setup step; the step in words."""
    if isinstance(step, Publish):
        running.publish(step.model, step.version, approve=step.approve, size=step.size)
    else:
        spec = specs[step.phone]
        mac = get_model(spec.model).identity(spec.index).mac
        with running.store() as store:
            store.add_test_device(mac=mac, name=spec.label())
    return step.describe()


def _make_phones(run: Run, applied: Fault | None) -> None:
    """The scenario's phones (powered off), the subject with the fault's phone faults."""
    if applied is not None and applied.watches_downloads:
        _watch_downloads(run, applied)
    for number, spec in enumerate(run.specs):
        faults = applied.phone_faults() if applied and number == run.scenario.subject else ()
        driver = run.phones.phone(
            spec.model,
            index=spec.index,
            inside=spec.inside,
            faults=faults,
            seed=spec.index,
            observer=partial(run.phone_changed, number),
        )
        if spec.user is not None:
            user = run.config.user(spec.user)
            driver.sign_in(Credentials(user.name, user.domain, nt_hash=user.nt_hash))
        run.drivers.append(driver)


def _watch_downloads(run: Run, fault: Fault) -> None:
    phones = run.phones
    if not isinstance(phones.network, HeldNetwork):
        # On a scaled clock nothing needs holding, but the wrapper is also where downloads
        # are watched; holding a real clock is harmless.
        phones.network = HeldNetwork(phones.network, phones.hold)
    phones.network.watch = lambda address, got, total: fault.on_download(run, address, got, total)


async def _do(run: Run, step: Step) -> None:
    match step:
        case PowerOn(phones=chosen):
            for driver in [run.drivers[i] for i in chosen] if chosen else run.drivers:
                driver.power_on()
        case Settle(within=within):
            await _settle(run, run.now() + within)
        case Pass(seconds=seconds) if all(d.phone.state is PhoneState.OFF for d in run.drivers):
            # Nothing runs while every phone is unplugged: lab time jumps (a CLI run at its
            # scale would otherwise wait the months out in real time).
            run.note(f"{seconds / DAY:g} days pass with every phone unplugged")
            run.phones.advance(seconds, run.running.lab.clock)
        case Pass(seconds=seconds):
            await run.drivers[0].wait_until(run.now() + seconds)
        case Admin(action=action, model=model):
            run.running.change(action, model)
            run.note(f"administrator runs {action.value} for {model}")
        case Unplug(phones=chosen):
            for driver in [run.drivers[i] for i in chosen] if chosen else run.drivers:
                driver.power_off()
            run.note("phones unplugged")


async def _settle(run: Run, until: float) -> None:
    """Wait until every phone is settled at once, or note the ones still busy at ``until``."""
    try:
        # A fault strikes in steps (power off, then power on later), and a phone looks
        # settled between them: only phones found settled after the wait have settled.
        # Only phones plugged in so far: one the script has yet to power on has nothing to do.
        while not all(d.settled for d in _plugged_in(run)):
            for driver in _plugged_in(run):
                await driver.wait_for(_settled, until=until, what="settling")
    except WaitTimeoutError as exc:
        run.settled = False
        run.note(f"still busy: {exc}")
    failed = [d.error for d in run.drivers if d.error is not None]
    if failed:
        raise failed[0]


def _settled(driver: PhoneDriver) -> bool:
    return driver.settled


def _plugged_in(run: Run) -> list[PhoneDriver]:
    return [d for d in run.drivers if d.powered_on_at is not None]


def _on_event(run: Run, event: Event) -> None:
    if event.kind.startswith("maintenance."):
        run.events.append(event)
        run.note(_event_words(event))


def _event_words(event: Event) -> str:
    """A maintenance event as the timeline says it."""
    data = event.data
    server = data.get("server", "?")
    match event.kind:
        case "maintenance.entered":
            how = "at once, cutting" if data.get("immediate") else "draining, letting finish"
            return f"{server} enters maintenance ({how} {data.get('transfers', 0)} transfer(s))"
        case "maintenance.drained":
            return f"{server} is drained: its last transfer ended"
        case "maintenance.exited":
            return f"{server} is back in production"
    details = ", ".join(f"{k}={v}" for k, v in sorted(data.items()))
    return f"{event.kind} ({details})"


def _timeline(run: Run) -> tuple[TimelineEntry, ...]:
    entries = list(run.notes)
    for spec, driver in zip(run.specs, run.drivers, strict=True):
        entries += _phone_entries(spec, driver)
    # Stable: at equal times the lab's notes (the cause) come before the phones' changes.
    return tuple(sorted(entries, key=lambda e: e.time))


def _phone_entries(spec: PhoneSpec, driver: PhoneDriver, since: int = 0) -> list[TimelineEntry]:
    """The phone's changes of state or version from the ``since``-th on, as timeline lines."""
    return [
        TimelineEntry(c.time, spec.label(), f"{c.state.value} ({c.version})")
        for c in driver.timeline[since:]
    ]


def _evidence(run: Run) -> tuple[Evidence, ...]:
    codes = run.scenario.evidence
    several = len(run.drivers) > 1
    lines = [
        Evidence(spec.label() if several else None, entry)
        for spec, driver in zip(run.specs, run.drivers, strict=True)
        for entry in driver.phone.log
        if entry.code in codes
    ]
    return tuple(sorted(lines, key=lambda line: line.entry.time))


# --- The outcome vocabulary --------------------------------------------------------------------


def describe_outcome(run: Run) -> str:
    """The subject phone's outcome as one short value, the words expected outcomes use.

    ``updated V`` (with how, when something on the way mattered), ``back on V without a
    download`` (restore), ``back on V after W did not start``, or why the phone kept its
    version: ``sign-in refused: ...``, ``refused: ...``, ``refused V: ...`` (firmware),
    ``certificate refused: ...``, ``server failed: ...`` (a 5xx to every check), ``not
    found: NAME``, ``DNS failed: NAME``, else ``stayed on V``. Judged from the codes and
    facts of the phone's log lines, never from their words.
    """
    driver = run.subject
    core = driver.phone
    log = list(core.log)
    versions = _versions(driver)
    end = versions[-1]
    if core.failed_versions and end == versions[0]:
        failed = ", ".join(sorted(core.failed_versions))
        return f"back on {end} after {failed} did not start"
    if len(versions) > 1:
        if any(e.facts.version == end for e in _coded(log, LogCode.BACKUP_OFFERED)):
            return f"back on {end} without a download"
        how = _how_updated(run, log, end)
        return f"updated {end}" + (" " + ", ".join(how) if how else "")
    return _why_not(log) or f"stayed on {end}"


async def _inventory_verdict(run: Run) -> str:
    """What ``lab phones`` says of the subject phone at lab time now, when it says more
    than its version: out of the support window (left behind for longer than it)."""
    inventory = run.running.lab.pool.inventory
    if inventory is not None:
        await inventory.flush()
    # Read only: nothing to announce to the service (RunningLab.store is for changes).
    with Store.open(run.running.state_dir) as store:
        statuses = read_inventory(store, run.running.lab.clock.now())
    mac = run.subject.phone.identity.mac
    flags = next((s.flags for s in statuses if s.phone.mac == mac), ())
    return ", out of the support window" if Flag.LEFT_BEHIND in flags else ""


def _versions(driver: PhoneDriver) -> list[str]:
    """The versions the phone ran, in order, each change once."""
    versions = [driver.phone.current_version]
    if driver.timeline:
        versions = [driver.timeline[0].version]
        for change in driver.timeline[1:]:
            if change.version != versions[-1]:
                versions.append(change.version)
    return versions


def _coded(log: list[LogEntry], *codes: LogCode) -> list[LogEntry]:
    return [e for e in log if e.code in codes]


def _how_updated(run: Run, log: list[LogEntry], version: str) -> list[str]:
    """What mattered on the way to ``version``: route, moment, detours, holds."""
    how: list[str] = []
    offers = [e for e in _coded(log, LogCode.OFFERED) if e.facts.version == version]
    offer = offers[-1] if offers else None
    # In-band provisioning's external URL is the one published through the edge.
    if offer is not None and offer.facts.route is RouteKind.EXTERNAL:
        how.append("through the edge")
    if offer is not None:
        checks = [e for e in _coded(log, LogCode.CHECKING) if e.time <= offer.time]
        check = checks[-1].facts if checks else None
        if check is not None and check.trigger is CheckTrigger.PERIODIC:
            assert check.interval is not None
            how.append(f"at the periodic check (every {format_duration(check.interval)})")
    if any(e.facts.status == 404 for e in _coded(log, LogCode.SERVER_FAILED)):
        how.append("after a 404 from one front end")
    if _coded(log, LogCode.DOWNLOAD_CUT):
        how.append("with the download resumed on another front end")
    elif any(
        e.kind == "maintenance.entered" and not e.data.get("immediate") and e.data.get("transfers")
        for e in run.events
    ):
        how.append("with the download finished on a draining front end")
    if _coded(log, LogCode.POWER_CUT_INSTALLING):
        how.append("after a power cut while installing")
    installed = [e.time for e in _coded(log, LogCode.INSTALLED) if e.facts.version == version]
    restarts = [e.time for e in _coded(log, LogCode.RESTARTING) if e.facts.version == version]
    # A call that ends while the update waits to restart is what held the restart.
    if (
        installed
        and restarts
        and any(installed[-1] <= e.time <= restarts[-1] for e in _coded(log, LogCode.CALL_ENDED))
    ):
        how.append("once the call ended")
    return how


# What a refused certificate or update was, in the outcome's words.
_CERTIFICATE_PROBLEMS = {
    CertificateProblem.NOT_YET_VALID: "not yet valid by the phone's clock",
    CertificateProblem.EXPIRED: "expired by the phone's clock",
    CertificateProblem.UNTRUSTED_ISSUER: "issued by an untrusted CA",
    CertificateProblem.NAME_MISMATCH: "{host} is not on it",
}
_FIRMWARE_PROBLEMS = {
    FirmwareProblem.ALTERED: "image altered",
    FirmwareProblem.NOT_SIGNED: "catalog not signed by the vendor",
    FirmwareProblem.DOES_NOT_VERIFY: "it does not verify",
}


def _why_not(log: list[LogEntry]) -> str | None:
    """Why a phone that kept its version did not update, from its log; None if nothing failed."""
    signed_in = [i for i, e in enumerate(log) if e.code is LogCode.SIGNED_IN]
    if signed_in:
        # A sign-in gives the phone new URLs and a user: what failed before it explains nothing.
        log = log[signed_in[-1] + 1 :]
    denied = _coded(log, LogCode.DENIED)
    for entry in denied:
        # A refused sign-in comes first: it is why the phone has no user to check with.
        facts = entry.facts
        if facts.purpose is Purpose.SIGN_IN:
            assert facts.status is not None
            return "sign-in refused: " + describe_status(facts.status, facts.diagnostics)
    for entry in denied:
        facts = entry.facts
        if facts.purpose is not Purpose.CHECK:
            continue
        diagnostics = facts.diagnostics
        if diagnostics is not None and diagnostics.code == Diagnostic.NO_SIGNED_IN_USER.code:
            return "refused: no signed-in user"
        assert facts.status is not None
        return "refused: " + describe_status(facts.status, diagnostics)
    for entry in _coded(log, LogCode.UPDATE_REFUSED):
        firmware = entry.facts.firmware or FirmwareProblem.DOES_NOT_VERIFY
        return f"refused {entry.facts.version}: {_FIRMWARE_PROBLEMS[firmware]}"
    for entry in _coded(log, LogCode.CONNECTION_FAILED):
        certificate = entry.facts.certificate
        if certificate is not None and certificate in _CERTIFICATE_PROBLEMS:
            words = _CERTIFICATE_PROBLEMS[certificate].format(host=entry.facts.host)
            return "certificate refused: " + words
    for entry in _coded(log, LogCode.SERVER_FAILED):
        facts = entry.facts
        if facts.purpose is Purpose.CHECK and facts.status is not None:
            return "server failed: " + describe_status(facts.status, facts.diagnostics)
    for entry in _coded(log, LogCode.DNS_FAILED):
        if entry.facts.dns_answer == "NXDOMAIN":
            return f"not found: {entry.facts.host}"
        return f"DNS failed: {entry.facts.host}"
    return None


# --- The README's troubleshooting table ----------------------------------------------------------


def troubleshooting_table(scenarios: Sequence[Scenario]) -> str:
    """A Markdown table: each scenario's symptom, cause and fix, and the command that shows it."""
    rows = [
        "| Symptom | Cause | Fix | See it |",
        "| --- | --- | --- | --- |",
    ]
    for s in scenarios:
        cells = (s.symptom, s.cause, s.fix, f"`lab scenario run {s.name}`")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    # One line, and nothing Markdown would read as a column break or an HTML tag.
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")
