"""Updates belong to a pool, end to end: a real `lab up`, `lab update` and `emulator run`.

The default lab has two pools: pool01.contoso.test (fe01, fe02), which ucupdates-r2 names,
and se01.contoso.test (a Standard Edition server), where carol is homed. A cab imported
into se01 only reaches the phones se01 serves: carol's, once she has signed in and in-band
provisioning sent her phone to her home pool. A phone nobody signed in to (ucupdates-r2:
pool01) and alice's (homed on pool01) are told there is nothing for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labprocess import run_phone, start_lab, stop_lab

from lab.ops.harness import FACTORY, NEW


def codes(phone: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [entry for entry in phone["log"] if entry["code"] == code]


def test_a_cab_imported_into_one_pool_reaches_only_the_phones_that_pool_serves(
    tmp_path: Path,
) -> None:
    up = start_lab(tmp_path / "lab", up_args=("--scale", "600"))
    try:
        cab = tmp_path / "UCUpdates.cab"
        built = up.lab("cab", "build", "--model", "CX600", "--version", NEW, "-o", str(cab))
        assert built.returncode == 0, built.stderr

        # Two pools and no choice made: refused, naming them, and nothing imported.
        unnamed = up.lab("update", "import", str(cab))
        assert unnamed.returncode == 2
        assert "the lab has 2 pools (pool01.contoso.test, se01.contoso.test)" in unnamed.stderr
        assert "--pool POOL" in unnamed.stderr
        assert "--all-pools" in unnamed.stderr
        assert json.loads(up.lab("update", "list", "--json").stdout) == []

        imported = up.lab("update", "import", str(cab), "--pool", "se01", "--json")
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["pools"] == ["se01.contoso.test"]
        approved = up.lab("update", "approve", "--pool", "se01", "--json")
        assert approved.returncode == 0, approved.stderr
        [rule] = json.loads(up.lab("update", "list", "--json").stdout)
        assert rule["pool"] == "se01.contoso.test"
        assert rule["identity"].startswith("service:WebServer:se01.contoso.test/")
        assert rule["approved"] == NEW
        # One file store for the pool, which its front end serves; none for pool01.
        assert (up.state / "pools" / "se01.contoso.test" / "DeviceUpdateFiles").is_dir()
        assert not (up.state / "pools" / "pool01.contoso.test").exists()

        lobby = run_phone(up.state, 1)
        assert lobby["version"] == FACTORY
        [told] = codes(lobby, "up-to-date")
        assert told["facts"]["url"].startswith("https://ucupdates-r2.contoso.test:")

        alice = run_phone(up.state, 2, user="alice")
        assert alice["version"] == FACTORY
        [signed_in] = codes(alice, "signed-in")
        assert "internal URL https://pool01.contoso.test:" in signed_in["line"]

        carol = run_phone(up.state, 3, user="carol")
        assert carol["version"] == NEW
        [signed_in] = codes(carol, "signed-in")
        # In-band provisioning from her home pool, which no edge publishes.
        assert "internal URL https://se01.contoso.test:" in signed_in["line"]
        assert "external URL (none)" in signed_in["line"]
        [offered] = codes(carol, "offered")
        assert offered["facts"]["url"].startswith("https://se01.contoso.test:")

        phones = {p["mac"]: p for p in json.loads(up.lab("phones", "--json").stdout)}
        assert phones[carol["mac"]]["pool"] == "se01.contoso.test"
        assert phones[carol["mac"]]["server"] == "se01"
        assert phones[carol["mac"]]["approved"] == NEW
        assert phones[carol["mac"]]["flags"] == []
        # Measured against pool01's rules, which hold nothing: no approved version to miss.
        assert phones[lobby["mac"]]["pool"] == "pool01.contoso.test"
        assert phones[lobby["mac"]]["approved"] is None
    finally:
        stop_lab(up)
