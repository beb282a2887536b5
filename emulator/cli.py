"""The ``emulator`` command: run phones against a running lab, and show a phone's screens.

    emulator run     [--state-dir DIR] [--phones N] [--model M]... [--location L] [--user U]
                     [--scale S] [--duration D] [--json] [--upload-logs] [faults...]
    emulator screen  --from RUN.json [--phone MAC|SERIAL|ADDRESS|N] [--log]
    emulator screen  [--state-dir DIR] [--model M] [run options...]   (runs one phone first)
    emulator models

The lab is found through its state directory: ``lease.json`` is what DHCP would give a
phone there (DNS server, domain, the CA its image trusts). Phone time starts at the
current time (or ``--start``) and runs ``--scale`` times faster than the wall clock.
With ``--upload-logs`` every phone uploads its log to the service as a CELog when the run
ends, as a support engineer would ask, and the run reports where each log went.
Exit status: 0 when the run was made, 1 when it could not be (no lab, a broken lease),
2 for bad arguments, with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar
from urllib.parse import urlsplit

from rich.console import Console

from emulator.build import Location
from emulator.clock import ScaledClock, from_datetime, to_datetime
from emulator.collector import long_run_pace
from emulator.driver import LeaseNetwork, PhoneDriver
from emulator.errors import CredentialsError, EmulatorError, FleetError, LeaseError, ModelError
from emulator.events import Credentials
from emulator.faults import AnyFault, BootFailure, Call, PowerCut, Trigger, WrongClock
from emulator.fleet import (
    Fleet,
    FleetResult,
    PhoneSpec,
    ProgressDisplay,
    format_span,
    merge_runs,
)
from emulator.lease import Lease, load_lease, parse_lease
from emulator.models import MAX_INDEX, MODELS, PhoneModel, get_model
from emulator.states import PhoneState

PROG = "emulator"
LEASE_FILE = "lease.json"
DEFAULT_SCALE = 3600.0
"""Phone seconds per wall-clock second by default: an hour a second, a day in 24 s."""
DEFAULT_MAX_CLIENTS = 128
"""Phones with an HTTPS exchange in progress at once: bounds a large fleet's memory."""

# Against a lease written by hand (a real deployment): real time, a few phones talking at
# once, and two new phones a second, so that a fleet started by mistake is a trickle.
GENTLE_SCALE = 1.0
GENTLE_MAX_CLIENTS = 16
GENTLE_RATE = 2.0
PASSWORD_ENV = "EMULATOR_PASSWORD"  # noqa: S105 (a variable's name)
MAX_WORKERS = 64
MIXED = "mixed"
TABLE_LIMIT = 20
"""Runs of up to this many phones list every phone after the summary."""

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|m|s)?", re.IGNORECASE)
_UNITS = {"d": 86_400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0, None: 1.0}


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``24h``, ``1d``, ``1h30m`` or ``-400d``."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-").strip()
    total, position = 0.0, 0
    while position < len(body):
        match = _DURATION.match(body, position)
        if match is None or match.end() == position:
            break
        unit = match.group(2).lower() if match.group(2) else None
        total += float(match.group(1)) * _UNITS[unit]
        position = match.end()
        while position < len(body) and body[position] == " ":
            position += 1
    if not body or position != len(body):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (write it like 90s, 5m, 24h, 1d or 1h30m)"
        )
    return sign * total


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a duration longer than 0")
    return value


def _non_negative_duration(text: str) -> float:
    value = parse_duration(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be a negative duration")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the time scale must be a number > 0, not {text}")
    return value


