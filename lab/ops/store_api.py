"""The admin API's routes for the update store: the administrator's side on a running lab.

What `lab update`, `lab test-device`, `lab config` and `lab cab build` do from the command
line, a running lab does here for whoever holds its admin token (the console among them),
with the same code (lab.ops.administer) and the same JSON as their ``--json``:

    GET    /v1/rules?pool=&model=                         the rules
    POST   /v1/rules/import?pool=POOL | ?all_pools=1 [&name=FILE]   the cab as the body
    POST   /v1/rules/build     {models, version, pool | all_pools, approve, image_size}
    POST   /v1/rules/approve | reset | restore | remove   {rules | pool, model, all}
    GET    /v1/test-devices
    POST   /v1/test-devices    {mac | serial, name}
    DELETE /v1/test-devices    {mac | serial}
    GET    /v1/device-config
    POST   /v1/device-config   {settings: {NAME: VALUE | "default"}}

The rules of these routes:

- An uploaded cab is streamed to a scratch folder of the state directory (never held in
  memory; the admin app's body limit is for JSON bodies), checked and imported as `lab
  update import` does, and removed whatever happens. The store's work (checking a cab,
  importing, SQLite) runs in a worker thread, never on the loop the lab serves on.
- Every change is taken by the service at once (``ServicePool.refresh_store``: the very
  next check sees it) and published as a ``store.changed`` event (what was done, the
  snapshot generation in force), so a console refreshes live. Changes are stamped in lab
  time.
- Errors are the admin app's (lab.service.admin): bad input, a bad cab, an unknown rule
  400 with the message the CLI prints; a change the lab refuses 409.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from lab.errors import CabError
from lab.ops.administer import (
    Administration,
    cab_file_name,
    changes_json,
    devices_json,
    import_json,
    published_json,
    remove_scratch,
    rules_json,
    scratch_folder,
    settings_json,
)
from lab.ops.operated import OperatedLab
from lab.service.admin import json_object
from lab.store.cab import CAB_NAME, DEFAULT_IMAGE_SIZE, check_image_size
from lab.store.decision import Action
from lab.store.importer import MAX_CAB_SIZE
from lab.store.store import Selection

T = TypeVar("T")

CAB_TYPES = frozenset({"application/vnd.ms-cab-compressed", "application/octet-stream"})
"""What an uploaded cab may be sent as (no Content-Type counts as octet-stream)."""

WRITE_SIZE = 1024 * 1024
"""An upload is written to its file in pieces of about this size, each in a thread."""

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def register(app: web.Application, lab: OperatedLab) -> None:
    """Add the update store's routes to the admin application of ``lab``."""
    routes = StoreRoutes(lab)
    app.router.add_get("/v1/rules", routes.rules)
    app.router.add_post("/v1/rules/import", routes.import_upload)
    app.router.add_post("/v1/rules/build", routes.build)
    for action in Action:
        app.router.add_post(f"/v1/rules/{action}", routes.changer(action))
    app.router.add_post("/v1/rules/remove", routes.remove)
    app.router.add_get("/v1/test-devices", routes.test_devices)
    app.router.add_post("/v1/test-devices", routes.add_test_device)
    app.router.add_delete("/v1/test-devices", routes.remove_test_device)
    app.router.add_get("/v1/device-config", routes.device_config)
    app.router.add_post("/v1/device-config", routes.set_settings)


