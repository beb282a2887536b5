"""The firewall policy: segments, overrides (most specific wins), the flip, and events."""

from __future__ import annotations

import ipaddress

import pytest

from lab.errors import FirewallError
from lab.events import Event, EventBus
from lab.net.firewall import FirewallPolicy, Zone


@pytest.fixture
def policy() -> FirewallPolicy:
    return FirewallPolicy(
        ipaddress.ip_network("127.10.0.0/16"), ipaddress.ip_network("127.20.0.0/16")
    )


def test_segments_classify_and_unknown_addresses_are_outside(policy: FirewallPolicy) -> None:
    assert policy.classify("127.10.0.50") is Zone.INSIDE
    assert policy.classify("127.20.0.50") is Zone.OUTSIDE
    assert policy.classify("127.0.0.1") is Zone.OUTSIDE
    assert policy.classify("not an address") is Zone.OUTSIDE
    assert policy.is_inside(ipaddress.ip_address("127.10.9.9"))


def test_most_specific_override_wins_and_clear_restores(policy: FirewallPolicy) -> None:
    policy.set_zone("127.10.1.0/24", Zone.OUTSIDE)
    policy.set_zone("127.10.1.7", "inside")
    assert policy.classify("127.10.1.6") is Zone.OUTSIDE
    assert policy.classify("127.10.1.7") is Zone.INSIDE
    assert policy.classify("127.10.2.1") is Zone.INSIDE
    policy.clear("127.10.1.0/24")
    assert policy.classify("127.10.1.6") is Zone.INSIDE
    assert [o.as_dict() for o in policy.overrides] == [
        {"network": "127.10.1.7/32", "zone": "inside"}
    ]


def test_flip_swaps_everything_and_reset_undoes_all(policy: FirewallPolicy) -> None:
    policy.set_zone("127.20.0.9", Zone.INSIDE)
    policy.flip()
    assert policy.classify("127.10.0.50") is Zone.OUTSIDE
    assert policy.classify("127.20.0.50") is Zone.INSIDE
    assert policy.classify("127.20.0.9") is Zone.OUTSIDE
    policy.clear()
    assert not policy.flipped
    assert policy.overrides == []
    assert policy.classify("127.10.0.50") is Zone.INSIDE


def test_every_change_is_published(policy: FirewallPolicy) -> None:
    seen: list[Event] = []
    policy.events.subscribe(seen.append)
    policy.set_zone("127.10.0.5", Zone.OUTSIDE)
    policy.clear("127.10.0.5")
    policy.flip()
    policy.clear()
    assert [(e.kind, e.data["action"]) for e in seen] == [
        ("firewall.changed", "set"),
        ("firewall.changed", "clear"),
        ("firewall.changed", "flip"),
        ("firewall.changed", "reset"),
    ]
    assert seen[0].data == {"action": "set", "network": "127.10.0.5/32", "zone": "outside"}


@pytest.mark.parametrize("bad", ["127.10.0.300", "inside", "", "127.10.0.0/33"])
def test_bad_targets_are_refused(policy: FirewallPolicy, bad: str) -> None:
    with pytest.raises(FirewallError, match="is not an IP address or CIDR range"):
        policy.set_zone(bad, Zone.OUTSIDE)


def test_bad_zone_and_unknown_override_are_refused(policy: FirewallPolicy) -> None:
    with pytest.raises(FirewallError, match="is not 'inside' or 'outside'"):
        policy.set_zone("127.10.0.5", "dmz")
    with pytest.raises(FirewallError, match="no override"):
        policy.clear("127.10.0.5")


async def test_streams_get_events_and_a_slow_one_loses_the_oldest() -> None:
    bus = EventBus(queue_size=2)
    bus.publish("before")  # published before the stream opened: not seen
    with bus.stream() as stream:
        for kind in ("a", "b", "c"):
            bus.publish(kind, n=1)
        assert (await stream.__anext__()).kind == "b"
        assert [e.kind for e in stream.pending()] == ["c"]
    bus.publish("after")
    assert stream.pending() == []


def test_a_failing_callback_does_not_stop_the_others() -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(lambda e: seen.append(e.kind))
    bus.publish("x")
    unsubscribe()
    bus.publish("y")
    assert seen == ["x"]
