"""How the operations layer's admin routes see the running lab: ``OperatedLab``.

A module of its own so that the route modules (lab.ops.store_api, lab.ops.wall_api) and
lab.ops.adminroutes, which lists them, can all name it without importing each other or
lab.ops.runner (whose ``Lab`` is what satisfies it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from lab.clock import LabClock
from lab.net.config import LabConfig
from lab.net.pki import LabPKI
from lab.ops.metrics import LabMetrics
from lab.ops.netmode import NetworkMode
from lab.ops.wall import PhoneWall
from lab.service.admin import AdministeredLab


class OperatedLab(AdministeredLab, Protocol):
    """What the operations' routes use of a running lab (lab.ops.runner.Lab): what the
    service's admin routes use (pool, events...), and more."""

    @property
    def config(self) -> LabConfig:
        """The lab's config."""
        ...

    @property
    def state_dir(self) -> Path:
        """The lab's state directory."""
        ...

    @property
    def pki(self) -> LabPKI:
        """The lab's PKI (vendor keys, CA)."""
        ...

    @property
    def clock(self) -> LabClock:
        """The lab's clock."""
        ...

    @property
    def wall(self) -> PhoneWall:
        """The phones hosted in the lab (lab.ops.wall)."""
        ...

    @property
    def network(self) -> NetworkMode | None:
        """The lab's own network (`--netns`): its rules and captures; None on loopback."""
        ...

    @property
    def metrics(self) -> LabMetrics:
        """The lab's figures for Prometheus (``GET /metrics``)."""
        ...
