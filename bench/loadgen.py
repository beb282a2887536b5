"""The clients of the service benchmarks: wrk and h2load for update checks, curl for downloads.

Each is run as a subprocess and its own figures are parsed (wrk's request count and
``Requests/sec``, h2load's ``finished in`` time and request counts, curl's
``%{speed_download}``), so process start-up is never part of a measurement. A run in which
anything failed or answered other than 2xx raises RuntimeError: a server answering errors
quickly must not pass for a fast one.

wrk sends a different phone's check with every request (bench/phones.lua hands out
prepared requests round robin from a file of bodies, one per line); h2load sends one body
again and again.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.install import require

CLIENTS = 20
_FINISHED = re.compile(r"finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
WRK_SCRIPT = Path(__file__).resolve().parent / "phones.lua"
_WRK_DONE = re.compile(r"^\s*(\d+) requests in [\d.]+\w+, ", re.MULTILINE)
_WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_STATUS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
# How long wrk waits for an answer before it counts a timeout (its default is 2 s, which a
# busy two-core machine can reach without anything being wrong).
WRK_TIMEOUT = "10s"


@dataclass(frozen=True)
class LoadRun:
    """One h2load run (or several added up): requests that succeeded, the time taken, and
    the CPU time the server spent on them."""

    requests: int
    seconds: float
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_server_cpu(self) -> float:
        """Requests per CPU-second of the server: its capacity, whoever else needs the CPU."""
        return self.requests / self.server_cpu if self.server_cpu > 0 else 0.0

    def __add__(self, other: LoadRun) -> LoadRun:
        return LoadRun(
            self.requests + other.requests,
            self.seconds + other.seconds,
            self.server_cpu + other.server_cpu,
        )

    def as_dict(self) -> dict[str, float]:
        """A JSON-ready form with the rate and the server's CPU microseconds per request."""
        per = 1e6 / self.requests if self.requests else 0.0
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 4),
            "rate": round(self.rate, 1),
            "server_cpu_us_per_request": round(self.server_cpu * per, 1),
        }


def process_cpu(pids: Iterable[int]) -> float:
    """CPU seconds (user and system) used so far by the processes ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone: nothing more to count
        # The command name may hold spaces; the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def parse_h2load(output: str) -> LoadRun:
    """The successful requests and measured time of h2load's report; RuntimeError on failures."""
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    status = _STATUS.search(output)
    if finished is None or requests is None or status is None:
        raise RuntimeError(f"h2load gave no report: {output[-2000:]}")
    total, _, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    ok, *others = map(int, status.groups())
    if failed or errored or timeout or any(others) or ok != succeeded or done != total:
        raise RuntimeError(
            f"h2load saw failures ({requests.group(0)}; {status.group(0)}): "
            "the server under test is not answering the check as expected"
        )
    # The time is taken from the rate: in duration mode "finished in" counts the warm-up
    # too, while the rate is over the measured duration alone.
    rate = float(finished.group(1))
    return LoadRun(ok, ok / rate if rate else 0.0)


def h2load(
    url: str,
    body: Path,
    *,
    clients: int = CLIENTS,
    requests: int | None = None,
    seconds: float | None = None,
    warm_up: float = 0.0,
) -> LoadRun:
    """POST ``body`` as text/xml over HTTP/1.1 with ``clients`` connections, one thread.

    Either a number of ``requests`` or a duration in ``seconds`` (after ``warm_up``).
    """
    command = [require("h2load"), "--h1", "-t", "1", "-c", str(clients)]
    command += ["-d", str(body), "-H", "Content-Type: text/xml"]
    if seconds is not None:
        # h2load takes whole numbers with a unit.
        command += ["-D", f"{round(seconds * 1000)}ms"]
        if warm_up:
            command += ["--warm-up-time", f"{round(warm_up * 1000)}ms"]
        limit = seconds + warm_up + 60
    else:
        command += ["-n", str(requests or clients)]
        limit = 120
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=limit, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_h2load(done.stdout)


def parse_wrk(output: str) -> LoadRun:
    """The answered requests and measured time of wrk's report; RuntimeError on failures.

    wrk prints a socket-error line and a non-2xx line only when there were some; either
    one fails the run. (wrk counts a 3xx as answered: the servers measured never send one,
    and the lab's answers are checked in its audit log.)
    """
    done = _WRK_DONE.search(output)
    rate = _WRK_RATE.search(output)
    if done is None or rate is None:
        raise RuntimeError(f"wrk gave no report: {output[-2000:]}")
    problems = [
        found.group(0)
        for found in (_WRK_SOCKET.search(output), _WRK_STATUS.search(output))
        if found
    ]
    requests = int(done.group(1))
    if problems or requests == 0:
        raise RuntimeError(
            f"wrk saw failures ({'; '.join(problems) or 'no request answered'}): "
            "the server under test is not answering the check as expected"
        )
    # The time is taken from wrk's rate (requests over the run's time, two decimals), as
    # for h2load, so that both tools' runs add up the same way.
    per_second = float(rate.group(1))
    return LoadRun(requests, requests / per_second if per_second else 0.0)


