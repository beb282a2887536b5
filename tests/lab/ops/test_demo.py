"""`lab demo` (what `make demo` runs): a fleet from the config updates as its entries say.

In-process runs put the phones on the loop's time under looptime (the same code path as a
real run, with exact phone times); one run is the `lab demo` command itself, as a process
on a scaled clock, with a config on free ports.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from rich.console import Console

from emulator import LogCode, to_datetime
from emulator.models import get_model
from emulator.phonelog import LogEntry, LogLevel, PhoneLog
from lab.cli import main
from lab.errors import LabStateError
from lab.net.config import FleetPhone, LabConfig, default_text
from lab.ops.demo import (
    APPROVED,
    CALL_AFTER,
    CALL_LENGTH,
    PENDING,
    STAGGER,
    STATE_MARKER,
    DemoResult,
    PhoneOutcome,
    prepare_state_dir,
    run_demo,
)
from lab.ops.harness import FLASH, IDLE_WAIT, RunningLab
from lab.service.audit import audit_time

SMALL_IMAGE = 16 * 1024
"""In-process runs build their cabs with small images: building is real time."""


def factory(model: str) -> str:
    return get_model(model).factory_version


DEFAULT_FLEET_ENDS = [
    ("#1 CX600", f"{APPROVED} (approved) via DNS discovery"),
    ("#2 CX3000", f"{APPROVED} (approved) via in-band, internal"),
    ("#3 HP4120", f"refused (HTTP 403), kept {factory('HP4120')}"),
    ("#4 6725ip", f"{APPROVED} (approved) via in-band, edge + NTLM"),
    ("#5 CX500", f"{PENDING} (pending) via DNS discovery"),
    ("#6 CX700", f"{APPROVED} (approved) via DNS discovery; restart waited for the call"),
]
"""What each phone of lab/default.toml's fleet must end as, in the summary's words."""


def times(phone: PhoneOutcome, code: LogCode) -> list[float]:
    return [entry.time for entry in phone.log if entry.code is code]


async def demo(
    config: LabConfig,
    state: Path,
    before_phones: Callable[[RunningLab], None] | None = None,
) -> tuple[DemoResult, str]:
    """Run the demo on the loop's time; its result and what it printed (not a terminal)."""
    out = io.StringIO()
    result = await run_demo(
        config,
        state,
        Console(file=out, width=250),
        scale=None,
        image_size=SMALL_IMAGE,
        before_phones=before_phones,
    )
    return result, out.getvalue()


def narration(text: str, phone: str) -> list[str]:
    """The narration lines about ``phone`` (``#3 HP4120``)."""
    return [line for line in text.splitlines() if line[10:].startswith(f"{phone} ")]


