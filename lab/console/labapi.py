"""The console's side of the admin API: one client session to the running lab, token kept here.

Everything the page changes, it changes through the lab's admin API, as the CLI does
(lab.ops.adminclient): nothing is implemented twice. The token never leaves this process;
the browser only ever holds the console's own session cookie (lab.console.guard).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp

from lab.admintoken import read_token
from lab.errors import AdminError, AdminRequestError, LabStateError, LabUnreachableError
from lab.lifecycle import Service
from lab.ops.runner import Lab, read_run_file

REQUEST_TIMEOUT = 60.0
"""Seconds an admin request may take (building a cab for every model takes a few)."""


class LabAPI(Service):
    """The admin API of one running lab, reached over loopback with its token."""

    def __init__(self, base: str, token: str, *, state_dir: Path | None = None) -> None:
        self.base = base.rstrip("/")
        self._token = token
        self._state_dir = state_dir
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def attach(cls, state_dir: Path) -> LabAPI:
        """The API of the lab running from ``state_dir`` (its run.json and admin.token);
        ``reattach`` follows that lab when it is started again."""
        base, token = _published(state_dir)
        return cls(base, token, state_dir=state_dir)

    def reattach(self) -> None:
        """Read the address and token the lab of the state directory publishes again (a lab
        started anew has a new token, maybe a new port); nothing for a lab of this process
        or when none runs there now."""
        if self._state_dir is None:
            return
        # Not running now: the next attempt reads it again.
        with contextlib.suppress(LabStateError):
            self.base, self._token = _published(self._state_dir)

    @classmethod
    def for_lab(cls, lab: Lab) -> LabAPI:
        """The API of a lab running in this process (once it has started)."""
        host, port = lab.admin_address
        return cls(f"http://{host}:{port}", read_token(lab.state_dir))

    async def start(self) -> None:
        """Open the client session (never through a proxy: the lab is on loopback)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                trust_env=False,
            )

    async def stop(self) -> None:
        """Close the client session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open client session."""
        if self._session is None:
            raise AdminError("the console's connection to the lab is not open")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        data: bytes | IO[bytes] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer; the lab's refusals come back
        as AdminRequestError (bad input) or AdminError (anything else), with its message."""
        headers = self._headers()
        kwargs: dict[str, Any] = {"params": params, "headers": headers}
        if data is not None:
            kwargs["data"] = data
            headers["Content-Type"] = "application/vnd.ms-cab-compressed"
        elif body is not None:
            kwargs["json"] = dict(body)
        try:
            async with self.session.request(method, self.base + path, **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _refusal(response.status, response.reason, text)
                return json.loads(text) if text else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise LabUnreachableError(
                f"the lab's admin API at {self.base} did not answer: {exc}"
            ) from None

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path``."""
        return await self.request("GET", path, params=params)

    async def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        data: bytes | IO[bytes] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """POST a JSON ``body`` (or ``data``, a cab's bytes or file, streamed) to ``path``."""
        if data is None and body is None:
            body = {}
        return await self.request("POST", path, body=body, data=data, params=params)

    async def delete(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """DELETE ``path``."""
        return await self.request("DELETE", path, body=body)

    async def events(
        self, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The lab's events as they happen (``GET /v1/events``), until the lab goes away;
        ``on_open`` is called once the lab has accepted the stream."""
        try:
            async with self.session.get(
                self.base + "/v1/events",
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            ) as response:
                if response.status >= 400:
                    raise _refusal(response.status, response.reason, await response.text())
                if on_open is not None:
                    on_open()
                while line := await response.content.readline():
                    yield json.loads(line)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise LabUnreachableError(f"the lab's event stream ended: {exc}") from None


def _published(state_dir: Path) -> tuple[str, str]:
    """The admin API's base URL and token of the lab running from ``state_dir``."""
    info = read_run_file(state_dir)
    if not info["alive"]:
        raise LabStateError(f"the lab of {state_dir} is not running (stale run.json)")
    try:
        token = read_token(state_dir)
    except OSError as exc:
        raise LabStateError(f"cannot read the admin token: {exc}") from None
    return f"http://{info['endpoints']['admin']['http']}", token


def _refusal(status: int, reason: str | None, text: str) -> AdminError:
    try:
        message = str(json.loads(text).get("error") or reason)
    except (ValueError, AttributeError):
        message = text.strip() or str(reason)
    if status == 401:
        return AdminError(f"the lab refused the console's admin token: {message}")
    return (AdminRequestError if status == 400 else AdminError)(message)
