"""The phone inventory: flag rules, the store's records and migration, batched writing, and
update checks over real TLS recorded and listed by `lab phones`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import spnego

from lab.clock import utc_now
from lab.events import Event, EventBus
from lab.models import DeviceKind, phone_model
from lab.net.config import LabConfig, default_config
from lab.net.firewall import FirewallPolicy, Zone
from lab.net.pki import LabPKI
from lab.service import ServicePool
from lab.service.inventory import (
    SUPPORT_WINDOW,
    Flag,
    InventoryRecorder,
    Sighting,
    assess,
    inventory,
    read_inventory,
)
from lab.store.decision import Action, ServedFile
from lab.store.store import (
    MIGRATIONS,
    STORE_FILE,
    Approval,
    ImportedVersion,
    PhoneRecord,
    Selection,
    Store,
)

OLD = "4.0.7577.4366"
APPROVED = "4.0.7577.4372"
NEWER = "4.0.7577.4400"
CX600 = phone_model("CX600").kind()
CX3000 = phone_model("CX3000").kind()
CX500 = phone_model("CX500").kind()
HP4120 = phone_model("HP4120").kind()
NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
CHECK = "/RequestHandler/ucdevice.upx"
EXT_CHECK = "/RequestHandlerExt/ucdevice.upx"
INSIDE_PHONE = "127.10.0.60"
OTHER_INSIDE_PHONE = "127.10.0.61"
OUTSIDE_PHONE = "127.20.0.60"
POOL01, SE01 = "pool01.contoso.test", "se01.contoso.test"


# --- flag rules -------------------------------------------------------------------------------


def approval(version: str = APPROVED, age: timedelta | None = timedelta(days=10)) -> Approval:
    return Approval(POOL01, CX600, version, NOW - age if age is not None else None)


# installed version, approval (None: no approved version), expected flags
FLAG_RULES: list[tuple[str, str, Approval | None, tuple[Flag, ...]]] = [
    ("no approved version", OLD, None, ()),
    ("on the approved version", APPROVED, approval(), ()),
    ("on it, written otherwise", "4.0.07577.04372", approval(), ()),
    ("on it, approved long ago", APPROVED, approval(age=timedelta(days=400)), ()),
    ("behind, recent approval", OLD, approval(), (Flag.NOT_APPROVED,)),
    ("behind, exactly 60 days", OLD, approval(age=SUPPORT_WINDOW), (Flag.NOT_APPROVED,)),
    (
        "behind, 60 days and a second",
        OLD,
        approval(age=SUPPORT_WINDOW + timedelta(seconds=1)),
        (Flag.NOT_APPROVED, Flag.LEFT_BEHIND),
    ),
    (
        "ahead (a test device), approved long ago",
        NEWER,
        approval(age=timedelta(days=90)),
        (Flag.NOT_APPROVED, Flag.LEFT_BEHIND),
    ),
    ("behind, approval time unknown", OLD, approval(age=None), (Flag.NOT_APPROVED,)),
    (
        "behind, approved in the future (clock moved back)",
        OLD,
        approval(age=-timedelta(days=1)),
        (Flag.NOT_APPROVED,),
    ),
]


@pytest.mark.parametrize(
    ("installed", "rule", "flags"),
    [case[1:] for case in FLAG_RULES],
    ids=[case[0] for case in FLAG_RULES],
)
def test_flag_rules(installed: str, rule: Approval | None, flags: tuple[Flag, ...]) -> None:
    assert assess(installed, rule, NOW) == flags


def phone(
    mac: str = "00-04-F2-00-00-01",
    kind: DeviceKind = CX600,
    version: str = OLD,
    server: str = "fe01",
    pool: str = POOL01,
) -> PhoneRecord:
    stamp = NOW.isoformat(timespec="seconds")
    return PhoneRecord(
        mac, "CX6A000001", kind, version, INSIDE_PHONE, "inside", server, stamp, stamp, None, pool
    )


def test_a_phone_is_held_against_the_rule_of_its_kind_in_its_pool() -> None:
    shouted = DeviceKind("ucphone", "POLYCOM", "cx600", "a", "enu")
    old = timedelta(days=90)
    statuses = inventory(
        [
            phone("00-04-F2-00-00-01", server="fe01"),
            phone("00-04-F2-00-00-02", server="fe02"),  # another front end of pool01
            phone("00-04-F2-00-00-03", server="se01", pool=SE01),
            phone("00-04-F2-00-00-04", kind=CX3000),
        ],
        [Approval(POOL01, shouted, APPROVED, NOW - old)],
        NOW,
    )
    behind = (APPROVED, (Flag.NOT_APPROVED, Flag.LEFT_BEHIND))
    assert [(s.approved, s.flags) for s in statuses] == [
        behind,
        behind,  # the pool's rule, whichever of its front ends the phone checked with
        (None, ()),  # se01 has no rule: import is per pool
        (None, ()),
    ]
    assert statuses[0].as_dict()["flags"] == ["not-approved", "left-behind"]
    assert statuses[0].as_dict()["approved_at"] == "2026-03-03T12:00:00+00:00"


# --- the store --------------------------------------------------------------------------------


class Clock:
    """A wall clock the test moves."""

    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def add_rules(
    state: Path,
    config: LabConfig,
    approved_at: dict[DeviceKind, datetime],
    pools: tuple[str, ...] = (POOL01,),
) -> None:
    """Rules for each kind in each pool, APPROVED approved at the given time."""
    clock = Clock()
    with Store.open(state, now=clock, pool_of=config.pool_of()) as store:
        for kind, at in approved_at.items():
            files = (ServedFile("CPE.nbt", f"{kind.path}/{APPROVED}/CPE/CPE.nbt", 10, "0" * 64),)
            items = [
                ImportedVersion(pool.fqdn, kind, APPROVED, files)
                for pool in config.pools
                if pool.fqdn in pools
            ]
            store.record_import(str(uuid.uuid4()), "UCUpdates.cab", "0" * 64, items)
            clock.at = at
            store.change(Action.APPROVE, Selection(model=kind.model))


def test_approve_and_restore_record_when_the_approved_version_changed(tmp_path: Path) -> None:
    config = default_config()
    add_rules(tmp_path, config, {CX600: NOW - timedelta(days=70)}, pools=(POOL01,))
    clock = Clock(NOW)
    with Store.open(tmp_path, now=clock) as store:
        assert [(a.version, a.approved_at) for a in store.approvals()] == [
            (APPROVED, NOW - timedelta(days=70))
        ]
        files = (ServedFile("CPE.nbt", "x/CPE.nbt", 10, "0" * 64),)
        store.record_import("second", "b.cab", "1" * 64, [
            ImportedVersion(POOL01, CX600, NEWER, files)
        ])  # fmt: skip
        clock.at = NOW + timedelta(days=1)
        store.change(Action.RESET, Selection(all_=True))  # the approved version stays
        assert store.approvals()[0].approved_at == NOW - timedelta(days=70)
        store.record_import("third", "c.cab", "2" * 64, [
            ImportedVersion(POOL01, CX600, NEWER, files)
        ])  # fmt: skip
        clock.at = NOW + timedelta(days=2)
        store.change(Action.APPROVE, Selection(all_=True))
        assert [(a.version, a.approved_at) for a in store.approvals()] == [
            (NEWER, NOW + timedelta(days=2))
        ]
        clock.at = NOW + timedelta(days=3)
        store.change(Action.RESTORE, Selection(all_=True))  # back to APPROVED, from now on
        assert [(a.version, a.approved_at) for a in store.approvals()] == [
            (APPROVED, NOW + timedelta(days=3))
        ]
        store.change(Action.RESTORE, Selection(all_=True))  # withdrawn: nothing approved
        assert store.approvals() == []


def test_phone_records_keep_first_seen_and_the_last_known_user(tmp_path: Path) -> None:
    first = PhoneRecord(
        "00-04-F2-00-00-01", "CX6A000001", CX600, OLD, INSIDE_PHONE, "inside", "fe01",
        "2026-06-01T12:00:00+00:00", "2026-06-01T12:00:00+00:00", "alice@contoso.test", POOL01,
    )  # fmt: skip
    later = PhoneRecord(
        "00-04-F2-00-00-01", "CX6A000001", CX600, APPROVED, "127.10.0.61", "inside", "se01",
        "2026-06-02T08:00:00+00:00", "2026-06-02T08:00:00+00:00", None, SE01,
    )  # fmt: skip
    with Store.open(tmp_path) as store:
        store.record_phones([first])
        store.record_phones([later])
        [record] = store.phones()
    assert record == PhoneRecord(
        "00-04-F2-00-00-01", "CX6A000001", CX600, APPROVED, "127.10.0.61", "inside", "se01",
        "2026-06-01T12:00:00+00:00", "2026-06-02T08:00:00+00:00", "alice@contoso.test", SE01,
    )  # fmt: skip


def test_a_schema_1_store_is_migrated_and_keeps_its_rules(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    try:
        for statement in MIGRATIONS[0].statements:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
        kind = ("UCPhone", "Polycom", "CX600", "A", "ENU")
        raw.execute(
            "INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("0123abcd", "service:WebServer:fe01.contoso.test/0123abcd", "fe01", *kind,
             NEWER, APPROVED, OLD, "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"),
        )  # fmt: skip
        raw.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("fe01", *kind, APPROVED, '[["CPE.nbt", "p/CPE.nbt", 10, "ab"]]',
             "2026-01-01T00:00:00+00:00"),
        )  # fmt: skip
        raw.execute("INSERT INTO test_devices VALUES ('serial', 'CX6A0000FF', 'lab', '2026-01-01')")
    finally:
        raw.close()

    pool_of = default_config().pool_of()
    with Store.open(tmp_path, pool_of=pool_of) as store:
        assert store.schema_version == MIGRATIONS[-1].version == 3
        [rule] = store.rules()
        # Its front end's rule became its pool's (lab.store.store: schema 3).
        assert (rule.uuid, rule.pool, rule.kind) == ("0123abcd", POOL01, CX600)
        assert rule.identity == f"service:WebServer:{POOL01}/0123abcd"
        assert rule.versions == (NEWER, APPROVED, OLD)
        assert [f.path for f in rule.files[APPROVED]] == ["p/CPE.nbt"]
        assert [d.value for d in store.test_devices()] == ["CX6A0000FF"]
        # The last change is the best known approval time of a migrated rule.
        assert [(a.version, a.approved_at) for a in store.approvals()] == [
            (APPROVED, datetime(2026, 2, 1, tzinfo=UTC))
        ]
        assert store.phones() == []
        decision = store.snapshot().decide(POOL01, CX600, OLD)
        assert decision.version == APPROVED
        # Rules made before the migration still take commands and new imports still work.
        store.change(Action.APPROVE, Selection(all_=True))
        assert store.rules()[0].versions == (None, NEWER, APPROVED)
    with Store.open(tmp_path) as store:  # opening again migrates nothing
        assert store.schema_version == 3
        assert [r.identity for r in store.rules()] == [f"service:WebServer:{POOL01}/0123abcd"]


# --- batched writing --------------------------------------------------------------------------


def sighting(
    mac: str = "00-04-F2-00-00-01",
    version: str = OLD,
    user: str | None = None,
    seen: datetime = NOW,
) -> Sighting:
    return Sighting(
        mac=mac,
        serial="CX6A000001",
        kind=CX600,
        version=version,
        address=INSIDE_PHONE,
        zone=Zone.INSIDE,
        server="fe01",
        pool=POOL01,
        seen=seen,
        user=user,
    )


async def test_the_recorder_keeps_the_latest_sighting_per_phone_and_writes_them_at_once(
    tmp_path: Path,
) -> None:
    events = EventBus()
    flushed: list[Event] = []
    events.subscribe(lambda e: flushed.append(e) if e.kind == "inventory.flushed" else None)
    async with InventoryRecorder(tmp_path, events=events, interval=3600) as recorder:
        recorder.record(sighting(user="alice@contoso.test"))
        recorder.record(sighting(version=APPROVED, seen=NOW + timedelta(seconds=1)))
        recorder.record(sighting(mac="00-04-F2-00-00-02"))
        assert recorder.pending == 2
        with Store.open(tmp_path) as store:
            assert store.phones() == []  # nothing written on the check path
        assert await recorder.flush() == 2
        assert recorder.pending == 0
        assert await recorder.flush() == 0
        recorder.record(sighting(mac="00-04-F2-00-00-03"))
    # Stopping wrote the last one.
    assert [e.data["phones"] for e in flushed] == [2, 1]
    with Store.open(tmp_path) as store:
        phones = {p.mac: p for p in store.phones()}
    assert sorted(phones) == ["00-04-F2-00-00-01", "00-04-F2-00-00-02", "00-04-F2-00-00-03"]
    latest = phones["00-04-F2-00-00-01"]
    assert (latest.version, latest.last_seen) == (APPROVED, "2026-06-01T12:00:01+00:00")
    assert latest.last_user == "alice@contoso.test"  # kept from the earlier sighting


async def test_the_same_sighting_again_is_kept_once_and_again_after_a_flush(
    tmp_path: Path,
) -> None:
    async with InventoryRecorder(tmp_path, interval=3600) as recorder:
        seen = sighting()
        recorder.record(seen)
        recorder.record(sighting())  # an equal one: a phone repeating its check
        assert recorder.pending == 1
        assert await recorder.flush() == 1
        recorder.record(seen)  # written already, and seen again: pending again
        assert recorder.pending == 1
        assert await recorder.flush() == 1


async def test_a_flush_the_store_refuses_is_kept_for_the_next_one(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    async with InventoryRecorder(tmp_path, interval=3600, busy_timeout=0.05) as recorder:
        recorder.record(sighting(version=OLD, user="bob@contoso.test"))
        holder = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            assert await recorder.flush() == 0
            assert recorder.pending == 1
            recorder.record(sighting(version=APPROVED, seen=NOW + timedelta(seconds=5)))
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert await recorder.flush() == 1
    with Store.open(tmp_path) as store:
        [record] = store.phones()
    assert (record.version, record.last_user) == (APPROVED, "bob@contoso.test")


# --- over the wire ----------------------------------------------------------------------------


CHECK_BODY = """<DeviceUpdateRequest>
  <DeviceType>UCPhone</DeviceType><Vendor>{kind.vendor}</Vendor><Model>{kind.model}</Model>
  <Revision>A</Revision><Locale>ENU</Locale>
  <MacAddress>{mac}</MacAddress><SerialNumber>{serial}</SerialNumber>
  <Modules><Module name="CPE.nbt" version="{version}"/></Modules>{user}
