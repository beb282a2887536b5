"""Service benchmarks: the update check (kept-alive and on a new TLS connection each) and
the image download, each against a bare aiohttp handler and nginx on the same machine.

Every comparison starts the same three servers with the same certificate and key:

- the lab: ``lab up`` on a temporary copy of the default config (bench.rig), measured on
  front end fe01's internal site, with an approved update in the store so that the check
  is answered with its two downloads, and the audit log writing a line per request;
- the bare aiohttp handler (bench.baselines), answering with the lab's very answer;
- nginx (bench.nginx), ``return 200`` with the same answer and the file store as files.

Runs alternate between the servers and the median of each is compared. The lab sees
wrk's and h2load's connections from 127.0.0.1, put inside with the firewall toggle
(bench.rig), and curl's from 127.10.0.50, an inside address it binds.

- ``check``: HTTP/1.1, 20 connections kept alive, one client thread, a fixed duration
  after a warm-up, in two kinds of run alternated round by round. The measured figure:
  wrk sends the checks of 10,000 distinct phones (bench.phones: their own MAC and serial,
  four models, some behind the approved version and some current) one after another, as a
  fleet does; the lab's store holds an approved update for every model of the mix, and its
  audit log is read afterwards to check every answer. Target: at least 0.6 of the bare
  aiohttp handler, which answers a fixed body whatever it is sent (the cost floor). The
  reported figure: h2load sends one body (a CX600 one version behind) again and again. The
  lab keeps no memo of requests (lab.service.handlers), so both cost it about the same.
- ``newtls``: a full TLS handshake for every check: h2load runs of 20 connections with one
  request each, added up. A reconnecting h2load (``Connection: close``) would resume the
  session it kept (nginx's log showed 99 % resumed), so it is not used; nginx's access log
  (``$ssl_session_reused``) is checked to hold no resumed session. Measured with ECDSA
  P-256 and with RSA 2048 certificates. Target: at least 0.9 of the bare aiohttp handler.
- ``download``: a 50 MiB image with curl (the certificate verified against the lab CA),
  lab against nginx serving the same file. Target: at least 0.7 of nginx.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.figures import compare, passed
from bench.loadgen import (
    CLIENTS,
    Download,
    Handshakes,
    LoadRun,
    curl_download,
    curl_post,
    h2load,
    handshakes,
    new_connection_checks,
    process_cpu,
    wrk,
)
from bench.nginx import NginxServer
from bench.phones import MIX, check_answers, fleet, write_bodies
from bench.process import Started, end_process
from bench.rig import (
    FRONT_END,
    ROOT,
    LabFiles,
    LabProcess,
    audit_lines,
    audit_records,
    check_request,
    make_lab_files,
    wait_for_line,
)
from lab.service.pool import file_store_path

CLIENT_ADDRESS = "127.10.0.50"  # an inside address curl binds
BASELINE_HOST = "127.10.0.21"
NGINX_HOST = "127.10.0.22"
LAB, AIOHTTP, NGINX = "lab", "aiohttp", "nginx"
NAMES = {
    LAB: "lab internal site (fe01)",
    AIOHTTP: "bare aiohttp TLS handler",
    NGINX: "nginx return 200",
}
RECOMMENDED_KEY = "ecdsa-p256"
KEY_TYPES = ("ecdsa-p256", "rsa-2048")
CHECK_IMAGE = 1024 * 1024
DOWNLOAD_IMAGE = 50 * 1024 * 1024

CHECK_TARGET = 0.6  # distinct phones; the one-body figure is reported only
NEWTLS_TARGET = 0.9
DOWNLOAD_TARGET = 0.7

# Settings per mode ("full", "quick"): how many runs alternate, and how long each is
# (whole seconds: wrk takes no fractions).
CHECK: dict[str, dict[str, int]] = {
    "full": {"runs": 5, "seconds": 5, "warm_up": 1},
    "quick": {"runs": 1, "seconds": 2, "warm_up": 1},
}
NEWTLS: dict[str, dict[str, float]] = {
    "full": {"runs": 3, "bursts": 100, "phone_seconds": 3},
    "quick": {"runs": 1, "bursts": 25, "phone_seconds": 1},
}
DOWNLOAD: dict[str, dict[str, float]] = {"full": {"runs": 5}, "quick": {"runs": 2}}
# Bodies parsed per timing of the parse, and timings of each kind.
# How long the bare aiohttp handler may take to stop once its stdin is closed.
BASELINE_STOP = 15.0


class Servers(Started):
    """The lab, the bare aiohttp handler and nginx, started with one lab's files."""

    def __init__(self, files: LabFiles, work: Path, *, baseline: bool = True) -> None:
        self.files = files
        self.work = work
        self.lab = LabProcess(files)
        self.nginx: NginxServer | None = None
        self.answer = b""
        self.request_file = work / "request.xml"
        self.ports: dict[str, int] = {}
        self.hosts: dict[str, str] = {}
        self._with_baseline = baseline
        self._baseline: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start all three; the baselines answer what the lab answered."""
        self.lab.start()
        self.lab.admit_loopback_client()
        self.hosts[LAB], self.ports[LAB] = self.lab.internal_site()
        self.request_file.write_bytes(check_request())
        self.answer = self._first_answer()
        answer_file = self.work / "answer.xml"
        answer_file.write_bytes(self.answer)
        cert = self.files.pki.server(FRONT_END)
        if self._with_baseline:
            self._start_baseline(cert.cert, cert.key, answer_file)
        self.nginx = NginxServer(
            self.work / f"nginx-{self.files.config.pki.key_type}",
            NGINX_HOST,
            cert.cert,
            cert.key,
            check_path=self.files.check_path,
            check_body=self.answer,
            files_path=self.files.files_path,
            files_root=file_store_path(
                self.files.state_dir, self.files.config.front_end(FRONT_END).pool
            ),
        )
        self.nginx.start()
        self.hosts[NGINX], self.ports[NGINX] = NGINX_HOST, self.nginx.port

    def _first_answer(self) -> bytes:
        status, answer = curl_post(
            self.url(LAB, self.files.check_path),
            check_request(),
            resolve=self.resolve(LAB),
            cacert=self.files.pki.ca_cert,
            interface=CLIENT_ADDRESS,
        )
        if status != 200 or b'downloads="2"' not in answer:
            raise RuntimeError(
                f"the lab answered the check with {status}: {answer[:300]!r}; "
                "expected an answer with two downloads"
            )
        return answer

    def _start_baseline(self, cert: Path, key: Path, answer: Path) -> None:
        command = [sys.executable, "-m", "bench.baselines", "--cert", str(cert)]
        command += ["--key", str(key), "--host", BASELINE_HOST, "--body", str(answer)]
        self._baseline = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        line, _ = wait_for_line(self._baseline, "ready", 30.0)
        self.hosts[AIOHTTP], self.ports[AIOHTTP] = BASELINE_HOST, int(line.split()[1])

    def stop(self) -> None:
        """Stop whatever was started."""
        if self._baseline is not None:
            process, self._baseline = self._baseline, None
            stdin = process.stdin
            # A closed stdin is its signal to stop.
            end_process(process, stdin.close if stdin else process.terminate, BASELINE_STOP)
        if self.nginx is not None:
            self.nginx.stop()
        self.lab.stop()

    def pids(self, name: str) -> list[int]:
        """The processes of server ``name`` (nginx: the master and its workers)."""
        if name == LAB:
            return [self.lab.pid]
        if name == AIOHTTP and self._baseline is not None:
            return [self._baseline.pid]
        if name == NGINX and self.nginx is not None:
            return self.nginx.pids
        return []

    @property
    def names(self) -> list[str]:
        """The servers running, the lab first."""
        return [name for name in (LAB, AIOHTTP, NGINX) if name in self.ports]

    def check_url(self, name: str) -> str:
        """The update check URL of server ``name``, by address (what h2load gets)."""
        return f"https://{self.hosts[name]}:{self.ports[name]}{self.files.check_path}"

    def url(self, name: str, path: str) -> str:
        """An https URL at fe01's FQDN on server ``name`` (with ``resolve``, for curl)."""
        return f"https://{self.files.config.front_end(FRONT_END).fqdn}:{self.ports[name]}{path}"

    def resolve(self, name: str) -> str:
        """curl's ``--resolve`` for ``url(name, ...)``."""
        fqdn = self.files.config.front_end(FRONT_END).fqdn
        return f"{fqdn}:{self.ports[name]}:{self.hosts[name]}"


