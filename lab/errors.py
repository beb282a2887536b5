"""The lab's error family: every error the lab raises on purpose derives from LabError.

Foreign errors (dnslib, cryptography, aiohttp, sqlite) are translated into these at the
boundary where they happen, so callers and the CLI only ever handle one family.
"""

from __future__ import annotations


class LabError(Exception):
    """Base of every error the lab raises on purpose."""


class ConfigError(LabError, ValueError):
    """A lab configuration file is missing, unreadable or invalid."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class ClockError(LabError, ValueError):
    """A lab clock is asked to start at a time that is no time, or to run at no speed."""


class PKIError(LabError):
    """Certificates or keys cannot be made, loaded or checked."""


class FirewallError(LabError, ValueError):
    """A firewall override names something that is not an address or range."""


class DNSError(LabError):
    """The DNS server cannot start or is given an invalid fault."""


class LabStateError(LabError):
    """The state directory is missing what a command needs (for example no running lab)."""


class StoreError(LabError):
    """The update store refuses a change (unknown rule, a command that makes no sense)."""


class CabError(LabError, ValueError):
    """A vendor cab file is corrupt, unsigned, tampered with or unsafe; names the member."""


class ServiceError(LabError):
    """The update service cannot start or is asked for something it cannot do."""


class AdminError(LabError):
    """The running lab's admin API refused a request or cannot be reached."""


class IdentityError(LabError, ValueError):
    """A device identity is malformed or unknown: model, vendor, version, MAC or serial number."""


class RuleError(StoreError, ValueError):
    """A rule command cannot be done: no such rule, or the rule's state does not allow it."""


class SettingError(StoreError, ValueError):
    """A device-update configuration setting is unknown, malformed or out of its range."""


class EntryError(StoreError, ValueError):
    """A store entry cannot be added or removed: a test device already there, or not there."""


class AdminRequestError(AdminError, ValueError):
    """The running lab's admin API refused a request as invalid input."""


class ScenarioError(LabError):
    """A troubleshooting scenario is unknown, badly defined, or its lab or phones broke under it."""


class PortInUseError(LabError):
    """A port the lab config names is already taken by another program; names the key."""


class LabUnreachableError(AdminError):
    """The running lab's admin API did not answer: the lab stopped, or is not up yet."""


class NetnsUnavailable(LabError):
    """This machine cannot give the lab a network of its own (no user namespaces, a tool
    missing); the message is one line saying which."""


class NetnsError(LabError):
    """Building or changing the lab's own network failed; the message says at which step."""
