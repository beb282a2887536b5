"""The admin API's routes that belong to the operations layer.

lab.service.admin serves the service's own routes (status, firewall, DNS faults,
maintenance, store refresh, events); the operations the CLI and the console share that
need more than the service (the update store's commands, the phone wall) add theirs here.
Each entry of ``ROUTES`` takes the admin application and the running lab, and adds routes
to it; they sit behind the same token and answer errors the same way (lab.service.admin).

The modules here see the running lab through ``lab.ops.operated.OperatedLab`` and never
import lab.ops.runner, which imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from lab.ops import capture_api, metrics_api, store_api, wall_api
from lab.ops.operated import OperatedLab

Register = Callable[[web.Application, OperatedLab], None]

ROUTES: tuple[Register, ...] = (
    store_api.register,
    wall_api.register,
    capture_api.register,
    metrics_api.register,
)
"""Every module's ``register``, in the order their routes are added."""


def extensions(lab: OperatedLab) -> list[Callable[[web.Application], None]]:
    """The ``extensions`` of lab.service.admin.make_app for ``lab``."""

    def extension(register: Register) -> Callable[[web.Application], None]:
        return lambda app: register(app, lab)

    return [extension(register) for register in ROUTES]
