"""Device Update Lab: the phones (a sans-IO core and the drivers that give it I/O).

What is exported here is the phones' public face: what the lab's operations (demo,
scenarios, the pytest plugin and its harness) use to build and drive phones, as any user
of the package would. The lab imports nothing else of the package (an import-linter
contract in pyproject.toml); everything below is the emulator's own business.

- Making phones: `PhoneBuilder` (every phone's core and driver, at x.y.1.n of its
  `Location`'s segment of the `Lease`), `get_model`, `PhoneSettings`, `Credentials`, and
  the faults (`AnyFault`, `BootFailure`, `Call`, `PowerCut`, `WrongClock`, `Trigger`).
- Driving them: `PhoneDriver` (power, sign-in, calls, waits, log upload), `PhoneState`,
  the clocks (`Clock`, `LoopClock`, `ScaledClock`, `to_datetime`), `load_lease`.
- The network a caller may wrap (to watch or hold exchanges): the `Network`, `Resolver`
  and `HTTPSClient` protocols and what a client returns (`Answer`, `Download`).
- Judging what a phone did by its log's codes and facts, never its sentences: `LogEntry`
  (its ``code`` and ``facts``), `LogCode`, `LogLevel` and the kinds facts take
  (`CheckTrigger`, `Purpose`, `RouteKind`, `CertificateProblem`, `FirmwareProblem`); for
  people, `describe_status`, `format_duration` and the `system_information` screen.
- Errors: `FleetError` (a phone or fleet that cannot be made), `DriverError`,
  `WaitTimeoutError`.
"""

__version__ = "0.1.0"

from emulator.build import Location, PhoneBuilder
from emulator.clock import Clock, LoopClock, ScaledClock, to_datetime
from emulator.codec import describe_status
from emulator.driver import Network, PhoneDriver
from emulator.errors import (
    CertificateProblem,
    DriverError,
    FirmwareProblem,
    FleetError,
    WaitTimeoutError,
)
from emulator.events import Credentials, Purpose
from emulator.faults import AnyFault, BootFailure, Call, PowerCut, Trigger, WrongClock
from emulator.lease import Lease, load_lease
from emulator.models import get_model
from emulator.net.client import Answer, Download, HTTPSClient
from emulator.net.resolver import Resolver
from emulator.phonelog import (
    CheckTrigger,
    LogCode,
    LogEntry,
    LogLevel,
    format_duration,
)
from emulator.routes import RouteKind
from emulator.screens import system_information
from emulator.settings import PhoneSettings
from emulator.states import PhoneState

__all__ = [
    "Answer",
    "AnyFault",
    "BootFailure",
    "Call",
    "CertificateProblem",
    "CheckTrigger",
    "Clock",
    "Credentials",
    "Download",
    "DriverError",
    "FirmwareProblem",
    "FleetError",
    "HTTPSClient",
    "Lease",
    "Location",
    "LogCode",
    "LogEntry",
    "LogLevel",
    "LoopClock",
    "Network",
    "PhoneBuilder",
    "PhoneDriver",
    "PhoneSettings",
    "PhoneState",
    "PowerCut",
    "Purpose",
    "Resolver",
    "RouteKind",
    "ScaledClock",
    "Trigger",
    "WaitTimeoutError",
    "WrongClock",
    "describe_status",
    "format_duration",
    "get_model",
    "load_lease",
    "system_information",
    "to_datetime",
]
