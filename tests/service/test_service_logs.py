"""Device log upload over real TLS: stored per server and device, within the configured
size, type and extension limits, atomically, with the device's cache limit and the front
end's total applied; NTLM outside. The daily clean-up on an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from service_helpers import INSIDE_PHONE, Phones, check_body, ntlm_request

from lab.events import Event
from lab.net.config import LabConfig, Limits
from lab.net.firewall import FirewallPolicy
from lab.net.pki import LabPKI
from lab.service import ServicePool
from lab.service.audit import AuditLog, AuditRecord
from lab.service.logs import LOG_BLOCK, LogCleanUp, log_store_path, next_clean_up
from lab.store.devconfig import DeviceUpdateConfig
from lab.store.store import Store

LOG = "/RequestHandler/ucdevicelog.upx"
EXT_LOG = "/RequestHandlerExt/ucdevicelog.upx"
CHECK = "/RequestHandler/ucdevice.upx"
MAC = "00-04-F2-00-00-01"
OTHER_MAC = "00-04-F2-00-00-02"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
STAMP = "20260301T120000.000000Z"


def query(file: str = "boot.clg", mac: str = "0004f2000001", log_type: str = "CELog") -> str:
    return f"{LOG}?type={log_type}&file={file}&mac={mac}"


def log_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class Clock:
    """The pool's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


