"""The store commands of the `lab` CLI: a whole session, JSON output, and one-line refusals."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cabarchive import CabArchive

from lab.cli import main
from lab.cli import update as update_cli
from lab.cli.common import STDOUT_CLOSED
from lab.net.config import default_text
from lab.store.cab import pack_cab
from lab.store.store import MIGRATIONS, STORE_FILE

V1, V2 = "4.0.7577.4372", "4.0.7577.4400"
POOL01, SE01 = "pool01.contoso.test", "se01.contoso.test"


class Lab:
    """Runs `lab` in-process against one state directory and config, capturing output."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "lab.toml"
        certs = (tmp_path / "certs").as_posix()
        self.config.write_text(default_text().replace('dir = "certs"', f'dir = "{certs}"'))
        self._capsys = capsys

    def run(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(["--config", str(self.config), "--state-dir", str(self.state), *argv])
        out, err = self._capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self.run(*argv)
        assert (code, err) == (0, ""), err
        return out

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok(*argv, "--json"))

    def refused(self, *argv: str) -> str:
        code, out, err = self.run(*argv)
        assert code == 2, (out, err)
        assert err.startswith("lab: ")
        assert err.count("\n") == 1, err  # one line
        return err

    def build(self, name: str, *versions: str, models: tuple[str, ...] = ("CX600",)) -> Path:
        path = self.tmp / name
        args = [arg for m in models for arg in ("--model", m)]
        args += [arg for v in versions for arg in ("--version", v)]
        self.ok("cab", "build", *args, "--image-size", "4K", "--output", str(path))
        return path


@pytest.fixture
def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Lab:
    return Lab(tmp_path, capsys)


def test_a_session_from_cab_to_rollback(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1, models=("CX600", "HP4110"))
    assert cab.read_bytes()[:4] == b"MSCF"
    result = lab.json("update", "import", str(cab), "--pool", "pool01")
    assert result["changed"] is True
    assert result["pools"] == [POOL01]
    assert [c["action"] for c in result["changes"]] == ["created", "created"]
    rules = lab.json("update", "list")
    assert [(r["model"], r["pool"], r["pending"], r["approved"]) for r in rules] == [
        ("HP4110", POOL01, V1, None),
        ("CX600", POOL01, V1, None),
    ]
    cx600 = rules[1]["identity"]
    assert cx600.startswith(f"service:WebServer:{POOL01}/")
    uuid_prefix = cx600.rsplit("/", 1)[1][:8]

    assert "approve: 1 rule(s)" in lab.ok("update", "approve", uuid_prefix)
    lab.ok("update", "import", str(lab.build("second.cab", V2)), "--pool", POOL01)
    lab.ok("update", "approve", "--model", "cx600")
    assert lab.json("update", "list", "--model", "CX600")[0]["restore"] == V1
    changes = lab.json("update", "restore", cx600)
    assert changes[0]["rule"]["approved"] == V1
    table = lab.ok("update", "list")
    assert "CX600" in table
    assert V1 in table
    assert uuid_prefix in table

    changes = lab.json("update", "remove", "--model", "HP4110")
    assert [c["action"] for c in changes] == ["removed"]
    assert [r["model"] for r in lab.json("update", "list")] == ["CX600"]


def test_importing_again_says_nothing_changed(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1)
    lab.ok("update", "import", str(cab), "--all-pools")
    assert "nothing changed" in lab.ok("update", "import", str(cab), "--all-pools")
    assert {r["pool"] for r in lab.json("update", "list")} == {POOL01, SE01}


def test_a_tampered_cab_is_refused_in_one_line_and_the_state_is_untouched(lab: Lab) -> None:
    good = lab.build("UCUpdates.cab", V1)
    lab.ok("update", "import", str(good), "--pool", "pool01")
    before = {p: p.read_bytes() for p in sorted(lab.state.rglob("*")) if p.is_file()}
    files = {name: f.buf or b"" for name, f in CabArchive(good.read_bytes()).items()}
    image = next(name for name in files if name.endswith("CPE.nbt"))
    data = bytearray(files[image])
    data[-1] ^= 0x01
    bad = lab.tmp / "bad.cab"
    bad.write_bytes(pack_cab({**files, image: bytes(data)}))
    err = lab.refused("update", "import", str(bad), "--all-pools")
    assert "bad.cab: member 'UCPhone\\Polycom\\CX600\\A\\ENU" in err
    assert "CPE.nbt': SHA-256" in err
    assert lab.refused("cab", "check", str(bad)) == err
    after = {p: p.read_bytes() for p in sorted(lab.state.rglob("*")) if p.is_file()}
    assert after == before


