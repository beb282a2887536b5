"""The lab config: the default loads, and every broken file gets one line naming the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lab.errors import ConfigError
from lab.net.config import HIGH_PORTS, REAL_PORTS, default_config, default_text, load_config


def test_default_config_describes_the_whole_lab() -> None:
    config = default_config()
    assert config.dhcp_domain == "contoso.test"
    assert config.ucupdates_names == ("ucupdates-r2.contoso.test",)
    assert [fe.fqdn for fe in config.front_ends] == ["fe01.contoso.test", "fe02.contoso.test"]
    assert all(fe.address in config.inside for fe in config.front_ends)
    assert config.edge.address in config.outside
    assert config.ports.dns == HIGH_PORTS["dns"]
    assert config.ports.dns > 1024
    assert {u.name for u in config.users} == {"alice", "bob"}
    assert len(config.fleet) == 6


def _write(tmp_path: Path, change: dict[str, object]) -> Path:
    data = tomllib.loads(default_text())
    for dotted, value in change.items():
        node: Any = data
        *parents, last = dotted.split(".")
        for part in parents:
            key, _, index = part.partition("[")
            node = node[key][int(index[:-1])] if index else node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (
            {"pool.front_ends[1].address": "127.10.0.300"},
            "pool.front_ends[1].address",
            "is not an IPv4 address",
        ),
        (
            {"pool.front_ends[0].address": "10.0.0.1"},
            "pool.front_ends[0].address",
            "not a loopback address",
        ),
        (
            {"pool.front_ends[0].address": "127.20.0.5"},
            "pool.front_ends[0].address",
            "is not in inside",
        ),
        (
            {"pool.front_ends[1].address": "127.10.0.11"},
            "pool.front_ends[1].address",
            "already used",
        ),
        ({"network.outside": "127.10.5.0/24"}, "network.outside", "overlaps"),
        ({"ports.dns": 70000}, "ports.dns", "is not a port"),
        ({"ports.dns": "53"}, "ports.dns", "must be int"),
        ({"ports.mode": "low"}, "ports.mode", "is not 'high' or 'real'"),
        ({"domains.dhcp": "not a domain"}, "domains.dhcp", "is not a DNS name"),
        ({"domains.dhcp": None}, "domains.dhcp", "is required"),
        ({"directory.users[0].nt_hash": "abc"}, "directory.users[0].nt_hash", "32 hex digits"),
        (
            {"directory.users[0].password": "Passw0rd!"},
            "directory.users[0].password",
            "plaintext passwords are not accepted",
        ),
        ({"fleet[0].model": "CX9000"}, "fleet[0].model", "is not a known model"),
        ({"fleet[1].user": "mallory"}, "fleet[1].user", "no directory user"),
        ({"edge.colour": "blue"}, "edge.colour", "unknown key"),
        ({"pki.key_type": "dsa"}, "pki.key_type", "is not one of"),
        ({"limits": {"header_timeout": 0}}, "limits.header_timeout", "must be more than 0"),
        ({"limits": {"header_timeout": "20s"}}, "limits.header_timeout", "must be a number"),
        (
            {"limits": {"connections_per_address": 2.5}},
            "limits.connections_per_address",
            "must be a whole number",
        ),
        ({"limits": {"max_bytes": 1}}, "limits.max_bytes", "unknown key"),
        ({"directory.lockout": {"threshold": -1}}, "directory.lockout.threshold", "more than 0"),
        ({"directory.lockout": {"window": True}}, "directory.lockout.window", "must be a number"),
    ],
)
def test_broken_config_names_file_key_and_problem(
    tmp_path: Path, change: dict[str, object], key: str, problem: str
) -> None:
    path = _write(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message
    assert "\n" not in message


def test_real_ports_mode_uses_53_443_4443(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, {"ports.mode": "real"}))
    assert (config.ports.dns, config.ports.internal, config.ports.external) == (53, 443, 4443)
    assert config.ports.edge == REAL_PORTS["edge"] == 443


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool\nfqdn = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_cli_exits_2_with_one_line_for_a_broken_config(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pool.front_ends[1].address": "127.10.0.300"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.cli",
            "--config",
            str(path),
            "--state-dir",
            str(tmp_path / "state"),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"lab: {path}: pool.front_ends[1].address: '127.10.0.300' is not an IPv4 address"
    ]


def test_limits_and_lockout_take_their_defaults_and_overrides(tmp_path: Path) -> None:
    default = default_config()
    assert default.limits.connections_per_address == 256
    assert (default.lockout.threshold, default.lockout.window) == (10, 900.0)
    path = _write(
        tmp_path,
        {
            "limits": {"header_timeout": 5, "admin_reserve": 16},
            "directory.lockout": {"duration": 60},
        },
    )
    config = load_config(path)
    assert config.limits.header_timeout == 5.0
    assert isinstance(config.limits.header_timeout, float)
    assert config.limits.admin_reserve == 16
    assert config.limits.body_timeout == default.limits.body_timeout
    assert config.lockout.duration == 60.0
    assert config.lockout.threshold == 10
