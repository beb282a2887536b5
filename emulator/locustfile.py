"""Fleets on Locust: each Locust user is one emulated phone (emulator.cooperative).

One machine::

    locust -f "$(emulator locustfile)" --headless --users 1000 --spawn-rate 200 \\
        --phone-state-dir state --phones-to-converge 1000 --csv fleet

Many machines: the same ``-f`` with ``--master --expect-workers N`` on one, and
``--worker --master-host HOST`` on each of the others (the ``--phone-*`` options are the
master's; Locust hands them to its workers). Against a real pool, ``--phone-lease FILE``
(a lease written by hand, docs/real-deployment.md) and ``--phone-source ADDR`` replace
``--phone-state-dir``; the user's password comes from ``EMULATOR_PASSWORD``.

In Locust's statistics every DNS lookup (``DNS A``), update check, sign-in and download is
a request, with its time in real milliseconds, its size and its failure (the status or
the error). The phones' own figures are requests of type ``PHONE``: ``state <name>`` each
time a phone enters a state (booting, checking, downloading, awaiting_reboot, idle, ...),
and ``converged`` once a phone is idle on a new version, its time being the phone time it
took, in milliseconds. ``--phones-to-converge N`` ends the test once N phones converged.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from emulator.build import PhoneBuilder
from emulator.cli import (
    DEFAULT_SCALE,
    GENTLE_SCALE,
    LEASE_FILE,
    PASSWORD_ENV,
    account_of,
    joined_lease,
    location_of,
)
from emulator.clock import ScaledClock
from emulator.cooperative import CooperativePhone, RequestReport
from emulator.core import Phone
from emulator.driver import LeaseNetwork
from emulator.events import Credentials
from emulator.lease import Lease
from emulator.models import get_model
from emulator.states import PhoneState

PHONES_PER_WORKER = 10_000
"""Phone numbers (and x.y.1.n addresses) each worker process takes a block of."""


def _options(parser: Any) -> None:
    group = parser.add_argument_group("phones (Device Update Lab)")
    group.add_argument("--phone-state-dir", default="state", help="the lab's state directory")
    group.add_argument("--phone-lease", default="", help="a lease written by hand instead")
    group.add_argument(
        "--phone-model", default="CX600", help="models the phones take in turn, comma-separated"
    )
    group.add_argument("--phone-location", default="inside", choices=["inside", "outside", "mixed"])
    group.add_argument(
        "--phone-user", default="", help=f"a user signed in on every phone ({PASSWORD_ENV})"
    )
    group.add_argument(
        "--phone-scale",
        type=float,
        default=0.0,
        help=f"phone seconds per real second (default: the lab's clock, else {DEFAULT_SCALE:g}; "
        "1 with --phone-lease)",
    )
    group.add_argument("--phone-source", default="", help="every phone sends from this address")
    group.add_argument("--phone-seed", type=int, default=0, help="seed of the back-off jitter")
    group.add_argument(
        "--phones-to-converge",
        type=int,
        default=0,
        help="end the test once this many phones converged (0: at --run-time)",
    )


@dataclass
class _Fleet:
    """What the phones of one Locust process share: the lease, the clock, their numbers."""

    lease: Lease
    clock: ScaledClock
    network: LeaseNetwork
    builder: PhoneBuilder
    options: argparse.Namespace
    workdir: Path
    numbers: itertools.count[int]

    @classmethod
    def of(cls, environment: Environment) -> _Fleet:
        fleet: _Fleet | None = getattr(environment, "device_update_fleet", None)
        if fleet is None:
            fleet = cls.make(environment)
            environment.device_update_fleet = fleet  # type: ignore[attr-defined]
        return fleet

    @classmethod
    def make(cls, environment: Environment) -> _Fleet:
        options = environment.parsed_options
        assert options is not None
        lease_path = (
            Path(options.phone_lease)
            if options.phone_lease
            else Path(options.phone_state_dir) / LEASE_FILE
        )
        lease = joined_lease(lease_path)
        if lease.clock is not None:
            start, scale = lease.clock.at_wall(time.time()), lease.clock.scale
        else:
            start = time.time()
            scale = options.phone_scale or (GENTLE_SCALE if options.phone_lease else DEFAULT_SCALE)
        clock = ScaledClock(time.monotonic, start=start, scale=scale)
        network = LeaseNetwork(lease, clock)
        workdir = Path(tempfile.mkdtemp(prefix="emulator-locust-"))
        runner = environment.runner
        index = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        first = index * PHONES_PER_WORKER + 1
        builder = PhoneBuilder(lease, clock, workdir, network=network)
        return cls(lease, clock, network, builder, options, workdir, itertools.count(first))


class LyncPhone(User):
    """One Lync Phone Edition phone: it boots, finds the service, checks, downloads,
    verifies, waits out the idle time, restarts into the update, and lives on idle."""

    @task
    def live(self) -> None:
        """The phone's whole life, until Locust stops this user."""
        fleet = _Fleet.of(self.environment)
        options = fleet.options
        number = next(fleet.numbers)
        models = [get_model(name.strip()) for name in options.phone_model.split(",")]
        model = models[number % len(models)]
        location = location_of(options.phone_location, number - 1)
        address = options.phone_source or fleet.builder.address(location, number)
        core = Phone(model.identity(number), rng=random.Random(f"{options.phone_seed}/{number}"))
        phone = CooperativePhone(
            core,
            lease=fleet.lease,
            network=fleet.network,
            clock=fleet.clock,
            address=address,
            workdir=fleet.workdir,
            on_request=self._request,
            on_state=self._entered,
            on_converged=self._converged,
        )
        phone.run(_credentials(options.phone_user, fleet.lease))

    def _request(self, report: RequestReport) -> None:
        self.environment.events.request.fire(
            request_type=report.kind,
            name=report.name,
            response_time=report.milliseconds,
            response_length=report.size,
            exception=RuntimeError(report.error) if report.error else None,
            context={},
        )

    def _entered(self, phone: CooperativePhone, state: PhoneState) -> None:
        self._phone_figure(f"state {state.name.lower()}", 0.0)

    def _converged(self, phone: CooperativePhone) -> None:
        assert phone.powered_on_at is not None
        assert phone.converged_at is not None
        self._phone_figure("converged", (phone.converged_at - phone.powered_on_at) * 1000)

    def _phone_figure(self, name: str, milliseconds: float) -> None:
        self.environment.events.request.fire(
            request_type="PHONE",
            name=name,
            response_time=milliseconds,
            response_length=0,
            exception=None,
            context={},
        )


