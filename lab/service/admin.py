"""The admin API of a running lab: loopback only, guarded by a token in the state directory.

The CLI's runtime commands (`lab firewall`, `lab dns fault`, `lab maintenance`, `lab
events`) talk to a running lab through it, and its store commands (`lab update`, `lab
test-device`, `lab config set`) announce their changes (``POST /v1/store/refresh``) so
the next check sees them. Every request carries ``Authorization: Bearer
<token>``; the token is made at start-up into ``<state>/admin.token`` (mode 0600; see
lab.admintoken), so only the user who runs the lab can change it. Errors come back as
JSON ``{"error": "..."}`` with 400 for bad input, 401 for a missing or wrong token, 404 for
unknown things and 409 for a change the lab refuses in its current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from lab.errors import DNSError, FirewallError, LabError, ServiceError
from lab.events import EventBus
from lab.net.dns import DNSServer
from lab.net.firewall import FirewallPolicy
from lab.service.pool import ServicePool
from lab.service.sites import TLSSite


class AdministeredLab(Protocol):
    """What the admin API changes and shows of a running lab (lab.ops.runner.Lab)."""

    @property
    def firewall(self) -> FirewallPolicy:
        """The firewall policy."""
        ...

    @property
    def dns(self) -> DNSServer:
        """The DNS server (its faults)."""
        ...

    @property
    def pool(self) -> ServicePool:
        """The pool of front ends (maintenance)."""
        ...

    @property
    def events(self) -> EventBus:
        """The lab's events."""
        ...

    def status(self) -> dict[str, Any]:
        """Everything ``lab status`` shows."""
        ...


LAB_KEY: web.AppKey[AdministeredLab] = web.AppKey("lab")
TOKEN_KEY = web.AppKey("token", str)


@dataclass
class ServingSite:
    """The site serving the app (known once it starts), whose request deadlines the guard
    keeps (lab.service.sites)."""

    site: TLSSite | None = None


