"""The update store: rules, the files of their versions, test devices, the device-update
configuration and the phone inventory, in ``<state>/store.sqlite3``.

SQLite in WAL mode, so a running service reads while the CLI writes. Every write is one
``BEGIN IMMEDIATE`` transaction with a busy timeout: concurrent writers (CLI processes, the
service) wait for each other instead of failing, and a read-modify-write such as approve
never loses a concurrent import. The schema carries a version (``PRAGMA user_version``) and
is brought up to date by ``MIGRATIONS`` when the store is opened.

A running service holds the store's ``snapshot()``, an immutable copy of rules, test devices
and configuration with a generation number, and asks for a new one beside the request path
(lab.service.updates): it costs one ``PRAGMA data_version`` while nothing changed and one
read transaction after any commit by any process.

Each rule records when its approved version became approved (``approved_at``, set by
approve and restore; schema 1 stores are migrated with their last change time as the best
known). The phone inventory keeps one record per MAC address, the latest sighting winning;
what is written there and when is lab.service.inventory's business.

The rules of the lifecycle and of serving are in lab.store.decision, the settings' names
and ranges in lab.store.devconfig, the inventory's flags in lab.service.inventory; this
module stores them.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from lab.clock import utc_now
from lab.errors import EntryError, IdentityError, RuleError, SettingError, StoreError
from lab.models import DeviceKind, KindKey, normalise_mac, normalise_serial
from lab.store import filestore
from lab.store.decision import (
    Action,
    Decision,
    Rule,
    ServedFile,
    after_import,
    decide,
    index_rules,
    refusal,
    transition,
)
from lab.store.devconfig import DeviceUpdateConfig, check_setting

STORE_FILE = "store.sqlite3"
BUSY_TIMEOUT = 30.0


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestDevice:
    """A device that receives pending updates, named by MAC address or serial number."""

    __test__ = False  # not a pytest test class, whatever its name

    kind: str  # "mac" or "serial"
    value: str
    name: str
    added_at: str

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready form."""
        return {
            "kind": self.kind,
            "value": self.value,
            "name": self.name,
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class RuleChange:
    """What a command did to one rule: its state before and after, and a word about it."""

    action: str  # created, pending, unchanged, approve, reset, restore, removed, skipped
    before: Rule | None
    after: Rule | None
    detail: str = ""

    @property
    def rule(self) -> Rule:
        """The rule as it is now (or was, if removed)."""
        rule = self.after or self.before
        assert rule is not None
        return rule

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "action": self.action,
            "detail": self.detail,
            "rule": self.rule.as_dict(),
            "before": self.before.as_dict() if self.before else None,
        }


@dataclass(frozen=True)
class ImportedVersion:
    """One version an import brings to one pool: the input of ``record_import``."""

    pool: str  # the pool's FQDN
    kind: DeviceKind
    version: str
    files: tuple[ServedFile, ...]


@dataclass(frozen=True)
class Selection:
    """Which rules a command is for: named ones, or filters (``all_`` for every rule)."""

    refs: tuple[str, ...] = ()
    pool: str | None = None
    model: str | None = None
    all_: bool = False

    @property
    def by_filter(self) -> bool:
        """True when rules are chosen by filters rather than by name."""
        return not self.refs


@dataclass(frozen=True)
class PhoneRecord:
    """A phone the service has seen: its identity, what it runs, where and when it last checked."""

    mac: str
    serial: str
    kind: DeviceKind
    version: str
    address: str
    zone: str  # "inside" (internal site) or "outside" (external site, through the edge)
    server: str  # the front end that answered its last check
    first_seen: str
    last_seen: str
    last_user: str | None = None
    pool: str = ""  # that front end's pool, whose rules the phone is measured against

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "mac": self.mac,
            "serial": self.serial,
            "device_type": self.kind.device_type,
            "vendor": self.kind.vendor,
            "model": self.kind.model,
            "revision": self.kind.revision,
            "locale": self.kind.locale,
            "version": self.version,
            "address": self.address,
            "zone": self.zone,
            "server": self.server,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last_user": self.last_user,
            "pool": self.pool,
        }


