"""`lab` starts light: building the parser loads none of the modules that cost start-up time.

Every command module is imported to build the parser, so a heavy import at the top of any
of them would slow every `lab` command (and the hundreds this suite runs) again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab.cli import common, phone
from lab.ops.demo import DEFAULT_SCALE
from lab.ops.wall import ACTIONS

HEAVY = (
    "aiohttp",
    "cryptography.x509",
    "emulator",
    "lab.console.app",
    "lab.ops.administer",
    "lab.ops.runner",
    "lab.service.admin",
    "lab.service.pool",
    "lab.store.store",
)
"""The web stack, the certificates, the phones, the lab itself and its store."""

PARSER_ONLY = f"""
import sys
import lab.cli
lab.cli.build_parser()
# What every runtime command (lab status, firewall, phone ...) uses to reach a running lab.
import lab.ops.adminclient
print(" ".join(name for name in {HEAVY!r} if name in sys.modules))
"""


def test_building_the_parser_and_the_admin_client_import_no_heavy_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PARSER_ONLY], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


def test_status_without_a_lab_still_says_none_is_running(tmp_path: Path) -> None:
    state = tmp_path / "fresh"
    result = subprocess.run(
        [sys.executable, "-m", "lab.cli", "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"lab: no lab is running from {state} (no run.json)\n"


def test_what_the_parser_copies_matches_its_source() -> None:
    # Copied so that building the parser need not import the demo or the phone wall.
    assert common.DEMO_SCALE == DEFAULT_SCALE
    assert tuple(phone.ACTION_HELP) == (*ACTIONS, "remove")
