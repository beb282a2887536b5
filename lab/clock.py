"""The lab's one clock: what time it is in the lab, and how fast lab time runs.

Support staff learn to lay a phone's log beside the front end's audit log, so phones and
servers must keep the same time. A lab runs on one ``LabClock``: lab time is ``start`` when
its source reads ``origin``, and runs ``scale`` lab seconds per second of the source after
that. ``lab up --start TIME --scale N`` makes one on the wall clock and publishes it in
run.json and the lease (``as_dict``), and phones in other processes follow it
(``emulator``'s lease reader); the demo, scenarios and tests make one on their event
loop's time and give the phones the same. The service takes from it every time that is
part of the story (audit lines, the inventory, NTLM lockout windows, transfers, the log
clean-up, the certificates' validity); socket-level timeouts stay in real time.

``utc_now`` is the wall clock, what a part takes as its ``now`` by default.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lab.errors import ClockError


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


@dataclass
class LabClock:
    """Lab time: ``start`` (seconds since the epoch) when ``source`` read ``origin``, then
    ``scale`` lab seconds per second of the source. ``advance`` moves it on at once."""

    start: float
    origin: float
    scale: float = 1.0
    source: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ClockError(f"the lab clock's scale must be a positive number, not {self.scale!r}")

    @classmethod
    def wall(cls) -> LabClock:
        """The wall clock itself (lab time is real time)."""
        now = time.time()
        return cls(start=now, origin=now)

    @classmethod
    def starting(
        cls,
        start: float | None = None,
        scale: float = 1.0,
        source: Callable[[], float] = time.time,
    ) -> LabClock:
        """Lab time ``start`` now (default: the source's reading, for the wall clock), then
        ``scale`` times as fast as ``source``."""
        origin = source()
        return cls(
            start=origin if start is None else start, origin=origin, scale=scale, source=source
        )

    def advance(self, seconds: float) -> None:
        """Move lab time ``seconds`` on at once: a scenario whose phones are all unplugged
        lets two months pass in no real time (nothing is waiting on the lab's clock)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ClockError(f"lab time moves on, not by {seconds!r} seconds")
        self.start += seconds

    def time(self) -> float:
        """Lab time now, in seconds since the epoch."""
        return self.start + (self.source() - self.origin) * self.scale

    def now(self) -> datetime:
        """Lab time now, as a UTC date."""
        return datetime.fromtimestamp(self.time(), UTC)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of lab time."""
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    @classmethod
    def published(cls, data: Mapping[str, Any]) -> LabClock:
        """The clock ``as_dict`` published (run.json's ``clock``), on the wall clock."""
        start = datetime.fromisoformat(str(data["start"])).timestamp()
        return cls(start=start, origin=float(data["at"]), scale=float(data["scale"]))

    def as_dict(self) -> dict[str, Any] | None:
        """The clock for run.json and the lease: lab time ``start`` at wall time ``at``,
        ``scale`` lab seconds per real second from then. None for a clock on another source
        (an event loop's time), which no other process can follow."""
        if self.source is not time.time:
            return None
        return {
            "start": datetime.fromtimestamp(self.start, UTC).isoformat(),
            "at": self.origin,
            "scale": self.scale,
        }


def parse_lab_time(text: str) -> float:
    """An ISO 8601 date and time with its zone (``2026-06-01T08:00:00Z``), in epoch
    seconds; ClockError says what is wrong."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClockError(f"{text!r} is not a date and time like 2026-06-01T08:00:00Z") from None
    if moment.tzinfo is None:
        raise ClockError(f"{text!r} names no time zone: add Z or +HH:MM")
    return moment.timestamp()
