"""Lab events: a small publish/subscribe bus every lab part reports changes to.

Publishing never blocks and never fails because of a subscriber: callbacks that raise are
logged and kept, and a slow async subscriber loses its oldest events rather than stalling
the publisher (its queue is bounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something that happened in the lab: a kind such as ``firewall.changed`` and its data."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"kind": self.kind, "at": self.at, **self.data}


Callback = Callable[[Event], None]


class EventBus:
    """Fan-out of lab events to callbacks and async subscribers."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._callbacks: list[tuple[Callback, frozenset[str] | None]] = []
        self._queues: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size
        # Whether a kind reaches a callback, remembered until the callbacks change.
        self._listened: dict[str, bool] = {}

    def listened(self, kind: str) -> bool:
        """Whether an event of ``kind`` would reach anyone (a publisher of frequent events
        asks first, and spares building what nobody reads)."""
        if self._queues:
            return True
        known = self._listened.get(kind)
        if known is None:
            known = any(kinds is None or kind in kinds for _, kinds in self._callbacks)
            self._listened[kind] = known
        return known

    def publish(self, kind: str, **data: Any) -> Event:
        """Deliver an event to every subscriber and return it."""
        event = Event(kind, data)
        for callback, kinds in list(self._callbacks):
            if kinds is not None and kind not in kinds:
                continue
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed on %s", kind)
        for queue in self._queues:
            if queue.full():
                with suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        return event

    def subscribe(
        self, callback: Callback, kinds: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call ``callback`` for every event (or those of ``kinds``); returns a function that
        unsubscribes."""
        entry = (callback, None if kinds is None else frozenset(kinds))
        self._callbacks.append(entry)
        self._listened.clear()

        def unsubscribe() -> None:
            self._callbacks.remove(entry)
            self._listened.clear()

        return unsubscribe

    def stream(self) -> EventStream:
        """A subscription that starts now: iterate it for events, close it when done."""
        return EventStream(self)


class EventStream:
    """Events published since the stream was opened, oldest first (bounded, see EventBus)."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(bus._queue_size)
        bus._queues.add(self._queue)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self._queue.get()

    def pending(self) -> list[Event]:
        """Take every event already queued without waiting."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._queues.discard(self._queue)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
