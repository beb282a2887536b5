"""What each panel of the page shows: the data of its template.

One function per panel, each taking the console's sources and the request's query, and
returning its template's context. The lab's panels read its admin API (the same JSON the
CLI's ``--json`` prints); the scenario and demo panels read the runs the console holds in
its own process (lab.console.training). Nothing here changes anything: lab.console.actions
does, and also only through the admin API or the runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.console.labapi import LabAPI
from lab.console.live import Relay
from lab.console.training import Training
from lab.errors import AdminError
from lab.models import MODEL_NAMES
from lab.net.config import LabConfig
from lab.ops.scenarios import SCENARIOS
from lab.store.devconfig import SETTINGS

Context = dict[str, Any]

WALL_PAGE = 48
"""Phone cards on one page of the wall (the aggregates count every phone)."""
NETWORK_PHONES = 200
"""Phones the diagram reads to place them inside or outside (the rest are counted)."""
CHIPS = 24
"""Phones named per segment in the diagram; the others are counted."""


@dataclass(frozen=True)
class Sources:
    """Where the panels read from: the lab's admin API and config, the event relay, the
    console's own runs."""

    api: LabAPI
    config: LabConfig
    relay: Relay
    training: Training


Panel = Callable[[Sources, Mapping[str, str]], Awaitable[Context]]


def lab_names(config: LabConfig) -> list[str]:
    """The DNS names of the lab, offered by the DNS fault form."""
    names = [*config.ucupdates_names]
    for pool in config.pools:
        names.append(pool.fqdn)
        names += [fe.fqdn for fe in pool.front_ends if fe.fqdn != pool.fqdn]
    names.append(config.edge.external_web)
    names.append(f"_sipinternaltls._tcp.{config.sip_domain}")
    return list(dict.fromkeys(names))


def form_choices(config: LabConfig) -> Context:
    """What the page's forms offer: models, pools, users, settings, scenarios."""
    return {
        "models": MODEL_NAMES,
        "pools": [pool.fqdn for pool in config.pools],
        "users": [user.name for user in config.users],
        "settings": SETTINGS,
        "scenarios": SCENARIOS,
        "dns_names": lab_names(config),
    }


def _page_number(query: Mapping[str, str], name: str = "page") -> int:
    try:
        return max(1, int(query.get(name, "1")))
    except ValueError:
        return 1


# -- the network ------------------------------------------------------------------------------