def _alternate(
    servers: Servers, runs: int, measure: Callable[[str], LoadRun]
) -> dict[str, list[LoadRun]]:
    # Interleaving spreads the machine's slow moments over all servers alike.
    results: dict[str, list[LoadRun]] = {name: [] for name in servers.names}
    for _ in range(runs):
        for name in servers.names:
            pids = servers.pids(name)
            before = process_cpu(pids)
            run = measure(name)
            results[name].append(replace(run, server_cpu=process_cpu(pids) - before))
    return results


def _versus(
    label: str,
    runs: dict[str, list[LoadRun]],
    other: str,
    target: float | None = None,
    *,
    per_cpu: bool = False,
) -> dict[str, Any]:
    """The lab against ``other``: checks per second, or per CPU-second of each server."""

    def values(name: str) -> list[float]:
        return [r.per_server_cpu if per_cpu else r.rate for r in runs[name]]

    return compare(
        f"{label}, lab / {other}" + (" (per server CPU-second)" if per_cpu else ""),
        NAMES[LAB],
        values(LAB),
        NAMES[other],
        values(other),
        "checks/CPU-s" if per_cpu else "checks/s",
        target,
    )


def _raw(runs: dict[str, list[LoadRun]]) -> dict[str, list[dict[str, float]]]:
    return {name: [r.as_dict() for r in results] for name, results in runs.items()}


