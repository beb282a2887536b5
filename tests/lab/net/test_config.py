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
    # Two pools: an Enterprise Edition pool of two, and a Standard Edition server (a pool of
    # one named as its server).
    assert [(p.fqdn, [fe.name for fe in p.front_ends]) for p in config.pools] == [
        ("pool01.contoso.test", ["fe01", "fe02"]),
        ("se01.contoso.test", ["se01"]),
    ]
    assert [(fe.fqdn, fe.pool) for fe in config.front_ends] == [
        ("fe01.contoso.test", "pool01.contoso.test"),
        ("fe02.contoso.test", "pool01.contoso.test"),
        ("se01.contoso.test", "se01.contoso.test"),
    ]
    assert [str(fe.address) for fe in config.front_ends] == [
        "127.10.0.11",
        "127.10.0.12",
        "127.10.0.21",
    ]
    assert all(fe.address in config.inside for fe in config.front_ends)
    assert config.ucupdates_pool == config.discovery_pool.fqdn == "pool01.contoso.test"
    assert config.edge.pool == config.edge_pool.fqdn == "pool01.contoso.test"
    assert config.edge.address in config.outside
    assert config.ports.dns == HIGH_PORTS["dns"]
    assert config.ports.dns > 1024
    # The console's page sits next to the admin API on 127.0.0.1, unprivileged either way.
    assert (config.ports.admin, config.ports.console) == (10080, 10081)
    assert {u.name: u.pool for u in config.users} == {
        "alice": "pool01.contoso.test",
        "bob": "pool01.contoso.test",
        "carol": "se01.contoso.test",
    }
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
            {"pools[0].front_ends[1].address": "127.10.0.300"},
            "pools[0].front_ends[1].address",
            "is not an IPv4 address",
        ),
        (
            {"pools[0].front_ends[0].address": "10.0.0.1"},
            "pools[0].front_ends[0].address",
            "not a loopback address",
        ),
        (
            {"pools[0].front_ends[0].address": "127.20.0.5"},
            "pools[0].front_ends[0].address",
            "is not in inside",
        ),
        (
            {"pools[0].front_ends[1].address": "127.10.0.11"},
            "pools[0].front_ends[1].address",
            "already used",
        ),
        (
            {"pools[1].front_ends[0].address": "127.10.0.12"},
            "pools[1].front_ends[0].address",
            "already used by another front end",
        ),
        ({"pools[1].front_ends[0].name": "fe01"}, "pools[1].front_ends[0].name", "duplicate"),
        ({"pools[1].fqdn": "pool01.contoso.test"}, "pools[1].fqdn", "duplicate pool"),
        ({"pools[1].fqdn": "se01"}, "pools[1].fqdn", "is not a DNS name"),
        ({"pools[0].fqdn": None}, "pools[0].fqdn", "is required"),
        ({"pools[0].colour": "blue"}, "pools[0].colour", "unknown key"),
        ({"pools": []}, "pools", "needs at least one pool"),
        ({"pools[1].front_ends": []}, "pools[1].front_ends", "needs at least one front end"),
        # A pool of two may not be named as one of its servers ...
        (
            {"pools[0].fqdn": "fe01.contoso.test"},
            "pools[0].fqdn",
            "is also a front end's FQDN (only a pool of one may share its server's)",
        ),
        # ... nor a pool of one as another pool's server.
        (
            {"pools[1].fqdn": "fe02.contoso.test"},
            "pools[1].fqdn",
            "is also a front end's FQDN",
        ),
        (
            {"pools[0].fqdn": "se01.contoso.test", "pools[1].fqdn": "pool02.contoso.test"},
            "pools[0].fqdn",
            "'se01.contoso.test' is also the FQDN of se01, a front end of pool "
            "'pool02.contoso.test'",
        ),
        ({"network.ucupdates": "pool09"}, "network.ucupdates", "is not one of the lab's pools"),
        ({"edge.pool": "fe01.contoso.test"}, "edge.pool", "'fe01.contoso.test' is not one of"),
        ({"edge.pool": 1}, "edge.pool", "must be str"),
        (
            {"directory.users[2].pool": "se02"},
            "directory.users[2].pool",
            "'se02' is not one of the lab's pools (pool01.contoso.test, se01.contoso.test)",
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
    assert config.ports.console == REAL_PORTS["console"] == 10081


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool\nfqdn = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_cli_exits_2_with_one_line_for_a_broken_config(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pools[0].front_ends[1].address": "127.10.0.300"})
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
        f"lab: {path}: pools[0].front_ends[1].address: '127.10.0.300' is not an IPv4 address"
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


def _dump(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _one_pool_table(data: dict[str, Any]) -> dict[str, Any]:
    """The default lab with its first pool as a single ``[pool]`` table (the older form)."""
    data["pool"] = data.pop("pools")[0]
    for user in data["directory"]["users"]:
        user.pop("pool", None)
    return data


def test_a_single_pool_table_is_a_lab_of_one_pool(tmp_path: Path) -> None:
    data = _one_pool_table(tomllib.loads(default_text()))
    config = load_config(_dump(tmp_path, data))
    (pool,) = config.pools
    assert pool.fqdn == "pool01.contoso.test"
    assert [(fe.name, fe.pool) for fe in config.front_ends] == [
        ("fe01", "pool01.contoso.test"),
        ("fe02", "pool01.contoso.test"),
    ]
    assert config.discovery_pool == config.edge_pool == pool
    assert {u.pool for u in config.users} == {"pool01.contoso.test"}
    # Its keys are named as it is written.
    data["pool"]["front_ends"][1]["address"] = "127.10.0.300"
    with pytest.raises(ConfigError, match=r": pool\.front_ends\[1\]\.address: "):
        load_config(_dump(tmp_path, data))


def test_a_pool_table_and_pools_together_are_refused(tmp_path: Path) -> None:
    data = tomllib.loads(default_text())
    data["pool"] = data["pools"][0]
    path = _dump(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: pool: give [pool] or [[pools]], not both"


def test_pools_are_found_by_fqdn_or_first_label() -> None:
    config = default_config()
    pool01, se01 = config.pools
    assert config.pool("pool01") is pool01
    assert config.pool("POOL01.Contoso.Test.") is pool01
    assert config.pool("se01") is se01
    assert (pool01.name, se01.name) == ("pool01", "se01")
    with pytest.raises(ConfigError, match=r"pools: no pool 'fe01' \(have pool01\.contoso\.test, "):
        config.pool("fe01")
    assert config.pool_of() == {
        "fe01": "pool01.contoso.test",
        "fe02": "pool01.contoso.test",
        "se01": "se01.contoso.test",
    }
    assert config.front_end("SE01.contoso.test").pool == "se01.contoso.test"
    assert config.home_pool(config.user("carol")) is se01
    assert config.home_pool(config.user("alice@contoso.test")) is pool01


def test_ucupdates_the_edge_and_users_may_name_any_pool(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "network.ucupdates": "se01",
            "edge.pool": "SE01.contoso.test",
            "directory.users[0].pool": "se01",
        },
    )
    config = load_config(path)
    assert config.ucupdates_pool == "se01.contoso.test"
    assert config.discovery_pool.front_ends == (config.front_end("se01"),)
    assert config.edge.pool == config.edge_pool.fqdn == "se01.contoso.test"
    assert config.user("alice").pool == "se01.contoso.test"


def test_pool_references_default_to_the_first_pool(tmp_path: Path) -> None:
    data = tomllib.loads(default_text())
    data["pools"].reverse()  # se01 first
    del data["network"]["ucupdates"]
    del data["edge"]["pool"]
    for user in data["directory"]["users"]:
        del user["pool"]
    config = load_config(_dump(tmp_path, data))
    assert [pool.fqdn for pool in config.pools] == ["se01.contoso.test", "pool01.contoso.test"]
    assert [fe.name for fe in config.front_ends] == ["se01", "fe01", "fe02"]
    assert config.ucupdates_pool == config.edge.pool == "se01.contoso.test"
    assert {u.pool for u in config.users} == {"se01.contoso.test"}
