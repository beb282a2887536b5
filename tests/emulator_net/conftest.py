"""Fixtures for the phone's network adapters: the lab PKI, a wall clock, a free port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from net_helpers import FE01

from emulator.clock import LoopClock
from lab.net.config import default_config
from lab.net.pki import LabPKI


@pytest.fixture
def pki(pki_dir: Path) -> LabPKI:
    """The default lab's PKI, in the session's certificate directory."""
    return LabPKI(default_config(), pki_dir)


@pytest.fixture
async def clock() -> LoopClock:
    """A phone clock that reads true time (certificates are made for now)."""
    loop = asyncio.get_running_loop()
    return LoopClock(loop.time, start=time.time() - loop.time())


@pytest.fixture
async def no_server() -> tuple[str, int]:
    """An address and port where nothing listens (a port just released)."""
    server = await asyncio.start_server(lambda r, w: None, FE01, 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return FE01, port