def run_check(quick: bool = False) -> dict[str, Any]:
    """Update checks over kept-alive TLS connections, from 10,000 distinct phones (wrk) and
    with one body (h2load): lab, bare aiohttp, nginx."""
    settings = CHECK["quick" if quick else "full"]
    seconds, warm_up = settings["seconds"], settings["warm_up"]
    phones = fleet()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        work = Path(tmp)
        files = make_lab_files(work / "lab", RECOMMENDED_KEY, CHECK_IMAGE, MIX)
        bodies = work / "phones.txt"
        write_bodies(bodies, phones)
        with Servers(files, work) as servers:
            # Where each server's next run takes up the round of phones: every run starts
            # where the last one stopped, so that all the phones come round, short runs too.
            next_phone = dict.fromkeys(servers.names, 0)

            def by_phone(name: str, run_seconds: int = seconds) -> LoadRun:
                run = wrk(
                    servers.check_url(name), bodies, seconds=run_seconds, start=next_phone[name]
                )
                next_phone[name] += run.requests
                return run

            def by_body(name: str, run_seconds: int = seconds) -> LoadRun:
                return h2load(servers.check_url(name), servers.request_file, seconds=run_seconds)

            # Warm-up runs of their own, so that the CPU time measured is the measured runs'.
            for name in servers.names:
                by_phone(name, warm_up)
                by_body(name, warm_up)
            before = audit_lines(files)
            distinct: dict[str, list[LoadRun]] = {name: [] for name in servers.names}
            one_body: dict[str, list[LoadRun]] = {name: [] for name in servers.names}
            # Both kinds in every round, so that the machine's slow moments fall on both.
            for _ in range(settings["runs"]):
                for results, measure in ((distinct, by_phone), (one_body, by_body)):
                    for name, done in _alternate(servers, 1, measure).items():
                        results[name] += done
            audited = audit_lines(files) - before
            answers = check_answers(audit_records(files), phones)
            workers = servers.nginx.workers if servers.nginx else 0
            answer_size = len(servers.answer)
    lab_requests = sum(r.requests for r in distinct[LAB] + one_body[LAB])
    if audited < lab_requests:
        raise RuntimeError(f"the audit log holds {audited} lines for {lab_requests} checks")
    if answers.checks < sum(r.requests for r in distinct[LAB]):
        raise RuntimeError(f"the audit log holds {answers.checks} checks of the mix's phones")
    phones_label = f"check keep-alive, {len(phones):,} phones"
    figures = [
        _versus(phones_label, distinct, AIOHTTP, CHECK_TARGET),
        _versus(phones_label, distinct, NGINX),
        _versus(phones_label, distinct, AIOHTTP, per_cpu=True),
        _versus("check keep-alive, one body", one_body, AIOHTTP),
        _versus("check keep-alive, one body", one_body, NGINX),
        _versus("check keep-alive, one body", one_body, AIOHTTP, per_cpu=True),
        compare(
            f"check keep-alive, lab with {len(phones):,} phones / one body",
            f"{NAMES[LAB]}, {len(phones):,} phones",
            [r.rate for r in distinct[LAB]],
            f"{NAMES[LAB]}, one body",
            [r.rate for r in one_body[LAB]],
            "checks/s",
        ),
    ]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {
            "distinct_phones": _raw(distinct),
            "one_body": _raw(one_body),
        },
        "settings": {
            **settings,
            "clients": CLIENTS,
            "client_phones": "wrk -t 1, bench/phones.lua",
            "client_one_body": "h2load --h1 -t 1",
            "phones": len(phones),
            "models": " ".join(MIX),
            "key_type": RECOMMENDED_KEY,
            "answer_bytes": answer_size,
            "nginx_workers": workers,
            "lab_audit_lines": audited,
            "lab_checks_behind": answers.behind,
            "lab_checks_current": answers.current,
            "lab_phones_seen": answers.phones,
        },
    }


