"""The lab's authoritative split-horizon DNS server (see ``server`` for the entry point)."""

from lab.net.dns.faults import Fault, FaultKind, FaultTable
from lab.net.dns.querylog import Outcome, QueryLog
from lab.net.dns.server import DNSServer
from lab.net.dns.zones import RRSet, View, ViewRecords, build_views

__all__ = [
    "DNSServer",
    "Fault",
    "FaultKind",
    "FaultTable",
    "Outcome",
    "QueryLog",
    "RRSet",
    "View",
    "ViewRecords",
    "build_views",
]
