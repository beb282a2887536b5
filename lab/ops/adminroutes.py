"""The admin API's routes that belong to the operations layer.

lab.service.admin serves the service's own routes (status, firewall, DNS faults,
maintenance, store refresh, events); the operations the CLI and the console share that
need more than the service (the update store's commands, the phone wall) add theirs here.
Each entry of ``ROUTES`` takes the admin application and the running lab, and adds routes
to it; they sit behind the same token and answer errors the same way (lab.service.admin).

The modules here see the running lab through ``OperatedLab`` and never import
lab.ops.runner, which imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from lab.clock import LabClock
from lab.events import EventBus
from lab.net.config import LabConfig
from lab.net.pki import LabPKI
from lab.service.pool import ServicePool


class OperatedLab(Protocol):
    """What the operations' routes use of a running lab (lab.ops.runner.Lab)."""

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
    def pool(self) -> ServicePool:
        """The service pool (store refresh, maintenance)."""
        ...

    @property
    def clock(self) -> LabClock:
        """The lab's clock."""
        ...

    @property
    def events(self) -> EventBus:
        """The lab's events."""
        ...


Register = Callable[[web.Application, OperatedLab], None]

ROUTES: tuple[Register, ...] = ()
"""Every module's ``register``, in the order their routes are added."""


def extensions(lab: OperatedLab) -> list[Callable[[web.Application], None]]:
    """The ``extensions`` of lab.service.admin.make_app for ``lab``."""

    def extension(register: Register) -> Callable[[web.Application], None]:
        return lambda app: register(app, lab)

    return [extension(register) for register in ROUTES]
