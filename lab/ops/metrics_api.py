"""The admin API's ``GET /metrics``: the running lab's figures for Prometheus (lab.ops.metrics).

It sits behind the admin token like every admin route; Prometheus sends it with
``authorization: {type: Bearer, credentials_file: <state>/admin.token}`` in its scrape
config (README, "Metrics").
"""

from __future__ import annotations

from aiohttp import web

from lab.ops.metrics import CONTENT_TYPE
from lab.ops.operated import OperatedLab


def register(app: web.Application, lab: OperatedLab) -> None:
    """Add ``GET /metrics`` to the admin application of ``lab``."""

    async def metrics(request: web.Request) -> web.Response:
        body = await lab.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