def wrk(url: str, bodies: Path, *, seconds: int, start: int = 0, clients: int = CLIENTS) -> LoadRun:
    """POST the checks of ``bodies`` (one per line) round robin as text/xml over HTTP/1.1,
    from the ``start``-th on, ``clients`` kept-alive connections, one thread, for
    ``seconds`` (wrk takes whole ones)."""
    command = [require("wrk"), "-t", "1", "-c", str(clients), "-d", f"{seconds}s"]
    command += ["--timeout", WRK_TIMEOUT, "-s", str(WRK_SCRIPT), url]
    command += ["--", str(bodies), str(start)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def new_connection_checks(url: str, body: Path, *, bursts: int, clients: int = CLIENTS) -> LoadRun:
    """``bursts`` h2load runs of ``clients`` connections making one check each.

    Every h2load client makes a fresh TLS object and connection and never offers a session
    to resume, so each check pays a full handshake; h2load's own timing leaves out its
    start-up, and the runs are added up.
    """
    total = LoadRun(0, 0.0)
    for _ in range(bursts):
        total += h2load(url, body, clients=clients, requests=clients)
    return total


@dataclass(frozen=True)
class Handshakes:
    """``openssl s_time -new``: full handshakes one after another, as one phone makes them."""

    count: int
    seconds: float
    client_user_cpu: float

    @property
    def per_second(self) -> float:
        """Handshakes per second of wall-clock time (the inverse of one handshake's latency)."""
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_client_cpu(self) -> float:
        """Handshakes per user CPU-second of the client: what verifying costs the phone."""
        return self.count / self.client_user_cpu if self.client_user_cpu > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        """A JSON-ready form."""
        return {
            "handshakes": self.count,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "client_user_cpu_us_per_handshake": round(1e6 / self.per_client_cpu, 1)
            if self.per_client_cpu
            else 0.0,
        }


_S_TIME = re.compile(r"(\d+) connections in ([\d.]+)s; [\d.]+ connections/user sec")


def verify_chain(host: str, port: int, cafile: Path) -> None:
    """RuntimeError unless the server's chain verifies against ``cafile`` (openssl s_client)."""
    command = [require("openssl"), "s_client", "-connect", f"{host}:{port}", "-brief"]
    command += ["-CAfile", str(cafile), "-verify_return_error"]
    done = subprocess.run(command, input="", capture_output=True, text=True, timeout=60)
    if "Verification: OK" not in done.stdout + done.stderr:
        raise RuntimeError(f"the certificate of {host}:{port} does not verify: {done.stderr}")


def handshakes(host: str, port: int, *, cafile: Path, seconds: int) -> Handshakes:
    """Full TLS handshakes (no session reuse) for ``seconds``, verifying the chain like a phone.

    s_time verifies each chain but goes on whatever the result; ``verify_chain`` first makes
    sure the result is a good one, so the cost measured is that of a successful verification.
    """
    verify_chain(host, port, cafile)
    command = [require("openssl"), "s_time", "-connect", f"{host}:{port}", "-new"]
    command += ["-CAfile", str(cafile), "-verify", "2", "-time", str(seconds)]
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    elapsed = time.monotonic() - started
    found = _S_TIME.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"openssl s_time failed ({done.returncode}): {done.stderr.strip()}")
    return Handshakes(int(found.group(1)), elapsed, float(found.group(2)))


@dataclass(frozen=True)
class Download:
    """One curl download: bytes per second and what arrived."""

    speed: float
    size: int
    status: int
    server_cpu: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """A JSON-ready form, speed in MiB/s and the server's CPU milliseconds per MiB."""
        mib = self.size / 2**20
        return {
            "mib_per_s": round(self.speed / 2**20, 1),
            "size": self.size,
            "server_cpu_ms_per_mib": round(self.server_cpu * 1e3 / mib, 2) if mib else 0.0,
        }


def curl_download(
    url: str, *, resolve: str, cacert: Path, interface: str, expected_size: int
) -> Download:
    """Download ``url`` to nowhere, verifying the server's certificate; RuntimeError if short."""
    command = [require("curl"), "--silent", "--show-error", "--output", "/dev/null"]
    command += ["--resolve", resolve, "--cacert", str(cacert), "--interface", interface]
    command += ["--write-out", "%{http_code} %{size_download} %{speed_download}", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr.strip()}")
    status, size, speed = done.stdout.split()
    result = Download(float(speed), int(size), int(status))
    if result.status != 200 or result.size != expected_size:
        raise RuntimeError(
            f"curl got {result.status} with {result.size} bytes from {url}, "
            f"not 200 with {expected_size}"
        )
    return result


def curl_post(
    url: str, body: bytes, *, resolve: str, cacert: Path, interface: str
) -> tuple[int, bytes]:
    """POST ``body`` as text/xml once; the status and the answer."""
    command = [require("curl"), "--silent", "--show-error", "--data-binary", "@-"]
    command += ["--header", "Content-Type: text/xml", "--resolve", resolve]
    command += ["--cacert", str(cacert), "--interface", interface]
    command += ["--write-out", "\n%{http_code}", url]
    done = subprocess.run(command, input=body, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr.decode().strip()}")
    answer, _, status = done.stdout.rpartition(b"\n")
    return int(status), answer