@dataclass(frozen=True)
class Approval:
    """A rule's approved version and when it became approved (None when not known)."""

    pool: str
    kind: DeviceKind
    version: str
    approved_at: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """Rules, test devices and configuration at one moment: what a running service reuses."""

    generation: int
    rules: tuple[Rule, ...]
    test_macs: frozenset[str]
    test_serials: frozenset[str]
    config: DeviceUpdateConfig
    by_pool: Mapping[str, Mapping[KindKey, Rule]] = field(repr=False, compare=False)

    def rules_for(self, pool: str) -> Mapping[KindKey, Rule]:
        """One pool's rules by device kind (the ``rules`` argument of decide)."""
        return self.by_pool.get(pool, {})

    def is_test_device(self, mac: str | None, serial: str | None) -> bool:
        """Whether a device reporting ``mac`` / ``serial`` is a test device."""
        if mac:
            try:
                if normalise_mac(mac) in self.test_macs:
                    return True
            except IdentityError:
                pass
        if serial:
            try:
                return normalise_serial(serial) in self.test_serials
            except IdentityError:
                return False
        return False

    def decide(
        self,
        pool: str,
        kind: DeviceKind,
        installed: str | None,
        mac: str | None = None,
        serial: str | None = None,
    ) -> Decision:
        """What ``pool`` serves a device: lab.store.decision.decide on this snapshot."""
        return decide(kind, installed, self.is_test_device(mac, serial), self.rules_for(pool))


# --- schema ----------------------------------------------------------------------------------


class Migration(NamedTuple):
    """One step of the schema: the version it brings the store to, its statements, and
    a step of code run after them (in the same transaction) when SQL alone cannot say."""

    version: int
    summary: str
    statements: tuple[str, ...]
    code: Callable[[sqlite3.Connection, Mapping[str, str] | None], None] | None = None


def _rules_to_pools(db: sqlite3.Connection, pool_of: Mapping[str, str] | None) -> None:
    """Schema 3: the rules and versions schema 2 kept per front end move to its pool.

    ``pool_of`` maps a front end's short name to its pool's FQDN (from the lab config).
    Where front ends of one pool had a rule for the same device kind, the one changed last
    is kept (their version records are all kept); its identity becomes the pool's.
    """
    legacy = [
        row[0]
        for row in db.execute(
            "SELECT pool FROM rules WHERE instr(pool, '.') = 0"
            " UNION SELECT pool FROM versions WHERE instr(pool, '.') = 0"
        )
    ]
    if not legacy:
        return
    missing = sorted(name for name in legacy if pool_of is None or name not in pool_of)
    if pool_of is None or missing:
        raise StoreError(
            f"the store keeps rules per front end ({', '.join(missing)}), as labs before "
            "pools did; open it with the lab config that names those front ends (any "
            "`lab --config FILE ...` command) to move the rules to their pools"
        )
    ranked = db.execute(
        "SELECT uuid, pool, device_type, vendor, model, revision, locale FROM rules"
        " WHERE instr(pool, '.') = 0 ORDER BY updated_at DESC"
    ).fetchall()
    kept: set[tuple[str, ...]] = {
        (pool, *(k.casefold() for k in kind))
        for pool, *kind in db.execute(
            "SELECT pool, device_type, vendor, model, revision, locale FROM rules"
            " WHERE instr(pool, '.')"
        )
    }
    for rule_uuid, front_end, *rest in ranked:
        pool = pool_of[front_end]
        key = (pool, *(k.casefold() for k in rest))
        if key in kept:
            db.execute("DELETE FROM rules WHERE uuid = ?", (rule_uuid,))
            continue
        kept.add(key)
        db.execute(
            "UPDATE rules SET pool = ?, identity = ? WHERE uuid = ?",
            (pool, rule_identity(pool, rule_uuid), rule_uuid),
        )
    for front_end, pool in pool_of.items():
        db.execute(
            "INSERT OR IGNORE INTO versions SELECT ?, device_type, vendor, model, revision,"
            " locale, version, files, imported_at FROM versions WHERE pool = ?",
            (pool, front_end),
        )
        db.execute("DELETE FROM versions WHERE pool = ?", (front_end,))
        db.execute("UPDATE phones SET pool = ? WHERE server = ?", (pool, front_end))


