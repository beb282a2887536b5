"""The decision and the rule lifecycle, as tables: every transition, every serving case."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from lab.errors import RuleError
from lab.models import DeviceKind
from lab.store.decision import (
    TRANSITIONS,
    Action,
    Decision,
    Rule,
    ServedFile,
    after_import,
    decide,
    index_rules,
    transition,
)

CX600 = DeviceKind("UCPhone", "Polycom", "CX600", "A", "ENU")
HP4110 = DeviceKind("UCPhone", "HP", "HP4110", "A", "ENU")
OLD, CUR, NEW = "4.0.7577.4366", "4.0.7577.4372", "4.0.7577.4400"
SAME = "4.0.07577.4372"  # CUR with a leading zero
NOTHING = "nothing is pending"
Versions = tuple[str | None, str | None, str | None]


def files(version: str, kind: DeviceKind = CX600) -> tuple[ServedFile, ...]:
    folder = f"{kind.path}/{version}/CPE"
    return (
        ServedFile("CPE.cat", f"{folder}/CPE.cat", 300, "c" * 64),
        ServedFile("CPE.nbt", f"{folder}/CPE.nbt", 4096, "a" * 64),
    )


def rule(versions: Versions, kind: DeviceKind = CX600) -> Rule:
    pending, approved, restore = versions
    return Rule(
        "service:WebServer:fe01.contoso.test/0b6c0c9e-0000-4000-8000-000000000001",
        "fe01",
        kind,
        pending,
        approved,
        restore,
        {v: files(v, kind) for v in (OLD, CUR, NEW)},
    )


# --- lifecycle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    before: Versions
    action: Action
    after: Versions | None  # None: refused
    refusal: str = ""


LIFECYCLE = [
    Step("approve the first version", (CUR, None, None), Action.APPROVE, (None, CUR, None)),
    Step("approve keeps the old as restore", (NEW, CUR, None), Action.APPROVE, (None, NEW, CUR)),
    Step("approve drops an older restore", (NEW, CUR, OLD), Action.APPROVE, (None, NEW, CUR)),
    Step("approve with nothing pending", (None, CUR, OLD), Action.APPROVE, None, NOTHING),
    Step("approve on an empty rule", (None, None, None), Action.APPROVE, None, NOTHING),
    Step("reset rejects pending", (NEW, CUR, OLD), Action.RESET, (None, CUR, OLD)),
    Step("reset of a new rule", (CUR, None, None), Action.RESET, (None, None, None)),
    Step("reset with nothing pending", (None, CUR, None), Action.RESET, None, NOTHING),
    Step("restore rolls back", (None, NEW, CUR), Action.RESTORE, (None, CUR, None)),
    Step("restore keeps pending", (NEW, CUR, OLD), Action.RESTORE, (NEW, OLD, None)),
    Step("restore with none withdraws", (None, CUR, None), Action.RESTORE, (None, None, None)),
    Step("restore of only a restore", (None, None, OLD), Action.RESTORE, (None, OLD, None)),
    Step("restore with neither", (CUR, None, None), Action.RESTORE, None, "neither an approved"),
]  # fmt: skip


@pytest.mark.parametrize("step", LIFECYCLE, ids=[s.name for s in LIFECYCLE])
def test_lifecycle_transition(step: Step) -> None:
    before = rule(step.before)
    if step.after is None:
        with pytest.raises(RuleError, match=step.refusal) as caught:
            transition(before, step.action)
        # The refusal names the command and the rule.
        assert str(step.action) in str(caught.value)
        assert before.identity in str(caught.value)
    else:
        after = transition(before, step.action)
        assert after.versions == step.after
        assert (after.identity, after.kind) == (before.identity, before.kind)


def test_every_action_has_a_tested_refusal_and_a_tested_success() -> None:
    for action in TRANSITIONS:
        assert any(s.action is action and s.after is None for s in LIFECYCLE), action
        assert any(s.action is action and s.after is not None for s in LIFECYCLE), action


IMPORTS = [
    ("a new rule gets it pending", (None, None, None), CUR, (CUR, None, None)),
    ("a newer version becomes pending", (None, CUR, None), NEW, (NEW, CUR, None)),
    ("it replaces an earlier pending one", (CUR, OLD, None), NEW, (NEW, OLD, None)),
    ("an older version may be pending", (None, CUR, OLD), OLD, (OLD, CUR, OLD)),
    ("already pending: unchanged", (NEW, CUR, None), NEW, (NEW, CUR, None)),
    ("already approved: unchanged", (None, CUR, OLD), CUR, (None, CUR, OLD)),
]


@pytest.mark.parametrize(
    ("name", "before", "version", "after"), IMPORTS, ids=[i[0] for i in IMPORTS]
)
def test_import_makes_a_version_pending(
    name: str, before: Versions, version: str, after: Versions
) -> None:
    assert after_import(rule(before), version).versions == after


# --- serving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    versions: Versions | None  # None: no rule for the kind
    test_device: bool
    installed: str | None
    served: str | None
    reason: str


SERVING = [
    Case("no rule", None, False, OLD, None, "no rule for UCPhone/Polycom/CX600/A/ENU"),
    Case("no rule, test device", None, True, OLD, None, "no rule"),
    Case("pending only: not for others", (CUR, None, None), False, OLD, None, "no approved"),
    Case("pending only: test device", (CUR, None, None), True, OLD, CUR, "pending version"),
    Case("approved: served", (None, CUR, None), False, OLD, CUR, "approved version"),
    Case("approved: already installed", (None, CUR, None), False, CUR, None, "already runs"),
    Case("approved: test device gets it", (None, CUR, None), True, OLD, CUR, "approved"),
    Case("pending and approved: others", (NEW, CUR, None), False, OLD, CUR, "approved"),
    Case("pending and approved: test", (NEW, CUR, None), True, OLD, NEW, "pending"),
    Case("test device runs the pending", (NEW, CUR, None), True, NEW, None, "already runs"),
    Case("others run the pending: rolled back", (NEW, CUR, None), False, NEW, CUR, "approved"),
    Case("after reset, test goes back", (None, CUR, OLD), True, NEW, CUR, "approved"),
    Case("after restore: older served", (None, OLD, None), False, CUR, OLD, "approved"),
    Case("after restore: test device too", (None, OLD, None), True, CUR, OLD, "approved"),
    Case("withdrawn: nothing", (None, None, None), False, CUR, None, "no approved"),
    Case("withdrawn: test device", (None, None, None), True, CUR, None, "nothing pending"),
    Case("newer installed: approved served", (None, CUR, None), False, NEW, CUR, "approved"),
    Case("no installed version", (None, CUR, None), False, None, CUR, "no version"),
    Case("same version, other spelling", (None, CUR, None), False, SAME, None, "already"),
    Case("malformed installed version", (None, CUR, None), False, "garbage", CUR, "approved"),
]  # fmt: skip


@pytest.mark.parametrize("case", SERVING, ids=[c.name for c in SERVING])
def test_decision(case: Case) -> None:
    rules = index_rules([rule(case.versions)] if case.versions is not None else [])
    decision = decide(CX600, case.installed, case.test_device, rules)
    assert decision.version == case.served
    assert case.reason in decision.reason
    assert decision.serves is (case.served is not None)
    if case.served is None:
        assert decision.files == ()
        assert decision.source is None
    else:
        assert decision.files == files(case.served)
        assert [f.module for f in decision.files] == ["CPE.cat", "CPE.nbt"]  # catalog first


def test_the_kind_matches_case_insensitively_and_only_its_own_rule() -> None:
    rules = index_rules([rule((None, CUR, None)), rule((None, OLD, None), HP4110)])
    phone = DeviceKind("ucphone", "POLYCOM", "cx600", "a", "enu")
    assert decide(phone, None, False, rules).version == CUR
    assert decide(HP4110, None, False, rules).version == OLD
    other = DeviceKind("UCPhone", "Polycom", "CX600", "B", "ENU")
    assert not decide(other, None, False, rules).serves


def test_a_version_without_recorded_files_is_not_served() -> None:
    bare = replace(rule((None, CUR, None)), files={})
    decision = decide(CX600, OLD, False, index_rules([bare]))
    assert decision == Decision.nothing(decision.reason)
    assert "not recorded" in decision.reason


def test_a_whole_lifecycle_reaches_phones_including_a_rollback() -> None:
    """Import, test, approve, a second release, rollback: what each phone is served."""

    def served(r: Rule, test: bool, installed: str) -> str | None:
        return decide(CX600, installed, test, index_rules([r])).version

    r = after_import(rule((None, None, None)), CUR)
    assert (served(r, True, OLD), served(r, False, OLD)) == (CUR, None)
    r = transition(r, Action.APPROVE)
    assert (served(r, True, OLD), served(r, False, OLD)) == (CUR, CUR)
    r = after_import(r, NEW)
    assert (served(r, True, CUR), served(r, False, CUR)) == (NEW, None)
    r = transition(r, Action.RESET)
    # The test device that installed NEW goes back to the approved CUR.
    assert served(r, True, NEW) == CUR
    r = transition(transition(after_import(r, NEW), Action.APPROVE), Action.RESTORE)
    assert r.versions == (None, CUR, None)
    # Rollback: phones on NEW are served the older CUR.
    assert (served(r, False, NEW), served(r, True, NEW)) == (CUR, CUR)
    r = transition(r, Action.RESTORE)
    assert served(r, False, NEW) is None  # withdrawn: nothing more is served