def _whole_number(high: int, name: str | None = None) -> Callable[[str], int]:
    """A parser of whole numbers in 1..high; the error names ``name`` (or the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"{name or text} must be between 1 and {high}")
        return value

    return parse


_count = _whole_number(MAX_INDEX)
_workers = _whole_number(MAX_WORKERS, "--workers")


def _metrics_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return port


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share must be between 0 and 1, not {text}")
    return value


def _model(text: str) -> PhoneModel:
    try:
        return get_model(text)
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date and time (like 2026-12-01T09:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (end it with Z for UTC)")
    return from_datetime(when)


def _call(text: str) -> tuple[float, float]:
    at, sep, length = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not AT:DURATION (a call 1m after power-on for 10m: 1m:10m)"
        )
    return _non_negative_duration(at), _positive_duration(length)


def build_parser() -> argparse.ArgumentParser:
    """The ``emulator`` command line."""
    parser = _Parser(prog=PROG, description="Lync Phone Edition phones against a running lab.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a fleet of phones against a running lab")
    _add_run_options(run)
    run.add_argument("--phones", type=_count, default=1, help="how many phones (default 1)")
    run.add_argument("--json", action="store_true", help="print the summary and phones as JSON")
    run.add_argument(
        "--compact-json",
        action="store_true",
        help="with --json, print it on one line (for a program: much less CPU for big fleets)",
    )
    run.add_argument("--log", action="store_true", help="keep every phone's log in the JSON")
    run.add_argument(
        "--upload-logs",
        action="store_true",
        help="at the end, every phone uploads its log to the service as a CELog",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes to spread the fleet over, each with its own loop (default 1)",
    )
    run.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=None,
        metavar="PORT",
        help="serve the fleet's figures for Prometheus on http://127.0.0.1:PORT/metrics while "
        "it runs (0: any free port; with --workers, each worker on the next port)",
    )
    # Set by a run with --workers for each of its worker processes.
    run.add_argument("--address-offset", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    screen = commands.add_parser(
        "screen", help="a phone's System Information, from a run's JSON or by running one"
    )
    screen.add_argument("--from", dest="source", type=Path, help="the JSON of `emulator run`")
    screen.add_argument(
        "--phone", help="which phone of the JSON: MAC, serial number, address or position (1..)"
    )
    screen.add_argument("--log", action="store_true", help="also show the phone's log")
    _add_run_options(screen)

    commands.add_parser("models", help="the phone models the emulator can be")
    commands.add_parser(
        "locustfile", help='where the locustfile is: locust -f "$(emulator locustfile)" ...'
    )
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=Path("state"), help="the lab's state directory"
    )
    target = parser.add_argument_group(
        "a real deployment (docs/real-deployment.md): gentle defaults apply with --lease"
    )
    target.add_argument(
        "--lease",
        type=Path,
        help="a lease written by hand (docs/wire-protocol.md) instead of the lab's in "
        f"--state-dir; then --scale defaults to {GENTLE_SCALE:g}, --max-clients to "
        f"{GENTLE_MAX_CLIENTS} and --rate to {GENTLE_RATE:g}",
    )
    target.add_argument(
        "--dns",
        metavar="HOST[:PORT]",
        help="instead of a lease, the DNS server phones ask (with --dhcp-domain, --sip-server "
        "and --ca-cert; port 53 unless given)",
    )
    target.add_argument("--dhcp-domain", help="the DNS domain DHCP hands out (with --dns)")
    target.add_argument("--sip-server", help="the pool's FQDN, DHCP option 120 (with --dns)")
    target.add_argument("--ca-cert", type=Path, help="the CA phones trust, PEM (with --dns)")
    target.add_argument(
        "--vendor-cert",
        action="append",
        default=[],
        metavar="VENDOR=PATH",
        help="a vendor's firmware signing certificate, repeatable (with --dns)",
    )
    target.add_argument(
        "--https-port", type=int, default=443, help="the port of URLs phones build (with --dns)"
    )
    target.add_argument(
        "--source",
        help="every phone sends from this address, the machine's own (default: x.y.1.n of "
        "the lease's segments)",
    )
    target.add_argument(
        "--password-file",
        type=Path,
        help=f"read the --user's password from this file (or set {PASSWORD_ENV}; never on "
        "the command line); without either it is asked for",
    )
    target.add_argument(
        "--rate",
        type=_positive_number,
        help="at most this many phones power on per real second (default: no limit against a "
        f"lab, {GENTLE_RATE:g} with --lease)",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_model,
        help=f"phone model, repeatable (phones take them in turn; default CX600): "
        f"{', '.join(MODELS)}",
    )
    parser.add_argument(
        "--location",
        choices=[Location.INSIDE.value, Location.OUTSIDE.value, MIXED],
        default=Location.INSIDE.value,
        help="inside the firewall, outside it, or every other phone (default inside)",
    )
    parser.add_argument("--first-index", type=_count, default=1, help="index of the first phone")
    parser.add_argument(
        "--user", help="a user to sign in on every phone (alice, CONTOSO\\alice or alice@...)"
    )
    parser.add_argument("--domain", help="the user's NTLM domain (default: from the SIP domain)")
    parser.add_argument(
        "--nt-hash", help="the user's NT hash (without it the password is asked for)"
    )
    parser.add_argument(
        "--sign-in-at",
        type=_non_negative_duration,
        help="sign the user in this long after power-on (default: once the phone is idle)",
    )
    parser.add_argument(
        "--scale",
        type=_scale,
        help="phone seconds per wall-clock second (default: the lab's clock from the "
        f"lease, else {DEFAULT_SCALE:g})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_duration,
        default=86_400.0,
        help="longest run in phone time (default 1d); it ends early once every phone settled",
    )
    parser.add_argument(
        "--full", action="store_true", help="run the whole duration even once phones settled"
    )
    parser.add_argument(
        "--stagger",
        type=_non_negative_duration,
        default=60.0,
        help="spread the boots over this much phone time (default 1m)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of boot times and jitter")
    parser.add_argument(
        "--start",
        type=_start,
        help="phone time at the start (default: the lab's clock from the lease, else now)",
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--max-clients",
        type=_count,
        default=None,
        help="most phones talking HTTPS at once; the others wait their turn "
        f"(default {DEFAULT_MAX_CLIENTS}, {GENTLE_MAX_CLIENTS} with --lease)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--power-cut",
        action="store_true",
        help="power is lost 10 s into installing, and back 1 min later",
    )
    faults.add_argument(
        "--boot-failure", action="store_true", help="the first boot into a new image fails"
    )
    faults.add_argument(
        "--clock-offset",
        type=parse_duration,
        help="phone clocks this far from true time (like -400d)",
    )
    faults.add_argument(
        "--busy",
        type=_positive_duration,
        help="a call of this length starts when a download starts",
    )
    faults.add_argument(
        "--call",
        type=_call,
        action="append",
        default=[],
        metavar="AT:DURATION",
        help="a call AT after power-on lasting DURATION, repeatable",
    )
    faults.add_argument(
        "--fault-share",
        type=_share,
        default=1.0,
        help="share of the phones that get the faults (default all)",
    )


# --- Turning options into a fleet -------------------------------------------------------------


def credentials_from(args: argparse.Namespace, lease: Lease, stdin: TextIO) -> Credentials | None:
    """The credentials a user types on the phones, or None without ``--user``."""
    if not args.user:
        return None
    user, domain = account_of(args.user, args.domain, lease)
    try:
        if args.nt_hash:
            return Credentials(user, domain, nt_hash=args.nt_hash)
        password = _given_password(args) or _ask_password(f"{domain}\\{user}", stdin)
        return Credentials(user, domain, password=password)
    except CredentialsError as exc:
        raise UsageError(str(exc)) from None


def account_of(given: str, domain: str | None, lease: Lease) -> tuple[str, str]:
    """The user name and NTLM domain of ``given`` (alice, CONTOSO\\alice or alice@realm):
    the domain it names, else ``domain``, else the first label of the SIP domain."""
    user = given
    if "\\" in user:
        domain, user = user.split("\\", 1)
    elif "@" in user:
        user, _, realm = user.partition("@")
        domain = domain or realm.split(".")[0]
    if not user:
        raise UsageError(f"--user {given!r} names no user")
    return user, (domain or lease.sip_domain.split(".")[0]).upper()


def location_of(choice: str, i: int) -> Location:
    """The location of the ``i``-th phone (from 0) of a run: ``mixed`` alternates, inside
    first."""
    if choice == MIXED:
        return Location.INSIDE if i % 2 == 0 else Location.OUTSIDE
    return Location(choice)


def _limits(args: argparse.Namespace) -> tuple[float | None, int]:
    """Power-ons per real second (None: no limit) and phones talking at once: as given, else
    gentle against a lease written by hand (a real deployment), else a lab's defaults."""
    gentle = _real_target(args)
    rate = args.rate or (GENTLE_RATE if gentle else None)
    return rate, args.max_clients or (GENTLE_MAX_CLIENTS if gentle else DEFAULT_MAX_CLIENTS)