def test_an_import_into_a_lab_of_several_pools_must_name_its_pools(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1)
    err = lab.refused("update", "import", str(cab))
    assert f"the lab has 2 pools ({POOL01}, {SE01})" in err
    assert "--pool POOL" in err
    assert "--all-pools" in err
    assert not (lab.state / STORE_FILE).exists()
    assert not (lab.state / "pools").exists()


def test_an_import_goes_into_the_pool_named_or_every_pool(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1, models=("CX600", "HP4110"))
    result = lab.json("update", "import", str(cab), "--pool", "se01")
    assert result["pools"] == [SE01]
    assert {c["rule"]["pool"] for c in result["changes"]} == {SE01}
    assert [(r["pool"], r["model"]) for r in lab.json("update", "list")] == [
        (SE01, "HP4110"),
        (SE01, "CX600"),
    ]
    assert sorted(p.name for p in (lab.state / "pools").iterdir()) == [SE01]
    assert not (lab.state / "servers").exists()

    result = lab.json("update", "import", str(cab), "--all-pools")
    assert result["pools"] == [POOL01, SE01]
    # se01 had them all: only pool01's rules are new.
    assert [(c["action"], c["rule"]["pool"]) for c in result["changes"]] == [
        ("created", POOL01),
        ("created", POOL01),
        ("unchanged", SE01),
        ("unchanged", SE01),
    ]
    rules = lab.json("update", "list")
    assert [(r["pool"], r["model"]) for r in rules] == [
        (POOL01, "HP4110"),
        (POOL01, "CX600"),
        (SE01, "HP4110"),
        (SE01, "CX600"),
    ]
    assert all(r["identity"].startswith(f"service:WebServer:{r['pool']}/") for r in rules)
    image = f"DeviceUpdateFiles/UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt"
    for pool in (POOL01, SE01):
        assert (lab.state / "pools" / pool / image).is_file()


def test_rules_are_listed_and_changed_by_pool(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1, models=("CX600", "HP4110"))
    lab.ok("update", "import", str(cab), "--all-pools")
    listed = lab.json("update", "list", "--pool", "pool01")
    assert [(r["pool"], r["model"]) for r in listed] == [(POOL01, "HP4110"), (POOL01, "CX600")]
    assert lab.json("update", "list", "--pool", "SE01.contoso.test") == lab.json(
        "update", "list", "--pool", "se01"
    )
    assert len(lab.json("update", "list", "--pool", "se01")) == 2
    assert [r["pool"] for r in lab.json("update", "list", "--model", "cx600")] == [POOL01, SE01]
    table = lab.ok("update", "list", "--pool", "pool01")
    # The table names a pool by its first label, as commands take it (FQDN in --json).
    assert "pool" in table
    assert "│ pool01 " in table
    assert "se01" not in table

    changes = lab.json("update", "approve", "--pool", "se01")
    assert [(c["action"], c["rule"]["pool"]) for c in changes] == [
        ("approve", SE01),
        ("approve", SE01),
    ]
    rules = lab.json("update", "list")
    assert [(r["pool"], r["pending"], r["approved"]) for r in rules] == [
        (POOL01, V1, None),
        (POOL01, V1, None),
        (SE01, None, V1),
        (SE01, None, V1),
    ]
    removed = lab.json("update", "remove", "--pool", "pool01", "--model", "HP4110")
    assert [(c["action"], c["rule"]["pool"], c["rule"]["model"]) for c in removed] == [
        ("removed", POOL01, "HP4110")
    ]
    assert len(lab.json("update", "list")) == 3


def test_a_lab_of_one_pool_imports_without_naming_it(lab: Lab) -> None:
    one_pool = default_text().split('[[pools]]\nfqdn = "se01.contoso.test"')
    assert len(one_pool) == 2
    # Everything of se01 up to the edge goes, and carol with it (her pool is gone).
    rest = one_pool[1][one_pool[1].index("[edge]") :]
    carol = rest.index('[[directory.users]]\nname = "carol"')
    rest = rest[:carol] + rest[rest.index("# The demo fleet") :]
    lab.config.write_text(
        (one_pool[0] + rest).replace('dir = "certs"', f'dir = "{(lab.tmp / "certs").as_posix()}"')
    )
    result = lab.json("update", "import", str(lab.build("UCUpdates.cab", V1)))
    assert result["pools"] == [POOL01]
    assert [r["pool"] for r in lab.json("update", "list")] == [POOL01]


