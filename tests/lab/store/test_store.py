"""The update store: schema, rules and their commands, test devices, configuration, snapshots."""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.errors import EntryError, IdentityError, RuleError, SettingError, StoreError
from lab.models import (
    DeviceKind,
    check_kind,
    normalise_mac,
    normalise_serial,
    parse_version,
    phone_model,
)
from lab.net.config import default_config
from lab.store.decision import Action, ServedFile
from lab.store.devconfig import SETTINGS, DeviceUpdateConfig, format_span, span_seconds
from lab.store.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STORE_FILE,
    ImportedVersion,
    PhoneRecord,
    Selection,
    Store,
    rule_identity,
)

V1, V2, V3 = "4.0.7577.4372", "4.0.7577.4400", "4.0.7577.4410"
POOL01, SE01 = "pool01.contoso.test", "se01.contoso.test"
IDENTITY = re.compile(
    r"^service:WebServer:(pool01|se01)\.contoso\.test/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


def served(model: str = "CX600", version: str = V1) -> tuple[ServedFile, ...]:
    folder = f"{phone_model(model).kind().path}/{version}/CPE"
    return (
        ServedFile("CPE.cat", f"{folder}/CPE.cat", 300, "c" * 64),
        ServedFile("CPE.nbt", f"{folder}/CPE.nbt", 4096, "a" * 64),
    )


def item(model: str = "CX600", version: str = V1, pool: str = POOL01) -> ImportedVersion:
    return ImportedVersion(pool, phone_model(model).kind(), version, served(model, version))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path) as opened:
        yield opened


def imported(store: Store, *items: ImportedVersion) -> None:
    store.record_import(secrets.token_hex(16), "UCUpdates.cab", "0" * 64, items)


# --- schema ---------------------------------------------------------------------------------


def test_a_new_store_is_in_wal_mode_with_the_current_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        raw = sqlite3.connect(tmp_path / STORE_FILE)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        finally:
            raw.close()
    assert {"rules", "versions", "test_devices", "settings", "imports"} <= tables


def test_reopening_keeps_data_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.add_test_device(serial="CX6A000001")
    with Store.open(tmp_path) as store:
        assert [d.value for d in store.test_devices()] == ["CX6A000001"]
    raw = sqlite3.connect(tmp_path / STORE_FILE)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this lab knows"):
        Store.open(tmp_path)


def test_a_file_that_is_not_a_store_is_reported(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StoreError, match=STORE_FILE):
        Store.open(tmp_path)


