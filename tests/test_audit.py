"""The audit log: header once, one flushed line per record, a file per server per day."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.audit import COLUMNS, AuditLog, AuditRecord, csv_line, now_iso, read_audit
from lab.events import Event, EventBus


def record(time: str, decision: str, **extra: str) -> AuditRecord:
    return AuditRecord(
        time=time,
        server="fe01",
        client_address="127.10.0.100",
        site="internal",
        path="/RequestHandler/ucdevice.upx",
        status=200,
        decision=decision,
        **extra,
    )


def test_lines_are_written_at_once_and_roll_over_by_day(tmp_path: Path) -> None:
    events = EventBus()
    seen: list[Event] = []
    events.subscribe(seen.append)
    log = AuditLog("fe01", tmp_path, events)
    log.write(
        record(
            "2026-11-21T23:59:59.000Z",
            "none",
            mac="00-04-F2-00-00-01",
            reason='no rule, quoted "text", with comma',
        )
    )
    first = tmp_path / "RequestHandlerAuditLog_fe01_20261121.log"
    # Readable before close: every line is flushed as it is written.
    rows = read_audit(first)
    assert rows[0]["mac"] == "00-04-F2-00-00-01"
    assert rows[0]["reason"] == 'no rule, quoted "text", with comma'
    log.write(record("2026-11-22T00:00:01.000Z", "update", modules_returned="CPE.nbt 4.0.1"))
    log.write(record("2026-11-22T00:00:02.000Z", "none"))
    log.close()
    second = tmp_path / "RequestHandlerAuditLog_fe01_20261122.log"
    assert [r["decision"] for r in read_audit(second)] == ["update", "none"]
    assert second.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [e.kind for e in seen] == ["audit"] * 3
    assert seen[1].data["modules_returned"] == "CPE.nbt 4.0.1"


def test_reopening_appends_without_a_second_header(tmp_path: Path) -> None:
    for decision in ("a", "b"):
        log = AuditLog("fe02", tmp_path)
        log.write(record("2026-11-22T10:00:00.000Z", decision))
        log.close()
    path = tmp_path / "RequestHandlerAuditLog_fe02_20261122.log"
    assert [r["decision"] for r in read_audit(path)] == ["a", "b"]
    assert path.read_text().count("time,server") == 1


@given(st.lists(st.text(max_size=12), min_size=len(COLUMNS) - 1, max_size=len(COLUMNS) - 1))
def test_the_fast_line_is_exactly_what_csv_writer_writes(values: list[str]) -> None:
    fields = dict(zip([c for c in COLUMNS if c != "status"], values, strict=True))
    record = AuditRecord(status=200, **fields)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [str(getattr(record, column)) for column in COLUMNS]
    )
    assert csv_line(record) == buffer.getvalue()


@given(
    st.lists(
        st.lists(st.text(max_size=8), min_size=len(COLUMNS) - 1, max_size=len(COLUMNS) - 1),
        min_size=1,
        max_size=6,
    )
)
def test_every_written_line_is_the_records_csv_line(rows: list[list[str]]) -> None:
    # Lines are written as the time and a remembered rest: whatever the fields (a time that
    # needs quoting included), and however often a rest repeats, the file holds csv_line.
    records = [record("2026-11-22T10:00:00.000Z", "none")]  # opens the day's file
    for values in rows:
        fields = dict(zip([c for c in COLUMNS if c != "status"], values, strict=True))
        fields["time"] = "2026-11-22" + fields["time"]
        records += [AuditRecord(status=200, **fields)] * 2
    with tempfile.TemporaryDirectory() as directory:
        log = AuditLog("fe01", Path(directory))
        for item in records:
            log.write(item)
        log.close()
        written = (Path(directory) / "RequestHandlerAuditLog_fe01_20261122.log").read_bytes()
    header = ",".join(COLUMNS) + "\n"
    assert written.decode() == header + "".join(csv_line(item) for item in records)


def test_a_repeated_check_gets_its_own_time_each_line(tmp_path: Path) -> None:
    log = AuditLog("fe01", tmp_path)
    for second in range(3):
        log.write(record(f"2026-11-22T10:00:0{second}.000Z", "4.0.7577.4398"))
    rows = read_audit(tmp_path / "RequestHandlerAuditLog_fe01_20261122.log")
    assert [r["time"] for r in rows] == [f"2026-11-22T10:00:0{s}.000Z" for s in range(3)]
    assert {r["decision"] for r in rows} == {"4.0.7577.4398"}


def test_now_iso_is_the_current_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([1_795_000_000.0004, 1_795_000_000.0009, 1_795_000_000.9991, 1_795_000_001.25])
    monkeypatch.setattr("lab.audit.time", SimpleNamespace(time=lambda: next(ticks)))
    assert [now_iso() for _ in range(4)] == [
        "2026-11-18T11:06:40.000Z",
        "2026-11-18T11:06:40.000Z",
        "2026-11-18T11:06:40.999Z",
        "2026-11-18T11:06:41.250Z",
    ]


def _fixed_time(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr("lab.audit.time", SimpleNamespace(time=lambda: seconds))


def test_a_repeat_writes_the_same_line_at_the_current_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog("fe01", tmp_path)
    first = record("2026-11-18T11:06:40.000Z", "4.0.7577.4398", mac="00-04-F2-00-00-01")
    repeat = log.write(first)
    assert repeat is not None
    assert log.write(first) is repeat  # one per remembered line
    _fixed_time(monkeypatch, 1_795_000_000.25)
    repeat()
    _fixed_time(monkeypatch, 1_795_000_001.5)
    repeat()
    rows = read_audit(tmp_path / "RequestHandlerAuditLog_fe01_20261118.log")
    assert [r["time"] for r in rows] == [
        "2026-11-18T11:06:40.000Z",
        "2026-11-18T11:06:40.000Z",
        "2026-11-18T11:06:40.250Z",
        "2026-11-18T11:06:41.500Z",
    ]
    assert all({**r, "time": ""} == {**rows[0], "time": ""} for r in rows)


def test_a_repeat_on_a_new_day_opens_that_days_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog("fe01", tmp_path)
    repeat = log.write(record("2026-11-18T23:59:59.000Z", "none"))
    assert repeat is not None
    _fixed_time(monkeypatch, 1_795_046_400.0)  # 2026-11-19T00:00:00Z
    repeat()
    log.close()
    rows = read_audit(tmp_path / "RequestHandlerAuditLog_fe01_20261119.log")
    assert [(r["time"], r["decision"]) for r in rows] == [("2026-11-19T00:00:00.000Z", "none")]


def test_a_repeat_publishes_when_someone_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = EventBus()
    log = AuditLog("fe01", tmp_path, events)
    repeat = log.write(record("2026-11-18T11:06:40.000Z", "none"))
    assert repeat is not None
    with events.stream() as stream:
        _fixed_time(monkeypatch, 1_795_000_002.0)
        repeat()
        [event] = stream.pending()
    assert event.kind == "audit"
    assert event.data["time"] == "2026-11-18T11:06:42.000Z"
    assert event.data["decision"] == "none"


def test_a_time_that_needs_quoting_gets_no_repeat(tmp_path: Path) -> None:
    log = AuditLog("fe01", tmp_path)
    log.write(record("2026-11-18T11:06:40.000Z", "none"))  # opens the day's file
    assert log.write(record('2026-11-18T11:06:40,"1"', "none")) is None