_KIND_COLUMNS = """
    device_type TEXT NOT NULL COLLATE NOCASE,
    vendor TEXT NOT NULL COLLATE NOCASE,
    model TEXT NOT NULL COLLATE NOCASE,
    revision TEXT NOT NULL COLLATE NOCASE,
    locale TEXT NOT NULL COLLATE NOCASE"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "rules, versions and their files, test devices, settings, imports",
        (
            f"""CREATE TABLE rules (
                uuid TEXT PRIMARY KEY,
                identity TEXT NOT NULL UNIQUE,
                server TEXT NOT NULL,{_KIND_COLUMNS},
                pending TEXT,
                approved TEXT,
                restore TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                UNIQUE (server, device_type, vendor, model, revision, locale)
            ) STRICT""",
            f"""CREATE TABLE versions (
                server TEXT NOT NULL,{_KIND_COLUMNS},
                version TEXT NOT NULL,
                files TEXT NOT NULL,
                imported_at TEXT NOT NULL,
                PRIMARY KEY (server, device_type, vendor, model, revision, locale, version)
            ) STRICT""",
            """CREATE TABLE test_devices (
                kind TEXT NOT NULL CHECK (kind IN ('mac', 'serial')),
                value TEXT NOT NULL,
                name TEXT NOT NULL,
                added_at TEXT NOT NULL,
                PRIMARY KEY (kind, value)
            ) STRICT""",
            """CREATE TABLE settings (
                name TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                changed_at TEXT NOT NULL
            ) STRICT""",
            """CREATE TABLE imports (
                id TEXT PRIMARY KEY,
                cab TEXT NOT NULL,
                cab_sha256 TEXT NOT NULL,
                servers TEXT NOT NULL,
                summary TEXT NOT NULL,
                at TEXT NOT NULL
            ) STRICT""",
        ),
    ),
    Migration(
        2,
        "phone inventory; when each rule's approved version was approved",
        (
            f"""CREATE TABLE phones (
                mac TEXT PRIMARY KEY,
                serial TEXT NOT NULL,{_KIND_COLUMNS},
                version TEXT NOT NULL,
                address TEXT NOT NULL,
                zone TEXT NOT NULL CHECK (zone IN ('inside', 'outside')),
                server TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                last_user TEXT
            ) STRICT""",
            "ALTER TABLE rules ADD COLUMN approved_at TEXT",
            # The real approval time of an existing rule is not known; its last change is
            # the closest record (an approve or restore is a change).
            "UPDATE rules SET approved_at = updated_at WHERE approved IS NOT NULL",
        ),
    ),
    Migration(
        3,
        "rules and versions belong to a pool, as Import-CsDeviceUpdate makes them",
        (
            "ALTER TABLE rules RENAME COLUMN server TO pool",
            "ALTER TABLE versions RENAME COLUMN server TO pool",
            "ALTER TABLE imports RENAME COLUMN servers TO pools",
            "ALTER TABLE phones ADD COLUMN pool TEXT NOT NULL DEFAULT ''",
        ),
        _rules_to_pools,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# --- the store -------------------------------------------------------------------------------


class Store:
    """The update store of one state directory; open with ``Store.open(state_dir)``."""

    def __init__(
        self,
        db: sqlite3.Connection,
        state_dir: Path,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self.state_dir = state_dir
        self.path = state_dir / STORE_FILE
        self._now = now
        self._snapshot: Snapshot | None = None
        self._snapshot_version = -1
        self._dirty = True

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        recover: bool = True,
        now: Callable[[], datetime] = utc_now,
        pool_of: Mapping[str, str] | None = None,
    ) -> Store:
        """Open (creating and migrating) the store; finish or undo an interrupted import.

        Recovery is skipped when another process holds the file-store lock: that process
        is alive and will clean up after itself. ``pool_of`` (a front end's short name to
        its pool's FQDN, ``LabConfig.pool_of``) is needed only to migrate a store from
        before pools, whose rules were kept per front end; its files move too.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STORE_FILE
        try:
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot be opened: {exc}") from None
        store = cls(db, state_dir, now)
        try:
            with store._errors():
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreError(f"{path}: WAL mode is not available (got {mode})")
                db.execute("PRAGMA synchronous=FULL")
                store._migrate(pool_of)
            if recover:
                store.recover_files()
            # After recovery: an interrupted import from before pools is finished or undone
            # in the front ends' stores first. A change in progress elsewhere moves later.
            if pool_of is not None and not filestore.journal_pending(state_dir):
                filestore.move_front_end_files(state_dir, pool_of)
        except BaseException:
            db.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ---

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"{self.path}: still busy after waiting (another process is writing)"
                ) from None
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: waits for other writers, commits or rolls back whole."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._dirty = True

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same commit."""
        with self._errors():
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _migrate(self, pool_of: Mapping[str, str] | None) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this lab knows "
                f"({SCHEMA_VERSION}); use a newer lab"
            )
        if current == SCHEMA_VERSION:
            return
        with self._write() as db:
            # Another process may have migrated while this one waited for the lock.
            current = db.execute("PRAGMA user_version").fetchone()[0]
            for migration in MIGRATIONS:
                if migration.version > current:
                    for statement in migration.statements:
                        db.execute(statement)
                    if migration.code is not None:
                        migration.code(db, pool_of)
                    db.execute(f"PRAGMA user_version = {int(migration.version)}")

    @property
    def schema_version(self) -> int:
        """The schema version of the store file."""
        with self._errors():
            version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def data_version(self) -> int:
        """A number that changes when another connection commits (SQLite's data_version)."""
        with self._errors():
            value: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        return value

    def _stamp(self) -> str:
        return self._now().astimezone(UTC).isoformat(timespec="seconds")

    def recover_files(self) -> str | None:
        """Finish or undo a file-store change a killed process left (if the lock is free)."""
        if not filestore.journal_pending(self.state_dir):
            return None
        lock = filestore.FileStoreLock(self.state_dir)
        if not lock.acquire(blocking=False):
            return None
        try:
            return filestore.recover(self.state_dir, self.import_recorded)
        finally:
            lock.release()

    # --- snapshot for a running service ---

    def snapshot(self) -> Snapshot:
        """The current rules, test devices and configuration.

        One ``PRAGMA data_version`` while nothing was committed; a reload after any commit
        by any process. The generation moves on only when what was loaded differs: a
        commit that touched only the phone inventory leaves the snapshot as it was.
        """
        version = self.data_version()
        previous = self._snapshot
        if previous is not None and not self._dirty and version == self._snapshot_version:
            return previous
        self._dirty = False
        self._snapshot_version = version
        with self._read() as db:
            rules = tuple(self._load_rules(db))
            devices = self._load_test_devices(db)
            config = self._load_config(db)
        macs = frozenset(d.value for d in devices if d.kind == "mac")
        serials = frozenset(d.value for d in devices if d.kind == "serial")
        if previous is not None and (rules, macs, serials, config) == (
            previous.rules,
            previous.test_macs,
            previous.test_serials,
            previous.config,
        ):
            return previous
        by_pool: dict[str, list[Rule]] = {}
        for rule in rules:
            by_pool.setdefault(rule.pool, []).append(rule)
        self._snapshot = Snapshot(
            generation=previous.generation + 1 if previous is not None else 1,
            rules=rules,
            test_macs=macs,
            test_serials=serials,
            config=config,
            by_pool={pool: index_rules(group) for pool, group in by_pool.items()},
        )
        return self._snapshot

    # --- rules ---

    def rules(self, pool: str | None = None, model: str | None = None) -> list[Rule]:
        """Rules, optionally of one pool and/or model, ordered by pool and kind."""
        with self._read() as db:
            return _filter(self._load_rules(db), pool, model)

    def rule(self, ref: str) -> Rule:
        """The rule named by its identity or an unambiguous prefix of its uuid."""
        with self._read() as db:
            return _resolve(self._load_rules(db), ref)

    def select(self, selection: Selection) -> list[Rule]:
        """The rules a command with ``selection`` is for; RuleError when that is unclear."""
        with self._read() as db:
            return _select(self._load_rules(db), selection)

    def change(self, action: Action, selection: Selection) -> list[RuleChange]:
        """Approve, reset or restore the selected rules, all in one transaction.

        Named rules must all allow the command (else nothing changes and RuleError says
        why); with filters, rules it makes no sense for are skipped with the reason, and
        RuleError is raised only when none is left.
        """
        with self._write() as db:
            chosen = _select(self._load_rules(db), selection)
            changes: list[RuleChange] = []
            for rule in chosen:
                why = refusal(rule, action)
                if why is not None and not selection.by_filter:
                    transition(rule, action)  # raises RuleError with the reason
                if why is not None:
                    changes.append(RuleChange("skipped", rule, rule, why))
                    continue
                after = transition(rule, action)
                self._save_versions(db, after)
                changes.append(RuleChange(str(action), rule, after))
            if not any(c.action != "skipped" for c in changes):
                reasons = "; ".join(f"{c.rule.kind}: {c.detail}" for c in changes)
                raise RuleError(f"cannot {action} any of the selected rules ({reasons})")
        return changes

    def remove(self, selection: Selection) -> list[RuleChange]:
        """Delete the selected rules and the records of their versions' files."""
        with self._write() as db:
            chosen = _select(self._load_rules(db), selection)
            for rule in chosen:
                db.execute("DELETE FROM rules WHERE uuid = ?", (rule.uuid,))
                db.execute(
                    "DELETE FROM versions WHERE pool = ? AND device_type = ? AND vendor = ?"
                    " AND model = ? AND revision = ? AND locale = ?",
                    (rule.pool, *_kind_row(rule.kind)),
                )
        return [RuleChange("removed", rule, None) for rule in chosen]

    def _save_versions(self, db: sqlite3.Connection, rule: Rule) -> None:
        stamp = self._stamp()
        # approved_at moves only when the approved version changes (approve, restore); on
        # the right-hand side ``approved`` is still the old value.
        db.execute(
            "UPDATE rules SET pending = ?, approved = ?, restore = ?, updated_at = ?,"
            " approved_at = CASE WHEN approved IS ? THEN approved_at"
            " WHEN ? IS NULL THEN NULL ELSE ? END"
            " WHERE uuid = ?",
            (
                rule.pending,
                rule.approved,
                rule.restore,
                stamp,
                rule.approved,
                rule.approved,
                stamp,
                rule.uuid,
            ),
        )

    # --- imports ---

    def preview_import(self, items: Sequence[ImportedVersion]) -> tuple[list[RuleChange], int]:
        """What ``record_import`` would do now: rule changes, and how many version records
        it would write (new, or with other files)."""
        with self._read() as db:
            changes, rows = self._plan_import(db, items)
        return changes, len(rows)

    def record_import(
        self,
        change_id: str,
        cab_name: str,
        cab_sha256: str,
        items: Sequence[ImportedVersion],
    ) -> list[RuleChange]:
        """Record imported versions and make them pending, with ``change_id``, atomically."""
        with self._write() as db:
            changes, rows = self._plan_import(db, items)
            stamp = self._stamp()
            for pool, kind, version, files in rows:
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET files = excluded.files,"
                    " imported_at = excluded.imported_at",
                    (pool, *_kind_row(kind), version, files, stamp),
                )
            for change in changes:
                rule = change.rule
                if change.action == "created":
                    db.execute(
                        "INSERT INTO rules (uuid, identity, pool, device_type, vendor, model,"
                        " revision, locale, pending, approved, restore, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            rule.uuid,
                            rule.identity,
                            rule.pool,
                            *_kind_row(rule.kind),
                            rule.pending,
                            rule.approved,
                            rule.restore,
                            stamp,
                            stamp,
                        ),
                    )
                elif change.action == "pending":
                    self._save_versions(db, rule)
            pools = sorted({item.pool for item in items})
            summary = json.dumps([[c.action, c.rule.identity, c.detail] for c in changes])
            db.execute(
                "INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?)",
                (change_id, cab_name, cab_sha256, ",".join(pools), summary, stamp),
            )
        return changes

    def import_recorded(self, change_id: str) -> bool:
        """Whether the import with ``change_id`` was committed."""
        with self._errors():
            row = self._db.execute("SELECT 1 FROM imports WHERE id = ?", (change_id,)).fetchone()
        return row is not None

    def _plan_import(
        self, db: sqlite3.Connection, items: Sequence[ImportedVersion]
    ) -> tuple[list[RuleChange], list[tuple[str, DeviceKind, str, str]]]:
        rules = {(r.pool, r.kind.key): r for r in self._load_rules(db)}
        known = self._load_files(db)
        rows: list[tuple[str, DeviceKind, str, str]] = []
        touched: dict[tuple[str, KindKey], tuple[Rule | None, Rule, list[str]]] = {}
        ordered = sorted(items, key=lambda i: (i.pool, i.kind.key, _version_key(i.version)))
        for item in ordered:
            files_json = json.dumps([[f.module, f.path, f.size, f.sha256] for f in item.files])
            key = (item.pool, item.kind.key)
            if known.get((item.pool, item.kind.key, item.version)) != item.files:
                rows.append((item.pool, item.kind, item.version, files_json))
            before = rules.get(key)
            if key in touched:
                original, current, versions = touched[key]
            else:
                original, versions = before, []
                current = before or Rule(rule_identity(item.pool), item.pool, item.kind)
            versions.append(item.version)
            touched[key] = (original, after_import(current, item.version), versions)
        changes: list[RuleChange] = []
        for original, after, versions in touched.values():
            detail = ", ".join(versions)
            if original is None:
                changes.append(RuleChange("created", None, after, detail))
            elif after.versions != original.versions:
                changes.append(RuleChange("pending", original, after, detail))
            else:
                changes.append(RuleChange("unchanged", original, original, detail))
        return changes, rows

    # --- test devices ---

    def test_devices(self) -> list[TestDevice]:
        """Every test device, MAC addresses first."""
        with self._read() as db:
            return self._load_test_devices(db)

    def add_test_device(
        self, mac: str | None = None, serial: str | None = None, name: str | None = None
    ) -> TestDevice:
        """Make a device (by MAC or by serial number) a test device."""
        kind, value = _device_id(mac, serial)
        device = TestDevice(kind, value, (name or "").strip() or value, self._stamp())
        with self._write() as db:
            row = db.execute(
                "SELECT name FROM test_devices WHERE kind = ? AND value = ?", (kind, value)
            ).fetchone()
            if row is not None:
                raise EntryError(f"{value} is already a test device (named {row[0]!r})")
            db.execute(
                "INSERT INTO test_devices VALUES (?, ?, ?, ?)",
                (device.kind, device.value, device.name, device.added_at),
            )
        return device

    def remove_test_device(self, mac: str | None = None, serial: str | None = None) -> TestDevice:
        """Stop treating a device (by MAC or by serial number) as a test device."""
        kind, value = _device_id(mac, serial)
        with self._write() as db:
            row = db.execute(
                "DELETE FROM test_devices WHERE kind = ? AND value = ? RETURNING *", (kind, value)
            ).fetchone()
            if row is None:
                raise EntryError(f"{value} is not a test device (see lab test-device list)")
        return TestDevice(*row)

    def is_test_device(self, mac: str | None, serial: str | None) -> bool:
        """Whether a device reporting ``mac`` / ``serial`` is a test device."""
        return self.snapshot().is_test_device(mac, serial)

    # --- device-update configuration ---

    def device_update_config(self) -> DeviceUpdateConfig:
        """The configuration in force."""
        with self._read() as db:
            return self._load_config(db)

    def set_settings(self, changes: Mapping[str, str]) -> DeviceUpdateConfig:
        """Change settings (name -> text; ``default`` restores one), all or none."""
        if not changes:
            raise SettingError("no setting given (NAME=VALUE)")
        checked = [check_setting(name, text) for name, text in changes.items()]
        with self._write() as db:
            for entry, value in checked:
                if value == entry.default:
                    db.execute("DELETE FROM settings WHERE name = ?", (entry.name,))
                else:
                    db.execute(
                        "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT DO UPDATE"
                        " SET value = excluded.value, changed_at = excluded.changed_at",
                        (entry.name, value, self._stamp()),
                    )
            return self._load_config(db)

    # --- phone inventory ---

    def record_phones(self, records: Sequence[PhoneRecord]) -> None:
        """Insert or update phones by MAC, all in one transaction.

        A known phone keeps its ``first_seen``, and its ``last_user`` when the record has none.
        The batch goes to SQLite as one statement over a JSON array (``json_each``): SQLite
        then works through the rows without holding Python's GIL, where ``executemany``
        takes the GIL back for every row and contends with the event loop of a busy service
        (the inventory writes from a thread beside it).
        """
        rows = [
            [
                r.mac,
                r.serial,
                *_kind_row(r.kind),
                r.version,
                r.address,
                r.zone,
                r.server,
                r.first_seen,
                r.last_seen,
                r.last_user,
                r.pool,
            ]
            for r in records
        ]
        with self._write() as db:
            db.execute(_RECORD_PHONES, (json.dumps(rows),))

    def phones(self) -> list[PhoneRecord]:
        """Every phone the service has seen, by server and MAC address."""
        with self._read() as db:
            return [
                PhoneRecord(mac, serial, DeviceKind(device_type, vendor, model, rev, loc), *rest)
                for mac, serial, device_type, vendor, model, rev, loc, *rest in db.execute(
                    "SELECT mac, serial, device_type, vendor, model, revision, locale, version,"
                    " address, zone, server, first_seen, last_seen, last_user, pool"
                    " FROM phones ORDER BY server, mac"
                )
            ]

    def approvals(self) -> list[Approval]:
        """Every rule's approved version with the time it was approved."""
        with self._read() as db:
            return [
                Approval(
                    pool,
                    DeviceKind(*kind),
                    approved,
                    datetime.fromisoformat(at) if at is not None else None,
                )
                for pool, *kind, approved, at in db.execute(
                    "SELECT pool, device_type, vendor, model, revision, locale, approved,"
                    " approved_at FROM rules WHERE approved IS NOT NULL"
                )
            ]

    # --- loading ---

    def _load_files(
        self, db: sqlite3.Connection
    ) -> dict[tuple[str, KindKey, str], tuple[ServedFile, ...]]:
        files: dict[tuple[str, KindKey, str], tuple[ServedFile, ...]] = {}
        for pool, *kind, version, data in db.execute(
            "SELECT pool, device_type, vendor, model, revision, locale, version, files"
            " FROM versions"
        ):
            key = DeviceKind(*kind).key
            files[(pool, key, version)] = tuple(ServedFile(*f) for f in json.loads(data))
        return files

    def _load_rules(self, db: sqlite3.Connection) -> list[Rule]:
        files = self._load_files(db)
        rules = []
        for identity, pool, *kind, pending, approved, restore in db.execute(
            "SELECT identity, pool, device_type, vendor, model, revision, locale,"
            " pending, approved, restore FROM rules"
            " ORDER BY pool, vendor, model, revision, locale"
        ):
            device = DeviceKind(*kind)
            versions = {v for v in (pending, approved, restore) if v is not None}
            rules.append(
                Rule(
                    identity,
                    pool,
                    device,
                    pending,
                    approved,
                    restore,
                    {v: files.get((pool, device.key, v), ()) for v in sorted(versions)},
                )
            )
        return rules

    def _load_test_devices(self, db: sqlite3.Connection) -> list[TestDevice]:
        return [
            TestDevice(*row)
            for row in db.execute(
                "SELECT kind, value, name, added_at FROM test_devices ORDER BY kind, value"
            )
        ]

    def _load_config(self, db: sqlite3.Connection) -> DeviceUpdateConfig:
        return DeviceUpdateConfig.from_texts(
            dict(db.execute("SELECT name, value FROM settings").fetchall())
        )


