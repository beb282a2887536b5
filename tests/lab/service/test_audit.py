"""The audit log: header once, one flushed line per record, a file per server per day."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.events import Event, EventBus
from lab.service.audit import (
    COLUMNS,
    FIELD_MAX_FLOOR,
    AuditLog,
    AuditRecord,
    audit_field,
    audit_time,
    csv_line,
    read_audit,
)


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
        [audit_field(str(getattr(record, column))) for column in COLUMNS]
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
    # Whatever the fields (a time that needs quoting included), and however often a record
    # repeats, the file holds csv_line.
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


def test_audit_time_is_the_clocks_moment_in_utc_to_the_millisecond() -> None:
    moment = datetime(2026, 11, 18, 11, 6, 40, 999_700, tzinfo=UTC)
    assert audit_time(moment) == "2026-11-18T11:06:40.999Z"
    elsewhere = moment.astimezone(timezone(timedelta(hours=-5)))
    assert audit_time(elsewhere) == "2026-11-18T11:06:40.999Z"


def test_records_are_built_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        AuditRecord("2026-11-22T10:00:00.000Z", "fe01")  # type: ignore[call-arg]
    made = record("2026-11-22T10:00:00.000Z", "none")
    assert made.values() == tuple(made.as_dict().values())
    assert list(made.as_dict()) == list(COLUMNS)


# -- hostile fields: one request, one line ----------------------------------------------

FORGED = "CX600\r\n2026-11-18T11:06:41.000Z,fe01,127.10.0.1,internal,/forged,200\x00"


@given(st.text(max_size=40))
def test_any_text_is_one_line_that_reads_back_as_it_was(text: str) -> None:
    line = csv_line(record("2026-11-22T10:00:00.000Z", "none", model=text, reason=text))
    assert line.count("\n") == 1
    assert line.endswith("\n")
    assert not any(ch in line[:-1] for ch in "\r\n\x00\x85\u2028\u2029")
    [row] = csv.DictReader(io.StringIO(",".join(COLUMNS) + "\n" + line))
    assert unquote(row["model"]) == text


def test_control_characters_are_percent_encoded_and_read_back(tmp_path: Path) -> None:
    log = AuditLog("fe01", tmp_path)
    log.write(record("2026-11-22T10:00:00.000Z", "none", model=FORGED, reason="50% done"))
    log.close()
    path = tmp_path / "RequestHandlerAuditLog_fe01_20261122.log"
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # the header and the one request
    assert "CX600%0D%0A2026-11-18T11:06:41.000Z" in lines[1]
    assert lines[1].count("%00") == 1
    assert "50%25 done" in lines[1]
    [row] = read_audit(path)
    assert row["model"] == FORGED
    assert row["reason"] == "50% done"


def test_a_record_written_twice_with_control_characters_stays_one_line_each_time(
    tmp_path: Path,
) -> None:
    log = AuditLog("fe01", tmp_path)
    hostile = record("2026-11-18T11:06:40.000Z", "none", last_signed_in_user="a\nb\rc")
    log.write(hostile)
    log.write(hostile)
    log.close()
    lines = (tmp_path / "RequestHandlerAuditLog_fe01_20261118.log").read_text().splitlines()
    assert len(lines) == 3
    assert all(line.endswith(",a%0Ab%0Dc,") for line in lines[1:])


def test_a_field_over_the_cap_is_cut_with_a_marker(tmp_path: Path) -> None:
    modules = " ".join(f"CPE{i}.nbt:4.0.7577.{i}" for i in range(2000))  # about 50,000 chars
    log = AuditLog("fe01", tmp_path, field_max=200)
    log.write(record("2026-11-22T10:00:00.000Z", "none", installed_modules=modules))
    log.close()
    [row] = read_audit(tmp_path / "RequestHandlerAuditLog_fe01_20261122.log")
    written = row["installed_modules"]
    assert len(written) <= 200
    kept, marker = written.split("...[+")
    assert modules.startswith(kept)
    assert int(marker.rstrip("]")) == len(modules) - len(kept)
    assert row["decision"] == "none"  # the other fields are whole


def test_a_cut_never_splits_an_escape() -> None:
    for width in range(FIELD_MAX_FLOOR, FIELD_MAX_FLOOR + 4):
        cut = audit_field("\n" * 100, width)
        kept = cut.split("...")[0]
        assert len(cut) <= width
        assert kept == "%0A" * (len(kept) // 3)


def test_the_cap_never_goes_below_its_floor() -> None:
    assert AuditLog("fe01", Path("unused"), field_max=1).field_max == FIELD_MAX_FLOOR


def test_the_authenticated_user_is_the_last_column(tmp_path: Path) -> None:
    assert COLUMNS[-2:] == ("last_signed_in_user", "authenticated_user")
    log = AuditLog("fe01", tmp_path)
    log.write(record("2026-11-22T10:00:00.000Z", "none", authenticated_user="CONTOSO\\alice"))
    log.close()
    path = tmp_path / "RequestHandlerAuditLog_fe01_20261122.log"
    assert path.read_text().splitlines()[0].endswith(",last_signed_in_user,authenticated_user")
    assert read_audit(path)[0]["authenticated_user"] == "CONTOSO\\alice"


# -- clean-up -------------------------------------------------------------------------


def test_clean_up_deletes_the_days_older_than_the_interval(tmp_path: Path) -> None:
    log = AuditLog("fe01", tmp_path)
    for day in ("2026-11-01", "2026-11-08", "2026-11-09", "2026-11-18"):
        log.write(record(f"{day}T12:00:00.000Z", "none"))
    other = tmp_path / "RequestHandlerAuditLog_fe02_20261101.log"
    other.write_text("another server's\n")
    stray = tmp_path / "notes.txt"
    stray.write_text("not a log\n")
    # Ten days before 2026-11-19T00:00 is 2026-11-09T00:00: the 8th ended then, the 9th not.
    now = datetime(2026, 11, 19, 0, 0, tzinfo=UTC)
    deleted = log.clean_up(now, timedelta(days=10))
    assert [p.name for p in deleted] == [
        "RequestHandlerAuditLog_fe01_20261101.log",
        "RequestHandlerAuditLog_fe01_20261108.log",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "RequestHandlerAuditLog_fe01_20261109.log",
        "RequestHandlerAuditLog_fe01_20261118.log",
        "RequestHandlerAuditLog_fe02_20261101.log",
        "notes.txt",
    ]
    # The day being written stays, whatever the clock says.
    assert log.clean_up(now + timedelta(days=400), timedelta(days=1)) == [
        tmp_path / "RequestHandlerAuditLog_fe01_20261109.log"
    ]
    log.write(record("2026-11-18T12:00:01.000Z", "none"))
    log.close()