def test_a_writer_that_waits_too_long_gets_a_clear_error(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    holder = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            Store.open(tmp_path, busy_timeout=0.05) as store,
            pytest.raises(StoreError, match="busy"),
        ):
            store.add_test_device(serial="X1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- from rules per front end (schema 2) to rules per pool ---------------------------------------

FE01_CX600 = "11111111-0000-4000-8000-000000000001"
FE02_CX600 = "22222222-0000-4000-8000-000000000002"
FE01_HP = "33333333-0000-4000-8000-000000000003"
SE01_CX600 = "44444444-0000-4000-8000-000000000004"
PHONE_FE02, PHONE_SE01 = "00-04-F2-00-00-01", "00-04-F2-00-00-02"


def _kind_row(model: str) -> tuple[str, ...]:
    kind = phone_model(model).kind()
    return (kind.device_type, kind.vendor, kind.model, kind.revision, kind.locale)


def _image(model: str, version: str) -> bytes:
    # Front ends of one pool held the same files of a version.
    return f"{model} {version} ".encode() * 8


def schema_2_store(state: Path) -> None:
    """A store as labs before pools left it: rules, versions and files per front end."""
    state.mkdir(parents=True)
    raw = sqlite3.connect(state / STORE_FILE, isolation_level=None)
    try:
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 2")
        day = "2026-01-{:02d}T00:00:00+00:00".format
        # uuid, server, model, pending, approved, restore, updated_at (also approved_at)
        rules = [
            (FE01_CX600, "fe01", "CX600", None, V1, None, day(5)),
            (FE02_CX600, "fe02", "CX600", V2, V1, None, day(20)),  # changed last
            (FE01_HP, "fe01", "HP4110", V1, None, None, day(2)),
            (SE01_CX600, "se01", "CX600", None, V1, None, day(3)),
        ]
        for rule_uuid, server, model, pending, approved, restore, updated in rules:
            raw.execute(
                "INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rule_uuid, f"service:WebServer:{server}.contoso.test/{rule_uuid}", server,
                 *_kind_row(model), pending, approved, restore, day(1), updated,
                 updated if approved else None),
            )  # fmt: skip
        versions = [("fe01", "CX600", V1), ("fe02", "CX600", V1), ("fe02", "CX600", V2),
                    ("fe01", "HP4110", V1), ("se01", "CX600", V1)]  # fmt: skip
        for server, model, version in versions:
            files = json.dumps(
                [[f.module, f.path, f.size, f.sha256] for f in served(model, version)]
            )
            raw.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (server, *_kind_row(model), version, files, day(1)),
            )
            for file in served(model, version):
                path = state / "servers" / server / "DeviceUpdateFiles" / file.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_image(model, version) + file.module.encode())
        for mac, server in ((PHONE_FE02, "fe02"), (PHONE_SE01, "se01")):
            raw.execute(
                "INSERT INTO phones VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mac, "CX6A000001", *_kind_row("CX600"), V1, "127.10.0.60", "inside", server,
                 day(6), day(7), None),
            )  # fmt: skip
        raw.execute(
            "INSERT INTO imports VALUES ('i1', 'UCUpdates.cab', ?, 'fe01,fe02', '[]', ?)",
            ("0" * 64, day(1)),
        )
    finally:
        raw.close()
    logs = state / "servers" / "fe01" / "DeviceLogs"
    logs.mkdir(parents=True)
    (logs / "phone.clg").write_bytes(b"a device log")


def store_rows(state: Path) -> tuple[int, str]:
    """The schema version and every row of the store file."""
    raw = sqlite3.connect(state / STORE_FILE)
    try:
        return raw.execute("PRAGMA user_version").fetchone()[0], "\n".join(raw.iterdump())
    finally:
        raw.close()


def state_files(state: Path) -> dict[str, bytes]:
    """Every file of the state directory but the store's own."""
    return {
        p.relative_to(state).as_posix(): p.read_bytes()
        for p in sorted(state.rglob("*"))
        if p.is_file() and not p.name.startswith(STORE_FILE)
    }


