"""The admin API's routes for the lab's own network (`--netns`): its state and captures.

    GET  /v1/network            segments, namespaces, rulesets applied, the capture, and the
                                router's ruleset as nftables lists it (with its counters)
    POST /v1/capture            {"action": "start", "name"?} or {"action": "stop"}

A lab on loopback has no network of its own: both answer 409 saying so. Errors are the
admin app's (lab.service.admin): bad input 400.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from lab.ops.netmode import NetworkMode
from lab.ops.operated import OperatedLab
from lab.service.admin import json_object

LOOPBACK = "the lab runs on loopback; captures need its own network (lab up --netns)"


def register(app: web.Application, lab: OperatedLab) -> None:
    """Add the network's routes to the admin application of ``lab``."""
    routes = NetworkRoutes(lab)
    app.router.add_get("/v1/network", routes.show)
    app.router.add_post("/v1/capture", routes.capture)


class NetworkRoutes:
    """The handlers, on the network of one running lab."""

    def __init__(self, lab: OperatedLab) -> None:
        self.lab = lab

    def _mode(self) -> NetworkMode:
        if self.lab.network is None:
            raise web.HTTPConflict(
                text=json.dumps({"error": LOOPBACK}), content_type="application/json"
            )
        return self.lab.network

    async def show(self, request: web.Request) -> web.Response:
        """GET /v1/network."""
        mode = self._mode()
        rules = await asyncio.to_thread(mode.network.rules)
        return web.json_response({**mode.snapshot(), "ruleset": rules})

    async def capture(self, request: web.Request) -> web.Response:
        """POST /v1/capture."""
        mode = self._mode()
        data = await json_object(request)
        action = data.get("action")
        result: dict[str, Any]
        if action == "start":
            name = data.get("name")
            if name is not None and not isinstance(name, str):
                raise ValueError("'name' must be a string")
            result = await mode.start_capture(name)
        elif action == "stop":
            result = await mode.stop_capture()
        else:
            raise ValueError(f"unknown capture action {action!r} (start, stop)")
        return web.json_response(result)
