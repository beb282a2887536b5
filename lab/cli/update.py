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

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.cli.cab import tty_progress, vendor_certificates
from lab.errors import ConfigError
from lab.net.config import LabConfig
from lab.net.pki import verify_vendor_signature
from lab.store.decision import Action, Rule
from lab.store.importer import ImportResult, import_cab, read_cab_file, remove_rules
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


def _pool_name(config: LabConfig, name: str | None) -> str | None:
    """A pool's FQDN when the config knows ``name`` (FQDN or first label)."""
    if name is None:
        return None
    try:
        return config.pool(name).fqdn
    except ConfigError:
        return name


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


def _pools(config: LabConfig, args: argparse.Namespace) -> list[str]:
    if args.all_pools:
        return [pool.fqdn for pool in config.pools]
    if args.pool is not None:
        return [config.pool(args.pool).fqdn]
    if len(config.pools) == 1:
        return [config.pools[0].fqdn]
    names = ", ".join(pool.fqdn for pool in config.pools)
    raise ConfigError(
        config.source,
        "pools",
        f"the lab has {len(config.pools)} pools ({names}): "
        "name one with --pool POOL, or import into all with --all-pools",
    )


def cmd_import(args: argparse.Namespace) -> int:
    """Check a cab completely, then import it all or nothing."""
    config = common.config_from(args)
    pools = _pools(config, args)
    state = common.state_dir(args)
    with tty_progress("checking cab") as progress:
        cab = read_cab_file(
            args.file,
            vendor_certificates(config),
            verify_vendor_signature,
            progress,
            limit=config.limits.cab_unpacked_max,
        )
    with tty_progress("importing") as progress:
        result = import_cab(
            state,
            cab,
            pools,
            progress=progress,
            now=common.lab_clock(state),
            pool_of=config.pool_of(),
        )
    if result.changed:
        common.announce_store_change(state)
    if args.json:
        common.print_json(_import_dict(result))
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


def _import_dict(result: ImportResult) -> dict[str, object]:
    return {
        "cab": result.cab,
        "pools": list(result.pools),
        "changed": result.changed,
        "files_written": result.files_written,
        "recovered": result.recovered,
        "changes": [c.as_dict() for c in result.changes],
    }


def cmd_list(args: argparse.Namespace) -> int:
    """List rules."""
    config = common.config_from(args)
    with common.open_store(common.state_dir(args), config) as store:
        rules = store.rules(_pool_name(config, args.pool), args.model)
    if args.json:
        common.print_json([r.as_dict() for r in rules])
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


def _selection(config: LabConfig, args: argparse.Namespace) -> Selection:
    return Selection(tuple(args.rules), _pool_name(config, args.pool), args.model, bool(args.all))


def cmd_change(args: argparse.Namespace) -> int:
    """Approve, reset or restore rules."""
    config = common.config_from(args)
    state = common.state_dir(args)
    with common.open_store(state, config) as store:
        changes = store.change(Action(args.verb), _selection(config, args))
    if any(c.action != "skipped" for c in changes):
        common.announce_store_change(state)
    return _report(args, changes)


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove rules and the files no remaining rule refers to."""
    config = common.config_from(args)
    state = common.state_dir(args)
    changes = remove_rules(
        state, _selection(config, args), now=common.lab_clock(state), pool_of=config.pool_of()
    )
    if any(c.action != "skipped" for c in changes):
        common.announce_store_change(state)
    return _report(args, changes)


def _report(args: argparse.Namespace, changes: list[RuleChange]) -> int:
    if args.json:
        common.print_json([c.as_dict() for c in changes])
        return 0
    console = Console()
    console.print(changes_table(changes, args.verb))
    done = sum(c.action != "skipped" for c in changes)
    skipped = len(changes) - done
    console.print(f"{args.verb}: {done} rule(s)" + (f", {skipped} skipped" if skipped else ""))
    return 0
