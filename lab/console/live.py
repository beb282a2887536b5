"""Live updates: the lab's events, turned into "this panel changed" for every open page.

The console holds one long-lived connection to the lab's event stream (``GET /v1/events``)
and fans it out to the browsers over server-sent events. A browser is never sent the
lab's events themselves, only which panels (and which phones) changed; it then fetches
those panels' fragments. Bursts are coalesced: a change is announced at once when the
panel has been quiet, and otherwise at most once per ``interval`` (a thousand phones
checking make four refreshes a second, not a thousand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from lab.console.labapi import LabAPI
from lab.errors import AdminError
from lab.lifecycle import BackgroundTask

log = logging.getLogger(__name__)

PANELS = (
    "network",
    "servers",
    "firewall",
    "dns",
    "rules",
    "testdevices",
    "devconfig",
    "wall",
    "phone",
    "scenario",
    "demo",
)
"""Every live region of the page, by the name its fragment is served under."""

LAB_PANELS = tuple(p for p in PANELS if p not in ("scenario", "demo"))
"""The panels that show the lab the console is attached to (the runs bring their own)."""

KIND_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lab.", LAB_PANELS),
    ("service.started", ("network", "servers")),
    ("service.stopped", ("network", "servers")),
    ("firewall.", ("network", "firewall", "wall", "phone")),
    ("dns.faults.", ("network", "dns")),
    ("maintenance.", ("network", "servers")),
    ("edge.", ("network",)),
    ("store.", ("rules", "testdevices", "devconfig")),
    # A download's progress shows on the phone's card only.
    ("phone.progress", ("wall", "phone")),
    ("phone.", ("network", "wall", "phone")),
    # Every request is audited: transfers start and end, a phone's audit lines grow.
    ("audit", ("network", "servers", "phone")),
)
"""Which panels an event of the lab changes, by the start of its kind (first match wins)."""

PHONES_MAX = 100
"""Phones named in one announcement; beyond that it says "*" (any phone)."""

RETRY_MIN, RETRY_MAX = 0.5, 5.0
"""Seconds between attempts to reach the lab's event stream again."""


def panels_of(kind: str) -> tuple[str, ...]:
    """The panels an event of ``kind`` changes."""
    for prefix, panels in KIND_PANELS:
        if kind.startswith(prefix):
            return panels
    return ()


def phone_of(event: dict[str, Any]) -> str:
    """The MAC an event is about (a phone's, or an audit line's), or ""."""
    return str(event.get("mac") or "")


class Listener:
    """One open page's share of the announcements: what changed since it last took them."""

    def __init__(self) -> None:
        self.panels: set[str] = set()
        self.phones: set[str] = set()
        self.closed = False
        self._ready = asyncio.Event()

    def add(self, panels: Iterable[str], phones: Iterable[str]) -> None:
        """Merge an announcement into what this page has not taken yet."""
        self.panels.update(panels)
        self.phones.update(phones)
        self._ready.set()

    def close(self) -> None:
        """Wake the page's stream so that it ends."""
        self.closed = True
        self._ready.set()

    async def next(self) -> dict[str, list[str]] | None:
        """The next announcement: {"panels": [...], "phones": [...]}; None once closed."""
        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        panels, phones = sorted(self.panels), sorted(self.phones)
        self.panels.clear()
        self.phones.clear()
        if len(phones) > PHONES_MAX:
            phones = ["*"]
        return {"panels": panels, "phones": phones}


class Relay(BackgroundTask):
    """The lab's event stream, coalesced into panel announcements for every listener."""

    task_name = "console event relay"

    def __init__(self, api: LabAPI, interval: float = 0.25) -> None:
        self.api = api
        self.interval = interval
        self.connected = False
        self.problem = "not connected to the lab's event stream yet"
        self._listeners: set[Listener] = set()
        self._panels: set[str] = set()
        self._phones: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._last = -interval
        self._connected = asyncio.Event()

    async def run(self) -> None:
        """Follow the lab's events; when the stream ends, say so and try again."""
        delay = RETRY_MIN
        while True:
            try:
                async for event in self.api.events(on_open=self._opened):
                    delay = RETRY_MIN
                    kind = str(event.get("kind", ""))
                    mac = phone_of(event)
                    self.mark(panels_of(kind), [mac] if mac else ())
                self.problem = "the lab closed its event stream"
            except AdminError as exc:
                self.problem = str(exc)
            if self.connected:
                log.info("console: lost the lab's event stream: %s", self.problem)
                self.connected = False
                self.mark(LAB_PANELS)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            # A lab started again on the same state directory has a new token.
            self.api.reattach()

    async def wait_connected(self) -> None:
        """Wait until the lab's event stream is open (the first time)."""
        await self._connected.wait()

    def _opened(self) -> None:
        self.connected = True
        self._connected.set()
        self.problem = ""
        # Whatever happened while the stream was down is unknown: every panel may be stale.
        self.mark(LAB_PANELS)

    async def stop(self) -> None:
        """Stop following the lab and end every page's stream."""
        await super().stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for listener in list(self._listeners):
            listener.close()

    def mark(self, panels: Iterable[str], phones: Iterable[str] = ()) -> None:
        """Announce that ``panels`` (and ``phones``' details) changed, coalescing bursts."""
        self._panels.update(panels)
        self._phones.update(phones)
        if self._timer is not None or not (self._panels or self._phones):
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last + self.interval - loop.time())
        self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._last = asyncio.get_running_loop().time()
        panels, phones = self._panels, self._phones
        self._panels, self._phones = set(), set()
        for listener in self._listeners:
            listener.add(panels, phones)

    @contextlib.contextmanager
    def listen(self) -> Iterator[Listener]:
        """A listener for one page, for as long as the block runs."""
        listener = Listener()
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