def run_newtls(quick: bool = False) -> dict[str, Any]:
    """Update checks with a full TLS handshake each, for both key types."""
    settings = NEWTLS["quick" if quick else "full"]
    bursts = int(settings["bursts"])
    figures: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    lab_runs: dict[str, list[LoadRun]] = {}
    phones: dict[str, Handshakes] = {}
    workers = 0
    for key_type in KEY_TYPES:
        with tempfile.TemporaryDirectory(prefix=f"bench-newtls-{key_type}-") as tmp:
            work = Path(tmp)
            files = make_lab_files(work / "lab", key_type, CHECK_IMAGE)
            with Servers(files, work) as servers:
                assert servers.nginx is not None
                for name in servers.names:  # warm-up: imports, caches, first handshakes
                    new_connection_checks(servers.check_url(name), servers.request_file, bursts=2)
                runs = _alternate(
                    servers,
                    int(settings["runs"]),
                    lambda name: new_connection_checks(
                        servers.check_url(name), servers.request_file, bursts=bursts
                    ),
                )
                # One phone's view: its own handshakes, one after another, chain verified.
                phone = handshakes(
                    *servers.lab.internal_site(),
                    cafile=files.pki.ca_cert,
                    seconds=int(settings["phone_seconds"]),
                )
                nginx = servers.nginx
                workers = nginx.workers
            log = nginx.access_log()
        resumed = sum(1 for line in log if line.startswith("r"))
        if resumed:
            raise RuntimeError(f"nginx saw {resumed} resumed TLS sessions; the client reused them")
        phones[key_type] = phone
        raw[key_type] = {
            "runs": _raw(runs),
            "phone": phone.as_dict(),
            "nginx_requests": len(log),
            "nginx_resumed_sessions": resumed,
        }
        lab_runs[key_type] = runs[LAB]
        label = f"new TLS {key_type}"
        figures.append(_versus(label, runs, AIOHTTP, NEWTLS_TARGET))
        figures.append(_versus(label, runs, NGINX))
        figures.append(_versus(label, runs, AIOHTTP, per_cpu=True))
    ecdsa, rsa = lab_runs["ecdsa-p256"], lab_runs["rsa-2048"]
    for per_cpu in (False, True):
        figures.append(
            compare(
                "new TLS, lab with ecdsa-p256 / rsa-2048"
                + (" (per server CPU-second)" if per_cpu else ""),
                "lab, ECDSA P-256 certificate",
                [r.per_server_cpu if per_cpu else r.rate for r in ecdsa],
                "lab, RSA 2048 certificate",
                [r.per_server_cpu if per_cpu else r.rate for r in rsa],
                "checks/CPU-s" if per_cpu else "checks/s",
            )
        )
    phone_figures: list[tuple[str, str, Callable[[Handshakes], float]]] = [
        ("handshake latency", "handshakes/s", lambda h: h.per_second),
        ("handshake CPU", "handshakes/client CPU-s", lambda h: h.per_client_cpu),
    ]
    for label, unit, value in phone_figures:
        figures.append(
            compare(
                f"phone {label}, ecdsa-p256 / rsa-2048",
                "one client to the lab, ECDSA P-256",
                [value(phones["ecdsa-p256"])],
                "one client to the lab, RSA 2048",
                [value(phones["rsa-2048"])],
                unit,
            )
        )
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": raw,
        "settings": {
            **settings,
            "clients": CLIENTS,
            "requests_per_connection": 1,
            "client": f"h2load --h1 -t 1 -c {CLIENTS} -n {CLIENTS}, repeated",
            "phone": "openssl s_time -new -CAfile <lab CA> -verify 2 (one client, sequential)",
            "nginx_workers": workers,
        },
    }


