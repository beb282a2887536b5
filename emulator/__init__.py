"""Device Update Lab: the phones (a sans-IO core and the drivers that give it I/O).

What is exported here is the phones' public face: what the lab's operations (demo,
scenarios, the pytest plugin and its harness) use to build and drive phones, as any user
of the package would. The lab imports nothing else of the package (an import-linter
contract in pyproject.toml); everything below is the emulator's own business.
"""

__version__ = "0.1.0"

from emulator.clock import Clock, LoopClock, ScaledClock, to_datetime
from emulator.codec import describe_status
from emulator.core import TIME_SLACK, Phone
from emulator.driver import LeaseNetwork, Network, PhoneDriver
from emulator.errors import (
    CertificateProblem,
    DriverError,
    FirmwareProblem,
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
    LogFacts,
    LogLevel,
    format_duration,
)
from emulator.routes import RouteKind
from emulator.screens import system_information
from emulator.settings import PhoneSettings
from emulator.states import PhoneState

__all__ = [
    "TIME_SLACK",
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
    "HTTPSClient",
    "Lease",
    "LeaseNetwork",
    "LogCode",
    "LogEntry",
    "LogFacts",
    "LogLevel",
    "LoopClock",
    "Network",
    "Phone",
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