def test_a_schema_2_store_moves_its_rules_and_files_to_the_pools(tmp_path: Path) -> None:
    state = tmp_path / "state"
    schema_2_store(state)
    files_before = state_files(state)
    with Store.open(state, pool_of=default_config().pool_of()) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        rules = store.rules()
        # One rule per kind and pool: of fe01's and fe02's CX600 rules, fe02's (changed
        # last) is kept, under its uuid with the pool's identity.
        assert [(r.pool, r.kind.model, r.uuid, r.versions) for r in rules] == [
            (POOL01, "HP4110", FE01_HP, (V1, None, None)),
            (POOL01, "CX600", FE02_CX600, (V2, V1, None)),
            (SE01, "CX600", SE01_CX600, (None, V1, None)),
        ]
        assert [r.identity for r in rules] == [
            f"service:WebServer:{POOL01}/{FE01_HP}",
            f"service:WebServer:{POOL01}/{FE02_CX600}",
            f"service:WebServer:{SE01}/{SE01_CX600}",
        ]
        with pytest.raises(RuleError, match="no rule"):
            store.rule(FE01_CX600)
        # Every version record is kept, in its pool.
        assert rules[1].files == {V1: served("CX600", V1), V2: served("CX600", V2)}
        assert rules[0].files == {V1: served("HP4110", V1)}
        assert [(a.pool, a.kind.model, a.version) for a in store.approvals()] == [
            (POOL01, "CX600", V1),
            (SE01, "CX600", V1),
        ]
        assert {p.mac: (p.server, p.pool) for p in store.phones()} == {
            PHONE_FE02: ("fe02", POOL01),
            PHONE_SE01: ("se01", SE01),
        }
        kind = phone_model("CX600").kind()
        assert store.snapshot().decide(POOL01, kind, "4.0.7577.4366").version == V1
    raw = sqlite3.connect(state / STORE_FILE)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = {
            table: [row[1] for row in raw.execute(f"PRAGMA table_info({table})")]
            for table in ("rules", "versions", "phones", "imports")
        }
        stored = sorted(raw.execute("SELECT pool, model, version FROM versions"))
    finally:
        raw.close()
    for table in ("rules", "versions"):
        assert "pool" in columns[table]
        assert "server" not in columns[table]
    assert "pools" in columns["imports"]
    assert {"server", "pool"} <= set(columns["phones"])
    assert stored == [
        (POOL01, "CX600", V1),
        (POOL01, "CX600", V2),
        (POOL01, "HP4110", V1),
        (SE01, "CX600", V1),
    ]
    # The files moved to the pools' stores; device logs stay with their front end.
    moved = {
        name.replace("servers/fe01/", f"pools/{POOL01}/")
        .replace("servers/fe02/", f"pools/{POOL01}/")
        .replace("servers/se01/", f"pools/{SE01}/"): data
        for name, data in files_before.items()
        if "/DeviceUpdateFiles/" in name
    }
    assert state_files(state) == {
        **moved,
        "servers/fe01/DeviceLogs/phone.clg": b"a device log",
        "filestore.lock": b"",
    }
    assert len(moved) == 8  # CX600 V1, V2 and HP4110 V1 in pool01; CX600 V1 in se01
    for server in ("fe01", "fe02", "se01"):
        assert not (state / "servers" / server / "DeviceUpdateFiles").exists()
    # Opening again changes nothing.
    before = store_rows(state), state_files(state)
    Store.open(state, pool_of=default_config().pool_of()).close()
    assert (store_rows(state), state_files(state)) == before


def test_a_schema_2_store_opened_without_the_pools_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    schema_2_store(state)
    rows, files = store_rows(state), state_files(state)
    assert rows[0] == 2
    with pytest.raises(StoreError) as info:
        Store.open(state)
    message = str(info.value)
    assert "keeps rules per front end (fe01, fe02, se01)" in message
    assert "lab --config FILE" in message
    assert store_rows(state) == rows  # still schema 2, every row as it was
    assert state_files(state) == files
    # A config that does not name every front end of the store cannot move it either.
    with pytest.raises(StoreError, match=r"per front end \(fe02, se01\)"):
        Store.open(state, pool_of={"fe01": POOL01})
    assert store_rows(state) == rows
    assert state_files(state) == files
    # With the lab's config it moves.
    with Store.open(state, pool_of=default_config().pool_of()) as store:
        assert store.schema_version == 3
        assert len(store.rules()) == 3


# --- rules ------------------------------------------------------------------------------------


def test_an_import_creates_one_pending_rule_per_pool_and_kind(store: Store) -> None:
    imported(store, item(), item("HP4110"), item(pool=SE01))
    rules = store.rules()
    assert [(r.pool, r.kind.model, r.versions) for r in rules] == [
        (POOL01, "HP4110", (V1, None, None)),
        (POOL01, "CX600", (V1, None, None)),
        (SE01, "CX600", (V1, None, None)),
    ]
    assert all(IDENTITY.match(r.identity) for r in rules)
    # As Import-CsDeviceUpdate names them: service:WebServer:<pool FQDN>/<guid>.
    assert rules[1].identity == f"service:WebServer:{POOL01}/{rules[1].uuid}"
    assert rules[2].identity == f"service:WebServer:{SE01}/{rules[2].uuid}"
    assert rules[1].files[V1] == item().files
    assert store.rules(pool=SE01)[0].kind.model == "CX600"
    assert [r.pool for r in store.rules(model="cx600")] == [POOL01, SE01]
    assert rules[1].as_dict()["pool"] == POOL01


