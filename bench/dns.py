"""DNS benchmark: the lab's server against dnslib's threaded server, measured with dnsperf.

Both servers answer the same records (``lab.net.dns.zones``) from the same view rules, each in
a subprocess of its own: the lab server on uvloop (when installed), dnslib's
``DNSServer`` (a thread per UDP request) with a ``BaseResolver`` built on the same zones.
dnsperf sends the same query file of the lab's names to each, from an inside address so
the internal view (every record, rotation) is used. Runs alternate between the two
servers; the median rate of each is compared.

A server subprocess is ``python -m bench.dns serve lab|dnslib``: it prints ``ready PORT``,
serves until its stdin closes, then prints ``stats JSON`` and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dnslib import CLASS, RCODE, RR
from dnslib.server import BaseResolver, DNSLogger
from dnslib.server import DNSServer as DnslibServer

from lab.net.config import LabConfig, default_config
from lab.net.dns import DNSServer
from lab.net.dns.zones import View, build_views
from lab.net.firewall import FirewallPolicy

SOURCE = "127.10.0.50"  # an inside address: queries get the internal view
TARGET_RATIO = 4.0
FULL = {"runs": 3, "seconds": 10}
QUICK = {"runs": 1, "seconds": 3}
DNSPERF_PATHS = ("/usr/bin/dnsperf", "/usr/local/bin/dnsperf")


def find_dnsperf() -> str | None:
    """The dnsperf executable, if installed."""
    found = shutil.which("dnsperf")
    if found:
        return found
    return next((path for path in DNSPERF_PATHS if os.access(path, os.X_OK)), None)


def query_lines(config: LabConfig) -> list[str]:
    """The dnsperf query file: every internal record, plus an NXDOMAIN and a NODATA."""
    internal = build_views(config)[View.INTERNAL]
    lines = [f"{rrset.name} {rrset.type_name}" for rrset in internal.rrsets()]
    lines.append(f"nothing-here.{config.dhcp_domain} A")
    lines.append(f"{config.ucupdates_names[0]} AAAA")
    return lines


class LabZonesResolver(BaseResolver):  # type: ignore[misc]
    """dnslib resolver answering the lab's records with the same split-horizon rules."""

    def __init__(self, config: LabConfig) -> None:
        self.views = build_views(config)
        self.firewall = FirewallPolicy(config.inside, config.outside)
        self.rotations: dict[tuple[View, str, int], int] = {}
        self.lock = threading.Lock()  # one resolver, many handler threads

    def resolve(self, request: Any, handler: Any) -> Any:
        """The reply to ``request`` from the view of the client's address."""
        view = View.of(self.firewall.classify(handler.client_address[0]))
        question = request.q
        reply = request.reply(ra=0, aa=1)
        if question.qclass != CLASS.IN:
            reply.header.rcode = RCODE.REFUSED
            return reply
        lookup = self.views[view].lookup(str(question.qname), question.qtype)
        reply.header.rcode = lookup.rcode
        for rrset in lookup.answer:
            rdatas = rrset.rdatas
            if rrset.rotate:
                key = (view, rrset.name, rrset.rtype)
                with self.lock:
                    start = self.rotations.get(key, 0)
                    self.rotations[key] = start + 1
                rdatas = rrset.rotated(start)
            for rd in rdatas:
                reply.add_answer(RR(question.qname, rrset.rtype, ttl=rrset.ttl, rdata=rd))
        for rrset in lookup.authority:
            for rd in rrset.rdatas:
                reply.add_auth(RR(rrset.name, rrset.rtype, ttl=rrset.ttl, rdata=rd))
        return reply


# -- server subprocesses ------------------------------------------------------------------


def _wait_for_stdin_eof() -> None:
    sys.stdin.read()


