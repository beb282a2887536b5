"""The lab's update checks while a console watches it, against the same lab unwatched.

A console attached to a lab holds one connection to the lab's event stream: from then on
the lab builds and sends an ``audit`` event for every request it answers, and the console
turns them into panel announcements for its pages, which fetch the panels named (the
network diagram asks the lab for its status). What that costs the lab is measured here:

- the lab: ``lab up`` with the check benchmark's store (bench.rig, bench.phones: an
  approved update for each model of the mix), measured on fe01's internal site;
- the load: wrk sending the checks of 10,000 distinct phones over 20 kept-alive TLS
  connections, as the ``check`` benchmark does (bench/README.md, "Checks from 10,000
  phones");
- watched: ``lab console --port 0`` attached to that lab (its own process, as it runs
  beside a `lab up`), and a page of it: a thread that logs in, reads the page's
  server-sent events and fetches each announced panel the network tab shows, as the
  browser does. The console is started before a watched run and stopped after it, so
  that the runs alternate, unwatched and watched, round by round (the order swapped
  every round).

Figures, reported without a target: the lab's checks per second watched over unwatched,
and the same per lab CPU-second. The settings record the console's own CPU time per check
and what the page was told and fetched.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.figures import compare, median, passed
from bench.loadgen import CLIENTS, LoadRun, process_cpu, wrk
from bench.phones import MIX, fleet, write_bodies
from bench.process import Started, end_process
from bench.rig import ROOT, LabFiles, LabProcess, lab_command, make_lab_files

SETTINGS: dict[str, dict[str, int]] = {
    "full": {"runs": 5, "seconds": 5, "warm_up": 1},
    "quick": {"runs": 1, "seconds": 2, "warm_up": 1},
}
KEY_TYPE = "ecdsa-p256"
IMAGE = 1024 * 1024
PAGE_PANELS = ("network",)
"""The panels the watching page fetches when told (the network tab, the default one)."""
LOGIN = re.compile(rb"^(http://127\.0\.0\.1:(\d+))(/login\?key=\S+)$", re.MULTILINE)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass
class PageStats:
    """What the watching page was told and what it fetched."""

    announcements: int = 0
    fetches: int = 0
    fetch_seconds: list[float] = field(default_factory=list)
    connected: bool = False


class WatchingConsole(Started):
    """``lab console`` attached to the lab of ``files``, with one page following it."""

    def __init__(self, files: LabFiles, log: Path) -> None:
        self.files = files
        self.log = log
        self.pid = 0
        self.stats = PageStats()
        self._process: subprocess.Popen[bytes] | None = None
        self._events: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._cookie = ""

    def start(self) -> None:
        """Start the console, log the page in, and follow its events."""
        with self.log.open("ab") as errors:
            self._process = subprocess.Popen(
                lab_command(self.files, "console", "--port", "0"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
            )
        self.pid = self._process.pid
        origin, port, login = _login_link(self._process)
        self._port = port
        status, headers, _ = self._get(login)
        if status != 303:
            raise RuntimeError(f"the console refused its own login link ({status}) at {origin}")
        self._cookie = headers["set-cookie"].split(";", 1)[0]
        self._events = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._events.request("GET", "/events", headers=self._headers())
        stream = self._events.getresponse()
        hello = _next_data(stream)
        if not hello.get("connected"):
            raise RuntimeError("the console is not connected to the lab's event stream")
        self.stats.connected = True
        self._thread = threading.Thread(target=self._follow, args=(stream,), daemon=True)
        self._thread.start()

    def _headers(self) -> dict[str, str]:
        return {"Host": f"127.0.0.1:{self._port}", "Cookie": self._cookie}

    def _get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
        try:
            connection.request("GET", path, headers=self._headers())
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()

    def _follow(self, stream: http.client.HTTPResponse) -> None:
        """The page: each announcement of a panel it shows is a fetch of that panel."""
        try:
            while True:
                data = _next_data(stream)
                self.stats.announcements += 1
                for panel in PAGE_PANELS:
                    if panel in data.get("panels", ()):
                        started = time.monotonic()
                        status, _, _ = self._get(f"/panels/{panel}")
                        if status == 200:
                            self.stats.fetches += 1
                            self.stats.fetch_seconds.append(time.monotonic() - started)
        except (OSError, ValueError, http.client.HTTPException):
            return  # the stream was closed: the page went away

    def stop(self) -> None:
        """Close the page, then stop the console (SIGTERM, as Ctrl-C would)."""
        events, self._events = self._events, None
        if events is not None and events.sock is not None:
            # The page's reader sees the stream end, and stops; then the socket is closed.
            events.sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if events is not None:
            events.close()
        process, self._process = self._process, None
        if process is not None:
            end_process(process, lambda: process.send_signal(signal.SIGTERM), STOP_TIMEOUT)


def _login_link(process: subprocess.Popen[bytes]) -> tuple[str, int, str]:
    """Read the console's output until its login link: origin, port and path."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (found := LOGIN.search(seen)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"lab console printed no login link in {START_TIMEOUT} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"lab console ended: {seen.decode(errors='replace')}")
            seen += chunk
    return found[1].decode(), int(found[2]), found[3].decode()


