"""docs/grafana/rollout.json: every query of the dashboard names what the lab and the
emulator really export, metric and labels, read from a lab whose phones just updated."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from labprocess import samples

from emulator.build import Location
from emulator.clock import Clock
from emulator.fleet import Fleet, PhoneSpec
from emulator.metrics import served
from emulator.models import get_model
from lab.admintoken import read_token
from lab.ops.harness import ALICE, NEW, Phones, RunningLab

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana" / "rollout.json"
METRIC = re.compile(r"\b((?:lab|emulator)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b((?:lab|emulator)_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!=|!~|=)")
BY = re.compile(r"\bby \(([^)]*)\)")
PANEL_TYPES = {"stat", "timeseries", "state-timeline", "gauge", "table", "bargauge"}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (panel title, PromQL expression) of the dashboard, its variables included."""
    found = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["definition"]))
    return found


async def exported(
    device_lab: RunningLab, phones: Phones, clock: Clock, tmp: Path
) -> dict[str, set[str]]:
    """Each metric family's sample names and label names, from a lab and a fleet that ran."""
    device_lab.publish("CX600", NEW)
    cx600 = get_model("CX600")
    fleet = Fleet(
        [PhoneSpec(cx600, 1), PhoneSpec(cx600, 2, Location.OUTSIDE, credentials=ALICE)],
        lease=device_lab.lease,
        clock=clock,
        network=phones.network,
        workdir=tmp,
    )
    async with served(fleet, 0) as port, aiohttp.ClientSession() as session:
        await fleet.run(duration=86_400)
        await device_lab.lab.pool.inventory.flush()  # type: ignore[union-attr]
        host, admin = device_lab.lab.admin_address
        token = read_token(device_lab.state_dir)
        texts = []
        for url, headers in (
            (f"http://{host}:{admin}/metrics", {"Authorization": f"Bearer {token}"}),
            (f"http://127.0.0.1:{port}/metrics", {}),
        ):
            async with session.get(url, headers=headers) as response:
                assert response.status == 200
                texts.append(await response.text())
    labels: dict[str, set[str]] = {}
    for text in texts:
        for key in samples(text):
            name, _, rest = key.partition("{")
            labels.setdefault(name, set()).update(MATCHER.findall(rest))
    return labels


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Device Update Lab: rollout"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    # What a rollout shows: versions over time, checks, downloads, refusals.
    titles = " / ".join(panel["title"] for panel in panels)
    for shown in ("Phones by version", "Update checks", "Downloads", "Refusals"):
        assert shown in titles


@pytest.mark.looptime
async def test_every_query_names_metrics_and_labels_that_are_exported(
    device_lab: RunningLab, phones: Phones, virtual_clock: Clock, tmp_path: Path
) -> None:
    labels = await exported(device_lab, phones, virtual_clock, tmp_path / "fleet")
    dashboard = json.loads(DASHBOARD.read_text())
    for title, expr in queries(dashboard):
        names = METRIC.findall(expr)
        assert names, f"{title}: {expr!r} names no metric of the lab or the emulator"
        for name in names:
            assert name in labels, f"{title}: {name} is not exported"
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in labels[name], f"{title}: {name} has no label {label!r}"
        known = set().union(*(labels[name] for name in names))
        for grouping in BY.findall(expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert label in known, f"{title}: no metric of {expr!r} has label {label!r}"