@dataclass
class LogLab:
    """A pool on a fresh state directory, with what it audited and published."""

    pool: ServicePool
    state: Path
    phones: Phones
    clock: Clock
    audit: list[AuditRecord] = field(default_factory=list)
    uploads: list[Event] = field(default_factory=list)

    def folder(self, mac: str = MAC, server: str = "fe01") -> Path:
        return log_store_path(self.state, server) / mac

    def files(self, mac: str = MAC, server: str = "fe01") -> dict[str, bytes]:
        folder = self.folder(mac, server)
        if not folder.exists():
            return {}
        return {p.name: p.read_bytes() for p in folder.iterdir()}

    def settings(self, **values: str) -> None:
        """Change the device-update configuration as `lab config set` does: on another
        connection, then announced to the running service."""
        with Store.open(self.state) as store:
            store.set_settings(values)
        self.pool.refresh_store()

    async def upload(
        self, data: bytes, path: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        conn = await self.phones.inside()
        try:
            response = await conn.request("POST", path or query(), headers, data)
        finally:
            await conn.close()
        return response.status, response.header("x-ms-diagnostics") or "", response.body


@pytest.fixture
async def lab(
    service_config: LabConfig,
    firewall: FirewallPolicy,
    pki: LabPKI,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> AsyncIterator[LogLab]:
    state = tmp_path / "state"
    clock = Clock()
    audit: list[AuditRecord] = []
    async with ServicePool(
        service_config,
        state,
        firewall=firewall,
        pki=pki,
        on_request=audit.append,
        shutdown_timeout=1.0,
        now=clock,
    ) as pool:
        phones = Phones(pool, client_context)
        opened = LogLab(pool, state, phones, clock, audit)
        unsubscribe = pool.events.subscribe(
            lambda e: opened.uploads.append(e) if e.kind == "device.log" else None
        )
        try:
            yield opened
        finally:
            unsubscribe()
            await phones.close()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content, but the store's database."""
    found: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if not name.startswith("store.sqlite3"):
                found[os.path.join(dirpath, name)] = hashlib.sha256(
                    Path(dirpath, name).read_bytes()
                ).hexdigest()
    return found


async def test_a_celog_is_stored_at_its_device_path_with_the_exact_bytes(lab: LogLab) -> None:
    data = log_bytes(5000)
    status, diagnostics, body = await lab.upload(
        data, headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 200, diagnostics
    name = f"{STAMP}_boot.clg"
    assert body == f"stored {name} (5000 bytes)\n".encode()
    path = lab.state / "servers" / "fe01" / "DeviceLogs" / MAC / name
    assert path.read_bytes() == data
    assert lab.files() == {name: data}  # no temporary file left beside it
    assert lab.files(server="fe02") == {}

    [event] = lab.uploads
    assert event.data == {
        "server": "fe01",
        "mac": MAC,
        "type": "CELog",
        "file": "boot.clg",
        "status": 200,
        "reason": f"stored {name}",
        "stored": name,
        "size": 5000,
        "deleted": [],
        "evicted": [],
    }
    [record] = lab.audit
    assert (record.server, record.site, record.path, record.status) == (
        "fe01",
        "internal",
        LOG,
        200,
    )
    assert (record.client_address, record.mac) == (INSIDE_PHONE, MAC)
    assert record.reason == "CELog log boot.clg"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_log_over_max_log_file_size_is_refused_with_413(lab: LogLab, framing: str) -> None:
    lab.settings(MaxLogFileSize="2048")
    conn = await lab.phones.inside()
    if framing == "content-length":
        # Announced and never sent: only a refusal from the header can answer this.
        await conn.send("POST", query(), {"Content-Length": str(10 * 1024 * 1024)})
    else:
        # 3000 bytes in chunks and no last chunk: the refusal must come while streaming.
        await conn.send("POST", query(), {"Transfer-Encoding": "chunked"})
        for _ in range(3):
            conn.writer.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        await conn.writer.drain()
    async with asyncio.timeout(10):  # a server waiting for the body would never answer
        response = await conn.read_head()
    assert response.status == 413
    assert response.header("connection") == "close"
    diagnostics = response.header("x-ms-diagnostics") or ""
    assert diagnostics == '41301;reason="the log is larger than MaxLogFileSize (2048 bytes)"'
    await conn.close()
    assert lab.files() == {}
    [event] = lab.uploads
    assert (event.data["status"], event.data["stored"]) == (413, None)
    assert [r.status for r in lab.audit] == [413]

    # The server keeps serving, and a log within the limit is taken.
    status, diagnostics, _ = await lab.upload(log_bytes(2048))
    assert status == 200, diagnostics
    assert len(lab.files()) == 1


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        (query(log_type="Kernel"), "41501", "log type 'Kernel' is not accepted"),
        (query(file="boot.exe"), "41502", "the extension of 'boot.exe' is not accepted"),
        (query(file="bootclg"), "41502", "the extension of 'bootclg' is not accepted"),
    ],
)
async def test_types_and_extensions_the_configuration_refuses_get_415(
    lab: LogLab, path: str, code: str, words: str
) -> None:
    status, diagnostics, body = await lab.upload(log_bytes(100), path)
    assert status == 415
    assert diagnostics.startswith(f'{code};reason="')
    assert words in diagnostics
    assert words.encode() in body
    assert lab.files() == {}
    assert [e.data["status"] for e in lab.uploads] == [415]


async def test_the_accepted_types_are_read_from_the_store_at_each_upload(lab: LogLab) -> None:
    status, _, _ = await lab.upload(log_bytes(100), query(log_type="Watson", file="crash.dmp"))
    assert status == 200
    lab.settings(ValidLogFileTypes="CELog")
    status, diagnostics, _ = await lab.upload(
        log_bytes(100), query(log_type="Watson", file="crash.dmp")
    )
    assert status == 415
    assert "ValidLogFileTypes: CELog" in diagnostics


BAD_UPLOADS = [
    (query(file="../../../../escaped.clg"), "40002", "has path parts"),
    (query(file="..%2F..%2Fescaped.clg"), "40002", "has path parts"),
    (query(file="sub/inner.clg"), "40002", "has path parts"),
    (query(file="..%5Cescaped.clg"), "40002", "has path parts"),
    (query(file="C:escaped.clg"), "40002", "has path parts"),
    (query(file="%00.clg"), "40002", "has path parts"),
    (query(file=".."), "40002", "has path parts"),
    (query(file=".hidden.clg"), "40002", "not a plain file name"),
    (query(file="%252e%252e%252fescaped.clg"), "40002", "not a plain file name"),
    (query(file="a" * 200 + ".clg"), "40002", "not a plain file name"),
    (query(mac="00-04-F2-00-00"), "40001", "not a MAC address"),
    (query(mac="..%2F..%2Fetc"), "40001", "not a MAC address"),
    (f"{LOG}?type=CELog&file=boot.clg", "40001", "lacks its 'mac' parameter"),
    (f"{LOG}?file=boot.clg&mac={MAC}", "40001", "lacks its 'type' parameter"),
]


async def test_bad_macs_and_file_names_get_400_and_nothing_is_written(
    lab: LogLab, tmp_path: Path
) -> None:
    await lab.upload(log_bytes(10, seed=1))  # the device folder exists
    before = tree(tmp_path)
    for path, code, words in BAD_UPLOADS:
        status, diagnostics, _ = await lab.upload(b"not to be written", path)
        assert status == 400, path
        assert diagnostics.startswith(f'{code};reason="'), (path, diagnostics)
        assert words in diagnostics, (path, diagnostics)
    assert tree(tmp_path) == before
    assert not list(tmp_path.parent.rglob("escaped*"))
    assert len(lab.uploads) == 1  # refusals before a valid device are audited only
    assert [r.status for r in lab.audit] == [200] + [400] * len(BAD_UPLOADS)

    # The server keeps serving checks and logs.
    conn = await lab.phones.inside()
    assert (await conn.request("POST", CHECK, body=check_body())).status == 200
    status, _, _ = await lab.upload(log_bytes(10, seed=2))
    assert status == 200
    assert len(lab.files()) == 2


async def test_an_empty_log_is_refused(lab: LogLab) -> None:
    status, diagnostics, _ = await lab.upload(b"")
    assert status == 400
    assert "empty body" in diagnostics
    assert lab.files() == {}


async def test_a_cut_upload_leaves_nothing(lab: LogLab) -> None:
    cut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
    lab.pool.events.subscribe(
        lambda e: (
            cut.set_result(e)
            if e.kind == "device.log" and e.data["status"] == 0 and not cut.done()
            else None
        )
    )
    conn = await lab.phones.inside()
    # "100 Continue" comes once the request is routed: the handler is about to read.
    await conn.send("POST", query(), {"Content-Length": "5000", "Expect": "100-continue"})
    assert (await conn.read_head()).status == 100
    conn.writer.write(b"y" * 1000)
    await conn.writer.drain()
    conn.writer.transport.abort()
    event = await cut
    assert event.data["mac"] == MAC
    assert event.data["stored"] is None
    assert lab.folder().is_dir()
    assert list(lab.folder().iterdir()) == []

    status, _, _ = await lab.upload(log_bytes(100))
    assert status == 200


async def test_the_cache_limit_deletes_the_oldest_logs_of_that_device(lab: LogLab) -> None:
    lab.settings(MaxLogCacheLimit="2048")
    other = log_bytes(900, seed=9)
    status, _, _ = await lab.upload(other, query(mac=OTHER_MAC))
    assert status == 200
    sizes = {"a": 900, "b": 900, "c": 900, "d": 1500, "e": 3000}
    for minute, (name, size) in enumerate(sizes.items()):
        lab.clock.at = START.replace(minute=minute + 1)
        status, diagnostics, _ = await lab.upload(log_bytes(size), query(file=f"{name}.clg"))
        assert status == 200, diagnostics
    stamps = {name: f"20260301T12{minute + 1:02d}00.000000Z" for minute, name in enumerate(sizes)}
    deleted = {e.data["file"][0]: e.data["deleted"] for e in lab.uploads if e.data["mac"] == MAC}
    assert deleted == {
        "a": [],
        "b": [],  # 1800 bytes: under the limit
        "c": [f"{stamps['a']}_a.clg"],  # 2700: the oldest goes
        "d": [f"{stamps['b']}_b.clg", f"{stamps['c']}_c.clg"],  # 3300, then 2400
        "e": [f"{stamps['d']}_d.clg"],  # larger than the limit itself: kept, alone
    }
    assert lab.files() == {f"{stamps['e']}_e.clg": log_bytes(3000)}
    # Another device's folder is its own.
    assert list(lab.files(OTHER_MAC).values()) == [other]


async def test_outside_log_uploads_need_ntlm(lab: LogLab) -> None:
    data = log_bytes(4000, seed=3)
    anonymous = await lab.phones.outside()
    refused = await anonymous.request("POST", query(), body=data)
    assert refused.status == 401
    assert refused.header("www-authenticate") == "NTLM"
    assert (refused.header("x-ms-diagnostics") or "").startswith("40101;")
    await anonymous.close()

    for path in (query(), query().replace(LOG, EXT_LOG)):
        conn = await lab.phones.outside()
        stored = await ntlm_request(conn, "POST", path, "CONTOSO\\alice", "Passw0rd!", body=data)
        await conn.close()
        assert stored.status == 200, stored.header("x-ms-diagnostics")
    # Through the edge: the front ends of the pool it publishes (pool01).
    servers = [
        server
        for server in (fe.name for fe in lab.pool.config.edge_pool.front_ends)
        for content in lab.files(server=server).values()
        if content == data
    ]
    assert sorted(servers) == ["fe01", "fe02"]  # the edge spreads new connections
    external = [r for r in lab.audit if r.site == "external"]
    assert [r.status for r in external] == [401, 401, 200, 401, 200]
    assert [r.authenticated_user for r in external if r.status == 200] == ["alice@contoso.test"] * 2


async def test_a_temporary_file_a_killed_process_left_goes_at_the_next_upload(
    lab: LogLab,
) -> None:
    folder = lab.folder()
    folder.mkdir(parents=True)
    (folder / ".0123456789abcdef.part").write_bytes(b"half a log")
    status, _, _ = await lab.upload(log_bytes(100))
    assert status == 200
    assert list(lab.files()) == [f"{STAMP}_boot.clg"]


# -- the front end's total ---------------------------------------------------------------


@pytest.fixture
async def small_total(
    service_config: LabConfig,
    firewall: FirewallPolicy,
    pki: LabPKI,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> AsyncIterator[LogLab]:
    """A pool whose front ends keep 5 blocks (20,480 bytes) of device logs each."""
    config = dataclasses.replace(
        service_config, limits=Limits(device_logs_per_front_end=5 * LOG_BLOCK)
    )
    state = tmp_path / "state"
    clock = Clock()
    async with ServicePool(
        config, state, firewall=firewall, pki=pki, shutdown_timeout=1.0, now=clock
    ) as pool:
        phones = Phones(pool, client_context)
        opened = LogLab(pool, state, phones, clock)
        unsubscribe = pool.events.subscribe(
            lambda e: opened.uploads.append(e) if e.kind == "device.log" else None
        )
        try:
            yield opened
        finally:
            unsubscribe()
            await phones.close()


def mac(number: int) -> str:
    return f"00-04-F2-00-{number // 256:02X}-{number % 256:02X}"


def logs_on_disk(state: Path, server: str = "fe01") -> dict[str, int]:
    root = log_store_path(state, server)
    return {f"{p.parent.name}/{p.name}": p.stat().st_size for p in root.glob("*/*")}


async def test_the_front_end_total_deletes_its_oldest_logs_whatever_their_mac(
    small_total: LogLab,
) -> None:
    lab = small_total
    for number in range(8):
        lab.clock.at = START.replace(minute=number)
        status, diagnostics, _ = await lab.upload(log_bytes(3000), query(mac=mac(number)))
        assert status == 200, diagnostics
    # A log counts as one block at least: five fit, the three oldest went, first in first out.
    kept = logs_on_disk(lab.state)
    assert sorted(kept) == [f"{mac(n)}/20260301T12{n:02d}00.000000Z_boot.clg" for n in range(3, 8)]
    assert sum(kept.values()) <= 5 * LOG_BLOCK
    evicted = [e.data["evicted"] for e in lab.uploads]
    assert evicted == [[]] * 5 + [[f"{mac(n)}/{stamp_at(n)}_boot.clg"] for n in range(3)]
    # The folders of the devices whose logs all went are gone too.
    assert sorted(p.name for p in log_store_path(lab.state, "fe01").iterdir()) == [
        mac(n) for n in range(3, 8)
    ]
    # The other front end's logs are its own.
    assert logs_on_disk(lab.state, "fe02") == {}


async def test_a_log_larger_than_the_total_is_refused_and_the_others_stay(
    small_total: LogLab,
) -> None:
    lab = small_total
    status, _, _ = await lab.upload(log_bytes(100), query(mac=mac(1)))
    assert status == 200
    status, diagnostics, _ = await lab.upload(log_bytes(5 * LOG_BLOCK + 1), query(mac=mac(2)))
    assert status == 413
    assert "larger than what this front end keeps of device logs in all (20480 bytes)" in (
        diagnostics
    )
    assert list(logs_on_disk(lab.state)) == [f"{mac(1)}/{STAMP}_boot.clg"]
    # One that fits alone is taken, and the older log makes room for it.
    status, _, _ = await lab.upload(log_bytes(5 * LOG_BLOCK), query(mac=mac(2)))
    assert status == 200
    assert list(logs_on_disk(lab.state)) == [f"{mac(2)}/{stamp_at(0, 1)}_boot.clg"]


async def test_logs_stored_before_the_service_started_count_toward_the_total(
    small_total: LogLab,
) -> None:
    lab = small_total
    # Left by an earlier run: four blocks' worth, from 2025.
    earlier = lab.folder(mac(9))
    earlier.mkdir(parents=True)
    for day in range(1, 5):
        (earlier / f"202501{day:02d}T000000.000000Z_old.clg").write_bytes(log_bytes(LOG_BLOCK))
    for number in range(2):
        lab.clock.at = START.replace(minute=number)
        status, _, _ = await lab.upload(log_bytes(10), query(mac=mac(number)))
        assert status == 200
    # Six blocks at the second upload: the oldest of all goes.
    assert sorted(logs_on_disk(lab.state)) == [
        f"{mac(0)}/{stamp_at(0)}_boot.clg",
        f"{mac(1)}/{stamp_at(1)}_boot.clg",
        *(f"{mac(9)}/202501{day:02d}T000000.000000Z_old.clg" for day in range(2, 5)),
    ]
    assert lab.uploads[-1].data["evicted"] == [f"{mac(9)}/20250101T000000.000000Z_old.clg"]


def stamp_at(minute: int, tick: int = 0) -> str:
    """The stamp of a log stored at START's hour and ``minute`` (and ``tick`` µs after)."""
    return f"20260301T12{minute:02d}00.{tick:06d}Z"


# -- clean-up: LogCleanUpInterval at LogCleanUpTimeOfDay -----------------------------------


async def upload_at(lab: LogLab, at: datetime, device: str, file: str = "boot.clg") -> None:
    lab.clock.at = at
    status, diagnostics, _ = await lab.upload(log_bytes(100), query(mac=device, file=file))
    assert status == 200, diagnostics


async def test_clean_up_deletes_the_logs_older_than_the_interval(lab: LogLab) -> None:
    await upload_at(lab, START - timedelta(days=11), MAC, "old.clg")
    await upload_at(lab, START - timedelta(days=11), OTHER_MAC, "old.clg")
    await upload_at(lab, START - timedelta(days=9), MAC, "recent.clg")
    leftover = lab.folder() / ".0123456789abcdef.part"
    leftover.write_bytes(b"half a log")
    os.utime(leftover, ((START - timedelta(days=30)).timestamp(),) * 2)
    store = lab.pool.servers["fe01"].logs
    assert store is not None
    held = store.held_bytes

    deleted = await store.clean_up(START, timedelta(days=10))
    assert sorted(p.name for p in deleted) == [
        ".0123456789abcdef.part",
        "20260218T120000.000000Z_old.clg",
        "20260218T120000.000001Z_old.clg",
    ]
    assert list(lab.files()) == ["20260220T120000.000000Z_recent.clg"]
    assert not lab.folder(OTHER_MAC).exists()  # emptied, so removed
    assert store.held_bytes == held - 2 * LOG_BLOCK
    # A device whose folder went stores its next log as ever.
    await upload_at(lab, START, OTHER_MAC)
    assert list(lab.files(OTHER_MAC)) == [f"{STAMP}_boot.clg"]


@pytest.mark.parametrize(
    ("time_of_day", "now", "due"),
    [
        (None, START, datetime(2026, 3, 2, 0, 0, tzinfo=UTC)),
        ("03:30", START, datetime(2026, 3, 2, 3, 30, tzinfo=UTC)),
        ("13:05", START, datetime(2026, 3, 1, 13, 5, tzinfo=UTC)),
        ("12:00", START, datetime(2026, 3, 2, 12, 0, tzinfo=UTC)),  # strictly after now
    ],
)
def test_the_next_clean_up_is_at_the_time_of_day(
    time_of_day: str | None, now: datetime, due: datetime
) -> None:
    config = DeviceUpdateConfig(log_cleanup_time_of_day=time_of_day)
    assert next_clean_up(now, config) == due


async def test_the_daily_clean_up_runs_at_the_time_of_day_on_logs_and_audit_files(
    lab: LogLab, tmp_path: Path
) -> None:
    await upload_at(lab, START - timedelta(days=3), MAC, "a.clg")
    await upload_at(lab, START - timedelta(days=1), MAC, "b.clg")
    await upload_at(lab, START, MAC, "c.clg")
    audit = AuditLog("fe01", tmp_path / "audit")
    for day in ("2026-02-20", "2026-02-28", "2026-03-01"):
        audit.write(
            AuditRecord(
                time=f"{day}T12:00:00.000Z",
                server="fe01",
                client_address="",
                site="internal",
                path=LOG,
                status=200,
            )
        )
    lab.settings(LogCleanUpTimeOfDay="03:30", LogCleanUpInterval="2.")
    lab.clock.at = START

    # The clock moves only when the clean-up waits, by what it waits: no real time passes.
    waits: list[float] = []
    parked = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            parked.set()
            await asyncio.Future()  # the third wait lasts until the clean-up stops
        lab.clock.at += timedelta(seconds=seconds)

    runs: list[Event] = []
    lab.pool.events.subscribe(runs.append, kinds=("logs.cleaned_up",))
    stores = [server.logs for server in lab.pool.servers.values() if server.logs is not None]
    async with LogCleanUp(
        stores,
        [audit],
        lab.pool.context.device_config,
        now=lab.clock,
        sleep=sleep,
        events=lab.pool.events,
    ):
        async with asyncio.timeout(10):
            await parked.wait()
    audit.close()
    # 12:00 to 03:30 the next day, then a day.
    assert waits == [15.5 * 3600, 86400, 86400]
    assert [(r.data["device_logs"], r.data["audit_logs"]) for r in runs] == [(1, 1), (1, 1)]
    assert [r.data["keep_for"] for r in runs] == [2 * 86400] * 2
    assert list(lab.files()) == [f"{STAMP}_c.clg"]
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == [
        "RequestHandlerAuditLog_fe01_20260301.log"
    ]
