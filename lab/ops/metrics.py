"""The running lab's figures for Prometheus: ``GET /metrics`` on the admin API.

Written in the Prometheus text format by the official client library (prometheus_client),
from one collector that reads the lab when Prometheus asks, as the library has it for
values that live elsewhere:

- what follows each request comes from the audit records the front ends write, counted as
  they are written (`record`): update checks by pool, front end, site and decision (an
  ``approved`` or ``pending`` version offered, ``none``; ``challenged`` for NTLM's 401,
  ``unavailable`` for a 503, ``refused`` for any other answer), answers by status,
  downloads whole or resumed (a 206);
- the rest is the lab's own state at that moment: bytes and files the front ends sent,
  each front end's mode and transfers in progress, NTLM sign-ins (successes, failures,
  lockouts, throttled tries), DNS queries by view and response code, and the phone
  inventory (phones by pool, model, version and state; those out of the support window).

The inventory is read from the store in a worker thread; everything else is copied on the
loop, so a scrape never reads what the loop is changing. Label values are bounded: pools,
front ends, sites, statuses and decisions, and the phones' models and versions.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from lab.clock import LabClock
from lab.net.config import LabConfig
from lab.net.dns import DNSServer
from lab.service.audit import AuditRecord
from lab.service.frontend import Mode
from lab.service.inventory import Flag, PhoneStatus, read_inventory
from lab.service.pool import ServicePool
from lab.store.store import Store

CHECK_PATH = "/ucdevice.upx"
FILES_PATH = "/DeviceUpdateFiles_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class RequestTotals:
    """Counts of the audit records since the lab started, by the labels of their metric."""

    def __init__(self, config: LabConfig) -> None:
        self._pool_of = {fe.name: fe.pool for fe in config.front_ends}
        self.checks: Counter[tuple[str, str, str, str]] = Counter()
        self.responses: Counter[tuple[str, str, str]] = Counter()
        self.downloads: Counter[tuple[str, str, str, str]] = Counter()

    def record(self, record: AuditRecord) -> None:
        """Count one request the front end ``record.server`` answered."""
        server, site, status = record.server, record.site, record.status
        pool = self._pool_of.get(server, "")
        self.responses[server, site, str(status)] += 1
        if record.path.endswith(CHECK_PATH):
            self.checks[pool, server, site, _decision(record)] += 1
        elif FILES_PATH in record.path and status in (200, 206):
            self.downloads[pool, server, site, "resumed" if status == 206 else "whole"] += 1


def _decision(record: AuditRecord) -> str:
    if record.status != 200:
        # A 401 is NTLM's challenge, part of every outside check; a 503 is maintenance.
        return {401: "challenged", 503: "unavailable"}.get(record.status, "refused")
    if record.decision in ("", "none"):
        return "none"
    return record.served_from or "approved"


@dataclass(frozen=True)
class _Sample:
    """What the loop holds, copied at one moment."""

    checks: dict[tuple[str, str, str, str], int]
    responses: dict[tuple[str, str, str], int]
    downloads: dict[tuple[str, str, str, str], int]
    servers: list[tuple[str, str, str, int, int, int, int]]
    ntlm: dict[str, int]
    dns_answers: dict[tuple[str, str], int]
    dns_malformed: int
    pools: tuple[str, ...]


class LabMetrics:
    """``/metrics`` of one running lab."""

    def __init__(
        self,
        config: LabConfig,
        state_dir: Path,
        pool: ServicePool,
        dns: DNSServer,
        clock: LabClock,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.pool = pool
        self.dns = dns
        self.clock = clock
        self.requests = RequestTotals(config)

    def record(self, record: AuditRecord) -> None:
        """Count one audit record (the lab calls it for every request)."""
        self.requests.record(record)

    async def render(self) -> bytes:
        """The text Prometheus reads: the sample taken now, the inventory read off the loop."""
        sample = self._sample()
        phones = await asyncio.to_thread(self._inventory)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families(sample, phones))))
        return generate_latest(registry)

    def _sample(self) -> _Sample:
        servers = [
            (
                server.front_end.pool,
                name,
                server.mode.value,
                len(server.transfers),
                server.bytes_sent,
                server.transfers_done,
                server.transfers_cut,
            )
            for name, server in self.pool.servers.items()
        ]
        counters = self.dns.counters
        return _Sample(
            checks=dict(self.requests.checks),
            responses=dict(self.requests.responses),
            downloads=dict(self.requests.downloads),
            servers=servers,
            ntlm=dict(self.pool.directory.outcomes),
            dns_answers=dict(counters.answers),
            dns_malformed=counters.malformed,
            pools=tuple(pool.fqdn for pool in self.config.pools),
        )

    def _inventory(self) -> list[PhoneStatus]:
        with Store.open(self.state_dir, pool_of=self.config.pool_of()) as store:
            return read_inventory(store, self.clock.now())


class _Families(Collector):
    """A collector handing over families made beforehand (one scrape's)."""

    def __init__(self, made: list[Metric]) -> None:
        self.made = made

    def collect(self) -> Iterable[Metric]:
        return self.made


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    values: Iterable[tuple[tuple[str, ...], float]],
) -> Metric:
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values):
        family.add_metric(list(key), value)
    return family


