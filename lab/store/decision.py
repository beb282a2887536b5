"""Every rule about what a phone is served, and how a rule's versions change, lives here.

A rule (one per device kind and pool) holds up to three versions:

- **pending**: imported, not yet approved; only test devices get it.
- **approved**: what every phone gets.
- **restore**: the approved version before the last approve, for a rollback.

Serving: a test device gets the pending version if there is one, else the approved one;
any other phone gets the approved one. Nothing is served when there is no such version or
it equals the installed version; a version that differs, older or newer, is served (that
is how a rollback reaches phones).

Lifecycle (``TRANSITIONS``; a command the rule's state does not allow is refused):

- approve: restore <- approved, approved <- pending, pending <- none. Needs a pending version.
- reset: pending <- none. Needs a pending version.
- restore: approved <- restore, restore <- none (with no restore version the approved
  update is withdrawn). Needs an approved or a restore version.
- import of version V: pending <- V, unless V is already pending or approved.
- remove deletes the rule (the store does that; it is allowed in every state).

Nothing here does I/O: ``decide`` is a pure function the service calls on every check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lab.errors import RuleError
from lab.models import DeviceKind, KindKey, same_version


@dataclass(frozen=True)
class ServedFile:
    """A file the phone is told to download: module, path in the file store, size, SHA-256."""

    module: str
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rule:
    """An update rule of one pool for one device kind, with the files of its versions."""

    identity: str
    pool: str  # the pool's FQDN
    kind: DeviceKind
    pending: str | None = None
    approved: str | None = None
    restore: str | None = None
    # Files by version (catalog first, then image) for the versions above.
    files: Mapping[str, tuple[ServedFile, ...]] = field(default_factory=dict, compare=False)

    @property
    def uuid(self) -> str:
        """The last part of the identity."""
        return self.identity.rsplit("/", 1)[-1]

    @property
    def versions(self) -> tuple[str | None, str | None, str | None]:
        """(pending, approved, restore)."""
        return (self.pending, self.approved, self.restore)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (without the files)."""
        return {
            "identity": self.identity,
            "pool": self.pool,
            "device_type": self.kind.device_type,
            "vendor": self.kind.vendor,
            "model": self.kind.model,
            "revision": self.kind.revision,
            "locale": self.kind.locale,
            "pending": self.pending,
            "approved": self.approved,
            "restore": self.restore,
        }


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What a check is answered with: nothing (and why), or a version and its files."""

    version: str | None
    files: tuple[ServedFile, ...]
    reason: str
    # "pending" or "approved": which of the rule's versions is served; None when nothing.
    source: str | None = None

    @property
    def serves(self) -> bool:
        """True when an update is served."""
        return self.version is not None

    @classmethod
    def nothing(cls, reason: str) -> Decision:
        """Nothing to download, because ``reason``."""
        return cls(version=None, files=(), reason=reason)


def index_rules(rules: Iterable[Rule]) -> dict[KindKey, Rule]:
    """Rules by the case-insensitive key of their device kind (one pool's rules)."""
    return {rule.kind.key: rule for rule in rules}


def decide(
    kind: DeviceKind,
    installed: str | None,
    test_device: bool,
    rules: Mapping[KindKey, Rule],
) -> Decision:
    """What a phone of ``kind`` with ``installed`` gets from one pool's ``rules``."""
    rule = rules.get(kind.key)
    if rule is None:
        return Decision.nothing(f"no rule for {kind}")
    if test_device and rule.pending is not None:
        target, source = rule.pending, "pending"
    elif rule.approved is not None:
        target, source = rule.approved, "approved"
    else:
        what = "nothing pending or approved" if test_device else "no approved version"
        return Decision.nothing(f"{what} for {kind}")
    who = "test device" if test_device else "device"
    if installed is not None and same_version(installed, target):
        return Decision.nothing(f"{who} already runs the {source} version {target}")
    files = rule.files.get(target, ())
    if not files:
        return Decision.nothing(f"the files of {source} version {target} are not recorded")
    was = installed if installed is not None else "no version"
    return Decision(
        version=target,
        files=files,
        reason=f"{source} version {target} for {who} running {was}",
        source=source,
    )


class Action(StrEnum):
    """Commands that change a rule's versions."""

    APPROVE = "approve"
    RESET = "reset"
    RESTORE = "restore"


@dataclass(frozen=True)
class Transition:
    """When a command is allowed, why it is refused otherwise, and what it does."""

    allowed: Callable[[Rule], bool]
    refusal: str
    apply: Callable[[Rule], tuple[str | None, str | None, str | None]]


# (pending, approved, restore) after each command.
TRANSITIONS: Mapping[Action, Transition] = {
    Action.APPROVE: Transition(
        lambda r: r.pending is not None,
        "nothing is pending",
        lambda r: (None, r.pending, r.approved),
    ),
    Action.RESET: Transition(
        lambda r: r.pending is not None,
        "nothing is pending",
        lambda r: (None, r.approved, r.restore),
    ),
    Action.RESTORE: Transition(
        lambda r: r.approved is not None or r.restore is not None,
        "it has neither an approved nor a restore version",
        lambda r: (r.pending, r.restore, None),
    ),
}


def refusal(rule: Rule, action: Action) -> str | None:
    """Why ``action`` makes no sense for ``rule`` now, or None when it is allowed."""
    transition = TRANSITIONS[action]
    return None if transition.allowed(rule) else transition.refusal


def transition(rule: Rule, action: Action) -> Rule:
    """``rule`` after ``action``; RuleError with the reason when its state does not allow it."""
    why = refusal(rule, action)
    if why is not None:
        raise RuleError(f"cannot {action} {rule.identity} ({rule.kind}): {why}")
    pending, approved, restore = TRANSITIONS[action].apply(rule)
    return dataclasses.replace(rule, pending=pending, approved=approved, restore=restore)


def after_import(rule: Rule, version: str) -> Rule:
    """``rule`` after ``version`` was imported for it: pending unless already pending/approved."""
    if version in (rule.pending, rule.approved):
        return rule
    return dataclasses.replace(rule, pending=version)