def _given_password(args: argparse.Namespace) -> str | None:
    """The password from ``--password-file`` (its first line) or the environment, if given."""
    path: Path | None = args.password_file
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --password-file {path}: {exc}") from None
        if not lines or not lines[0]:
            raise UsageError(f"--password-file {path} holds no password")
        return lines[0]
    return os.environ.get(PASSWORD_ENV) or None


def _ask_password(account: str, stdin: TextIO) -> str:
    if stdin.isatty():
        password = getpass.getpass(f"password of {account}: ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError(f"no password given for {account}")
    return password


def faults_from(args: argparse.Namespace) -> tuple[AnyFault, ...]:
    """The faults the options ask for (each phone that gets faults gets all of them)."""
    faults: list[AnyFault] = []
    if args.power_cut:
        faults.append(PowerCut())
    if args.boot_failure:
        faults.append(BootFailure())
    if args.clock_offset:
        faults.append(WrongClock(offset=args.clock_offset))
    if args.busy:
        faults.append(Call(trigger=Trigger(on=PhoneState.DOWNLOADING), duration=args.busy))
    for at, length in args.call:
        faults.append(Call(trigger=Trigger(at=at), duration=length))
    return tuple(faults)


def specs_from(
    args: argparse.Namespace, count: int, credentials: Credentials | None
) -> list[PhoneSpec]:
    """The phones of the run: models in turn, locations, the user, faults on a share."""
    models: list[PhoneModel] = args.models or [get_model("CX600")]
    if args.first_index + count - 1 > MAX_INDEX:
        raise UsageError(f"phone indexes would go past {MAX_INDEX}")
    faults = faults_from(args)
    faulty = set(range(count))
    if faults and args.fault_share < 1:
        chosen = round(count * args.fault_share)
        faulty = set(random.Random(args.seed).sample(range(count), chosen))
    sign_in = (
        Trigger(at=args.sign_in_at) if args.sign_in_at is not None else Trigger(on=PhoneState.IDLE)
    )
    specs = []
    for i in range(count):
        location = location_of(args.location, i)
        specs.append(
            PhoneSpec(
                model=models[i % len(models)],
                index=args.first_index + i,
                location=location,
                credentials=credentials,
                sign_in=sign_in,
                faults=faults if i in faulty else (),
            )
        )
    return specs


@dataclass(frozen=True)
class LogUpload:
    """Where one phone's log went at the end of a run (``stored``), or why not (``error``)."""

    mac: str
    server: str | None
    stored: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"server": self.server, "stored": self.stored, "error": self.error}

    def render(self) -> str:
        """One line of the report."""
        if self.stored is not None:
            return f"  {self.mac} log: {self.stored} on {self.server}"
        return f"  {self.mac} log not uploaded: {self.error}"