def test_rule_identities_name_the_pool() -> None:
    fixed = "0123abcd-0000-4000-8000-000000000000"
    assert rule_identity(POOL01, fixed) == f"service:WebServer:{POOL01}/{fixed}"
    made = rule_identity(SE01)
    assert IDENTITY.match(made)
    assert made != rule_identity(SE01)


def test_importing_again_changes_nothing_and_a_new_version_becomes_pending(store: Store) -> None:
    imported(store, item())
    changes, records = store.preview_import([item()])
    assert ([c.action for c in changes], records) == (["unchanged"], 0)
    store.change(Action.APPROVE, Selection(all_=True))
    imported(store, item(version=V2), item(version=V3))
    (rule,) = store.rules()
    # Several versions in one cab: the highest ends up pending; all are recorded.
    assert rule.versions == (V3, V1, None)
    assert set(rule.files) == {V1, V3}


def test_rules_are_named_by_identity_or_uuid_prefix(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = iter(["abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"])
    monkeypatch.setattr("lab.store.store.uuid.uuid4", lambda: uuid.UUID(next(ids)))
    imported(store, item(), item("HP4110"))
    first, second = store.rule("abcd1"), store.rule("abcd2")
    assert {first.kind.model, second.kind.model} == {"CX600", "HP4110"}
    assert store.rule(first.identity) == first
    assert store.rule("ABCD1111-0000-4000-8000-000000000000") == first
    with pytest.raises(RuleError, match="'abcd' names 2 rules"):
        store.rule("abcd")
    with pytest.raises(RuleError, match="no rule 'ffff'"):
        store.rule("ffff")
    with pytest.raises(RuleError, match="too short"):
        store.rule("ab")


def test_selections_must_be_clear(store: Store) -> None:
    imported(store, item())
    ref = store.rules()[0].uuid[:8]
    with pytest.raises(RuleError, match="name a rule"):
        store.select(Selection())
    with pytest.raises(RuleError, match="not both"):
        store.select(Selection((ref,), pool=POOL01))
    with pytest.raises(RuleError, match="no rule matches"):
        store.select(Selection(pool=SE01))
    assert [r.pool for r in store.select(Selection(pool=POOL01))] == [POOL01]
    assert len(store.select(Selection((ref, ref)))) == 1


def test_commands_follow_the_lifecycle_and_are_stored(store: Store) -> None:
    imported(store, item())
    ref = Selection((store.rules()[0].uuid[:6],))
    store.change(Action.APPROVE, ref)
    imported(store, item(version=V2))
    store.change(Action.APPROVE, ref)
    assert store.rules()[0].versions == (None, V2, V1)
    store.change(Action.RESTORE, ref)
    assert store.rules()[0].versions == (None, V1, None)
    imported(store, item(version=V3))
    store.change(Action.RESET, ref)
    assert store.rules()[0].versions == (None, V1, None)
    with pytest.raises(RuleError, match=r"cannot reset .*nothing is pending"):
        store.change(Action.RESET, ref)


def test_named_rules_change_all_or_none(store: Store) -> None:
    imported(store, item(), item("HP4110"))
    cx600, hp = store.rule(store.rules(model="CX600")[0].uuid), store.rules(model="HP4110")[0]
    store.change(Action.APPROVE, Selection((hp.uuid,)))
    with pytest.raises(RuleError, match=r"HP4110.*nothing is pending"):
        store.change(Action.APPROVE, Selection((cx600.uuid, hp.uuid)))
    assert store.rule(cx600.uuid).versions == (V1, None, None)


def test_filters_skip_rules_a_command_makes_no_sense_for(store: Store) -> None:
    imported(store, item(), item("HP4110"))
    store.change(Action.APPROVE, Selection(model="HP4110"))
    changes = store.change(Action.APPROVE, Selection(all_=True))
    assert [(c.rule.kind.model, c.action, c.detail) for c in changes] == [
        ("HP4110", "skipped", "nothing is pending"),
        ("CX600", "approve", ""),
    ]
    with pytest.raises(RuleError, match="cannot approve any of the selected rules"):
        store.change(Action.APPROVE, Selection(all_=True))


def test_remove_deletes_rules_and_their_version_records(store: Store) -> None:
    imported(store, item(), item("HP4110"))
    (removed,) = store.remove(Selection(model="CX600"))
    assert removed.action == "removed"
    assert [r.kind.model for r in store.rules()] == ["HP4110"]
    changes, records = store.preview_import([item()])
    assert ([c.action for c in changes], records) == (["created"], 1)


# --- test devices ------------------------------------------------------------------------------

MAC = "00-04-F2-00-00-01"


@pytest.mark.parametrize(
    "text", ["0004f2000001", "00-04-F2-00-00-01", "00:04:f2:00:00:01", " 00-04-f2-00-00-01 "]
)
def test_mac_addresses_are_normalised(text: str) -> None:
    assert normalise_mac(text) == MAC


@pytest.mark.parametrize(
    "text",
    ["0004f200001", "0004f20000011", "00-04:F2-00-00-01", "0004f200000g", "00-04-F2-00-00-01-02",
     "00--04-F2-00-00-01", "", "0004.f200.0001"],
)  # fmt: skip
def test_malformed_mac_addresses_are_refused(text: str) -> None:
    with pytest.raises(IdentityError, match="is not a MAC address"):
        normalise_mac(text)


def test_device_kinds_are_checked_in_any_case_and_written_as_the_lab_does() -> None:
    kind = check_kind(DeviceKind("ucphone", "polycom", "cx600", "A", "ENU"))
    assert kind == phone_model("CX600").kind()
    with pytest.raises(IdentityError, match="made by Polycom, not 'HP'"):
        check_kind(DeviceKind("UCPhone", "HP", "CX600", "A", "ENU"))
    with pytest.raises(IdentityError, match="'CX999' is not a phone model"):
        check_kind(DeviceKind("UCPhone", "Polycom", "CX999", "A", "ENU"))
    with pytest.raises(IdentityError, match="revision"):
        check_kind(DeviceKind("UCPhone", "Polycom", "CX600", "A/B", "ENU"))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("4.0.7577.4366", (4, 0, 7577, 4366)), ("04.0.7577.00001", (4, 0, 7577, 1))],
)
def test_versions_are_four_numbers(text: str, parsed: tuple[int, ...]) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize("text", ["4.0.7577", "4.0.7577.4366.1", "4.0.7577.65536", "4.0.x.1", ""])
def test_malformed_versions_are_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        parse_version(text)


