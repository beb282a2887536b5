"""Faults the world does to a phone, and when: power cuts, failed boots, wrong clocks, calls.

A fault is plain data. Its `Trigger` says when it strikes, in phone time: ``at`` seconds
after the phone's first power-on, or ``delay`` seconds after the phone first enters a
state (a power cut ten seconds into FLASHING). Striking only asks the driver to feed the
core the matching events (PowerLost then PowerOn, CallStarted then CallEnded,
ClockOffsetChanged); the core decides what they mean. A failed boot is different: it is
the boot itself that goes wrong, so `BootFailure` names the boot it spoils (into a new
image, or into one version) and the driver answers that Boot with BootFailed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from emulator.errors import FleetError
from emulator.states import PhoneState


class FaultTarget(Protocol):
    """What a fault acts on: the driver of one phone."""

    def power_off(self) -> None:
        """Cut the power."""
        ...

    def power_on(self) -> None:
        """Give power back (a new DHCP lease, the same phone)."""
        ...

    def start_call(self) -> None:
        """A call starts on the phone, if it is up."""
        ...

    def end_call(self) -> None:
        """A call on the phone ends, if one is in progress."""
        ...

    def set_clock_offset(self, offset: float) -> None:
        """The phone's own clock is now ``offset`` seconds from true time."""
        ...

    def after(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``seconds`` of phone time from now."""
        ...


@dataclass(frozen=True)
class Trigger:
    """When something happens: ``at`` s after the first power-on, or ``delay`` s after ``on``."""

    at: float | None = None
    on: PhoneState | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if (self.at is None) == (self.on is None):
            raise FleetError("a trigger needs either a time after power-on or a state, not both")
        for name, value in (("at", self.at), ("delay", self.delay)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise FleetError(f"trigger {name} must be a time in seconds >= 0, not {value}")

    def describe(self) -> str:
        """The trigger in words (``30 s after power-on``, ``10 s into installing``)."""
        if self.on is None:
            return f"{self.at:g} s after power-on"
        if not self.delay:
            return f"when the phone starts {self.on.value}"
        return f"{self.delay:g} s into {self.on.value}"


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Something the world does to a phone when its trigger fires."""

    trigger: Trigger

    def strike(self, target: FaultTarget) -> None:
        """Do it to the phone."""
        raise NotImplementedError

    def describe(self) -> str:
        """The fault in words, for a run's report."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class PowerCut(Fault):
    """Power is lost (by default ten seconds into installing) and comes back ``off_for`` later."""

    trigger: Trigger = field(default_factory=lambda: Trigger(on=PhoneState.FLASHING, delay=10.0))
    off_for: float = 60.0

    def __post_init__(self) -> None:
        _check_duration("a power cut's off_for", self.off_for)

    def strike(self, target: FaultTarget) -> None:
        """Cut the power, and give it back after ``off_for``."""
        target.power_off()
        target.after(self.off_for, target.power_on)

    def describe(self) -> str:
        """The fault in words."""
        return f"power lost {self.trigger.describe()}, back {self.off_for:g} s later"


@dataclass(frozen=True, kw_only=True)
class Call(Fault):
    """A call of ``duration`` seconds: it holds off a restart while it lasts."""

    duration: float

    def __post_init__(self) -> None:
        _check_duration("a call's duration", self.duration)

    def strike(self, target: FaultTarget) -> None:
        """Start the call, and end it after ``duration``."""
        target.start_call()
        target.after(self.duration, target.end_call)

    def describe(self) -> str:
        """The fault in words."""
        return f"a {self.duration:g} s call {self.trigger.describe()}"


@dataclass(frozen=True, kw_only=True)
class WrongClock(Fault):
    """The phone's clock reads ``offset`` seconds from true time (from power-on by default)."""

    offset: float
    trigger: Trigger = field(default_factory=lambda: Trigger(at=0.0))

    def __post_init__(self) -> None:
        if not math.isfinite(self.offset):
            raise FleetError(f"a clock offset must be a number of seconds, not {self.offset}")

    def strike(self, target: FaultTarget) -> None:
        """Set the phone's clock wrong."""
        target.set_clock_offset(self.offset)

    def describe(self) -> str:
        """The fault in words."""
        return f"clock {self.offset:+g} s from true time {self.trigger.describe()}"


@dataclass(frozen=True)
class BootFailure:
    """Boots into ``version`` (default: any image the phone is not running yet) do not start.

    The first ``times`` such boots fail ``after`` seconds into booting; the core then
    returns to the backup image.
    """

    version: str | None = None
    times: int = 1
    after: float = 5.0
    reason: str = "the image did not start (injected boot failure)"

    def __post_init__(self) -> None:
        if self.times < 1:
            raise FleetError(f"a boot failure must happen at least once, not {self.times} times")
        _check_duration("a boot failure's time into the boot", self.after)

    def spoils(self, version: str, running: str) -> bool:
        """Whether a boot into ``version``, on a phone running ``running``, is one that fails."""
        if self.version is None:
            return version != running
        return version == self.version

    def describe(self) -> str:
        """The fault in words."""
        which = f"into {self.version}" if self.version else "into a new image"
        return f"boot {which} fails {self.after:g} s in ({self.times}x)"


AnyFault = Fault | BootFailure
"""Every kind of fault a driver takes."""


def _check_duration(what: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise FleetError(f"{what} must be a time in seconds >= 0, not {value}")