@dataclass(frozen=True)
class RunOutcome:
    """A run's result, and where each phone's log went when logs were uploaded."""

    result: FleetResult
    uploads: tuple[LogUpload, ...] = ()

    def as_dict(self, *, with_log: bool = False) -> dict[str, Any]:
        """The result's JSON form, each phone with its ``log_upload`` when there was one."""
        data = self.result.as_dict(with_log=with_log)
        for phone, upload in zip(data["phones"], self.uploads, strict=False):
            phone["log_upload"] = upload.as_dict()
        return data


async def upload_logs(drivers: Sequence[PhoneDriver]) -> tuple[LogUpload, ...]:
    """Every phone uploads its log (all at once, as the network's client limit allows)."""

    async def upload(driver: PhoneDriver) -> LogUpload:
        mac = driver.phone.identity.mac
        server = driver.phone.update_server
        host = urlsplit(server).hostname if server else None
        try:
            return LogUpload(mac, host, stored=await driver.upload_log())
        except EmulatorError as exc:
            return LogUpload(mac, host, error=str(exc))

    return tuple(await asyncio.gather(*(upload(driver) for driver in drivers)))


def phone_time(
    lease: Lease, args: argparse.Namespace, default_scale: float = DEFAULT_SCALE
) -> tuple[float, float]:
    """Phone time at the start of a run, and its scale: the lab's clock from the lease
    (phones and servers keep one time), else ``--start`` (default now) and ``--scale``."""
    lab = lease.clock
    if lab is None:
        start = args.start if args.start is not None else time.time()
        return start, args.scale if args.scale is not None else default_scale
    if args.scale is not None and args.scale != lab.scale:
        raise UsageError(
            f"the lab runs its clock at {lab.scale:g} times real time and phones follow it: "
            f"leave out --scale, or start the lab with `lab up --scale {args.scale:g}`"
        )
    if args.start is not None:
        raise UsageError(
            "the lab keeps its own clock and phones follow it: leave out --start, or start "
            "the lab with `lab up --start TIME`"
        )
    return lab.at_wall(time.time()), lab.scale


