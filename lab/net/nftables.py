"""The router's nftables rules, generated from the lab's firewall policy (`--netns` mode).

The policy (lab.net.firewall) stays the single source of truth; this module writes the
same decisions as one ``inet lab`` table for the router of the lab's own network, and the
lab applies it again on every ``firewall.changed``. The ``forward`` chain:

1. lets the answers of allowed connections back (``ct state established,related``);
2. publishes the edge: it may open connections to the front ends' external sites;
3. sends each packet to the chain of its sender's zone, asking in the policy's own order:
   overrides from the most specific to the least, then the inside segment, then everything
   else as outside, each turned over while the policy is flipped;
4. ``from_inside`` accepts everything (the corporate LAN may go anywhere);
   ``from_outside`` accepts only DNS to the lab's DNS server and HTTPS to the edge, and
   counts and drops the rest: an outside phone's SYN to an internal site gets no answer.

A chain's policy is ``drop``, so a packet nothing accepts is dropped as well.
"""

from __future__ import annotations

import ipaddress

from lab.net.config import LabConfig
from lab.net.firewall import FirewallPolicy, IPNetwork, Zone

TABLE = "lab"


def _source(network: IPNetwork) -> str:
    family = "ip6" if isinstance(network, ipaddress.IPv6Network) else "ip"
    return f"{family} saddr {network}"


def zone_rules(policy: FirewallPolicy) -> list[str]:
    """The ``forward`` chain's jumps by the sender's zone, in the policy's order."""

    def zone(base: Zone) -> str:
        effective = base.flipped() if policy.flipped else base
        return f"from_{effective.value}"

    rules: list[str] = []
    for override in sorted(policy.overrides, key=lambda o: -o.network.prefixlen):
        rules.append(f"{_source(override.network)} jump {zone(override.zone)}  # override")
    rules.append(f"{_source(policy.inside)} jump {zone(Zone.INSIDE)}  # the inside segment")
    rules.append(f"jump {zone(Zone.OUTSIDE)}  # every other address is outside")
    return rules


def ruleset(policy: FirewallPolicy, config: LabConfig) -> str:
    """The router's ``inet lab`` table for ``policy`` on the lab of ``config``."""
    ports = config.ports
    front_ends = ", ".join(str(fe.address) for fe in config.front_ends)
    edge = config.edge.address
    dns = config.dns_address
    lines = [
        f"table inet {TABLE} {{",
        "  counter dropped {}",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        "    ct state invalid drop",
        "    # the edge publishes the pool's external web services",
        f"    ip saddr {edge} ip daddr {{ {front_ends} }} tcp dport {ports.external} accept",
        *(f"    {rule}" for rule in zone_rules(policy)),
        "  }",
        "  chain from_inside {",
        "    accept",
        "  }",
        "  chain from_outside {",
        f"    ip daddr {dns} udp dport {ports.dns} accept",
        f"    ip daddr {dns} tcp dport {ports.dns} accept",
        f"    ip daddr {edge} tcp dport {ports.edge} accept",
        '    counter name "dropped" drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
