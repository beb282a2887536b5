"""The lab demo: what `make demo` shows a colleague.

For now (until the phones join) it starts the lab and shows split-horizon discovery: the
name every never-signed-in phone looks up, ``ucupdates-r2.<domain>``, answered from an
inside address with the front ends and from an outside address with the edge; then the
firewall moves the inside phone outside and its very next query gets the external view.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab.config import LabConfig
from lab.dnsprobe import query, summarise
from lab.firewall import Zone
from lab.runner import Lab


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
    """A phone's address in ``segment`` (well away from the servers' low addresses)."""
    return str(segment.network_address + 100 + index)


async def _probe(lab: Lab, label: str, source: str, tcp: bool, expected: set[str]) -> Probe:
    name = lab.config.ucupdates_names[0]
    answer = await query(name, lab.dns.address, source, tcp=tcp)
    got = frozenset(str(rr.rdata) for rr in answer.rr)
    return Probe(
        label, source, "tcp" if tcp else "udp", frozenset(expected), got, summarise(answer)
    )


async def run_demo(config: LabConfig, state_dir: Path, console: Console) -> bool:
    """Start the lab, show discovery from both sides of the firewall; True if all held."""
    inside_phone = phone_address(config.inside, 0)
    outside_phone = phone_address(config.outside, 0)
    front_ends = {str(fe.address) for fe in config.front_ends}
    edge = {str(config.edge.address)}
    probes: list[Probe] = []
    async with Lab(config, state_dir) as lab:
        host, port = lab.dns.address
        console.print(
            f"[bold]lab {config.name}[/]: DNS at {host}:{port}, "
            f"{len(config.front_ends)} front ends, edge {config.edge.address}"
        )
        console.print(f"phones look up [bold]{config.ucupdates_names[0]}[/]")
        for tcp in (False, True):
            probes.append(await _probe(lab, "inside phone", inside_phone, tcp, front_ends))
            probes.append(await _probe(lab, "outside phone", outside_phone, tcp, edge))
        lab.firewall.set_zone(inside_phone, Zone.OUTSIDE)
        probes.append(
            await _probe(lab, "inside phone, firewall moved it out", inside_phone, False, edge)
        )
        lab.firewall.clear(inside_phone)
        probes.append(
            await _probe(lab, "inside phone, moved back", inside_phone, False, front_ends)
        )
        stats = lab.dns.stats()

    table = Table(title="split-horizon discovery", title_justify="left")
    for column in ("phone", "source", "via", "answer", "as expected"):
        table.add_column(column)
    for probe in probes:
        table.add_row(
            probe.label,
            probe.source,
            probe.transport,
            probe.line,
            "[green]yes[/]" if probe.ok else "[red]NO[/]",
        )
    console.print(table)
    transports = ", ".join(f"{k} {v}" for k, v in sorted(stats["queries"].items()))
    views = ", ".join(f"{k} view {v}" for k, v in sorted(stats["views"].items()))
    console.print(
        f"DNS: {stats['queries_total']} queries ({transports}); {views}; "
        f"malformed {stats['malformed']}"
    )
    return all(probe.ok for probe in probes)
