"""Fixtures shared by the whole suite.

The lab fixtures (lab_config, device_lab, phones, virtual_clock) come from the project's own
pytest plugin, lab/ops/pytest_plugin.py, installed as an entry point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _close_stray_event_loop() -> Iterator[None]:
    """Close an event loop pytest-asyncio leaves set but unused after a test.

    pytest-asyncio (1.5) can create a loop while setting up a synchronous fixture and never
    close it; it is then collected in a later test and, with warnings as errors, fails that
    innocent test with "unclosed event loop". Closing it here keeps the failure where it
    belongs. Loops our own code creates are never installed as the current loop, so a
    leak of ours is still reported by the ResourceWarning.
    """
    yield
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)
    loop = getattr(local, "_loop", None)
    if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running():
        if not loop.is_closed():
            loop.close()
        policy.set_event_loop(None)


@pytest.fixture(scope="session")
def pki_dir(lab_pki_dir: Path) -> Path:
    """The session's lab PKI directory (the plugin's ``lab_pki_dir``), as older tests name it."""
    return lab_pki_dir