async def run_fleet(
    lease: Lease,
    specs: Sequence[PhoneSpec],
    args: argparse.Namespace,
    console: Console | None = None,
) -> RunOutcome:
    """Run the phones of ``specs`` on a scaled clock against the lab of ``lease``.

    With ``args.upload_logs`` every phone then uploads its log, once the run's result is taken.
    """
    loop = asyncio.get_running_loop()
    # The date a run starts at is the one place the system clock is read: phones only
    # ever see the scaled clock made from it.
    start, scale = phone_time(lease, args, _default_scale(args))
    clock = ScaledClock(loop.time, start=start, scale=scale)
    rate, max_clients = _limits(args)
    network = LeaseNetwork(lease, clock, max_clients=max_clients)
    with tempfile.TemporaryDirectory(prefix="emulator-", dir=_scratch_dir()) as workdir:
        fleet = Fleet(
            specs,
            lease=lease,
            clock=clock,
            network=network,
            workdir=Path(workdir),
            seed=args.seed,
            stagger=args.stagger if len(specs) > 1 else 0.0,
            address_offset=getattr(args, "address_offset", 0),
            source=args.source,
            # Phone seconds between two power-ons: at most ``rate`` a real second.
            spacing=scale / rate if rate else 0.0,
        )
        display = ProgressDisplay(console or Console(stderr=True), args.duration)
        async with contextlib.AsyncExitStack() as stack:
            port = getattr(args, "metrics_port", None)
            if port is not None:
                from emulator.metrics import served

                bound = await stack.enter_async_context(served(fleet, port))
                print(f"metrics: http://127.0.0.1:{bound}/metrics", file=sys.stderr, flush=True)
            with display:
                result = await fleet.run(
                    duration=args.duration,
                    until_settled=not args.full,
                    progress=display.update if display.enabled else None,
                )
        if not getattr(args, "upload_logs", False):
            return RunOutcome(result)
        return RunOutcome(result, await upload_logs(fleet.drivers))


# --- Commands ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emulator`` command."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        # The collector at a long run's pace for the whole command: the run itself, and
        # the results of thousands of phones made into JSON and merged after it.
        with long_run_pace():
            if args.command == "run" and args.workers > 1 and args.phones > 1:
                return _run_workers(args, argv)
            status = _dispatch(args)
        if getattr(args, "worker", False):
            # A worker's share is out and its files are gone: it leaves at once, rather
            # than have the run wait while the interpreter frees thousands of phones.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except EmulatorError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "locustfile":
        # Its path only: importing it would pull in Locust and gevent.
        print(Path(__file__).with_name("locustfile.py"))
        return 0
    if args.command == "models":
        for model in MODELS.values():
            print(
                f"{model.name:<8} {model.vendor.name:<8} revision {model.revision}, "
                f"locale {model.locale}, factory image {model.factory_version}"
            )
        return 0
    if args.command == "screen" and args.source is not None:
        return _screen_from_file(args)
    if args.command == "screen" and args.phone:
        raise UsageError("--phone picks a phone of a run's JSON: give --from too")
    if args.nt_hash and not args.user:
        raise UsageError("--nt-hash needs --user")
    lease = _lease(args)
    credentials = credentials_from(args, lease, sys.stdin)
    count = args.phones if args.command == "run" else 1
    specs = specs_from(args, count, credentials)
    outcome = _run_loop(args.loop, lambda: run_fleet(lease, specs, args))
    result = outcome.result
    if args.command == "screen":
        phone = result.phones[0]
        print(phone.screen, end="")
        if args.log:
            print()
            print("".join(entry.render() + "\n" for entry in phone.log), end="")
        return 0
    if args.json:
        _print_json(outcome.as_dict(with_log=args.log), getattr(args, "compact_json", False))
    else:
        _print_result(result)
        if args.upload_logs:
            _print_uploads(outcome.uploads)
    return 0


