"""What keeps one peer from taking the lab down: a connection budget and a bounded fault log.

Rules of this module:
- Every listener that keeps connections (DNS over TCP, both sites of every front end, the
  edge, the admin API) asks one process-wide ``ConnectionBudget`` before it serves an
  accepted connection and gives the slot back when the connection ends. The budget holds a
  cap per source address (``[limits] connections_per_address``) and a total that leaves
  ``[limits] admin_reserve`` file descriptors free, so the admin API still answers when the
  other listeners are full. The admin API asks with ``reserved=True`` and may use that
  reserve.
- ``raise_file_limit`` lifts the soft limit on open files to the hard one at start, as
  servers such as nginx do (``worker_rlimit_nofile``), and tells what it got.
- ``FaultLog`` is how code on a per-packet or per-request path reports a fault: one line
  the first time a kind is seen, then at most one line per ``interval`` with the count since
  and one sample, never a traceback. A peer sending garbage cannot fill the log.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.net.config import Limits

log = logging.getLogger(__name__)

# Descriptors the process needs besides connections: listening sockets, the store, logs.
BASELINE_FILES = 64
# The total of a listener's own budget: the process-wide budget is what caps the total.
OWN_TOTAL = 1 << 20


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    ceiling = hard if hard != unlimited else 1 << 20
    if soft != unlimited and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, ceiling)
    return soft if soft != unlimited else 1 << 20


@dataclass
class BudgetCounts:
    """What a budget has refused since it started, by reason."""

    per_address: int = 0
    total: int = 0


class ConnectionBudget:
    """Connections open per source address and in all, shared by every listener."""

    def __init__(self, per_address: int, total: int, reserve: int = 0) -> None:
        if per_address < 1 or total < 1 or reserve < 0:
            raise ValueError("a connection budget needs positive caps and a reserve >= 0")
        self.per_address = per_address
        self.total = total
        self.reserve = reserve
        self._open: dict[str, int] = {}
        self._count = 0
        self.refused = BudgetCounts()

    @classmethod
    def of_its_own(cls, limits: Limits) -> ConnectionBudget:
        """A budget for one listener run alone (a test, a tool): the per-address cap of
        ``limits``, and no total worth the name (the process-wide one is the lab's)."""
        return cls(limits.connections_per_address, OWN_TOTAL)

    @classmethod
    def for_process(cls, per_address: int, reserve: int) -> ConnectionBudget:
        """A budget sized from this process's open-file limit (raised to the hard one)."""
        files = raise_file_limit()
        total = max(1, files - reserve - BASELINE_FILES)
        return cls(per_address, total, reserve)

    def admit(self, peer: str, *, reserved: bool = False, capped: bool = True) -> bool:
        """Take a slot for a connection from ``peer``; False (and counted) when over a cap.

        ``reserved`` may use the reserve; ``capped`` False skips the per-address cap (a
        peer that speaks for many clients, such as the edge to a front end).
        """
        held = self._open.get(peer, 0)
        if capped and held >= self.per_address:
            self.refused.per_address += 1
            return False
        limit = self.total + (self.reserve if reserved else 0)
        if self._count >= limit:
            self.refused.total += 1
            return False
        self._open[peer] = held + 1
        self._count += 1
        return True

    def release(self, peer: str) -> None:
        """Give back a slot taken for ``peer``."""
        held = self._open.get(peer, 0)
        if held <= 0:
            return
        if held == 1:
            del self._open[peer]
        else:
            self._open[peer] = held - 1
        self._count -= 1

    def held(self, peer: str) -> int:
        """How many connections ``peer`` holds now."""
        return self._open.get(peer, 0)

    @property
    def open(self) -> int:
        """How many connections are open in all."""
        return self._count

    def snapshot(self) -> dict[str, int]:
        """JSON-ready figures for ``lab status``."""
        busiest = max(self._open.values(), default=0)
        return {
            "open": self._count,
            "total_cap": self.total,
            "per_address_cap": self.per_address,
            "admin_reserve": self.reserve,
            "addresses": len(self._open),
            "busiest_address": busiest,
            "refused_per_address": self.refused.per_address,
            "refused_total": self.refused.total,
        }


@dataclass
class _Kind:
    count: int = 0
    since_report: int = 0
    last_report: float = float("-inf")
    sample: str = ""


@dataclass
class FaultLog:
    """Faults on a hot path, logged as counts with a sample at a bounded rate."""

    logger: logging.Logger
    interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _kinds: dict[str, _Kind] = field(default_factory=dict)

    def fault(self, kind: str, sample: str, exc: BaseException | None = None) -> None:
        """Count one fault of ``kind``; ``sample`` says what it was in one line. ``exc``,
        for a fault that is a bug, has its traceback logged the first time only."""
        first = kind not in self._kinds
        entry = self._kinds.setdefault(kind, _Kind())
        entry.count += 1
        entry.since_report += 1
        entry.sample = sample[:200]
        now = self.clock()
        if now - entry.last_report < self.interval:
            return
        if entry.since_report == 1:
            self.logger.warning("%s: %s", kind, entry.sample, exc_info=exc if first else None)
        else:
            self.logger.warning(
                "%s: %d times in the last %.3g s, latest: %s",
                kind,
                entry.since_report,
                min(now - entry.last_report, self.interval),
                entry.sample,
            )
        entry.last_report = now
        entry.since_report = 0

    def counts(self) -> dict[str, int]:
        """How many faults of each kind were seen in all."""
        return {kind: entry.count for kind, entry in self._kinds.items()}
