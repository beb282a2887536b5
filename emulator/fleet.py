"""Fleets: many phones on one loop, staggered boots, a timeline per phone, and a summary.

Rules of this module:
- A fleet is a list of `PhoneSpec` (model, index, inside or outside, a user, faults) run
  on one clock and one `LeaseNetwork`: phones share what can be shared (TLS contexts,
  vendor certificates); each keeps its own core, timers and address.
- Boots are spread over ``stagger`` seconds of phone time, drawn from a RNG seeded with
  ``seed``; each phone's own RNG (back-off jitter) is seeded from ``seed`` and its index,
  so the same fleet with the same seed replays the same way.
- Phones are made by one `emulator.build.PhoneBuilder`; the phones of a segment take its
  addresses in turn from x.y.1.1 on (its address scheme), unless a spec names its own.
- A run ends when every phone has settled (idle or off, nothing scheduled) or when its
  duration of phone time is over, whichever comes first (or only the latter).
- A phone has converged when it is settled at the end; its time to converge is from the
  start of the run to the first moment it was idle after its last change of version.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from emulator.build import Location, PhoneBuilder
from emulator.clock import Clock, from_datetime, to_datetime
from emulator.driver import LARGE_IMAGE, Change, Network, PhoneDriver
from emulator.errors import FleetError
from emulator.events import Credentials
from emulator.faults import AnyFault, Trigger
from emulator.lease import Lease
from emulator.models import PhoneModel
from emulator.phonelog import LogEntry, format_time
from emulator.screens import system_information
from emulator.settings import PhoneSettings
from emulator.states import PhoneState


@dataclass(frozen=True)
class PhoneSpec:
    """One phone of a fleet: its model and index, where it is, who signs in, what goes wrong."""

    model: PhoneModel
    index: int
    location: Location = Location.INSIDE
    credentials: Credentials | None = None
    sign_in: Trigger = field(default_factory=lambda: Trigger(on=PhoneState.IDLE))
    """When the user signs in (default: once the phone is first idle after its boot)."""
    faults: tuple[AnyFault, ...] = ()
    address: str | None = None
    """The phone's own address; by default the next free one of its segment."""


@dataclass(frozen=True)
class PhoneResult:
    """How one phone ended a run: where it is, what it runs, its timeline and screen."""

    index: int
    model: str
    mac: str
    serial: str
    location: str
    address: str
    state: PhoneState
    version: str
    backup_version: str | None
    last_update: float | None
    user: str | None
    powered_on_at: float | None
    converged_after: float | None
    """Seconds from the start of the run until the phone settled on its final version."""
    bytes_downloaded: int
    timeline: tuple[Change, ...]
    screen: str
    log: tuple[LogEntry, ...]
    error: str | None

    def as_dict(self, *, with_log: bool = False) -> dict[str, Any]:
        """A JSON-ready form (phone times as ISO dates)."""
        data: dict[str, Any] = {
            "index": self.index,
            "model": self.model,
            "mac": self.mac,
            "serial": self.serial,
            "location": self.location,
            "address": self.address,
            "state": self.state.name.lower(),
            "version": self.version,
            "backup_version": self.backup_version,
            "last_update": _iso(self.last_update),
            "user": self.user,
            "powered_on_at": _iso(self.powered_on_at),
            "converged_after": self.converged_after,
            "bytes_downloaded": self.bytes_downloaded,
            "timeline": [
                {"time": format_time(c.time), "state": c.state.name.lower(), "version": c.version}
                for c in self.timeline
            ],
            "system_information": self.screen,
            "error": self.error,
        }
        if with_log:
            data["log"] = [entry.as_dict() for entry in self.log]
        return data