def _store_before_pools(state: Path) -> str:
    """A store as labs before pools left it: one CX600 rule of fe02, its files in fe02's
    own file store. Returns the rule's uuid."""
    rule_uuid = "0123abcd-0000-4000-8000-000000000001"
    kind = ("UCPhone", "Polycom", "CX600", "A", "ENU")
    path = f"UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt"
    at = "2026-01-01T00:00:00+00:00"
    state.mkdir()
    raw = sqlite3.connect(state / STORE_FILE, isolation_level=None)
    try:
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 2")
        raw.execute(
            "INSERT INTO rules VALUES (?, ?, 'fe02', ?, ?, ?, ?, ?, NULL, ?, NULL, ?, ?, ?)",
            (rule_uuid, f"service:WebServer:fe02.contoso.test/{rule_uuid}", *kind, V1, at, at, at),
        )
        raw.execute(
            "INSERT INTO versions VALUES ('fe02', ?, ?, ?, ?, ?, ?, ?, ?)",
            (*kind, V1, json.dumps([["CPE.nbt", path, 5, "0" * 64]]), at),
        )
    finally:
        raw.close()
    image = state / "servers" / "fe02" / "DeviceUpdateFiles" / path
    image.parent.mkdir(parents=True)
    image.write_bytes(b"image")
    return rule_uuid


def test_the_first_command_with_the_config_moves_a_store_from_before_pools(lab: Lab) -> None:
    rule_uuid = _store_before_pools(lab.state)
    [rule] = lab.json("update", "list")
    assert (rule["pool"], rule["model"], rule["approved"]) == (POOL01, "CX600", V1)
    assert rule["identity"] == f"service:WebServer:{POOL01}/{rule_uuid}"
    image = f"DeviceUpdateFiles/UCPhone/Polycom/CX600/A/ENU/{V1}/CPE/CPE.nbt"
    assert (lab.state / "pools" / POOL01 / image).read_bytes() == b"image"
    assert not (lab.state / "servers" / "fe02" / "DeviceUpdateFiles").exists()


def test_cab_check_lists_a_good_cab(lab: Lab) -> None:
    cab = lab.build("UCUpdates.cab", V1, V2, models=("6725ip",))
    out = lab.ok("cab", "check", str(cab))
    assert "every member name, description, signature and hash is good" in out
    checked = lab.json("cab", "check", str(cab))
    assert [(u["model"], u["version"]) for u in checked["updates"]] == [
        ("6725ip", V1),
        ("6725ip", V2),
    ]
    assert [f["module"] for f in checked["updates"][0]["files"]] == ["CPE.cat", "CPE.nbt"]


def test_test_devices_by_mac_in_any_form_or_serial(lab: Lab) -> None:
    assert "00-04-F2-00-00-01" in lab.ok("test-device", "add", "--mac", "0004f2000001")
    lab.ok("test-device", "add", "--serial", " cx6a000001 ", "--name", "desk")
    devices = lab.json("test-device", "list")
    assert [(d["kind"], d["value"], d["name"]) for d in devices] == [
        ("mac", "00-04-F2-00-00-01", "00-04-F2-00-00-01"),
        ("serial", "CX6A000001", "desk"),
    ]
    assert "already a test device" in lab.refused(
        "test-device", "add", "--mac", "00:04:f2:00:00:01"
    )
    lab.ok("test-device", "remove", "--mac", "00:04:F2:00:00:01")
    assert [d["value"] for d in lab.json("test-device", "list")] == ["CX6A000001"]


