"""A fleet's figures for Prometheus: ``emulator run --metrics-port PORT``.

While the fleet runs, ``http://127.0.0.1:PORT/metrics`` serves, in the Prometheus text
format written by the official client library:

- ``emulator_phones{state}``: phones by state (off, booting, checking, downloading, ...);
- ``emulator_phones_settled``: phones that settled (idle on their final version, or given up);
- ``emulator_time_to_converge_seconds``: a histogram of phone seconds from the start of the
  run to the first idle after a phone's last change of version;
- ``emulator_downloaded_bytes_total``: image bytes the phones received.

It is served by aiohttp on the fleet's own loop, so a scrape reads the fleet between two of
its steps, never while it changes. Each worker of ``--workers`` serves its own share on the
port after the previous one's (PORT, PORT + 1, ...); Prometheus scrapes them all.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from emulator.errors import FleetError
from emulator.fleet import Fleet, converged_at
from emulator.states import PhoneState

# Phone seconds: a minute (a first boot) to a day (the 24-hour check) and two.
CONVERGE_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400, 172800)


class FleetMetrics(Collector):
    """The collector of one running fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterable[Metric]:
        fleet = self.fleet
        phones = GaugeMetricFamily("emulator_phones", "Phones by state.", labels=["state"])
        for state in PhoneState:
            phones.add_metric([state.name.lower()], fleet.by_state[state])
        yield phones
        yield GaugeMetricFamily(
            "emulator_phones_settled",
            "Phones settled: idle on their final version, or given up.",
            value=fleet.settled,
        )
        yield self._converge_times()
        yield CounterMetricFamily(
            "emulator_downloaded_bytes",
            "Image bytes the phones received.",
            value=sum(driver.bytes_downloaded for driver in fleet.drivers),
        )

    def _converge_times(self) -> HistogramMetricFamily:
        start = self.fleet.started
        times = sorted(
            at - start
            for driver in self.fleet.drivers
            if start is not None
            and driver.settled
            and driver.error is None
            and (at := converged_at(driver.timeline)) is not None
        )
        buckets: list[tuple[str, float]] = [
            # Written as the client library writes its own buckets' bounds ("60.0").
            (repr(float(bound)), float(sum(1 for t in times if t <= bound)))
            for bound in CONVERGE_BUCKETS
        ]
        buckets.append(("+Inf", float(len(times))))
        return HistogramMetricFamily(
            "emulator_time_to_converge_seconds",
            "Phone seconds from the start of the run to the first idle after the phone's last "
            "change of version.",
            buckets=buckets,
            sum_value=sum(times),
        )


@contextlib.asynccontextmanager
async def served(fleet: Fleet, port: int) -> AsyncIterator[int]:
    """Serve ``fleet``'s metrics on 127.0.0.1:``port`` (0: any free port) for the block;
    the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetMetrics(fleet))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # Bound here, so the port it got is known (0: any free one).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            raise FleetError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None
        await web.SockSite(runner, sock).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