@dataclass(frozen=True)
class Summary:
    """What a run came to: phones by state and version, and how long they took to converge."""

    phones: int
    started: float
    ended: float
    by_state: dict[str, int]
    by_version: dict[str, int]
    converged: int
    converge_p50: float | None
    converge_p95: float | None
    converge_max: float | None
    bytes_downloaded: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "phones": self.phones,
            "started": format_time(self.started),
            "ended": format_time(self.ended),
            "phone_seconds": self.ended - self.started,
            "by_state": self.by_state,
            "by_version": self.by_version,
            "converged": self.converged,
            "converge_seconds": {
                "p50": self.converge_p50,
                "p95": self.converge_p95,
                "max": self.converge_max,
            },
            "bytes_downloaded": self.bytes_downloaded,
            "errors": self.errors,
        }

    def render(self) -> str:
        """The summary as a few lines of text."""
        span = f"{format_time(self.started)} to {format_time(self.ended)}"
        lines = [
            f"{self.phones} phone{'s' if self.phones != 1 else ''}, phone time {span} "
            f"({_duration(self.ended - self.started)})",
            "  by state:   " + _counts(self.by_state),
            "  by version: " + _counts(self.by_version),
        ]
        converged = f"  converged:  {self.converged} of {self.phones}"
        if self.converge_max is not None:
            converged += (
                f"; time to converge p50 {_duration(self.converge_p50)}, "
                f"p95 {_duration(self.converge_p95)}, max {_duration(self.converge_max)}"
            )
        lines.append(converged)
        lines.append(f"  downloaded: {self.bytes_downloaded} bytes")
        if self.errors:
            lines.append(f"  driver errors: {self.errors}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FleetResult:
    """The summary of a run and every phone's result."""

    summary: Summary
    phones: tuple[PhoneResult, ...]

    def as_dict(self, *, with_log: bool = False) -> dict[str, Any]:
        """A JSON-ready form: ``{"summary": ..., "phones": [...]}``."""
        return {
            "summary": self.summary.as_dict(),
            "phones": [p.as_dict(with_log=with_log) for p in self.phones],
        }


ProgressCallback = Callable[["Fleet"], None]


class Fleet:
    """Many phones on one lease and clock, driven on the running loop.

    Made on the loop it runs on (each driver keeps that loop), and run once.
    """

    def __init__(
        self,
        specs: Sequence[PhoneSpec],
        *,
        lease: Lease,
        clock: Clock,
        workdir: Path,
        network: Network | None = None,
        seed: int = 0,
        stagger: float = 0.0,
        settings: PhoneSettings | None = None,
        hash_in_thread_from: int = LARGE_IMAGE,
        max_clients: int | None = None,
        address_offset: int = 0,
        source: str | None = None,
        spacing: float = 0.0,
    ) -> None:
        """``address_offset``: phones take their segment's addresses from that many further on
        (a worker's share of a larger fleet must not take the addresses of another's).
        ``source``: every phone sends from this one address instead (a real machine's own,
        against a real deployment). ``spacing``: phone seconds between one phone's power-on
        and the next's, before the stagger's random share (a rate limit)."""
        if not specs:
            raise FleetError("a fleet needs at least one phone")
        if not (math.isfinite(stagger) and stagger >= 0):
            raise FleetError(f"the stagger must be a time in seconds >= 0, not {stagger}")
        if not (math.isfinite(spacing) and spacing >= 0):
            raise FleetError(f"the spacing must be a time in seconds >= 0, not {spacing}")
        macs = Counter(spec.model.mac(spec.index) for spec in specs)
        twice = [mac for mac, count in macs.items() if count > 1]
        if twice:
            raise FleetError(f"two phones of the fleet would share MAC address {twice[0]}")
        builder = PhoneBuilder(
            lease,
            clock,
            workdir,
            network=network,
            max_clients=max_clients,
            settings=settings,
            hash_in_thread_from=hash_in_thread_from,
        )
        self.lease = lease
        self.clock = clock
        self.seed = seed
        self.stagger = stagger
        self.network = builder.network
        rng = random.Random(seed)
        self.offsets = [
            i * spacing + (rng.uniform(0.0, stagger) if stagger else 0.0) for i in range(len(specs))
        ]
        addresses = (
            [source] * len(specs)
            if source is not None
            else _addresses(specs, builder, address_offset)
        )
        self.specs = tuple(specs)
        self.drivers: list[PhoneDriver] = []
        for spec, address in zip(specs, addresses, strict=True):
            driver = builder.phone(
                spec.model,
                spec.index,
                address=address,
                seed=f"{seed}/{spec.model.name}/{spec.index}",
                faults=spec.faults,
                observer=self._observe,
            )
            if spec.credentials is not None:
                driver.when(spec.sign_in, _signer(driver, spec.credentials))
            self.drivers.append(driver)
        self.by_state: Counter[PhoneState] = Counter({PhoneState.OFF: len(self.drivers)})
        self.settled = 0
        self._seen = {id(d): (PhoneState.OFF, False) for d in self.drivers}
        self._all_settled: asyncio.Future[None] | None = None
        self.started: float | None = None

    def __iter__(self) -> Iterator[PhoneDriver]:
        return iter(self.drivers)

    def __len__(self) -> int:
        return len(self.drivers)

    async def run(
        self,
        *,
        duration: float,
        until_settled: bool = True,
        progress: ProgressCallback | None = None,
        progress_every: float = 0.25,
    ) -> FleetResult:
        """Power the phones on and run for ``duration`` s of phone time (less once all settle).

        ``progress`` is called every ``progress_every`` seconds of loop time while it runs.
        """
        if not (math.isfinite(duration) and duration > 0):
            raise FleetError(f"a run's duration must be a time in seconds > 0, not {duration}")
        loop = asyncio.get_running_loop()
        start = self.started = self.clock.now()
        for driver, offset in zip(self.drivers, self.offsets, strict=True):
            driver.at(start + offset, driver.power_on)
        done: asyncio.Future[None] = loop.create_future()
        self._all_settled = done if until_settled else None
        deadline = loop.call_at(self.clock.loop_time(start + duration), _resolve, done)
        reporter = loop.create_task(_report(self, progress, progress_every)) if progress else None
        try:
            await done
            # Taken before the phones stop: stopping cancels what they had scheduled.
            result = self.result(start, min(self.clock.now(), start + duration))
        finally:
            deadline.cancel()
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            self._all_settled = None
            await self.aclose()
        return result

    async def aclose(self) -> None:
        """Stop every phone (their cores keep what they were doing)."""
        await asyncio.gather(*(driver.aclose() for driver in self.drivers))

    def result(self, start: float, end: float) -> FleetResult:
        """The summary and every phone's result, for a run from ``start`` to ``end``."""
        phones = tuple(
            _phone_result(spec, driver, start)
            for spec, driver in zip(self.specs, self.drivers, strict=True)
        )
        times = sorted(p.converged_after for p in phones if p.converged_after is not None)
        summary = Summary(
            phones=len(phones),
            started=start,
            ended=end,
            by_state=dict(Counter(p.state.name.lower() for p in phones).most_common()),
            by_version=dict(Counter(p.version for p in phones).most_common()),
            converged=len(times),
            converge_p50=_percentile(times, 50),
            converge_p95=_percentile(times, 95),
            converge_max=times[-1] if times else None,
            bytes_downloaded=sum(p.bytes_downloaded for p in phones),
            errors=sum(1 for p in phones if p.error is not None),
        )
        return FleetResult(summary, phones)

    def _observe(self, driver: PhoneDriver) -> None:
        state, settled = driver.phone.state, driver.settled
        seen_state, seen_settled = self._seen[id(driver)]
        if state is not seen_state:
            self.by_state[seen_state] -= 1
            self.by_state[state] += 1
        if settled is not seen_settled:
            self.settled += 1 if settled else -1
        self._seen[id(driver)] = (state, settled)
        done = self._all_settled
        if done is not None and self.settled == len(self.drivers) and not done.done():
            done.set_result(None)


class ProgressDisplay:
    """A live progress line for long runs, on a terminal only: phone time and phones by state."""

    def __init__(self, console: Console, duration: float) -> None:
        self.console = console
        self.duration = duration
        self.enabled = console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[states]}"),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task("", total=duration, states="")

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, fleet: Fleet) -> None:
        """Show how far the run is and how many phones are in each state."""
        if not self.enabled or fleet.started is None:
            return
        elapsed = min(fleet.clock.now() - fleet.started, self.duration)
        states = ", ".join(
            f"{state.value} {count}" for state, count in fleet.by_state.most_common() if count
        )
        self._progress.update(
            self._task,
            completed=elapsed,
            description=f"{to_datetime(fleet.clock.now()):%Y-%m-%d %H:%M:%S} UTC",
            states=f"{fleet.settled}/{len(fleet)} settled; {states}",
        )