SITE_KEY = web.AppKey("site", ServingSite)
FOLLOWERS_KEY: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("followers")
"""The handlers streaming events right now (ended when the lab stops)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token, then translate the lab's errors into JSON answers."""
    site = request.app[SITE_KEY].site
    if site is None:
        return await _answer(request, handler)
    with site.serving(request):
        return await _answer(request, handler)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    # RFC 6750: "Bearer" (any case), one space, the token; nothing else is a credential.
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), request.app[TOKEN_KEY].encode()
    ):
        response = _error(
            401,
            "missing or wrong admin token: send 'Authorization: Bearer <token>' "
            "(the token is admin.token in the state dir)",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="lab admin"'
        return response
    try:
        return await handler(request)
    except (FirewallError, DNSError, ValueError) as exc:
        return _error(400, str(exc))
    except ServiceError as exc:
        return _error(409, str(exc))
    except LabError as exc:
        return _error(409, str(exc))


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object (none, or only white space, is ``{}``);
    ValueError (400) when it is anything else. Every admin route reads its input so."""
    text = await request.text() if request.can_read_body else ""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: endpoints, firewall, DNS counters and servers."""
    return web.json_response(request.app[LAB_KEY].status())


async def firewall_show(request: web.Request) -> web.Response:
    """GET /v1/firewall."""
    return web.json_response(request.app[LAB_KEY].firewall.snapshot())


async def firewall_change(request: web.Request) -> web.Response:
    """POST /v1/firewall: {"action": set|clear|flip|reset, ...}."""
    firewall = request.app[LAB_KEY].firewall
    data = await json_object(request)
    action = data.get("action")
    if action == "set":
        firewall.set_zone(_str(data, "target"), _str(data, "zone"))
    elif action == "clear":
        firewall.clear(_str(data, "target"))
    elif action == "flip":
        firewall.flip(bool(data.get("on", True)))
    elif action == "reset":
        firewall.clear()
    else:
        raise ValueError(f"unknown firewall action {action!r} (set, clear, flip, reset)")
    return web.json_response(firewall.snapshot())


async def faults_show(request: web.Request) -> web.Response:
    """GET /v1/dns/faults."""
    return web.json_response(request.app[LAB_KEY].dns.faults.snapshot())


async def faults_set(request: web.Request) -> web.Response:
    """POST /v1/dns/faults: {"name", "kind", "delay"?}."""
    faults = request.app[LAB_KEY].dns.faults
    data = await json_object(request)
    delay = data.get("delay", 0)
    if not isinstance(delay, int | float) or isinstance(delay, bool):
        raise ValueError("'delay' must be a number of seconds")
    faults.set(_str(data, "name"), _str(data, "kind"), delay=float(delay))
    return web.json_response(faults.snapshot())


async def faults_clear(request: web.Request) -> web.Response:
    """DELETE /v1/dns/faults[/{name}]."""
    faults = request.app[LAB_KEY].dns.faults
    name = request.match_info.get("name")
    if name:
        faults.clear(name)
    else:
        faults.clear_all()
    return web.json_response(faults.snapshot())


async def maintenance(request: web.Request) -> web.Response:
    """POST /v1/maintenance/{server}/{enter|exit}: {"immediate"?, "force"?}."""
    lab = request.app[LAB_KEY]
    server = request.match_info["server"]
    verb = request.match_info["verb"]
    data = await json_object(request)
    if verb == "enter":
        lab.pool.enter_maintenance(
            server, immediate=bool(data.get("immediate")), force=bool(data.get("force"))
        )
    elif verb == "exit":
        lab.pool.exit_maintenance(server)
    else:
        raise web.HTTPNotFound(text=json.dumps({"error": f"unknown verb {verb!r}"}))
    return web.json_response(lab.status())


async def store_refresh(request: web.Request) -> web.Response:
    """POST /v1/store/refresh: take the update store's changes now (the CLI's store commands
    announce theirs); answers the snapshot generation in force."""
    return web.json_response({"generation": request.app[LAB_KEY].pool.refresh_store()})


async def inventory_flush(request: web.Request) -> web.Response:
    """POST /v1/inventory/flush: write the sightings gathered since the last batch now (so
    `lab phones` shows every check answered so far); answers how many phones."""
    inventory = request.app[LAB_KEY].pool.inventory
    written = await inventory.flush() if inventory is not None else 0
    return web.json_response({"phones": written})


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: lab events as they happen, one JSON object per line."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    followers = request.app[FOLLOWERS_KEY]
    task = asyncio.current_task()
    assert task is not None
    followers.add(task)
    try:
        # A follower that goes away (`lab events` stopped, a console closed) ends the stream
        # at the next event; the lab stopping ends it at once (_end_followers).
        with (
            request.app[LAB_KEY].events.stream() as stream,
            contextlib.suppress(ConnectionResetError),
        ):
            async for event in stream:
                # What queued meanwhile goes in the same write: under load (an audit event
                # per request) one write carries many lines.
                lines = (json.dumps(e.as_dict(), default=str) for e in [event, *stream.pending()])
                await response.write(("\n".join(lines) + "\n").encode())
    finally:
        followers.discard(task)
    return response


async def _end_followers(app: web.Application) -> None:
    """On shutdown, end the event streams: a follower would otherwise hold the lab's stop
    for the server's whole shutdown timeout, waiting for an event that never comes."""
    followers: set[asyncio.Task[Any]] = app[FOLLOWERS_KEY]
    for task in list(followers):
        task.cancel()


def make_app(
    lab: AdministeredLab,
    token: str,
    extensions: Sequence[Callable[[web.Application], None]] = (),
) -> web.Application:
    """The admin application for ``lab``; each of ``extensions`` adds routes of a layer
    above this one (lab.ops.adminroutes), behind the same token and error answers."""
    app = web.Application(middlewares=[_guard], client_max_size=64 * 1024)
    app[LAB_KEY] = lab
    app[TOKEN_KEY] = token
    app[SITE_KEY] = ServingSite()
    app[FOLLOWERS_KEY] = set()
    app.on_shutdown.append(_end_followers)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/firewall", firewall_show)
    app.router.add_post("/v1/firewall", firewall_change)
    app.router.add_get("/v1/dns/faults", faults_show)
    app.router.add_post("/v1/dns/faults", faults_set)
    app.router.add_delete("/v1/dns/faults", faults_clear)
    app.router.add_delete("/v1/dns/faults/{name}", faults_clear)
    app.router.add_post("/v1/maintenance/{server}/{verb}", maintenance)
    app.router.add_post("/v1/store/refresh", store_refresh)
    app.router.add_post("/v1/inventory/flush", inventory_flush)
    app.router.add_get("/v1/events", events)
    for extend in extensions:
        extend(app)
    return app
