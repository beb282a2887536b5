"""The router's rules are the firewall policy written for nftables (lab.net.nftables), and
the lab's addresses move into its own network by their place in their segment."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from lab.errors import NetnsError
from lab.net.config import LabConfig, default_config
from lab.net.firewall import FirewallPolicy
from lab.net.netns import INSIDE, OUTSIDE, PERIMETER, netns_config, segments_of
from lab.net.nftables import ruleset, zone_rules


@pytest.fixture
def config() -> LabConfig:
    return netns_config(default_config())


def test_addresses_keep_their_place_and_servers_take_lyncs_ports(config: LabConfig) -> None:
    assert [str(fe.address) for fe in config.front_ends] == [
        "198.18.0.11",
        "198.18.0.12",
        "198.18.0.21",
    ]
    assert str(config.dns_address) == "198.18.0.2"
    assert str(config.edge.address) == "203.0.113.10"
    assert (config.inside, config.outside) == (INSIDE, OUTSIDE)
    ports = config.ports
    assert (ports.dns, ports.internal, ports.external, ports.edge) == (53, 443, 4443, 443)
    # The admin API and the console stay where the config puts them.
    assert (ports.admin, ports.console) == (10080, 10081)


def test_segments_hold_the_servers_and_route_the_phones_range(config: LabConfig) -> None:
    inside, outside, perimeter = segments_of(config)
    assert [str(h) for h in inside.hosts] == [
        "198.18.0.11",
        "198.18.0.12",
        "198.18.0.21",
        "198.18.0.2",
    ]
    assert outside.hosts == ()
    assert outside.phones
    assert perimeter.network == PERIMETER
    assert not perimeter.phones
    assert str(inside.router) == "198.18.0.1"
    # x.y.1.0 to the end of the /16, as few blocks as can be.
    blocks = inside.phone_ranges
    assert blocks[0] == ipaddress.IPv4Network("198.18.1.0/24")
    assert blocks[-1] == ipaddress.IPv4Network("198.18.128.0/17")
    assert sum(block.num_addresses for block in blocks) == 65536 - 256


def test_an_address_with_no_place_in_the_lab_network_is_refused() -> None:
    base = default_config()
    wide = dataclasses.replace(
        base,
        outside=ipaddress.IPv4Network("127.16.0.0/12"),
        edge=dataclasses.replace(base.edge, address=ipaddress.IPv4Address("127.20.1.10")),
    )
    with pytest.raises(
        NetnsError, match=r"the edge 127\.20\.1\.10 has no place in 203\.0\.113\.0/24: "
    ):
        netns_config(wide)


def test_the_rules_ask_the_zone_in_the_policys_order(config: LabConfig) -> None:
    policy = FirewallPolicy(config.inside, config.outside)
    assert zone_rules(policy) == [
        "ip saddr 198.18.0.0/16 jump from_inside  # the inside segment",
        "jump from_outside  # every other address is outside",
    ]
    policy.set_zone("198.19.0.0/16", "inside")
    policy.set_zone("198.19.1.5", "outside")
    policy.set_zone("2001:db8::/32", "inside")
    # The most specific override first, as classify() decides.
    assert zone_rules(policy)[:3] == [
        "ip saddr 198.19.1.5/32 jump from_outside  # override",
        "ip6 saddr 2001:db8::/32 jump from_inside  # override",
        "ip saddr 198.19.0.0/16 jump from_inside  # override",
    ]
    policy.flip()
    assert zone_rules(policy) == [
        "ip saddr 198.19.1.5/32 jump from_inside  # override",
        "ip6 saddr 2001:db8::/32 jump from_outside  # override",
        "ip saddr 198.19.0.0/16 jump from_outside  # override",
        "ip saddr 198.18.0.0/16 jump from_outside  # the inside segment",
        "jump from_inside  # every other address is outside",
    ]


@pytest.mark.parametrize(
    "address", ["198.18.0.11", "198.19.1.5", "198.19.7.7", "203.0.113.10", "192.0.2.1"]
)
@pytest.mark.parametrize("flipped", [False, True])
def test_the_first_matching_rule_gives_the_policys_zone(
    config: LabConfig, address: str, flipped: bool
) -> None:
    policy = FirewallPolicy(config.inside, config.outside)
    policy.set_zone("198.19.0.0/16", "inside")
    policy.set_zone("198.19.1.5", "outside")
    policy.flip(flipped)
    ip = ipaddress.ip_address(address)
    for rule in zone_rules(policy):
        words = rule.split()
        if words[0] == "jump" or (words[0] == "ip" and ip in ipaddress.ip_network(words[2])):
            chain = words[words.index("jump") + 1]
            break
    assert chain == f"from_{policy.classify(address).value}"


def test_the_ruleset_publishes_dns_and_the_edge_and_counts_what_it_drops(config: LabConfig) -> None:
    text = ruleset(FirewallPolicy(config.inside, config.outside), config)
    assert text.startswith("table inet lab {")
    assert "type filter hook forward priority filter; policy drop;" in text
    assert "ct state established,related accept" in text
    assert (
        "ip saddr 203.0.113.10 ip daddr { 198.18.0.11, 198.18.0.12, 198.18.0.21 } "
        "tcp dport 4443 accept" in text
    )
    assert "ip daddr 198.18.0.2 udp dport 53 accept" in text
    assert "ip daddr 198.18.0.2 tcp dport 53 accept" in text
    assert "ip daddr 203.0.113.10 tcp dport 443 accept" in text
    assert 'counter name "dropped" drop' in text


def test_a_server_on_the_routers_address_is_refused() -> None:
    base = default_config()
    [pool, *others] = base.pools
    [fe, *rest] = pool.front_ends
    moved = dataclasses.replace(fe, address=ipaddress.IPv4Address("127.10.0.1"))
    clash = dataclasses.replace(
        base, pools=(dataclasses.replace(pool, front_ends=(moved, *rest)), *others)
    )
    with pytest.raises(NetnsError, match=r"front end fe01 127\.10\.0\.1 has no place .* router's"):
        netns_config(clash)
