"""A running lab in its own network (`--netns`): the router's rules, and captures.

lab.net.netns builds the network and lab.net.nftables writes the router's rules; here a
running lab keeps the two in step: the rules are applied when the lab starts and again on
every ``firewall.changed``, before the change's answer goes back, so `lab firewall flip`
has reached the router when it returns. A capture (`lab capture start|stop`, `--capture`)
records the router's traffic into ``<state>/captures/<name>.pcap`` and the lab's TLS
session keys into ``<name>.keys`` beside it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.errors import LabError, NetnsError
from lab.events import Event, EventBus
from lab.lifecycle import Service
from lab.net.capture import PacketCapture
from lab.net.config import LabConfig
from lab.net.firewall import FirewallPolicy
from lab.net.netns import LabNetwork
from lab.net.nftables import ruleset
from lab.service.pool import ServicePool

log = logging.getLogger(__name__)

CAPTURES = "captures"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CaptureError(LabError, ValueError):
    """A capture that cannot start or stop as asked (bad name, none running...)."""


class NetworkMode(Service):
    """The router's rules kept equal to the firewall policy, and one capture at a time."""

    def __init__(
        self,
        network: LabNetwork,
        config: LabConfig,
        firewall: FirewallPolicy,
        pool: ServicePool,
        state_dir: Path,
        events: EventBus,
    ) -> None:
        self.network = network
        self.config = config
        self.firewall = firewall
        self.pool = pool
        self.directory = state_dir / CAPTURES
        self.events = events
        self.rulesets = 0
        self.capture: PacketCapture | None = None
        self.last: dict[str, Any] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        """Apply the rules of the policy as it stands, and follow its changes."""
        self.apply()
        self._unsubscribe = self.events.subscribe(self._changed, kinds=("firewall.changed",))

    async def stop(self) -> None:
        """Stop following the policy and end a capture that still runs."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.capture is not None:
            await self.stop_capture()

    def apply(self) -> None:
        """Write the router's rules from the policy now."""
        self.network.apply_rules(ruleset(self.firewall, self.config))
        self.rulesets += 1
        self.events.publish("network.rules", ruleset=self.rulesets)

    def _changed(self, _event: Event) -> None:
        try:
            self.apply()
        except NetnsError as exc:
            # The policy moved and the router did not follow: say so, once per change.
            log.error("the router's rules do not follow the firewall: %s", exc)
            self.events.publish("network.rules_failed", error=str(exc))

    # -- captures ------------------------------------------------------------------------------

    async def start_capture(self, name: str | None = None) -> dict[str, Any]:
        """Start capturing into ``<name>.pcap`` (default: the time now) with its key log."""
        if self.capture is not None:
            raise CaptureError(f"a capture is already running: {self.capture.pcap}")
        if name is None:
            name = datetime.now(UTC).strftime("capture-%Y%m%dT%H%M%SZ")
        if not _NAME.match(name):
            raise CaptureError(
                f"{name!r} is no capture name (letters, digits, '.', '_', '-'; up to 64)"
            )
        pcap = self.directory / f"{name}.pcap"
        if pcap.exists():
            raise CaptureError(f"{pcap} exists already; choose another name")
        capture = PacketCapture(self.network, pcap)
        keys = capture.keys
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.touch(mode=0o600)
        self.pool.log_keys(keys)
        try:
            await capture.start()
        except BaseException:
            self.pool.log_keys(None)
            raise
        self.capture = capture
        self.events.publish("capture.started", file=str(pcap), keys=str(keys))
        return self.capture_info()

    async def stop_capture(self) -> dict[str, Any]:
        """Stop the running capture; what it wrote (files, packets)."""
        capture, self.capture = self.capture, None
        if capture is None:
            raise CaptureError("no capture is running (lab capture start)")
        self.pool.log_keys(None)
        packets = await capture.stop()
        self.last = {
            "file": str(capture.pcap),
            "keys": str(capture.keys),
            "tool": capture.tool,
            "packets": packets,
        }
        self.events.publish("capture.stopped", **self.last)
        return self.last

    def capture_info(self) -> dict[str, Any]:
        """The running capture (or the last one) as JSON-ready data."""
        if self.capture is not None:
            return {
                "running": True,
                "file": str(self.capture.pcap),
                "keys": str(self.capture.keys),
                "tool": self.capture.tool,
            }
        return {"running": False, **(self.last or {})}

    def snapshot(self) -> dict[str, Any]:
        """The network, the rules in force and the capture, for the admin API's status."""
        return {
            **self.network.describe(),
            "rulesets_applied": self.rulesets,
            "capture": self.capture_info(),
        }
