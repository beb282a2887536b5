"""Device Update Lab: the phones (a sans-IO core and the drivers that give it I/O)."""

__version__ = "0.1.0"

# The phone log's vocabulary for programs: scenarios, the demo and tests judge a phone by
# these codes and facts, never by the log's sentences.
from emulator.errors import CertificateProblem, FirmwareProblem
from emulator.phonelog import CheckTrigger, LogCode, LogEntry, LogFacts
from emulator.routes import RouteKind

__all__ = [
    "CertificateProblem",
    "CheckTrigger",
    "FirmwareProblem",
    "LogCode",
    "LogEntry",
    "LogFacts",
    "RouteKind",
]
