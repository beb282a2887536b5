"""A real `lab up` process for the hostile-traffic battery, and the clients that attack it.

Each test module gets its own lab (a private config, its own state directory and PKI, ports
chosen by the system) started as `python -m lab.cli up` by tests/labprocess.py, optionally
under a lower file limit (``ulimit -n``) and with overrides of the ``[limits]`` and
``[directory.lockout]`` tables. Tests talk to it only over its sockets and through the
`lab` command, as an attacker and an administrator would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from labprocess import LabProcess, start_lab, stop_lab

OUTSIDE_ATTACKER = "127.20.66.6"
INSIDE_PHONE = "127.10.0.50"


@pytest.fixture(scope="module")
def lab_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LabProcess]]:
    """Start labs for a module (``lab_factory(overrides, nofile=...)``); all stop at its end."""
    started: list[LabProcess] = []

    def make(
        overrides: dict[str, dict[str, Any]] | None = None, *, nofile: int | None = None
    ) -> LabProcess:
        running = start_lab(tmp_path_factory.mktemp("lab"), overrides, nofile=nofile)
        started.append(running)
        return running

    yield make
    for running in started:
        stop_lab(running)


@pytest.fixture(scope="module")
def hostile_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    """One lab on the default limits, shared by a module's tests."""
    return lab_factory()