# --- helpers ---------------------------------------------------------------------------------


_RECORD_PHONES = (
    "INSERT INTO phones SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3,"
    " value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,"
    " value ->> 10, value ->> 11, value ->> 12, value ->> 13, value ->> 14"
    # (WHERE true: SQLite's grammar needs it before an upsert's ON CONFLICT after a SELECT.)
    " FROM json_each(?) WHERE true"
    " ON CONFLICT (mac) DO UPDATE SET serial = excluded.serial,"
    " device_type = excluded.device_type, vendor = excluded.vendor,"
    " model = excluded.model, revision = excluded.revision,"
    " locale = excluded.locale, version = excluded.version,"
    " address = excluded.address, zone = excluded.zone, server = excluded.server,"
    " pool = excluded.pool,"
    " last_seen = excluded.last_seen,"
    " last_user = coalesce(excluded.last_user, phones.last_user)"
)
"""Upsert a batch of phones given as one JSON array of rows in the phones table's order."""


def rule_identity(pool: str, rule_uuid: str | None = None) -> str:
    """A rule's identity, as Lync names it: ``service:WebServer:<pool FQDN>/<guid>``."""
    return f"service:WebServer:{pool}/{rule_uuid or uuid.uuid4()}"


def _kind_row(kind: DeviceKind) -> tuple[str, str, str, str, str]:
    return (kind.device_type, kind.vendor, kind.model, kind.revision, kind.locale)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _device_id(mac: str | None, serial: str | None) -> tuple[str, str]:
    if (mac is None) == (serial is None):
        raise IdentityError("name the device by MAC address or by serial number (one of them)")
    if mac is not None:
        return "mac", normalise_mac(mac)
    assert serial is not None
    return "serial", normalise_serial(serial)