def families(sample: _Sample, phones: list[PhoneStatus]) -> Iterator[Metric]:
    """Every metric family of one scrape."""
    yield _family(
        CounterMetricFamily,
        "lab_update_checks",
        "Update checks answered, by decision: approved or pending (a version offered), "
        "none, challenged (NTLM's 401), unavailable (503), refused (any other answer).",
        ["pool", "front_end", "site", "decision"],
        sample.checks.items(),
    )
    yield _family(
        CounterMetricFamily,
        "lab_http_responses",
        "Requests the front ends answered, by status.",
        ["front_end", "site", "status"],
        sample.responses.items(),
    )
    yield _family(
        CounterMetricFamily,
        "lab_downloads",
        "Image downloads answered, whole (200) or resumed (206).",
        ["pool", "front_end", "site", "kind"],
        sample.downloads.items(),
    )
    yield _family(
        CounterMetricFamily,
        "lab_download_bytes",
        "Image bytes the front ends sent.",
        ["pool", "front_end"],
        (((pool, name), sent) for pool, name, _, _, sent, _, _ in sample.servers),
    )
    yield _family(
        CounterMetricFamily,
        "lab_transfers",
        "Image transfers ended, with the whole file sent (done) or not (cut).",
        ["pool", "front_end", "result"],
        [
            item
            for pool, name, _, _, _, done, cut in sample.servers
            for item in (((pool, name, "done"), done), ((pool, name, "cut"), cut))
        ],
    )
    yield _family(
        GaugeMetricFamily,
        "lab_transfers_in_progress",
        "Image downloads in progress.",
        ["pool", "front_end"],
        (((pool, name), count) for pool, name, _, count, _, _, _ in sample.servers),
    )
    yield _family(
        GaugeMetricFamily,
        "lab_front_end_mode",
        "1 for the mode each front end is in (production, draining, maintenance), else 0.",
        ["pool", "front_end", "mode"],
        [
            ((pool, name, mode.value), float(mode.value == current))
            for pool, name, current, _, _, _, _ in sample.servers
            for mode in Mode
        ],
    )
    yield _family(
        CounterMetricFamily,
        "lab_ntlm_signins",
        "NTLM sign-ins: success, failure, lockout (a failure that locked the account), "
        "throttled (refused before checking, for too many failures from the address).",
        ["outcome"],
        (((outcome,), count) for outcome, count in sample.ntlm.items()),
    )
    yield _family(
        CounterMetricFamily,
        "lab_dns_queries",
        "DNS queries answered, by view and response code.",
        ["view", "rcode"],
        sample.dns_answers.items(),
    )
    yield _family(
        CounterMetricFamily,
        "lab_dns_malformed",
        "Malformed DNS packets.",
        [],
        [((), sample.dns_malformed)],
    )
    by_kind: Counter[tuple[str, str, str, str]] = Counter()
    # Every pool has its figure, 0 included: a dashboard's sum is then 0, not "no data".
    behind: Counter[tuple[str]] = Counter({(pool,): 0 for pool in sample.pools})
    for status in phones:
        phone = status.phone
        by_kind[phone.pool, phone.kind.model, phone.version, _state(status)] += 1
        if Flag.LEFT_BEHIND in status.flags:
            behind[(phone.pool,)] += 1
    yield _family(
        GaugeMetricFamily,
        "lab_phones",
        "Phones of the inventory by pool, model, version and state: approved (runs its "
        "rule's approved version), not_approved, left_behind (not approved for longer than "
        "the support window), no_approved_version.",
        ["pool", "model", "version", "state"],
        by_kind.items(),
    )
    yield _family(
        GaugeMetricFamily,
        "lab_phones_out_of_support_window",
        "Phones not on their rule's approved version for longer than the support window.",
        ["pool"],
        behind.items(),
    )


def _state(status: PhoneStatus) -> str:
    if status.approved is None:
        return "no_approved_version"
    if Flag.LEFT_BEHIND in status.flags:
        return "left_behind"
    if Flag.NOT_APPROVED in status.flags:
        return "not_approved"
    return "approved"
