"""Time on the phone's timeline: the one place phone code gets "now" from.

A phone's timeline is in POSIX seconds (so a time converts to a UTC date without any other
input). Phone code never reads the system clock: the core is handed ``now`` with every
event, and a driver takes it from a `Clock`. Two clocks exist:

- `ScaledClock` for runs: virtual seconds = start + scale * elapsed loop time, so a day of
  phone time passes in seconds of wall time;
- `LoopClock` for tests under fake loop time (looptime): simply the loop's time, plus an
  optional start.

Both also answer the reverse question a driver asks when it arms a timer: at which loop
time does the phone's timeline reach ``t``?
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from emulator.errors import ClockError


def to_datetime(t: float) -> datetime:
    """The UTC date of a time on the phone's timeline."""
    return datetime.fromtimestamp(t, tz=UTC)


def from_datetime(when: datetime) -> float:
    """The phone-timeline seconds of an aware date (the inverse of `to_datetime`)."""
    if when.tzinfo is None:
        raise ClockError(f"{when.isoformat()} has no time zone; give an aware date")
    return when.timestamp()


class Clock(Protocol):
    """Where phone code reads the time: seconds on the phone's timeline, and dates."""

    def now(self) -> float:
        """The current time in seconds on the phone's timeline."""
        ...

    def datetime(self, t: float | None = None) -> datetime:
        """The UTC date of ``t`` (default: now)."""
        ...

    def loop_time(self, t: float) -> float:
        """The event-loop time at which the phone's timeline reaches ``t`` (to arm timers)."""
        ...


class ScaledClock:
    """Virtual time for runs: start + scale * (loop time elapsed since the clock was made)."""

    def __init__(self, loop_time: Callable[[], float], *, start: float, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ClockError(f"clock scale must be a positive number, not {scale!r}")
        self._loop_time = loop_time
        self._origin = loop_time()
        self.start = start
        self.scale = scale

    def now(self) -> float:
        """The current virtual time."""
        return self.start + self.scale * (self._loop_time() - self._origin)

    def datetime(self, t: float | None = None) -> datetime:
        """The UTC date of ``t`` (default: now)."""
        return to_datetime(self.now() if t is None else t)

    def loop_time(self, t: float) -> float:
        """The loop time at which virtual time reaches ``t``."""
        return self._origin + (t - self.start) / self.scale


class LoopClock:
    """The loop's own time as the phone's timeline (for tests on fake loop time)."""

    def __init__(self, loop_time: Callable[[], float], *, start: float = 0.0) -> None:
        self._loop_time = loop_time
        self.start = start

    def now(self) -> float:
        """The loop's time plus the start."""
        return self.start + self._loop_time()

    def datetime(self, t: float | None = None) -> datetime:
        """The UTC date of ``t`` (default: now)."""
        return to_datetime(self.now() if t is None else t)

    def loop_time(self, t: float) -> float:
        """The loop time at which the timeline reaches ``t``."""
        return t - self.start