def _filter(rules: list[Rule], pool: str | None, model: str | None) -> list[Rule]:
    return [
        r
        for r in rules
        if (pool is None or r.pool == pool)
        and (model is None or r.kind.model.casefold() == model.casefold())
    ]


def _resolve(rules: list[Rule], ref: str) -> Rule:
    text = ref.strip()
    exact = [r for r in rules if text in (r.identity, r.uuid)]
    if exact:
        return exact[0]
    if len(text) < 4:
        raise RuleError(f"{ref!r} is too short to name a rule (give 4 or more uuid characters)")
    found = [r for r in rules if r.uuid.startswith(text.lower())]
    if not found:
        raise RuleError(f"no rule {ref!r} (see lab update list)")
    if len(found) > 1:
        names = ", ".join(f"{r.identity} ({r.kind})" for r in found)
        raise RuleError(f"{ref!r} names {len(found)} rules: {names}; give more of the uuid")
    return found[0]


def _select(rules: list[Rule], selection: Selection) -> list[Rule]:
    filters = selection.all_ or selection.pool is not None or selection.model is not None
    if selection.refs and filters:
        raise RuleError("name rules or use --pool/--model/--all, not both")
    if selection.refs:
        chosen = [_resolve(rules, ref) for ref in selection.refs]
        return list({rule.identity: rule for rule in chosen}.values())
    if not filters:
        raise RuleError("name a rule (identity or uuid prefix) or use --pool, --model or --all")
    chosen = _filter(rules, selection.pool, selection.model)
    if not chosen:
        raise RuleError("no rule matches the filters (see lab update list)")
    return chosen