def _signer(driver: PhoneDriver, credentials: Credentials) -> Callable[[], None]:
    return lambda: driver.sign_in(credentials)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _report(fleet: Fleet, progress: ProgressCallback, every: float) -> None:
    while True:
        progress(fleet)
        await asyncio.sleep(every)


def _addresses(specs: Sequence[PhoneSpec], builder: PhoneBuilder, offset: int = 0) -> list[str]:
    """Each phone's own address: given, or the next one of its segment after ``offset``."""
    taken: Counter[Location] = Counter({location: offset for location in Location})
    result: list[str] = []
    for spec in specs:
        if spec.address is not None:
            result.append(spec.address)
            continue
        taken[spec.location] += 1
        result.append(builder.address(spec.location, taken[spec.location]))
    if len(set(result)) != len(result):
        raise FleetError("two phones of the fleet would share an address")
    return result


def _phone_result(spec: PhoneSpec, driver: PhoneDriver, start: float) -> PhoneResult:
    phone = driver.phone
    identity = phone.identity
    converged = converged_at(driver.timeline) if driver.settled and driver.error is None else None
    return PhoneResult(
        index=identity.index,
        model=identity.model.name,
        mac=identity.mac,
        serial=identity.serial,
        location=spec.location.value,
        address=driver.address,
        state=phone.state,
        version=phone.current_version,
        backup_version=phone.backup_version,
        last_update=phone.last_update,
        user=phone.signed_in_user,
        powered_on_at=driver.powered_on_at,
        converged_after=None if converged is None else converged - start,
        bytes_downloaded=driver.bytes_downloaded,
        timeline=tuple(driver.timeline),
        screen=system_information(phone),
        log=phone.log.entries,
        error=None if driver.error is None else str(driver.error),
    )