</DeviceUpdateRequest>"""


def check_body(
    kind: DeviceKind, mac: str, serial: str, version: str, user: str | None = None
) -> bytes:
    user_xml = f"<LastSignedInUser>{user}</LastSignedInUser>" if user else ""
    return CHECK_BODY.format(
        kind=kind, mac=mac, serial=serial, version=version, user=user_xml
    ).encode()


class Connection:
    """One HTTPS connection from a chosen source address (kept alive, as NTLM needs)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(
        cls, address: tuple[str, int], host: str, context: ssl.SSLContext, source: str
    ) -> Connection:
        reader, writer = await asyncio.open_connection(
            *address, ssl=context, server_hostname=host, local_addr=(source, 0)
        )
        return cls(reader, writer, host)

    async def post(
        self, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str]]:
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        answer = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        await self.reader.readexactly(int(answer.get("content-length", "0")))
        return int(status_line.split()[1]), answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def check(
    pool: ServicePool,
    context: ssl.SSLContext,
    body: bytes,
    *,
    server: str = "fe01",
    source: str = INSIDE_PHONE,
    user: tuple[str, str] | None = None,
) -> None:
    """An update check as a phone makes it: inside to a front end, or outside with NTLM."""
    if user is None:
        site = pool.server(server).internal
        assert site is not None
        host = pool.config.front_end(server).pool  # inside phones name the pool
        conn = await Connection.open(site.address, host, context, source)
        path = CHECK
    else:
        assert pool.edge is not None
        conn = await Connection.open(
            pool.edge.address, pool.config.edge.external_web, context, source
        )
        path = EXT_CHECK
    try:
        headers: dict[str, str] = {}
        if user is not None:
            client = spnego.client(*user, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
            negotiate = client.step()
            assert negotiate is not None
            status, answer = await conn.post(path, headers={"Authorization": ntlm(negotiate)})
            assert status == 401
            token = client.step(base64.b64decode(answer["www-authenticate"][5:]))
            assert token is not None
            headers = {"Authorization": ntlm(token)}
        status, answer = await conn.post(path, body, headers)
        assert status == 200, answer.get("x-ms-diagnostics")
    finally:
        await conn.close()


def ntlm(token: bytes) -> str:
    return "NTLM " + base64.b64encode(token).decode()


@pytest.fixture(scope="module")
def service_config(pki_dir: Path) -> LabConfig:
    config = default_config().with_ports(internal=0, external=0, edge=0).with_pki_dir(pki_dir)
    LabPKI(config).ensure()
    return config


@pytest.fixture(scope="module")
def client_context(service_config: LabConfig) -> ssl.SSLContext:
    return LabPKI(service_config).client_context()


@dataclass
class Running:
    """A running pool with its inventory recorder, its store and its wall clock."""

    pool: ServicePool
    inventory: InventoryRecorder
    store: Store
    clock: Clock


@pytest.fixture
async def running(service_config: LabConfig, tmp_path: Path) -> AsyncIterator[Running]:
    state = tmp_path / "state"
    add_rules(state, service_config, {CX600: NOW - timedelta(days=90)})
    clock = Clock()
    firewall = FirewallPolicy(service_config.inside, service_config.outside)
    async with ServicePool(
        service_config, state, firewall=firewall, pki=LabPKI(service_config), now=clock
    ) as pool:
        assert pool.inventory is not None
        assert pool.store is not None
        yield Running(pool, pool.inventory, pool.store, clock)


async def test_checks_create_and_update_the_record_of_a_phone(
    running: Running, client_context: ssl.SSLContext
) -> None:
    pool, inventory, store, clock = running.pool, running.inventory, running.store, running.clock
    mac, serial = "00-04-F2-00-00-01", "CX6A000001"
    await check(pool, client_context, check_body(CX600, "0004f2000001", serial, OLD))
    assert await inventory.flush() == 1
    first = NOW.isoformat(timespec="seconds")
    assert store.phones() == [
        PhoneRecord(
            mac, serial, CX600, OLD, INSIDE_PHONE, "inside", "fe01", first, first, None, POOL01
        )
    ]

    clock.at = NOW + timedelta(hours=3)
    body = check_body(CX600, mac, serial, APPROVED, user="alice@contoso.test")
    await check(pool, client_context, body, server="fe02", source=OTHER_INSIDE_PHONE)
    clock.at = NOW + timedelta(hours=4)
    await check(pool, client_context, check_body(CX600, mac, serial, APPROVED), server="fe02")
    # Outside, through the edge, signed in with NTLM.
    hp = check_body(HP4120, "00-04-F2-00-00-09", "HPA000009", OLD, user="bob@contoso.test")
    await check(
        pool, client_context, hp, source=OUTSIDE_PHONE, user=("CONTOSO\\bob", "Summer2026!")
    )
    assert await inventory.flush() == 2
    later = clock.at.isoformat(timespec="seconds")
    records = {p.mac: p for p in store.phones()}
    assert records[mac] == PhoneRecord(
        mac, serial, CX600, APPROVED, INSIDE_PHONE, "inside", "fe02", first, later,
        "alice@contoso.test", POOL01,
    )  # fmt: skip
    outside = records["00-04-F2-00-00-09"]
    # The front end sees the edge as its peer.
    assert (outside.zone, outside.address) == ("outside", str(pool.config.edge.address))
    assert (outside.kind, outside.last_user) == (HP4120, "bob@contoso.test")
    assert (outside.server, outside.pool) == ("fe01", POOL01)  # the edge publishes pool01

    # A phone at the Standard Edition server is measured against se01's rules, which have
    # none for its kind (the rules are pool01's).
    se01_phone = check_body(CX600, "00-04-F2-00-00-0A", "CX6A00000A", OLD)
    await check(pool, client_context, se01_phone, server="se01")
    assert await inventory.flush() == 1
    at_se01 = next(p for p in store.phones() if p.mac == "00-04-F2-00-00-0A")
    assert (at_se01.server, at_se01.pool) == ("se01", SE01)

    statuses = {s.phone.mac: s for s in read_inventory(store, clock.at)}
    assert (statuses[mac].approved, statuses[mac].flags) == (APPROVED, ())
    assert statuses["00-04-F2-00-00-09"].flags == ()  # no rule for the HP4120
    assert (statuses["00-04-F2-00-00-0A"].approved, statuses["00-04-F2-00-00-0A"].flags) == (
        None,
        (),
    )


async def test_a_repeated_check_is_seen_again_with_what_changed(
    running: Running, client_context: ssl.SSLContext
) -> None:
    pool, inventory, store, clock = running.pool, running.inventory, running.store, running.clock
    body = check_body(CX600, "00-04-F2-00-00-01", "CX6A000001", OLD)
    await check(pool, client_context, body)
    await check(pool, client_context, body)  # the same second: the same sighting
    assert inventory.pending == 1
    await check(pool, client_context, body, source=OTHER_INSIDE_PHONE)
    assert await inventory.flush() == 1
    [record] = store.phones()
    assert record.address == OTHER_INSIDE_PHONE
    await check(pool, client_context, body)  # back at its first address
    assert await inventory.flush() == 1
    clock.at = NOW + timedelta(seconds=1)
    await check(pool, client_context, body)
    assert await inventory.flush() == 1
    [record] = store.phones()
    assert (record.address, record.last_seen) == (INSIDE_PHONE, "2026-06-01T12:00:01+00:00")


async def test_sightings_are_written_within_the_flush_interval(
    service_config: LabConfig, client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    firewall = FirewallPolicy(service_config.inside, service_config.outside)
    async with ServicePool(
        service_config,
        tmp_path,
        firewall=firewall,
        pki=LabPKI(service_config),
        inventory_interval=0.05,
    ) as pool:
        flushed: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        pool.events.subscribe(
            lambda e: (
                flushed.set_result(e)
                if e.kind == "inventory.flushed" and not flushed.done()
                else None
            )
        )
        await check(pool, client_context, check_body(CX500, "00-04-F2-00-00-05", "CX5A05", OLD))
        event = await flushed  # nobody called flush
        assert event.data == {"phones": 1}
        assert pool.store is not None
        assert [p.mac for p in pool.store.phones()] == ["00-04-F2-00-00-05"]


async def run_cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lab.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "220"},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_lab_phones_lists_the_inventory_with_its_flags(
    service_config: LabConfig, client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    # `lab phones` judges at the real current time, so approvals are set relative to it.
    now = datetime.now(UTC)
    add_rules(
        tmp_path,
        service_config,
        {
            CX600: now - timedelta(days=61),
            CX3000: now - timedelta(days=59),
            CX500: now - timedelta(days=200),
        },
    )
    phones = [
        (CX600, "00-04-F2-00-00-01", OLD),  # behind for more than the support window
        (CX3000, "00-04-F2-00-00-02", OLD),  # behind, still within it
        (CX500, "00-04-F2-00-00-03", APPROVED),  # on the approved version
        (HP4120, "00-04-F2-00-00-04", OLD),  # no rule
    ]
    firewall = FirewallPolicy(service_config.inside, service_config.outside)
    async with ServicePool(
        service_config, tmp_path, firewall=firewall, pki=LabPKI(service_config)
    ) as pool:
        for number, (kind, mac, version) in enumerate(phones):
            serial = f"SN{number:04d}"
            await check(pool, client_context, check_body(kind, mac, serial, version))
    # Stopping the service flushed what it had gathered.

    listed = json.loads(await run_cli("phones", "--json", "--state-dir", str(tmp_path)))
    by_mac = {entry["mac"]: entry for entry in listed}
    assert {mac: by_mac[mac]["flags"] for _, mac, _ in phones} == {
        "00-04-F2-00-00-01": ["not-approved", "left-behind"],
        "00-04-F2-00-00-02": ["not-approved"],
        "00-04-F2-00-00-03": [],
        "00-04-F2-00-00-04": [],
    }
    first = by_mac["00-04-F2-00-00-01"]
    assert {k: first[k] for k in ("model", "version", "approved", "zone", "server")} == {
        "model": "CX600",
        "version": OLD,
        "approved": APPROVED,
        "zone": "inside",
        "server": "fe01",
    }
    assert first["pool"] == POOL01
    assert by_mac["00-04-F2-00-00-04"]["approved"] is None

    table = await run_cli("phones", "--state-dir", str(tmp_path))
    assert "00-04-F2-00-00-01" in table
    assert "left-behind" in table
    assert table.count("not-approved") == 2

    # A running lab keeps its own clock (run.json): the support window runs in lab time.
    # Three lab days on, the CX3000 phone is out of it too.
    ahead = now + timedelta(days=3)
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),  # alive: this process stands in for the lab's
                "clock": {"start": ahead.isoformat(), "at": time.time(), "scale": 1.0},
            }
        )
    )
    listed = json.loads(await run_cli("phones", "--json", "--state-dir", str(tmp_path)))
    assert {entry["mac"]: entry["flags"] for entry in listed}["00-04-F2-00-00-02"] == [
        "not-approved",
        "left-behind",
    ]


async def test_lab_phones_says_when_no_phone_was_seen(tmp_path: Path) -> None:
    assert "no phones seen yet" in await run_cli("phones", "--state-dir", str(tmp_path))
    assert json.loads(await run_cli("phones", "--json", "--state-dir", str(tmp_path))) == []


def test_the_inventory_clock_is_utc_and_its_stamps_are_to_the_second() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after
    stamped = sighting(seen=datetime(2026, 11, 22, 10, 0, 0, 999_999, tzinfo=UTC)).record()
    assert stamped.last_seen == "2026-11-22T10:00:00+00:00"


def test_a_device_kind_hashes_as_an_equal_kind_does() -> None:
    kind = phone_model("CX600").kind()
    twin = DeviceKind(kind.device_type, kind.vendor, kind.model, kind.revision, kind.locale)
    other = DeviceKind(kind.device_type, kind.vendor, kind.model, kind.revision, "DEU")
    assert hash(kind) == hash(twin)
    assert {kind: 1}[twin] == 1
    assert other not in {kind, twin}
    assert len({kind, twin, other}) == 2