def test_serial_numbers_are_trimmed_and_upper_cased() -> None:
    assert normalise_serial("  cx6a000001 ") == "CX6A000001"
    with pytest.raises(IdentityError, match="not a serial number"):
        normalise_serial("CX6A 0001")


def test_test_devices_by_mac_or_serial(store: Store) -> None:
    device = store.add_test_device(mac="00:04:f2:00:00:01", name="desk phone")
    assert (device.kind, device.value, device.name) == ("mac", MAC, "desk phone")
    store.add_test_device(serial=" cx6a000002 ")
    with pytest.raises(EntryError, match=r"already a test device .*desk phone"):
        store.add_test_device(mac="0004F2000001")
    with pytest.raises(IdentityError, match="one of them"):
        store.add_test_device(mac=MAC, serial="X")
    assert [(d.kind, d.value, d.name) for d in store.test_devices()] == [
        ("mac", MAC, "desk phone"),
        ("serial", "CX6A000002", "CX6A000002"),
    ]
    assert store.is_test_device("0004f2000001", None)
    assert store.is_test_device("00-04-F2-00-00-09", "cx6a000002")
    assert not store.is_test_device("00-04-F2-00-00-09", "CX6A000009")
    assert not store.is_test_device("garbage", "bad serial!")
    assert store.remove_test_device(mac="00:04:F2:00:00:01").value == MAC
    with pytest.raises(EntryError, match="is not a test device"):
        store.remove_test_device(mac=MAC)
    assert not store.is_test_device(MAC, None)