def _scratch_dir() -> str | None:
    """Where downloads go: memory when the system offers it, else the default temp directory.

    Every phone writes, hashes and deletes its images there; on a disk file system the
    opens, unlinks and directory changes cost a fleet about a sixth of its CPU time.
    """
    # A private directory is made in it (mkdtemp, mode 0700), as under /tmp.
    shm = Path("/dev/shm")  # noqa: S108
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _run_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the fleet as ``--workers`` processes, each a consecutive share, and merge them.

    Every worker gets the same start of phone time, its own first index and addresses,
    and the password (if one is asked for) on its standard input; each prints its share
    as JSON, which is merged into one result as one process would have printed it.
    """
    lease = _lease(args)
    credentials = credentials_from(args, lease, sys.stdin)
    specs_from(args, args.phones, None)  # the indexes must fit before anything starts
    # Workers of a lab that keeps its own clock each follow it; otherwise they share a start.
    # (phone_time refuses --start and --scale against a lab clock.)
    lab_start, _ = phone_time(lease, args, _default_scale(args))
    start = lab_start if lease.clock is None else None
    base = _without(
        argv,
        {
            "--workers",
            "--phones",
            "--first-index",
            "--start",
            "--json",
            "--compact-json",
            "--worker",
            "--metrics-port",
            "--rate",
            "--max-clients",
        },
    )
    workers = min(args.workers, args.phones)
    # The run's limits are shared out: together the workers keep to them.
    rate, max_clients = _limits(args)
    if args.metrics_port and args.metrics_port + workers - 1 > 65535:
        raise FleetError(f"--metrics-port {args.metrics_port} leaves no port for {workers} workers")
    sizes = [
        args.phones // workers + (1 if i < args.phones % workers else 0) for i in range(workers)
    ]
    secret = credentials.password if credentials is not None else None
    processes: list[subprocess.Popen[bytes]] = []
    offset = 0
    for size in sizes:
        command = [
            sys.executable,
            "-m",
            "emulator.cli",
            *base,
            "--phones",
            str(size),
            "--first-index",
            str(args.first_index + offset),
            "--address-offset",
            str(offset),
            *(
                ["--metrics-port", str(_worker_port(args.metrics_port, len(processes)))]
                if args.metrics_port is not None
                else []
            ),
            *(["--start", to_datetime(start).isoformat()] if start is not None else []),
            *(["--rate", repr(rate / workers)] if rate else []),
            "--max-clients",
            str(max(1, max_clients // workers)),
            "--worker",
            # Their JSON goes to a pipe: indenting it would cost CPU for nothing.
            "--json",
            "--compact-json",
        ]
        processes.append(
            subprocess.Popen(
                command,
                stdin=subprocess.PIPE if secret is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
        )
        offset += size
    runs = []
    for process in processes:
        output = process.communicate((secret + "\n").encode() if secret is not None else None)[0]
        if process.returncode == 0:
            # Read while the others still run: a share is parsed as soon as it is out.
            runs.append(json.loads(output))
    failed = [i for i, p in enumerate(processes) if p.returncode != 0]
    if failed:
        raise FleetError(
            f"worker {failed[0] + 1} of {workers} ended with status "
            f"{processes[failed[0]].returncode}; its message is above"
        )
    summary, phones = merge_runs(runs)
    if args.json:
        _print_json({"summary": summary.as_dict(), "phones": phones}, args.compact_json)
    else:
        print(summary.render(), end="")
        if args.upload_logs:
            _print_uploads(tuple(_upload_from(phone) for phone in phones))
    return 0


def _print_json(data: dict[str, Any], compact: bool) -> None:
    # dumps, not dump: only a whole document at once, unindented, takes the C encoder.
    text = json.dumps(data, indent=None if compact else 2) + "\n"
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a caller's own stream)
        sys.stdout.write(text)
        return
    # Straight to the descriptor, every byte: after uvloop has run, a large write through
    # sys.stdout to a pipe nobody is reading yet was seen to keep only its first 64 KiB
    # (a worker whose share was read after another's), with no error.
    sys.stdout.flush()
    _write_fully(fd, text.encode())


def _write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, through short writes and a full non-blocking pipe."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def _worker_port(port: int, worker: int) -> int:
    """The metrics port of worker number ``worker`` (from 0): the next after the previous
    worker's, or any free one (0) for each."""
    return port + worker if port else 0