def converged_at(timeline: Sequence[Change]) -> float | None:
    """The first time the phone was idle after its last change of version."""
    last_change = 0
    for i in range(1, len(timeline)):
        if timeline[i].version != timeline[i - 1].version:
            last_change = i
    return next((c.time for c in timeline[last_change:] if c.state is PhoneState.IDLE), None)


def _percentile(values: Sequence[float], percent: float) -> float | None:
    """The nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(percent / 100 * len(values)))
    return values[rank - 1]


def _iso(t: float | None) -> str | None:
    return None if t is None else format_time(t)


def format_span(seconds: float) -> str:
    """A span of phone time in hours, minutes and seconds (``7 min 30 s``, ``24 h``)."""
    rounded = round(seconds, 1)
    hours, rest = divmod(rounded, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours:g} h"] if hours else []
    parts += [f"{minutes:g} min"] if minutes else []
    if secs or not parts:
        parts.append(f"{round(secs, 1):g} s")
    return " ".join(parts)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_span(seconds)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "-"


def merge_runs(parts: Sequence[dict[str, Any]]) -> tuple[Summary, list[dict[str, Any]]]:
    """One summary and one list of phones from the JSON of several workers' runs.

    Each part is what `FleetResult.as_dict` gave for one share of the fleet; phones keep
    their order (workers take consecutive shares).
    """
    if not parts:
        raise FleetError("there is no run to merge")
    phones = [phone for part in parts for phone in part["phones"]]
    summaries = [part["summary"] for part in parts]
    times = sorted(p["converged_after"] for p in phones if p["converged_after"] is not None)
    summary = Summary(
        phones=len(phones),
        started=min(_parse_time(s["started"]) for s in summaries),
        ended=max(_parse_time(s["ended"]) for s in summaries),
        by_state=dict(Counter(p["state"] for p in phones).most_common()),
        by_version=dict(Counter(p["version"] for p in phones).most_common()),
        converged=len(times),
        converge_p50=_percentile(times, 50),
        converge_p95=_percentile(times, 95),
        converge_max=times[-1] if times else None,
        bytes_downloaded=sum(s["bytes_downloaded"] for s in summaries),
        errors=sum(s["errors"] for s in summaries),
    )
    return summary, phones


def _parse_time(text: str) -> float:
    return from_datetime(datetime.fromisoformat(text.replace("Z", "+00:00")))