# --- device-update configuration ----------------------------------------------------------------


def test_the_defaults_are_lyncs(store: Store) -> None:
    config = store.device_update_config()
    assert config == DeviceUpdateConfig()
    assert config.texts() == {
        "MaxLogFileSize": "1024000",
        "MaxLogCacheLimit": "512000",
        "ValidLogFileTypes": "Watson,CELog",
        "ValidLogFileExtensions": ".dmp .clg .clg2 .bak .kdmp .dat .bin .cat .xml .txt .hex",
        "LogCleanUpInterval": "10.00:00:00",
        "LogFlushInterval": "00:05:00",
        "LogCleanUpTimeOfDay": "",
    }
    assert config.texts() == {s.name: s.default for s in SETTINGS}
    assert config.log_cleanup_interval == 10 * 86400
    assert config.accepts_log_type("celog")
    assert config.accepts_log_file("phone.CLG")
    assert not config.accepts_log_file("phone.exe")


GOOD_VALUES = [
    ("MaxLogFileSize", "2048000", "2048000"),
    ("maxlogfilesize", "1_024", "1024"),
    ("MaxLogCacheLimit", "4294967295", "4294967295"),
    ("ValidLogFileTypes", "Watson CELog Config", "Watson,CELog,Config"),
    ("ValidLogFileExtensions", ".CLG, .dmp .clg", ".clg .dmp"),
    ("LogCleanUpInterval", "14.00:00:00", "14.00:00:00"),
    ("LogCleanUpInterval", "365.", "365.00:00:00"),
    ("LogCleanUpInterval", "1d", "1.00:00:00"),
    ("LogFlushInterval", "00:02:00", "00:02:00"),
    ("LogFlushInterval", "1h", "01:00:00"),
    ("LogCleanUpTimeOfDay", "8:30", "08:30"),
    ("LogCleanUpTimeOfDay", "", ""),
    ("MaxLogFileSize", "default", "1024000"),
]


@pytest.mark.parametrize(("name", "value", "stored"), GOOD_VALUES)
def test_settings_take_values_in_range(store: Store, name: str, value: str, stored: str) -> None:
    config = store.set_settings({name: value})
    canonical = next(s.name for s in SETTINGS if s.name.lower() == name.lower())
    assert config.texts()[canonical] == stored
    assert store.device_update_config() == config


BAD_VALUES = [
    ("MaxLogFileSize", "1023", r"MaxLogFileSize: 1023 is out of range \(1024\.\.4294967295 bytes"),
    ("MaxLogFileSize", "4294967296", "out of range"),
    ("MaxLogCacheLimit", "-5", "not a whole number"),
    ("ValidLogFileTypes", "", r"0 entries is out of range \(1\.\.32\)"),
    ("ValidLogFileTypes", "Watson,Ce-Log", "not a log type name"),
    ("ValidLogFileExtensions", "clg", "not an extension like .clg"),
    ("LogCleanUpInterval", "366.00:00:00", r"out of range \(1\.00:00:00 to 365\.00:00:00\)"),
    ("LogCleanUpInterval", "12:00:00", "out of range"),
    ("LogFlushInterval", "00:00:30", r"out of range \(00:01:00 to 01:00:00\)"),
    ("LogFlushInterval", "02:00:00", "out of range"),
    ("LogFlushInterval", "5 minutes", "not a time span"),
    ("LogCleanUpTimeOfDay", "24:00", "not a time of day"),
    ("MaxLogSize", "1", "not a device-update setting"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_settings_out_of_range_are_refused_with_the_range(
    store: Store, name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingError, match=message):
        store.set_settings({name: value})
    assert store.device_update_config() == DeviceUpdateConfig()


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("10.00:00:00", 864000, "10.00:00:00"),
        ("00:05:00", 300, "00:05:00"),
        ("14.", 1209600, "14.00:00:00"),
        ("1.02:03:04", 93784, "1.02:03:04"),
        ("90s", 90, "00:01:30"),
        ("2h", 7200, "02:00:00"),
    ],
)
def test_time_spans_read_and_write_as_lync_does(text: str, seconds: int, shown: str) -> None:
    assert span_seconds(text) == seconds
    assert format_span(seconds) == shown