def run_download(quick: bool = False) -> dict[str, Any]:
    """A 50 MiB image through the lab's internal site and from nginx, with curl."""
    settings = DOWNLOAD["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        files = make_lab_files(work / "lab", RECOMMENDED_KEY, DOWNLOAD_IMAGE)
        with Servers(files, work, baseline=False) as servers:
            path = f"{files.files_path}/{files.image_path}"

            def fetch(name: str) -> Download:
                pids = servers.pids(name)
                before = process_cpu(pids)
                done = curl_download(
                    servers.url(name, path),
                    resolve=servers.resolve(name),
                    cacert=files.pki.ca_cert,
                    interface=CLIENT_ADDRESS,
                    expected_size=files.image_size,
                )
                return replace(done, server_cpu=process_cpu(pids) - before)

            # The first download makes the lab hash the file for its ETag (once per file).
            first = {name: fetch(name).as_dict() for name in servers.names}
            runs: dict[str, list[Download]] = {name: [] for name in servers.names}
            for _ in range(int(settings["runs"])):
                for name in servers.names:
                    runs[name].append(fetch(name))
            workers = servers.nginx.workers if servers.nginx else 0
    mib = {name: [d.speed / 2**20 for d in results] for name, results in runs.items()}
    figures = [
        compare(
            "download 50 MiB, lab / nginx",
            NAMES[LAB],
            mib[LAB],
            "nginx static file",
            mib[NGINX],
            "MiB/s",
            DOWNLOAD_TARGET,
        )
    ]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {name: [d.as_dict() for d in results] for name, results in runs.items()},
        "first_download": first,
        "settings": {
            **settings,
            "image_bytes": files.image_size,
            "client": "curl --interface 127.10.0.50, certificate verified",
            "key_type": RECOMMENDED_KEY,
            "nginx_workers": workers,
        },
    }
