"""The admin API's routes for the phone wall: phones hosted in the running lab.

What `lab phone` does from the command line, and the console's phone wall from a page,
a running lab does here for whoever holds its admin token, with one implementation
(lab.ops.wall.PhoneWall):

    GET    /v1/phones?offset=&limit=      counts by state, version, model, location and zone,
                                          and a page of cards (inside first, by place)
    POST   /v1/phones                     {model, count?, location?, user?, plug_in?}
    GET    /v1/phones/{mac}               card, System Information, phone log, audit lines
    POST   /v1/phones/{mac}/{action}      plug-in, unplug, sign-in {user}, sign-out,
                                          call-start, call-end, power-cut
    DELETE /v1/phones/{mac}               take the phone off the wall

A MAC may be written in any usual spelling (``0004f2000001``, ``00:04:F2:00:00:01``). Errors
are the admin app's (lab.service.admin): bad input 400, a phone whose state refuses the
action 409, and here a MAC no phone on the wall has 404. Changes show as ``phone.*``
events on the lab's event stream.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from lab.ops.operated import OperatedLab
from lab.ops.wall import PAGE_SIZE, UnknownPhoneError
from lab.service.admin import json_object


def register(app: web.Application, lab: OperatedLab) -> None:
    """Add the phone wall's routes to the admin application of ``lab``."""
    routes = WallRoutes(lab)
    app.router.add_get("/v1/phones", routes.snapshot)
    app.router.add_post("/v1/phones", routes.add)
    app.router.add_get("/v1/phones/{mac}", routes.detail)
    app.router.add_post("/v1/phones/{mac}/{action}", routes.act)
    app.router.add_delete("/v1/phones/{mac}", routes.remove)


@contextlib.contextmanager
def _unknown_as_404() -> Iterator[None]:
    """Answer a MAC no phone on the wall has with 404, in the admin API's error form."""
    try:
        yield
    except UnknownPhoneError as exc:
        raise web.HTTPNotFound(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


class WallRoutes:
    """The handlers, on the wall of one running lab."""

    def __init__(self, lab: OperatedLab) -> None:
        self.lab = lab

    async def snapshot(self, request: web.Request) -> web.Response:
        """GET /v1/phones?offset=&limit=: the aggregates and a page of cards."""
        offset = _query_int(request, "offset", 0)
        limit = _query_int(request, "limit", PAGE_SIZE)
        return web.json_response(self.lab.wall.snapshot(offset, limit))

    async def add(self, request: web.Request) -> web.Response:
        """POST /v1/phones {model, count?, location?, user?, plug_in?}: add phones."""
        data = await json_object(request)
        model = data.get("model")
        if not isinstance(model, str):
            raise ValueError("'model' must name a phone model (CX600, HP4120, 6725ip, ...)")
        location = data.get("location", "inside")
        if not isinstance(location, str):
            raise ValueError("'location' must be inside or outside")
        added = await self.lab.wall.add(
            model,
            count=data.get("count", 1),
            location=location,
            user=_optional_string(data, "user"),
            plug_in=_flag(data, "plug_in"),
        )
        return web.json_response(added)

    async def detail(self, request: web.Request) -> web.Response:
        """GET /v1/phones/{mac}: one phone in full."""
        with _unknown_as_404():
            return web.json_response(await self.lab.wall.detail(request.match_info["mac"]))

    async def act(self, request: web.Request) -> web.Response:
        """POST /v1/phones/{mac}/{action} {user?}: act on one phone."""
        data = await json_object(request)
        with _unknown_as_404():
            result = self.lab.wall.act(
                request.match_info["mac"],
                request.match_info["action"],
                user=_optional_string(data, "user"),
            )
        return web.json_response(result)

    async def remove(self, request: web.Request) -> web.Response:
        """DELETE /v1/phones/{mac}: take the phone off the wall."""
        with _unknown_as_404():
            return web.json_response(await self.lab.wall.remove(request.match_info["mac"]))


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def _optional_string(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name!r} must be a non-empty string")
    return value.strip()


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name!r} must be true or false")
    return value