def test_settings_change_all_or_none(store: Store) -> None:
    with pytest.raises(SettingError):
        store.set_settings({"MaxLogFileSize": "2048000", "LogFlushInterval": "2h"})
    assert store.device_update_config() == DeviceUpdateConfig()


# --- snapshots for a running service ----------------------------------------------------------


def test_a_snapshot_is_reused_until_the_store_changes(tmp_path: Path) -> None:
    with Store.open(tmp_path) as service, Store.open(tmp_path) as cli:
        first = service.snapshot()
        assert service.snapshot() is first
        imported(cli, item())
        second = service.snapshot()
        assert second is not first
        assert second.generation == first.generation + 1
        assert [r.versions for r in second.rules] == [(V1, None, None)]
        assert service.snapshot() is second
        cli.set_settings({"MaxLogFileSize": "2048000"})
        assert service.snapshot().config.max_log_file_size == 2048000
        service.add_test_device(mac=MAC)  # its own write is seen too
        assert service.snapshot().is_test_device(MAC, None)


def test_a_commit_that_changes_only_the_inventory_keeps_the_snapshot(tmp_path: Path) -> None:
    # The service's own inventory writes commit every few seconds; the answers kept for a
    # snapshot generation must not be thrown away for them.
    with Store.open(tmp_path) as service, Store.open(tmp_path) as inventory:
        imported(service, item())
        first = service.snapshot()
        seen = "2026-06-01T12:00:00+00:00"
        inventory.record_phones(
            [
                PhoneRecord(
                    mac=MAC, serial="CX6A000001", kind=phone_model("CX600").kind(),
                    version=V1, address="127.10.1.1", zone="inside", server="fe01",
                    first_seen=seen, last_seen=seen, pool=POOL01,
                )
            ]
        )  # fmt: skip
        assert service.snapshot() is first
        assert [p.pool for p in inventory.phones()] == [POOL01]
        inventory.add_test_device(mac=MAC)
        assert service.snapshot().generation == first.generation + 1


def test_a_running_service_sees_another_process_change_at_its_next_check(tmp_path: Path) -> None:
    kind = phone_model("CX600").kind()
    with Store.open(tmp_path) as service:
        imported(service, item())
        assert not service.snapshot().decide(POOL01, kind, "4.0.7577.4366").serves
        script = (
            "import sys; from pathlib import Path; from lab.store.store import Store, Selection;"
            "from lab.store.decision import Action;"
            "s = Store.open(Path(sys.argv[1]));"
            "s.change(Action.APPROVE, Selection(all_=True)); s.close()"
        )
        subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=30)
        decision = service.snapshot().decide(POOL01, kind, "4.0.7577.4366")
        assert decision.version == V1
        assert [f.module for f in decision.files] == ["CPE.cat", "CPE.nbt"]


def test_snapshot_decisions_use_the_test_devices(store: Store) -> None:
    imported(store, item())
    store.change(Action.APPROVE, Selection(all_=True))
    imported(store, item(version=V2))
    store.add_test_device(serial="CX6A000001")
    snapshot = store.snapshot()
    kind = phone_model("CX600").kind()
    assert snapshot.decide(POOL01, kind, V1, MAC, "cx6a000001").version == V2
    assert snapshot.decide(POOL01, kind, V1, MAC, "CX6A000002").serves is False
    assert snapshot.decide(POOL01, kind, "4.0.7577.4366", MAC).version == V1
    assert not snapshot.decide(SE01, kind, "4.0.7577.4366", MAC).serves  # per pool
    assert set(snapshot.by_pool) == {POOL01}
    assert snapshot.rules_for(POOL01)[kind.key].pool == POOL01
    assert snapshot.rules_for(SE01) == {}
