"""The store commands of the `lab` CLI: a whole session, JSON output, and one-line refusals."""

from __future__ import annotations

import json
import os
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
from lab.store.store import STORE_FILE

V1, V2 = "4.0.7577.4372", "4.0.7577.4400"


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
    result = lab.json("update", "import", str(cab), "--server", "fe01")
    assert result["changed"] is True
    assert [c["action"] for c in result["changes"]] == ["created", "created"]
    rules = lab.json("update", "list")
    assert [(r["model"], r["server"], r["pending"], r["approved"]) for r in rules] == [
        ("HP4110", "fe01", V1, None),
        ("CX600", "fe01", V1, None),
    ]
    cx600 = rules[1]["identity"]
    assert cx600.startswith("service:WebServer:fe01.contoso.test/")
    uuid_prefix = cx600.rsplit("/", 1)[1][:8]

    assert "approve: 1 rule(s)" in lab.ok("update", "approve", uuid_prefix)
    lab.ok("update", "import", str(lab.build("second.cab", V2)), "--server", "fe01.contoso.test")
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
    lab.ok("update", "import", str(cab), "--all")
    assert "nothing changed" in lab.ok("update", "import", str(cab), "--all")
    assert {r["server"] for r in lab.json("update", "list")} == {"fe01", "fe02"}


def test_a_tampered_cab_is_refused_in_one_line_and_the_state_is_untouched(lab: Lab) -> None:
    good = lab.build("UCUpdates.cab", V1)
    lab.ok("update", "import", str(good), "--server", "fe01")
    before = {p: p.read_bytes() for p in sorted(lab.state.rglob("*")) if p.is_file()}
    files = {name: f.buf or b"" for name, f in CabArchive(good.read_bytes()).items()}
    image = next(name for name in files if name.endswith("CPE.nbt"))
    data = bytearray(files[image])
    data[-1] ^= 0x01
    bad = lab.tmp / "bad.cab"
    bad.write_bytes(pack_cab({**files, image: bytes(data)}))
    err = lab.refused("update", "import", str(bad), "--all")
    assert "bad.cab: member 'UCPhone\\Polycom\\CX600\\A\\ENU" in err
    assert "CPE.nbt': SHA-256" in err
    assert lab.refused("cab", "check", str(bad)) == err
    after = {p: p.read_bytes() for p in sorted(lab.state.rglob("*")) if p.is_file()}
    assert after == before


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
    lab.ok("update", "import", str(lab.build("UCUpdates.cab", V1)), "--server", "fe01")
    identity = lab.json("update", "list")[0]["identity"]
    assert "neither an approved nor a restore version" in lab.refused("update", "restore", identity)
    lab.ok("update", "approve", identity)
    err = lab.refused("update", "approve", identity)
    assert f"cannot approve {identity}" in err
    assert "nothing is pending" in err
    assert "fe09" in lab.refused(
        "update", "import", str(lab.tmp / "UCUpdates.cab"), "--server", "fe09"
    )


def test_no_progress_is_drawn_when_not_on_a_terminal(lab: Lab) -> None:
    code, _, err = lab.run("cab", "build", "--version", V1, "--image-size", "64K",
                           "--output", str(lab.tmp / "all.cab"))  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = lab.run("update", "import", str(lab.tmp / "all.cab"), "--all")
    assert (code, err) == (0, "")
    assert len(lab.json("update", "list")) == 16  # every model on both front ends
    assert (lab.state / STORE_FILE).exists()


def test_global_options_may_follow_the_action(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab.ok("test-device", "add", "--serial", "CX6A000009")
    capsys.readouterr()
    argv = ["test-device", "list", "--json", "--state-dir", str(lab.state)]
    assert main([*argv, "--config", str(lab.config)]) == 0
    assert [d["value"] for d in json.loads(capsys.readouterr().out)] == ["CX6A000009"]


def test_a_reader_that_goes_away_ends_the_output_quietly(lab: Lab) -> None:
    lab.ok("update", "import", str(lab.build("UCUpdates.cab", V1)), "--all")
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
