"""Packet captures on the router of the lab's own network (`lab capture`, `--capture`).

tcpdump listens on every interface of the router (``-i any``), so the capture holds each
packet that crosses segments, and each one the router drops, as it arrived. It writes a
classic pcap, packet by packet (``-U``), that Wireshark and tshark read while it grows.
tcpdump insists on changing to a user of its own, which a user namespace cannot do; there
(the lab started without root) Wireshark's own capture engine, dumpcap, takes its place and
writes the same format.

The TLS session keys that go with a capture (the NSS key log) are written by the lab's
servers (lab.service.pool's ``log_keys``), so that one file decrypts every exchange that
crossed the router.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

from lab.errors import NetnsError
from lab.net.netns import LabNetwork

READY = (b"listening on", b"Capturing on")
STOP_TIMEOUT = 10.0


class PacketCapture:
    """One capture into ``pcap`` on the router of ``network``, from `start` to `stop`."""

    def __init__(self, network: LabNetwork, pcap: Path) -> None:
        self.network = network
        self.pcap = pcap
        self.tool = "tcpdump" if network.as_root else "dumpcap"
        self.packets: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._said: list[str] = []

    @property
    def keys(self) -> Path:
        """The TLS key log that goes with the capture, beside it (``NAME.keys``)."""
        return self.pcap.with_suffix(".keys")

    def command(self) -> list[str]:
        """The capture command, run in the router's namespace."""
        if self.tool == "tcpdump":
            # --immediate-mode: each packet is handed over as it comes (not a block of them
            # at a time), so a capture stopped just after the traffic holds all of it.
            # -Z root: stay the user that may write into the lab's state directory.
            return [
                "tcpdump",
                "-i",
                "any",
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
                str(self.pcap),
            ]
        return ["dumpcap", "-i", "any", "-P", "-w", str(self.pcap)]

    async def start(self) -> None:
        """Start capturing; returns once the tool listens. NetnsError when it cannot."""
        if shutil.which(self.tool) is None:
            package = "tcpdump" if self.tool == "tcpdump" else "tshark (for dumpcap)"
            raise NetnsError(f"a capture needs {self.tool} (Debian: {package})")
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            # Ended with the lab, even a killed one: the namespace it listens in would
            # otherwise outlive the lab, held open by the capture alone.
            "setpriv",
            "--pdeathsig",
            "TERM",
            "--",
            "nsenter",
            f"--net={self.network.router_path}",
            "--",
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        while True:
            line = await process.stderr.readline()
            if not line:
                await process.wait()
                said = "; ".join(self._said[-3:]) or f"exit {process.returncode}"
                raise NetnsError(f"{self.tool} did not start capturing: {said}")
            if any(mark in line for mark in READY):
                break
            self._said.append(line.decode(errors="replace").strip())
        self._process = process
        # What it says from now on (its counts at the end) is read as it comes.
        self._reader = asyncio.create_task(self._read(process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._said.append(line.decode(errors="replace").strip())

    async def stop(self) -> int | None:
        """Stop capturing, the file complete; how many packets it holds (None if untold)."""
        process, self._process = self._process, None
        if process is None:
            return self.packets
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            await self._reader
        for line in self._said:
            # tcpdump: "12 packets captured"; dumpcap: "Packets captured: 12".
            found = re.search(r"(\d+) packets? captured|Packets captured: (\d+)", line)
            if found:
                self.packets = int(found.group(1) or found.group(2))
        if self.pcap.exists():
            os.chmod(self.pcap, 0o600)
        return self.packets