def _without(argv: list[str], options: set[str]) -> list[str]:
    """``argv`` less the given options (with their values, in either form)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = "=" not in arg and name not in ("--json", "--compact-json", "--worker")
            continue
        kept.append(arg)
    return kept


def _default_scale(args: argparse.Namespace) -> float:
    """Real time against a real deployment; an hour a second against a lab."""
    return GENTLE_SCALE if _real_target(args) else DEFAULT_SCALE


def _real_target(args: argparse.Namespace) -> bool:
    """Whether the run is against a deployment known only from a lease written by hand or
    its values on the command line (then the gentle defaults apply)."""
    return args.lease is not None or args.dns is not None


def _lease_from_flags(args: argparse.Namespace) -> Lease:
    """The lease that --dns, --dhcp-domain, --sip-server, --ca-cert and --vendor-cert
    give, checked as a lease file is."""
    missing = [
        flag
        for flag, value in (
            ("--dhcp-domain", args.dhcp_domain),
            ("--sip-server", args.sip_server),
            ("--ca-cert", args.ca_cert),
        )
        if value is None
    ]
    if missing:
        raise UsageError(f"--dns needs {', '.join(missing)} too (or write a lease: --lease)")
    host, _, port = str(args.dns).rpartition(":") if ":" in args.dns else (args.dns, "", "53")
    if not port.isdigit():
        raise UsageError(f"--dns {args.dns!r} is not HOST or HOST:PORT")
    vendors: dict[str, str] = {}
    for given in args.vendor_cert:
        vendor, _, path = given.partition("=")
        if not vendor or not path:
            raise UsageError(f"--vendor-cert {given!r} is not VENDOR=PATH")
        vendors[vendor] = str(Path(path).resolve())
    return parse_lease(
        {
            "domain": args.dhcp_domain,
            "sip_server": args.sip_server,
            "dns": [host, int(port)],
            "https_port": args.https_port,
            "ca_cert": str(Path(args.ca_cert).resolve()),
            "vendor_certs": vendors,
        }
    )


def _lease(args: argparse.Namespace) -> Lease:
    """The lease of ``--lease``, or of the lab in ``--state-dir``."""
    if args.lease is not None and args.dns is not None:
        raise UsageError(
            "give a lease written by hand (--lease) or its values (--dns ...), not both"
        )
    if args.lease is not None:
        return joined_lease(args.lease)
    if args.dns is not None:
        return _lease_from_flags(args)
    state_dir: Path = args.state_dir
    path = state_dir / LEASE_FILE
    if not path.exists():
        raise LeaseError(
            f"no {LEASE_FILE} in {state_dir}: is a lab running there? (lab up --state-dir "
            f"{state_dir}), or give a lease written by hand with --lease"
        )
    return joined_lease(path)


def joined_lease(path: Path) -> Lease:
    """The lease at ``path``; when it names a lab's own network, this process has joined
    the user namespace that owns it (if any), as making the phones' sockets there needs.
    Called before any thread starts: a process joins a user namespace only with one."""
    lease = load_lease(path)
    if lease.netns is not None:
        try:
            lease.netns.join_user()
        except OSError as exc:
            raise LeaseError(
                f"cannot join the network of the lab of {path}: {exc.strerror or exc}"
            ) from None
    return lease


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _closed_tls_is_quiet(previous: ExceptionHandler | None) -> ExceptionHandler:
    """An exception handler that drops uvloop's report of a TLS write to a closed socket."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        # uvloop's words for an operation on a socket handle that is closed already.
        if (
            context.get("message") == "Fatal error on SSL protocol"
            and isinstance(exc, RuntimeError)
            and "the handler is closed" in str(exc)
        ):
            return  # the phone closed that socket itself: nothing was lost
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    return handle