def _next_data(stream: http.client.HTTPResponse) -> dict[str, Any]:
    """The data of the next server-sent event."""
    while line := stream.readline():
        if line.startswith(b"data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise ValueError("the event stream ended")


def run(quick: bool = False) -> dict[str, Any]:
    """Checks from 10,000 phones, the lab alone and the lab watched by a console."""
    settings = SETTINGS["quick" if quick else "full"]
    seconds = settings["seconds"]
    phones = fleet()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        files = make_lab_files(work / "lab", KEY_TYPE, IMAGE, MIX)
        bodies = work / "phones.txt"
        write_bodies(bodies, phones)
        with LabProcess(files) as lab:
            lab.admit_loopback_client()
            host, port = lab.internal_site()
            url = f"https://{host}:{port}{files.check_path}"
            next_phone = 0

            def checks(run_seconds: int) -> LoadRun:
                nonlocal next_phone
                before = process_cpu([lab.pid])
                done = wrk(url, bodies, seconds=run_seconds, start=next_phone)
                next_phone += done.requests
                return replace(done, server_cpu=process_cpu([lab.pid]) - before)

            alone: list[LoadRun] = []
            watched: list[LoadRun] = []
            console_cpu: list[float] = []
            pages: list[PageStats] = []

            def unwatched_run(run_seconds: int = seconds) -> None:
                alone.append(checks(run_seconds))

            def watched_run(run_seconds: int = seconds, *, keep: bool = True) -> None:
                with WatchingConsole(files, work / "console.log") as console:
                    before = process_cpu([console.pid])
                    done = checks(run_seconds)
                    spent = process_cpu([console.pid]) - before
                if keep:
                    watched.append(done)
                    console_cpu.append(spent)
                    pages.append(console.stats)

            checks(settings["warm_up"])
            watched_run(settings["warm_up"], keep=False)
            for round_ in range(settings["runs"]):
                # Which goes first changes every round: neither gets the quieter moments.
                order = (
                    (unwatched_run, watched_run)
                    if round_ % 2 == 0
                    else (watched_run, unwatched_run)
                )
                for measure in order:
                    measure()
    figures = [
        compare(
            "check keep-alive, 10,000 phones, lab watched by a console / alone",
            "lab with `lab console` attached and a page following it",
            [r.rate for r in watched],
            "the same lab, no console",
            [r.rate for r in alone],
            "checks/s",
        ),
        compare(
            "check keep-alive, lab watched / alone (per lab CPU-second)",
            "lab with a console attached",
            [r.per_server_cpu for r in watched],
            "the same lab, no console",
            [r.per_server_cpu for r in alone],
            "checks/CPU-s",
        ),
    ]
    checks_watched = sum(r.requests for r in watched)
    seconds_watched = sum(r.seconds for r in watched)
    fetch_times = [s for page in pages for s in page.fetch_seconds]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {
            "alone": [r.as_dict() for r in alone],
            "watched": [r.as_dict() for r in watched],
            "console_cpu_seconds": [round(c, 4) for c in console_cpu],
        },
        "settings": {
            **settings,
            "clients": CLIENTS,
            "client": "wrk -t 1, bench/phones.lua",
            "phones": len(phones),
            "page_panels": " ".join(PAGE_PANELS),
            "console_cpu_us_per_check": round(1e6 * sum(console_cpu) / checks_watched, 1)
            if checks_watched
            else 0,
            "page_announcements_per_second": round(
                sum(p.announcements for p in pages) / seconds_watched, 2
            )
            if seconds_watched
            else 0,
            "page_fetches_per_second": round(sum(p.fetches for p in pages) / seconds_watched, 2)
            if seconds_watched
            else 0,
            "page_fetch_ms_median": round(1000 * median(fetch_times), 1),
        },
    }
