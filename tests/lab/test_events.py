"""The event bus: callbacks for every kind or some, and whether a kind is listened to."""

from __future__ import annotations

from lab.events import Event, EventBus


def test_a_callback_hears_only_the_kinds_it_asked_for() -> None:
    bus = EventBus()
    everything: list[Event] = []
    firewall: list[Event] = []
    bus.subscribe(everything.append)
    stop = bus.subscribe(firewall.append, kinds=("firewall.changed",))
    bus.publish("audit", status=200)
    bus.publish("firewall.changed", address="127.0.0.1")
    assert [e.kind for e in everything] == ["audit", "firewall.changed"]
    assert [e.kind for e in firewall] == ["firewall.changed"]
    stop()
    bus.publish("firewall.changed", address="127.0.0.2")
    assert len(firewall) == 1
    assert len(everything) == 3


async def test_listened_follows_callbacks_and_streams() -> None:
    bus = EventBus()
    assert not bus.listened("audit")
    stop = bus.subscribe(lambda event: None, kinds=("firewall.changed",))
    assert bus.listened("firewall.changed")
    assert not bus.listened("audit")
    with bus.stream():
        assert bus.listened("audit")
    assert not bus.listened("audit")
    unsubscribe_all = bus.subscribe(lambda event: None)
    assert bus.listened("audit")
    unsubscribe_all()
    stop()
    assert not bus.listened("firewall.changed")
