"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.config import LabConfig, default_config


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
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lab PKI for the whole session: making keys is the slow part of starting a lab."""
    return tmp_path_factory.mktemp("certs")


@pytest.fixture
def lab_config(pki_dir: Path) -> LabConfig:
    """The default lab on free ports (0) with the session's PKI."""
    return (
        default_config()
        .with_ports(dns=0, internal=0, external=0, edge=0, admin=0)
        .with_pki_dir(pki_dir)
    )