def _run_loop(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # The main task ends with no result of its own: on the way out the runner formats the
    # task (restoring the SIGINT handler), and a whole fleet's result is costly to format.
    results: list[T] = []

    async def run() -> None:
        # Phones stopped at the end of a run drop their connections wherever they are;
        # uvloop may then write TLS records to a socket a phone has closed and call that
        # fatal. Exactly that report is dropped.
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_closed_tls_is_quiet(loop.get_exception_handler()))
        results.append(await main())

    # Lab picks its loop the same way in one place (lab.service.run.event_loop_factory); the
    # phones' side keeps its own few lines, as it never imports lab.
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - installed wherever it builds
            pass
        else:
            uvloop.run(run())
            return results[0]
    asyncio.run(run())
    return results[0]


def _print_result(result: FleetResult) -> None:
    print(result.summary.render(), end="")
    if len(result.phones) > TABLE_LIMIT:
        return
    print()
    for phone in result.phones:
        backup = f" (backup {phone.backup_version})" if phone.backup_version else ""
        converged = (
            f"settled after {format_span(phone.converged_after)}"
            if phone.converged_after is not None
            else "not settled"
        )
        print(
            f"  {phone.mac}  {phone.model:<7} {phone.location:<7} {phone.address:<15} "
            f"{phone.state.value:<20} {phone.version}{backup}; {converged}"
        )
        if phone.error:
            print(f"    error: {phone.error}")


def _print_uploads(uploads: Sequence[LogUpload]) -> None:
    stored = sum(1 for upload in uploads if upload.stored is not None)
    print()
    print(f"log uploads: {stored} stored, {len(uploads) - stored} refused or not delivered")
    for upload in uploads[:TABLE_LIMIT]:
        print(upload.render())
    if len(uploads) > TABLE_LIMIT:
        print(f"  ... and {len(uploads) - TABLE_LIMIT} more (--json lists them all)")


def _upload_from(phone: dict[str, Any]) -> LogUpload:
    """A worker's report of one phone's upload, from its JSON."""
    upload = phone.get("log_upload") or {}
    return LogUpload(
        str(phone.get("mac", "")),
        upload.get("server"),
        upload.get("stored"),
        upload.get("error") or ("no upload reported" if not upload.get("stored") else None),
    )


def _screen_from_file(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.source.read_text(encoding="utf-8"))
        phones = data["phones"]
        if not isinstance(phones, list) or not phones:
            raise ValueError("no phones")
    except OSError as exc:
        raise UsageError(f"cannot read {args.source}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{args.source} is not the JSON of `emulator run --json`") from None
    phone = _pick(phones, args.phone, args.source)
    print(phone.get("system_information", ""), end="")
    if args.log:
        log = phone.get("log")
        if log is None:
            raise UsageError(f"{args.source} holds no phone logs: run with --json --log")
        print()
        # Each entry as LogEntry.as_dict wrote it (files of older runs hold the lines).
        print("".join((e["line"] if isinstance(e, dict) else e) + "\n" for e in log), end="")
    return 0


def _pick(phones: list[dict[str, Any]], wanted: str | None, source: Path) -> dict[str, Any]:
    if wanted is None:
        return phones[0]
    key = wanted.strip().upper().replace(":", "-")
    if key.isdigit() and 1 <= int(key) <= len(phones):
        return phones[int(key) - 1]
    for phone in phones:
        names = {
            str(phone.get("mac", "")).upper(),
            str(phone.get("mac", "")).upper().replace("-", ""),
            str(phone.get("serial", "")).upper(),
            str(phone.get("address", "")),
        }
        if key in names:
            return phone
    raise UsageError(f"no phone {wanted!r} in {source} (give a MAC, serial, address or 1..)")


if __name__ == "__main__":  # pragma: no cover - python -m emulator.cli
    sys.exit(main())
