"""`lab update import|list|approve|reset|restore|remove`: update rules of the pools.

As Import-CsDeviceUpdate does, an import writes a cab into one pool's file store and
rules (``--pool``), or into every pool's (``--all-pools``); a lab of one pool needs neither.
A rule is named by its identity (``service:WebServer:<pool fqdn>/<uuid>``) or by a prefix
of its uuid (at least four characters, as ``lab update list`` shows them); or several rules
are chosen with ``--pool``, ``--model`` or ``--all``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.cli.cab import tty_progress

if TYPE_CHECKING:
    from lab.ops.administer import Administration
    from lab.store.decision import Rule
    from lab.store.store import RuleChange, Selection

NONE = "–"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``update`` and its actions."""
    update = common.subcommand(sub, "update", "import vendor cabs and manage update rules")
    actions = update.add_subparsers(dest="action", required=True, metavar="ACTION")

    imp = common.subcommand(actions, "import", "import a UCUpdates.cab into pools' stores")
    imp.add_argument("file", type=Path, help="the cab file")
    where = imp.add_mutually_exclusive_group()
    where.add_argument("--pool", metavar="POOL", help="the pool (FQDN or first label)")
    where.add_argument("--all-pools", action="store_true", help="every pool of the lab")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(func=cmd_import)

    listing = common.subcommand(actions, "list", "rules with pending, approved, restore versions")
    listing.add_argument("--pool", metavar="POOL", help="only this pool's rules")
    listing.add_argument("--model", metavar="MODEL", help="only this model's rules")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    helps = {
        "approve": "approve the pending version (the approved one becomes the restore one)",
        "reset": "reject the pending version",
        "restore": "roll back to the restore version (or withdraw the approved update)",
        "remove": "delete rules (and files no rule refers to any more)",
    }
    for name, text in helps.items():
        action = common.subcommand(actions, name, text)
        action.add_argument("rules", nargs="*", metavar="RULE", help="identity or uuid prefix")
        action.add_argument("--pool", metavar="POOL", help="every rule of this pool")
        action.add_argument("--model", metavar="MODEL", help="every rule of this model")
        action.add_argument("--all", action="store_true", help="every rule")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(func=cmd_remove if name == "remove" else cmd_change, verb=name)


def _versions(rule: Rule | None) -> list[str]:
    if rule is None:
        return [NONE, NONE, NONE]
    return [v or NONE for v in rule.versions]


def _device(rule: Rule) -> str:
    kind = rule.kind
    return f"{kind.vendor} {kind.model} {kind.revision}/{kind.locale}"


def _version_columns(table: Table) -> None:
    table.add_column("pending", style="yellow", no_wrap=True)
    table.add_column("approved", style="green", no_wrap=True)
    table.add_column("restore", style="cyan", no_wrap=True)


def _pool_label(rule: Rule) -> str:
    # The pool's first label, as commands accept it (the FQDN is in the identity and --json).
    return rule.pool.split(".", 1)[0]


def rules_table(rules: Sequence[Rule], title: str) -> Table:
    """A readable table of rules."""
    table = Table(title=title, title_justify="left")
    table.add_column("rule", no_wrap=True)
    table.add_column("pool", no_wrap=True)
    table.add_column("device")
    _version_columns(table)
    for rule in rules:
        table.add_row(rule.uuid[:8], _pool_label(rule), _device(rule), *_versions(rule))
    return table


def changes_table(changes: Sequence[RuleChange], title: str) -> Table:
    """A readable table of what a command did to each rule, and the rule's state after it."""
    table = Table(title=title, title_justify="left")
    table.add_column("rule", no_wrap=True)
    table.add_column("pool", no_wrap=True)
    table.add_column("device")
    table.add_column("done")
    _version_columns(table)
    table.add_column("note")
    for change in changes:
        rule = change.rule
        table.add_row(
            rule.uuid[:8],
            _pool_label(rule),
            _device(rule),
            change.action,
            *_versions(change.after),
            change.detail,
        )
    return table


def cmd_import(args: argparse.Namespace) -> int:
    """Check a cab completely, then import it all or nothing."""
    from lab.ops.administer import import_json, import_pools

    config = common.config_from(args)
    pools = import_pools(config, args.pool, args.all_pools)
    admin = common.administration(args, config)
    with tty_progress("checking cab") as progress:
        cab = admin.check_cab(args.file, progress)
    with tty_progress("importing") as progress:
        result = admin.import_cab(cab, pools, progress)
    if args.json:
        common.print_json(import_json(result))
        return 0
    console = Console()
    if result.recovered:
        console.print(result.recovered)
    console.print(changes_table(result.changes, f"import of {result.cab}"))
    if result.changed:
        console.print(
            f"imported into {', '.join(result.pools)}: {result.files_written} files written; "
            "new versions are pending (test devices get them; approve to release)"
        )
    else:
        console.print("nothing changed: every file and rule was already in place")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List rules."""
    from lab.ops.administer import rules_json

    rules = common.administration(args).rules(args.pool, args.model)
    if args.json:
        common.print_json(rules_json(rules))
        return 0
    console = Console()
    if not rules:
        console.print("no rules (import a cab with: lab update import FILE --all-pools)")
        return 0
    console.print(rules_table(rules, "update rules"))
    console.print(
        "rule: the start of the identity's uuid (service:WebServer:<pool fqdn>/<uuid>); "
        "commands accept it or the whole identity (--json shows it)"
    )
    return 0


def _selection(admin: Administration, args: argparse.Namespace) -> Selection:
    return admin.selection(args.rules, pool=args.pool, model=args.model, all_=bool(args.all))


def cmd_change(args: argparse.Namespace) -> int:
    """Approve, reset or restore rules."""
    from lab.store.decision import Action

    admin = common.administration(args)
    return _report(args, admin.change(Action(args.verb), _selection(admin, args)))


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove rules and the files no remaining rule refers to."""
    admin = common.administration(args)
    return _report(args, admin.remove(_selection(admin, args)))


def _report(args: argparse.Namespace, changes: list[RuleChange]) -> int:
    from lab.ops.administer import changes_json

    if args.json:
        common.print_json(changes_json(changes))
        return 0
    console = Console()
    console.print(changes_table(changes, args.verb))
    done = sum(c.action != "skipped" for c in changes)
    skipped = len(changes) - done
    console.print(f"{args.verb}: {done} rule(s)" + (f", {skipped} skipped" if skipped else ""))
    return 0