async def _serve_lab(config: LabConfig) -> dict[str, Any]:
    firewall = FirewallPolicy(config.inside, config.outside)
    async with DNSServer(config, firewall) as server:
        print(f"ready {server.address[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_stdin_eof)
        return server.stats()


def serve(kind: str) -> None:
    """Run one server until stdin closes (the body of a server subprocess)."""
    config = default_config().with_ports(dns=0)
    if kind == "lab":
        try:
            import uvloop
        except ImportError:
            stats = asyncio.run(_serve_lab(config))
            stats["loop"] = "asyncio"
        else:
            stats = uvloop.run(_serve_lab(config))
            stats["loop"] = "uvloop"
    elif kind == "dnslib":
        quiet = DNSLogger(log="-request,-reply,-truncated,-error")
        server = DnslibServer(
            LabZonesResolver(config), address=str(config.dns_address), port=0, logger=quiet
        )
        server.start_thread()
        print(f"ready {server.server.server_address[1]}", flush=True)
        _wait_for_stdin_eof()
        server.stop()
        stats = {"loop": "threads"}
    else:
        raise SystemExit(f"unknown server {kind!r} (lab or dnslib)")
    print("stats " + json.dumps(stats), flush=True)


@contextmanager
def server_process(kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Start a server subprocess; yields its port and, after exit, the stats it reported."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.dns", "serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stats: dict[str, Any] = {}
    try:
        line = process.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the {kind} DNS server did not start (said {line!r})")
        yield int(line.split()[1]), stats
        process.stdin.close()
        for line in process.stdout:
            if line.startswith("stats "):
                stats.update(json.loads(line[len("stats ") :]))
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- measuring ----------------------------------------------------------------------------

_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_LOST = re.compile(r"Queries lost:\s+(\d+)")
_COMPLETED = re.compile(r"Queries completed:\s+(\d+)")


def dnsperf(executable: str, host: str, port: int, queries: Path, seconds: int) -> dict[str, float]:
    """One dnsperf run: queries per second, completed and lost."""
    command = [executable, "-s", host, "-p", str(port), "-a", SOURCE]
    command += ["-d", str(queries), "-l", str(seconds), "-t", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    found = _QPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"dnsperf failed ({done.returncode}): {done.stderr or done.stdout}")
    completed = _COMPLETED.search(done.stdout)
    lost = _LOST.search(done.stdout)
    return {
        "qps": float(found.group(1)),
        "completed": float(completed.group(1)) if completed else 0.0,
        "lost": float(lost.group(1)) if lost else 0.0,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Benchmark both servers; the raw runs, medians and the ratio (lab / dnslib)."""
    executable = find_dnsperf()
    if executable is None:
        raise RuntimeError("dnsperf is not installed (apt-get install dnsperf)")
    settings = QUICK if quick else FULL
    config = default_config()
    host = str(config.dns_address)
    runs: dict[str, list[dict[str, float]]] = {"lab": [], "dnslib": []}
    with tempfile.TemporaryDirectory() as tmp:
        queries = Path(tmp) / "queries.txt"
        queries.write_text("\n".join(query_lines(config)) + "\n")
        with (
            server_process("lab") as (lab_port, lab_stats),
            server_process("dnslib") as (dnslib_port, _),
        ):
            for _ in range(settings["runs"]):
                for kind, port in (("lab", lab_port), ("dnslib", dnslib_port)):
                    runs[kind].append(dnsperf(executable, host, port, queries, settings["seconds"]))
    lab = statistics.median(r["qps"] for r in runs["lab"])
    baseline = statistics.median(r["qps"] for r in runs["dnslib"])
    ratio = lab / baseline if baseline else float("inf")
    return {
        "subject": "lab DNSServer",
        "baseline": "dnslib DNSServer (threaded UDP)",
        "subject_qps": round(lab, 1),
        "baseline_qps": round(baseline, 1),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "passed": ratio >= TARGET_RATIO,
        "runs": runs,
        "settings": {**settings, "source": SOURCE, "queries": query_lines(config)},
        "subject_stats": lab_stats,
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        raise SystemExit("usage: python -m bench.dns serve lab|dnslib")
    serve(sys.argv[2])
