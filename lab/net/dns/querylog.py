"""What the DNS server saw: a structured query log and counters.

Each query is logged as time, client address and port, transport, qname, qtype, view,
rcode, answer count, fault applied and whether it was truncated. The log is a bounded
in-memory ring (oldest entries fall off), optionally appended as JSON lines to a file.
Malformed packets are not logged one by one (a flood would wash the ring out); they
are counted, by reason.

Recording must stay cheap because it runs for every query: the ring holds tuples that
share one immutable Outcome per kind of query, and dicts are only built when read.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.errors import DNSError

TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a query got; one instance is shared by every query of the same form."""

    qname: str
    qtype: str
    view: str
    rcode: str | None  # None when no answer is sent (drop fault)
    answers: int
    fault: str | None
    truncated: bool


_Row = tuple[float, str, int, str, Outcome]


def _as_dict(row: _Row) -> dict[str, Any]:
    at, host, port, transport, outcome = row
    return {
        "time": at,
        "client": host,
        "port": port,
        "transport": transport,
        "qname": outcome.qname,
        "qtype": outcome.qtype,
        "view": outcome.view,
        "rcode": outcome.rcode,
        "answers": outcome.answers,
        "fault": outcome.fault,
        "truncated": outcome.truncated,
    }


class QueryLog:
    """The last ``size`` queries in memory, and every query in ``path`` (JSON lines) if set."""

    def __init__(self, size: int = 1000, path: Path | None = None) -> None:
        self.path = path
        self._ring: deque[_Row] = deque(maxlen=size)
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Open the JSON lines file for appending (no-op without a path)."""
        if self.path is None or self._file is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Line buffered: someone tailing the file sees each query as it happens.
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise DNSError(f"cannot open the DNS query log {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the file, if open."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, at: float, client: tuple[str, int], transport: str, outcome: Outcome) -> None:
        """Add one query."""
        row = (at, client[0], client[1], transport, outcome)
        self._ring.append(row)
        if self._file is not None:
            self._file.write(json.dumps(_as_dict(row)) + "\n")

    def recent(self, n: int | None = None) -> list[dict[str, Any]]:
        """The last ``n`` queries (all kept ones when None), oldest first."""
        rows = list(self._ring)
        if n is not None:
            rows = rows[-n:] if n > 0 else []
        return [_as_dict(row) for row in rows]

    def __len__(self) -> int:
        return len(self._ring)


class Counters:
    """Running totals since the server was made; ``as_dict`` is JSON-ready."""

    def __init__(self) -> None:
        self.queries = dict.fromkeys(TRANSPORTS, 0)
        self.rcodes: dict[str, int] = {}
        self.views: dict[str, int] = {}
        # Answered queries by view and response code together (what a dashboard splits by).
        self.answers: dict[tuple[str, str], int] = {}
        self.faults: dict[str, int] = {}
        self.malformed_reasons: dict[str, int] = {}
        self.malformed = 0
        self.dropped = 0
        self.truncated = 0
        self.errors = 0  # packets the server failed on (a bug): SERVFAIL, and a fault logged
        self.tcp_connections = 0  # accepted and admitted
        self.tcp_refused = 0  # over the connection cap: closed before a byte was read
        self.tcp_idle_closed = 0
        self.tcp_message_timeouts = 0  # closed because a message was not whole in time

    def count(self, transport: str, outcome: Outcome) -> None:
        """Count one well-formed query and what it got."""
        self.queries[transport] += 1
        self.views[outcome.view] = self.views.get(outcome.view, 0) + 1
        if outcome.rcode is None:
            self.dropped += 1
        else:
            self.rcodes[outcome.rcode] = self.rcodes.get(outcome.rcode, 0) + 1
            key = (outcome.view, outcome.rcode)
            self.answers[key] = self.answers.get(key, 0) + 1
        if outcome.fault is not None:
            self.faults[outcome.fault] = self.faults.get(outcome.fault, 0) + 1
        if outcome.truncated:
            self.truncated += 1

    def count_malformed(self, reason: str, replied: bool) -> None:
        """Count one malformed packet, and whether it got a FORMERR/NOTIMP reply."""
        self.malformed += 1
        self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + 1
        if not replied:
            self.dropped += 1

    def as_dict(self) -> dict[str, Any]:
        """Every counter, JSON-ready."""
        return {
            "queries": dict(self.queries),
            "queries_total": sum(self.queries.values()),
            "rcodes": dict(self.rcodes),
            "views": dict(self.views),
            "faults": dict(self.faults),
            "malformed": self.malformed,
            "malformed_reasons": dict(self.malformed_reasons),
            "dropped": self.dropped,
            "truncated": self.truncated,
            "errors": self.errors,
            "tcp_connections": self.tcp_connections,
            "tcp_refused": self.tcp_refused,
            "tcp_idle_closed": self.tcp_idle_closed,
            "tcp_message_timeouts": self.tcp_message_timeouts,
        }