def test_device_update_configuration(lab: Lab) -> None:
    shown = lab.json("config", "show")
    assert shown["MaxLogFileSize"] == "1024000"
    assert shown["ValidLogFileTypes"] == "Watson,CELog"
    changed = lab.json("config", "set", "MaxLogFileSize=2048000", "logflushinterval=00:02:00")
    assert (changed["MaxLogFileSize"], changed["LogFlushInterval"]) == ("2048000", "00:02:00")
    assert lab.json("config", "show") == changed
    assert "LogCleanUpInterval" in lab.ok("config", "show")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("test-device", "add", "--mac", "00-04-F2-00-00"),
            "'00-04-F2-00-00' is not a MAC address",
        ),
        (("test-device", "remove", "--serial", "NOPE1"), "NOPE1 is not a test device"),
        (("update", "approve", "ffffffff"), "no rule 'ffffffff'"),
        (("update", "approve"), "name a rule"),
        (("update", "reset", "--all"), "no rule matches"),
        (("config", "set", "MaxLogFileSize=5"), "out of range (1024..4294967295 bytes)"),
        (("config", "set", "LogCleanUpInterval=400."), "(1.00:00:00 to 365.00:00:00)"),
        (("config", "set", "MaxLogFileSize"), "is not NAME=VALUE"),
        (("config", "set", "Colour=blue"), "'Colour' is not a device-update setting"),
        (("cab", "build", "--model", "CX9", "--version", V1), "'CX9' is not a phone model"),
        (("cab", "build", "--version", "4.0"), "'4.0' is not a version"),
        (("cab", "check", "missing.cab"), "cannot be read"),
    ],
)
def test_bad_input_exits_2_with_one_line(lab: Lab, argv: tuple[str, ...], message: str) -> None:
    assert message in lab.refused(*argv)


def test_a_refused_transition_exits_2_with_the_reason(lab: Lab) -> None:
    lab.ok("update", "import", str(lab.build("UCUpdates.cab", V1)), "--pool", "pool01")
    identity = lab.json("update", "list")[0]["identity"]
    assert "neither an approved nor a restore version" in lab.refused("update", "restore", identity)
    lab.ok("update", "approve", identity)
    err = lab.refused("update", "approve", identity)
    assert f"cannot approve {identity}" in err
    assert "nothing is pending" in err
    err = lab.refused("update", "import", str(lab.tmp / "UCUpdates.cab"), "--pool", "pool09")
    assert "no pool 'pool09'" in err
    # A front end is not a pool.
    assert "no pool 'fe01'" in lab.refused(
        "update", "import", str(lab.tmp / "UCUpdates.cab"), "--pool", "fe01"
    )


def test_no_progress_is_drawn_when_not_on_a_terminal(lab: Lab) -> None:
    code, _, err = lab.run("cab", "build", "--version", V1, "--image-size", "64K",
                           "--output", str(lab.tmp / "all.cab"))  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = lab.run("update", "import", str(lab.tmp / "all.cab"), "--all-pools")
    assert (code, err) == (0, "")
    assert len(lab.json("update", "list")) == 16  # every model in both pools
    assert (lab.state / STORE_FILE).exists()


def test_global_options_may_follow_the_action(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab.ok("test-device", "add", "--serial", "CX6A000009")
    capsys.readouterr()
    argv = ["test-device", "list", "--json", "--state-dir", str(lab.state)]
    assert main([*argv, "--config", str(lab.config)]) == 0
    assert [d["value"] for d in json.loads(capsys.readouterr().out)] == ["CX6A000009"]


def test_a_reader_that_goes_away_ends_the_output_quietly(lab: Lab) -> None:
    lab.ok("update", "import", str(lab.build("UCUpdates.cab", V1)), "--all-pools")
    argv = [sys.executable, "-m", "lab.cli", "--config", str(lab.config)]
    argv += ["--state-dir", str(lab.state), "update", "list", "--json"]
    # With a reader the command writes its list.
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    # As `| head -1` closes the pipe once it has its line; here before the first byte, so
    # that every write fails whatever the timing: no traceback, the code of SIGPIPE.
    read, write = os.pipe()
    os.close(read)
    try:
        closed = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False
        )
    finally:
        os.close(write)
    assert (closed.returncode, closed.stderr) == (STDOUT_CLOSED, "")


def test_a_broken_pipe_that_is_not_stdout_is_reported_as_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Only stdout's reader going away ends the command quietly; a socket or another pipe
    # closing under a command is an error the user must see.
    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(update_cli, "cmd_list", broken)
    assert main(["--state-dir", str(tmp_path), "update", "list"]) == 1
    assert capsys.readouterr().err == (
        "lab: the other end closed the connection: [Errno 32] Broken pipe\n"
    )