def _credentials(user: str, lease: Lease) -> Credentials | None:
    if not user:
        return None
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise RuntimeError(f"--phone-user {user} needs the password in {PASSWORD_ENV}")
    name, domain = account_of(user, None, lease)
    return Credentials(name, domain, password=password)


def _end_when_converged(environment: Environment, **_: Any) -> None:
    """On the master (or a lone process): quit once ``--phones-to-converge`` converged."""
    options = environment.parsed_options
    if options is None or not options.phones_to_converge:
        return
    if isinstance(environment.runner, WorkerRunner):
        return
    target = options.phones_to_converge

    def watch() -> None:
        while True:
            gevent.sleep(1.0)
            if environment.stats.get("converged", "PHONE").num_requests >= target:
                assert environment.runner is not None
                environment.runner.quit()
                return

    gevent.spawn(watch)


def _clean_up(environment: Environment, **_: Any) -> None:
    """At the end, the process's scratch directory goes (the phones' downloads are gone)."""
    fleet: _Fleet | None = getattr(environment, "device_update_fleet", None)
    if fleet is not None:
        shutil.rmtree(fleet.workdir, ignore_errors=True)


# Locust's event hooks carry no types: registered by call, not as decorators.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_end_when_converged)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_clean_up)  # type: ignore[no-untyped-call]