@pytest.mark.looptime
async def test_the_default_fleet_updates_as_each_entry_says_and_the_story_is_told(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    result, text = await demo(lab_config, tmp_path / "state")

    assert result.ok, text
    assert [(p.label, p.expected) for p in result.phones] == DEFAULT_FLEET_ENDS
    assert [p.observed for p in result.phones] == [end for _, end in DEFAULT_FLEET_ENDS]
    assert "\x1b" not in text  # not a terminal: plain lines, no live table
    chapters = [text.index(f"\n{n}. ") for n in range(1, 6)]
    assert chapters == sorted(chapters)

    # The administrator's part, narrated: one rule per model, in the one pool that serves
    # every demo phone (as Import-CsDeviceUpdate writes a pool's rules).
    assert (
        "imported it into pool01.contoso.test (the pool that serves every demo phone; "
        f"se01.contoso.test gets none): 6 rules now hold {APPROVED} pending"
    ) in text
    assert (
        f"approved {APPROVED} on 6 rules: phones of these models get it at their next check "
        "(at power-on, at sign-in, every 24 hours)"
    ) in text
    assert f"left {PENDING} pending: only test devices get it" in text
    assert "named test device 00-04-F2-10-00-05: #5 CX500" in text
    # The log line that explains each turn.
    assert any(
        "signed in as alice@contoso.test; in-band provisioning: internal URL" in line
        for line in narration(text, "#2 CX3000")
    )
    assert any(
        "denied the update check: HTTP 403" in line and "need a signed-in user" in line
        for line in narration(text, "#3 HP4120")
    )
    assert any(
        f"offers an update: {factory('CX500')} -> {PENDING}" in line
        for line in narration(text, "#5 CX500")
    )
    busy = narration(text, "#6 CX700")
    assert any("call started; restart held: a call is in progress" in line for line in busy)
    assert any("call ended; phone in use: the restart waits until" in line for line in busy)

    # Phone times are exact on loop time: plugged in STAGGER apart, restarts five minutes
    # after the download was verified (installing included), the busy phone's only after
    # its call.
    plugged = [times(p, LogCode.POWER_ON)[-1] for p in result.phones]
    assert plugged == [plugged[0] + k * STAGGER for k in range(6)]
    for phone in result.phones[:2] + result.phones[3:5]:
        (verified,) = times(phone, LogCode.IMAGE_VERIFIED)
        (installed,) = times(phone, LogCode.INSTALLED)
        assert installed == verified + FLASH
        assert times(phone, LogCode.RESTARTING) == [verified + IDLE_WAIT]
    cx700 = result.phones[5]
    (installed,) = times(cx700, LogCode.INSTALLED)
    (held,) = times(cx700, LogCode.RESTART_HELD)
    (ended,) = times(cx700, LogCode.CALL_ENDED)
    assert (held, ended) == (installed + CALL_AFTER, installed + CALL_AFTER + CALL_LENGTH)
    assert times(cx700, LogCode.RESTARTING) == [ended + IDLE_WAIT]

    # The summary and the System Information screens.
    for label, end in DEFAULT_FLEET_ENDS:
        (row,) = [line for line in text.splitlines() if line.startswith(f"│ {label} ")]
        assert row.count(end) == 2
        assert row.endswith("│ yes │")
    for phone in result.phones:
        version = phone.observed.split(" ")[0] if phone.observed[0].isdigit() else None
        assert f"Current version: {version or factory(phone.model)} " in text
    assert text.count("│ System Information") == 6
    assert "Every phone ended as it should." in text
    assert result.as_dict()["ok"] is True

    # One phone from both ends of the wire, on the lab's one clock: each of its checks was
    # written by a front end at the phone's time of it (fake time: to the millisecond).
    assert "#1 CX600, from both ends of the wire" in text
    first = result.phones[0]
    checked = [r.time for r in first.requests if r.path.endswith("ucdevice.upx")]
    began = [audit_time(to_datetime(t)) for t in times(first, LogCode.CHECKING)]
    assert checked
    assert checked == began
    for when in checked:
        assert when[11:23] in text


@pytest.mark.looptime
async def test_the_summary_judges_by_log_codes_and_facts_not_by_sentences(
    lab_config: LabConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every phone log line says only a placeholder; codes and facts stay. The summary must
    # come out the same, so an outcome that leaned on a sentence would fail here.
    add = PhoneLog.add

    def add_without_words(
        self: PhoneLog, time: float, level: LogLevel, topic: str, message: str, **coded: Any
    ) -> LogEntry:
        return add(self, time, level, topic, "(words for people only)", **coded)

    monkeypatch.setattr(PhoneLog, "add", add_without_words)
    result, text = await demo(lab_config, tmp_path / "state")

    assert result.ok, text
    assert [(p.label, p.observed) for p in result.phones] == DEFAULT_FLEET_ENDS
    assert all(e.message == "(words for people only)" for p in result.phones for e in p.log)


@pytest.mark.looptime
async def test_a_phone_that_cannot_end_as_it_should_fails_the_demo_and_is_named(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    result, text = await demo(
        lab_config,
        tmp_path / "state",
        before_phones=lambda lab: lab.tamper("CX600", APPROVED),
    )

    assert not result.ok
    assert [(p.label, p.observed) for p in result.phones if not p.ok] == [
        ("#1 CX600", f"stayed on {factory('CX600')}")
    ]
    assert "The demo did not come out as it should:" in text
    assert (
        f"#1 CX600: expected {APPROVED} (approved) via DNS discovery, ended as stayed on "
        f"{factory('CX600')}"
    ) in text
    assert f"update to {APPROVED} refused" in text  # the phone's own error line, quoted
    assert "Every phone ended as it should." not in text
    assert result.as_dict()["phones"][0]["ok"] is False


@pytest.mark.looptime
async def test_a_config_with_another_fleet_drives_the_demo(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    fleet = (
        FleetPhone("HP4110", "outside", user="alice", test_device=True, count=2),
        FleetPhone("CX600", "inside", user="bob", busy=True),
    )
    result, text = await demo(dataclasses.replace(lab_config, fleet=fleet), tmp_path / "state")

    assert result.ok, text
    assert [(p.label, p.mac, p.user, p.observed) for p in result.phones] == [
        (
            "#1 HP4110",
            "3C-D9-2B-00-00-01",
            "alice@contoso.test",
            f"{PENDING} (pending) via in-band, edge + NTLM",
        ),
        (
            "#2 HP4110",
            "3C-D9-2B-00-00-02",
            "alice@contoso.test",
            f"{PENDING} (pending) via in-band, edge + NTLM",
        ),
        (
            "#3 CX600",
            "00-04-F2-00-00-03",
            "bob@contoso.test",
            f"{APPROVED} (approved) via in-band, internal; restart waited for the call",
        ),
    ]
    assert "named test device 3C-D9-2B-00-00-02" in text


def write_config(tmp_path: Path, **ports: int) -> Path:
    data = tomllib.loads(default_text())
    data["ports"] = {"dns": 0, "internal": 0, "external": 0, "edge": 0, "admin": 0, **ports}
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_lab_demo_as_a_command_exits_0_with_every_phone_as_it_should_be(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = [
        str(Path(sys.executable).with_name("lab")),
        "--config",
        str(write_config(tmp_path)),
        "demo",
        "--state-dir",
        str(state),
        "--scale",
        "600",
    ]
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=55)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "\x1b" not in out
    for label, end in DEFAULT_FLEET_ENDS:
        (row,) = [line for line in out.splitlines() if line.startswith(f"│ {label} ")]
        assert row.count(end) == 2, row
        assert row.endswith("│ yes │")
    assert "Every phone ended as it should." in out
    # The demo ran in the state directory it was given, with its own PKI and audit logs.
    assert (state / STATE_MARKER).is_file()
    assert (state / "certs").is_dir()
    assert list(state.glob("servers/*/AuditLogs/RequestHandlerAuditLog_*.log"))


def test_a_port_in_use_is_named_with_the_key_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.10.0.11", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, internal=port)
        code = main(["--config", str(config), "demo", "--state-dir", str(tmp_path / "state")])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"lab: port {port} on 127.10.0.11 (fe01's internal site: ports.internal in the config) "
        "is already in use."
    )
    assert "set ports.internal under [ports] (0 picks any free port)" in err


def test_the_demo_empties_only_a_state_directory_it_made(tmp_path: Path) -> None:
    lab_state = tmp_path / "lab-state"
    lab_state.mkdir()
    (lab_state / "store.sqlite3").write_text("a lab's store")
    with pytest.raises(LabStateError, match="holds files the demo did not make"):
        prepare_state_dir(lab_state)
    assert (lab_state / "store.sqlite3").read_text() == "a lab's store"

    state = prepare_state_dir(tmp_path / "demo" / "state")
    (state / "store.sqlite3").write_text("an earlier demo's store")
    assert prepare_state_dir(state) == state
    assert [p.name for p in state.iterdir()] == [STATE_MARKER]


@pytest.mark.parametrize("scale", ["0", "-5", "fast", "inf"])
def test_a_scale_that_is_not_a_positive_number_is_refused(
    scale: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--scale", scale])
    assert exit_info.value.code == 2
    assert f"argument --scale: {scale!r} is not a time scale (a number > 0)" in (
        capsys.readouterr().err
    )
