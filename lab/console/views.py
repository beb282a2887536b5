"""The console's routes: the page, its panels' fragments, the live stream and the actions.

- ``GET /``: the whole page, every panel rendered in it.
- ``GET /panels/NAME``: one panel's HTML fragment (the page swaps it in when told).
- ``GET /events``: server-sent events naming the panels that changed (lab.console.live).
- ``POST /actions/NAME``: one action (lab.console.actions); JSON ``{"message"}`` or
  ``{"error"}`` for the page's script, or a redirect back for a plain form post.

lab.console.guard has checked the Host, the session and (for actions) origin and CSRF
token before any of these runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from lab.console.actions import ACTIONS, FAULT_KINDS, ZONES, Form
from lab.console.guard import Guard
from lab.console.panels import PANEL_FUNCTIONS, Sources, form_choices
from lab.errors import AdminError, AdminRequestError, LabError, LabUnreachableError

HEARTBEAT = 15.0
"""Seconds between keep-alive comments on an idle event stream."""


@dataclass(frozen=True)
class Served:
    """What the routes serve from: the panels' sources, the guard that knows the sessions,
    and the lab's clock (so the page's clock ticks in lab time)."""

    sources: Sources
    guard: Guard
    clock: Mapping[str, Any] | None


SERVED_KEY = web.AppKey("served", Served)


async def render_panel(request: web.Request, name: str, query: Mapping[str, str]) -> Markup:
    """One panel's fragment; a sentence saying why when the lab cannot be read."""
    served = request.app[SERVED_KEY]
    try:
        context = await PANEL_FUNCTIONS[name](served.sources, query)
        template = f"panel_{name}.html"
    except AdminError as exc:
        context = {"panel": name, "problem": str(exc)}
        template = "panel_unavailable.html"
    context["csrf"] = _csrf(request)
    return Markup(aiohttp_jinja2.render_string(template, request, context))  # noqa: S704


def _csrf(request: web.Request) -> str:
    session = request.app[SERVED_KEY].guard.session_of(request)
    return session.csrf if session else ""


async def page(request: web.Request) -> web.Response:
    """GET /: the whole page."""
    served = request.app[SERVED_KEY]
    config = served.sources.config
    names = list(PANEL_FUNCTIONS)
    rendered = await asyncio.gather(*(render_panel(request, n, request.query) for n in names))
    context = {
        "csrf": _csrf(request),
        "config": config,
        "panels": dict(zip(names, rendered, strict=True)),
        "clock": served.clock,
        "fault_kinds": FAULT_KINDS,
        "zones": ZONES,
        "selected_phone": request.query.get("phone", ""),
        "wall_page": request.query.get("page", "1"),
        **form_choices(config),
    }
    return aiohttp_jinja2.render_template("page.html", request, context)


async def panel(request: web.Request) -> web.Response:
    """GET /panels/NAME: one panel's fragment."""
    name = request.match_info["name"]
    if name not in PANEL_FUNCTIONS:
        raise web.HTTPNotFound(text=f"no panel {name!r}")
    html = await render_panel(request, name, request.query)
    return web.Response(text=html, content_type="text/html")


async def events(request: web.Request) -> web.StreamResponse:
    """GET /events: server-sent events, one ``changed`` event per coalesced announcement."""
    relay = request.app[SERVED_KEY].sources.relay
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    # Reconnect quickly after the console restarts; say whether the lab is there.
    hello = {"panels": [], "phones": [], "connected": relay.connected}
    await response.write(f"retry: 1000\nevent: hello\ndata: {json.dumps(hello)}\n\n".encode())
    # A page that goes away (closed, reloaded) ends its stream.
    with relay.listen() as listener, contextlib.suppress(ConnectionResetError):
        while True:
            try:
                message = await asyncio.wait_for(listener.next(), HEARTBEAT)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if message is None:
                break
            data = json.dumps({**message, "connected": relay.connected})
            await response.write(f"event: changed\ndata: {data}\n\n".encode())
    return response


async def action(request: web.Request) -> web.StreamResponse:
    """POST /actions/NAME: run one action through the admin API."""
    name = request.match_info["name"]
    act = ACTIONS.get(name)
    if act is None:
        raise web.HTTPNotFound(text=f"no action {name!r}")
    status, answer = 200, {}
    try:
        form = Form(await request.post())
        answer = {"message": await act(request.app[SERVED_KEY].sources, form)}
    except (AdminRequestError, ValueError) as exc:
        status, answer = 400, {"error": str(exc)}
    except LabUnreachableError as exc:
        status, answer = 502, {"error": str(exc)}
    except LabError as exc:
        # The lab refused the change in its current state, or a run is still going.
        status, answer = 409, {"error": str(exc)}
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(answer, status=status)
    if status != 200:
        return web.Response(status=status, text=f"{answer['error']}\n")
    # A plain form post (no script): back to the page.
    raise web.HTTPSeeOther("/")


def add_routes(app: web.Application) -> None:
    """The console's routes (the static files are added by lab.console.app)."""
    app.router.add_get("/", page)
    app.router.add_get("/panels/{name}", panel)
    app.router.add_get("/events", events)
    app.router.add_post("/actions/{name}", action)
