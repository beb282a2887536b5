"""The console's runs: a troubleshooting scenario and the demo, each on a fresh lab of its own.

They run in the console's process (lab.ops.runs), apart from the lab the console shows:
a run never touches it. Every change of a run is announced to the pages as a change of
its panel (``scenario`` or ``demo``), coalesced like the lab's events.
"""

from __future__ import annotations

from lab.console.live import Relay
from lab.ops.demo import DEFAULT_SCALE
from lab.ops.runs import DemoRun, ScenarioRun

DEMO_WIDTH = 110
"""Columns the demo's tables are laid out in on the page."""


class Training:
    """One scenario runner and one demo runner, their news relayed to the pages; the demo
    runs at ``demo_scale`` times real time (the console's scale, as `make demo` uses 60)."""

    def __init__(self, relay: Relay, demo_scale: float = DEFAULT_SCALE) -> None:
        self.scenario = ScenarioRun()
        self.demo = DemoRun(width=DEMO_WIDTH)
        self.demo_scale = demo_scale
        self.scenario.subscribe(lambda: relay.mark(["scenario"]))
        self.demo.subscribe(lambda: relay.mark(["demo"]))

    async def stop(self) -> None:
        """Cancel the runs going: their labs stop, their directories are removed."""
        await self.scenario.cancel()
        await self.demo.cancel()