class StoreRoutes:
    """The handlers, on the administration of one running lab."""

    def __init__(self, lab: OperatedLab) -> None:
        self.lab = lab
        self.admin = Administration(
            config=lab.config, state_dir=lab.state_dir, pki=lab.pki, now=lab.clock.now
        )

    async def _run(self, operation: Callable[[Administration], T]) -> T:
        """``operation`` in a worker thread; then, on the loop, the service takes what it
        changed and ``store.changed`` says so (also when it failed after a change)."""
        announced: list[str] = []
        admin = dataclasses.replace(self.admin, announce=announced.append)
        try:
            return await asyncio.to_thread(operation, admin)
        finally:
            if announced:
                generation = self.lab.pool.refresh_store()
                for action in announced:
                    self.lab.events.publish("store.changed", action=action, generation=generation)

    # --- rules ---

    async def rules(self, request: web.Request) -> web.Response:
        """GET /v1/rules?pool=&model=: the rules, of one pool and/or model."""
        pool, model = _query(request, "pool"), _query(request, "model")
        rules = await self._run(lambda admin: admin.rules(pool, model))
        return web.json_response(rules_json(rules))

    async def import_upload(self, request: web.Request) -> web.Response:
        """POST /v1/rules/import?pool=POOL or ?all_pools=1 [&name=UCUpdates.cab], the cab as
        the body: check it completely, then import it all or nothing."""
        pools = self.admin.pools(_query(request, "pool"), _query_flag(request, "all_pools"))
        name = cab_file_name(_query(request, "name") or CAB_NAME)
        if request.content_type not in CAB_TYPES:
            raise web.HTTPUnsupportedMediaType(
                text=json.dumps({"error": f"send the cab as {' or '.join(sorted(CAB_TYPES))}"}),
                content_type="application/json",
            )
        folder = await asyncio.to_thread(scratch_folder, self.lab.state_dir)
        try:
            path = folder / name
            await _receive(request, path)
            result = await self._run(lambda admin: admin.import_cab(admin.check_cab(path), pools))
        finally:
            await asyncio.to_thread(remove_scratch, folder)
        return web.json_response(import_json(result))

    async def build(self, request: web.Request) -> web.Response:
        """POST /v1/rules/build {models?, version, pool? | all_pools?, approve?, image_size?}:
        a cab of the lab's own builder, imported (and approved)."""
        data = await json_object(request)
        models = _strings(data, "models")
        version = _string(data, "version")
        if version is None:
            raise ValueError("'version' must be a firmware version such as 4.0.7577.4372")
        image_size = data.get("image_size", DEFAULT_IMAGE_SIZE)
        if not isinstance(image_size, int) or isinstance(image_size, bool):
            raise ValueError("'image_size' must be a number of bytes")
        check_image_size(image_size)
        pools = self.admin.pools(_string(data, "pool"), _flag(data, "all_pools"))
        approve = _flag(data, "approve")
        published = await self._run(
            lambda admin: admin.publish(
                models, version, pools, image_size=image_size, approve=approve
            )
        )
        return web.json_response(published_json(published))

    def changer(self, action: Action) -> Handler:
        """POST /v1/rules/{approve|reset|restore} {rules? | pool?, model?, all?}."""

        async def change(request: web.Request) -> web.Response:
            selection = self._selection(await json_object(request))
            changes = await self._run(lambda admin: admin.change(action, selection))
            return web.json_response(changes_json(changes))

        return change

    async def remove(self, request: web.Request) -> web.Response:
        """POST /v1/rules/remove {rules? | pool?, model?, all?}: the rules and their files."""
        selection = self._selection(await json_object(request))
        changes = await self._run(lambda admin: admin.remove(selection))
        return web.json_response(changes_json(changes))

    def _selection(self, data: Mapping[str, Any]) -> Selection:
        return self.admin.selection(
            _strings(data, "rules"),
            pool=_string(data, "pool"),
            model=_string(data, "model"),
            all_=_flag(data, "all"),
        )

    # --- test devices ---

    async def test_devices(self, request: web.Request) -> web.Response:
        """GET /v1/test-devices."""
        devices = await self._run(lambda admin: admin.test_devices())
        return web.json_response(devices_json(devices))

    async def add_test_device(self, request: web.Request) -> web.Response:
        """POST /v1/test-devices {mac | serial, name?}."""
        data = await json_object(request)
        mac, serial, name = _string(data, "mac"), _string(data, "serial"), _string(data, "name")
        device = await self._run(lambda admin: admin.add_test_device(mac, serial, name))
        return web.json_response(device.as_dict())

    async def remove_test_device(self, request: web.Request) -> web.Response:
        """DELETE /v1/test-devices {mac | serial}."""
        data = await json_object(request)
        mac, serial = _string(data, "mac"), _string(data, "serial")
        device = await self._run(lambda admin: admin.remove_test_device(mac, serial))
        return web.json_response(device.as_dict())

    # --- device-update configuration ---

    async def device_config(self, request: web.Request) -> web.Response:
        """GET /v1/device-config: every setting's value, by Lync's name."""
        config = await self._run(lambda admin: admin.device_config())
        return web.json_response(settings_json(config))

    async def set_settings(self, request: web.Request) -> web.Response:
        """POST /v1/device-config {settings: {NAME: VALUE | "default"}}: all or none."""
        settings = (await json_object(request)).get("settings")
        if not isinstance(settings, dict) or not all(
            isinstance(value, str | int) and not isinstance(value, bool)
            for value in settings.values()
        ):
            raise ValueError("'settings' must be an object of NAME: VALUE (text or a number)")
        changes = {str(name): str(value) for name, value in settings.items()}
        config = await self._run(lambda admin: admin.set_settings(changes))
        return web.json_response(settings_json(config))


async def _receive(request: web.Request, path: Path) -> None:
    """Stream the request's body into a new file at ``path``; CabError when it is larger
    than a cab may be."""
    file = await asyncio.to_thread(path.open, "xb")
    size = 0
    try:
        piece = bytearray()
        async for data in request.content.iter_chunked(WRITE_SIZE):
            size += len(data)
            if size > MAX_CAB_SIZE:
                raise CabError(f"{path.name}: larger than a cab may be ({MAX_CAB_SIZE} bytes)")
            piece += data
            if len(piece) >= WRITE_SIZE:
                full, piece = piece, bytearray()
                await asyncio.to_thread(file.write, full)
        if piece:
            await asyncio.to_thread(file.write, piece)
    finally:
        await asyncio.to_thread(file.close)


# --- reading requests ------------------------------------------------------------------------


def _string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{key!r} must be a list of non-empty strings")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false")
    return value


def _query(request: web.Request, key: str) -> str | None:
    return request.query.get(key) or None


def _query_flag(request: web.Request, key: str) -> bool:
    text = request.query.get(key, "0").strip().lower()
    if text not in _FLAGS:
        raise ValueError(f"{key}={text!r}: give 1 or 0")
    return _FLAGS[text]