def _servers(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each front end with its mode, its downloads in progress and whether it is its pool's
    last in production (maintenance then needs force)."""
    servers = list(status["pool"]["servers"].values())
    rows = []
    for server in servers:
        others = [
            s
            for s in servers
            if s["name"] != server["name"]
            and s["pool"] == server["pool"]
            and s["mode"] == "production"
        ]
        downloads = [
            {**t, "percent": round(100 * t["sent"] / t["size"]) if t["size"] else 0}
            for t in server["transfers"]
        ]
        rows.append(
            {
                **server,
                "last_in_production": server["mode"] == "production" and not others,
                "downloads": downloads,
            }
        )
    return rows


async def network(sources: Sources, query: Mapping[str, str]) -> Context:
    """The diagram: DNS, pools and front ends, the edge, both segments and the firewall
    between them, and which phones sit on which side."""
    config = sources.config
    status = await sources.api.get("/v1/status")
    servers = {s["name"]: s for s in _servers(status)}
    pools = [
        {
            "fqdn": pool.fqdn,
            "discovery": pool.fqdn == config.ucupdates_pool,
            "published": pool.fqdn == config.edge.pool,
            "servers": [{**servers[fe.name], "address": str(fe.address)} for fe in pool.front_ends],
        }
        for pool in config.pools
    ]
    dns_stats = status["dns"]["stats"]
    endpoints = status["endpoints"]
    return {
        "config": config,
        "pools": pools,
        "firewall": status["firewall"],
        "dns": {
            "address": endpoints["dns"]["udp"],
            "queries": dns_stats.get("queries_total", 0),
            "views": dns_stats.get("views", {}),
            "faults": status["dns"]["faults"],
        },
        "edge": {
            "name": config.edge.external_web,
            "address": endpoints.get("edge", {}).get("https", str(config.edge.address)),
            "pool": config.edge.pool,
            "phones": status["pool"].get("edge", {}).get("open_connections", 0),
            "links": status["pool"].get("edge", {}).get("upstream_connections", 0),
        },
        "phones": await _phones_by_zone(sources.api),
    }


async def _phones_by_zone(api: LabAPI) -> Context:
    """Which phones sit inside and which outside, as the firewall classifies them now."""
    wall = await api.get("/v1/phones", {"offset": "0", "limit": str(NETWORK_PHONES)})
    counts = wall["aggregates"]["by_zone"]
    zones: Context = {"counts": counts}
    for zone in ("inside", "outside"):
        cards = [card for card in wall["phones"] if card["zone"] == zone]
        zones[zone] = cards[:CHIPS]
        zones[f"more_{zone}"] = counts.get(zone, 0) - len(zones[zone])
    return zones


async def servers(sources: Sources, query: Mapping[str, str]) -> Context:
    """Front ends for maintenance: mode, transfers, enter (drain or immediate) and exit."""
    return {"servers": _servers(await sources.api.get("/v1/status"))}


async def firewall(sources: Sources, query: Mapping[str, str]) -> Context:
    """The firewall policy: segments, overrides, the flip."""
    return {"firewall": await sources.api.get("/v1/firewall")}


async def dns(sources: Sources, query: Mapping[str, str]) -> Context:
    """DNS faults per name."""
    faults = await sources.api.get("/v1/dns/faults")
    return {"faults": sorted(faults.items())}


# -- the administrator's side -----------------------------------------------------------------


async def rules(sources: Sources, query: Mapping[str, str]) -> Context:
    """Rules per pool: pending, approved and restore versions."""
    found = await sources.api.get("/v1/rules")
    by_pool: dict[str, list[dict[str, Any]]] = {pool.fqdn: [] for pool in sources.config.pools}
    for rule in found:
        by_pool.setdefault(rule["pool"], []).append(
            {**rule, "uuid": rule["identity"].rsplit("/", 1)[-1]}
        )
    return {"pools": by_pool}


async def testdevices(sources: Sources, query: Mapping[str, str]) -> Context:
    """Test devices, by MAC or serial number."""
    return {"devices": await sources.api.get("/v1/test-devices")}


async def devconfig(sources: Sources, query: Mapping[str, str]) -> Context:
    """The device-update configuration, each setting with its default and range."""
    values = await sources.api.get("/v1/device-config")
    return {
        "settings": [
            {"setting": setting, "value": values.get(setting.name, setting.default)}
            for setting in SETTINGS
        ]
    }


# -- the phone wall ---------------------------------------------------------------------------


async def wall(sources: Sources, query: Mapping[str, str]) -> Context:
    """Aggregates over every phone and one page of cards."""
    page = _page_number(query)
    found = await sources.api.get(
        "/v1/phones", {"offset": str((page - 1) * WALL_PAGE), "limit": str(WALL_PAGE)}
    )
    pages = max(1, -(-found["count"] // WALL_PAGE))
    if page > pages:
        # Phones were removed under the page: show the last one there is.
        return await wall(sources, {**query, "page": str(pages)})
    cards = [_card(card) for card in found["phones"]]
    # States in the words the cards use (the counts come keyed as a program reads them).
    words = {card["state"]: card["state_text"] for card in cards}
    return {
        "count": found["count"],
        "limit": found["limit"],
        "aggregates": found["aggregates"],
        "state_words": {
            key: words.get(key, key.replace("_", " ")) for key in found["aggregates"]["by_state"]
        },
        "cards": cards,
        "page": page,
        "pages": pages,
        "first": (page - 1) * WALL_PAGE + 1,
        "users": [user.name for user in sources.config.users],
    }


def _card(card: Mapping[str, Any]) -> dict[str, Any]:
    """A wall card as the page shows it: its download's percentage, and its last log line
    without the time and level the card does not need (the detail has them)."""
    last = card.get("last_log") or {}
    words = str(last.get("line", "")).split(maxsplit=2)
    return {
        **card,
        "percent": _percent(card.get("progress")),
        "last_line": words[2] if len(words) == 3 else " ".join(words),
        "last_level": last.get("level", ""),
    }


def _percent(progress: Mapping[str, Any] | None) -> int | None:
    if not progress or not progress.get("total"):
        return None
    done, total = int(progress["done"]), int(progress["total"])
    return min(100, round(100 * done / total))


async def phone(sources: Sources, query: Mapping[str, str]) -> Context:
    """One phone in full: its card, System Information screen, its log beside the audit
    lines the front ends wrote for its MAC."""
    mac = query.get("phone", "")
    if not mac:
        return {"detail": None, "problem": ""}
    try:
        detail = await sources.api.get(f"/v1/phones/{mac}")
    except AdminError as exc:
        return {"detail": None, "problem": str(exc)}
    detail["phone"] = _card(detail["phone"])
    return {
        "detail": detail,
        "timeline": one_clock(detail["log"], detail["audit"]),
        "problem": "",
        "users": [u.name for u in sources.config.users],
    }


def one_clock(log: list[Mapping[str, Any]], audit: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The phone's log lines and the front ends' audit lines for it in one list, by time:
    both are written on the lab's one clock (ISO times in UTC, to the millisecond), so each
    request's audit line falls between the phone's lines that send it and read its answer."""
    rows = [
        {
            "time": str(entry["time"]),
            "side": "phone",
            "level": str(entry.get("level", "")),
            # The line without its time, which the row shows apart.
            "text": str(entry["line"]).split(maxsplit=1)[-1],
        }
        for entry in log
    ]
    rows += [
        {
            "time": str(line["time"]),
            "side": "service",
            "level": "",
            "text": " ".join(
                part
                for part in (
                    f"{line['server']} {line['site']} {line['status']} {line['path']}",
                    str(line.get("decision") or ""),
                    str(line.get("reason") or ""),
                    f"returned {line['modules_returned']}" if line.get("modules_returned") else "",
                )
                if part
            ),
        }
        for line in audit
    ]
    # Stable: a phone line and an audit line of the same millisecond keep phone first.
    return sorted(rows, key=lambda row: row["time"])


# -- scenarios and the demo -------------------------------------------------------------------


async def scenario(sources: Sources, query: Mapping[str, str]) -> Context:
    """The scenario run of the console: its timeline as it happens, then the report."""
    return {"run": sources.training.scenario.as_dict()}


async def demo(sources: Sources, query: Mapping[str, str]) -> Context:
    """The demo run of the console: its chapters as they are told, Next between them."""
    return {"run": sources.training.demo.as_dict()}


PANEL_FUNCTIONS: dict[str, Panel] = {
    "network": network,
    "servers": servers,
    "firewall": firewall,
    "dns": dns,
    "rules": rules,
    "testdevices": testdevices,
    "devconfig": devconfig,
    "wall": wall,
    "phone": phone,
    "scenario": scenario,
    "demo": demo,
}
"""The panels served as fragments, by name (lab.console.live.PANELS names the same)."""
