"""The CLI's side of the admin API: find the running lab, send one request, read the answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.admintoken import read_token
from lab.errors import AdminError, AdminRequestError
from lab.ops.runfile import read_run_file


class AdminClient:
    """Talks to the admin API of the lab running from a state directory."""

    def __init__(self, state_dir: Path, timeout: float = 10.0) -> None:
        info = read_run_file(state_dir)
        if not info["alive"]:
            raise AdminError(f"the lab of {state_dir} is not running (stale run.json)")
        admin = info.get("endpoints", {}).get("admin", {}).get("http")
        if not isinstance(admin, str):
            raise AdminError(f"the run.json of {state_dir} names no admin API")
        self.base = f"http://{admin}"
        try:
            self.token = read_token(state_dir)
        except OSError as exc:
            raise AdminError(f"cannot read the admin token: {exc}") from None
        self.timeout = timeout
        # Never through a proxy from the environment: the admin API is on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        # The base URL is always http://127.0.0.1:<port> from run.json, never user input.
        request = urllib.request.Request(  # noqa: S310
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise (AdminRequestError if exc.code == 400 else AdminError)(str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"cannot reach the lab's admin API at {self.base}: {exc}") from None

    def get(self, path: str) -> Any:
        """GET ``path`` and return the decoded JSON."""
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` to ``path`` and return the decoded JSON."""
        return self._request("POST", path, body or {})

    def delete(self, path: str) -> Any:
        """DELETE ``path`` and return the decoded JSON."""
        return self._request("DELETE", path, None)

    def events(self) -> Iterator[dict[str, Any]]:
        """Lab events as they happen, until the lab stops or the caller stops iterating."""
        request = urllib.request.Request(  # noqa: S310 - see _request
            self.base + "/v1/events", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with self._opener.open(request) as response:
                for line in response:
                    yield json.loads(line)
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"event stream ended: {exc}") from None
