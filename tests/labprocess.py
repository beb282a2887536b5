"""A real `lab up` process for tests that talk to the lab as its users do: over its sockets
and through the `lab` command (tests/lab/cli, tests/security).

``start_lab`` writes a private copy of the default config on ports the system chooses
(with overrides of any table), starts `python -m lab.cli up` in its own directory,
optionally under a lower file limit, and waits for its "ready" line by reading its output,
never by sleeping.
"""

from __future__ import annotations

import http.client
import json
import resource
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from lab.net.config import default_text


def lab_cmd(config: Path, state: Path, *args: str) -> list[str]:
    """The argv of `lab --config CONFIG --state-dir STATE ARGS...`."""
    return [
        sys.executable,
        "-m",
        "lab.cli",
        "--config",
        str(config),
        "--state-dir",
        str(state),
        *args,
    ]


@dataclass
class LabProcess:
    """A `lab up` process: its config, state directory and the endpoints it bound."""

    proc: subprocess.Popen[str]
    config: Path
    state: Path
    info: dict[str, Any] = field(default_factory=dict)

    def endpoint(self, *path: str) -> tuple[str, int]:
        """``endpoint("dns", "tcp")`` -> (host, port) from run.json."""
        node: Any = self.info["endpoints"]
        for key in path:
            node = node[key]
        text = node.split("://", 1)[-1]
        host, port = text.rsplit(":", 1)
        return host, int(port)

    def lab(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the `lab` command against this lab."""
        return subprocess.run(
            lab_cmd(self.config, self.state, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """`lab status --json`, parsed; fails the test when it does not answer."""
        result = self.lab("status", "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def publish(self, version: str, model: str = "CX600", pool: str = "pool01") -> None:
        """Build a vendor cab of ``model`` at ``version``, import it into ``pool`` and approve
        it, with the `lab` command as an administrator does."""
        cab = self.state.parent / f"{model}-{version}.cab"
        for args in (
            ("cab", "build", "--model", model, "--version", version, "-o", str(cab)),
            ("update", "import", str(cab), "--pool", pool),
            ("update", "approve", "--pool", pool, "--model", model),
        ):
            done = self.lab(*args)
            assert done.returncode == 0, done.stderr

    def metrics(self) -> dict[str, float]:
        """``GET /metrics`` of the admin API, read with prometheus_client's own parser:
        each sample's value by its name and labels, as ``lab_x_total{a="1",b="2"}``."""
        host, port = self.endpoint("admin", "http")
        token = (self.state / "admin.token").read_text().strip()
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            assert response.status == 200
            # The Prometheus text format, as the client library writes it.
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = response.read().decode()
        finally:
            connection.close()
        return samples(text)

    @property
    def stderr_path(self) -> Path:
        """Where the lab process writes its log."""
        return self.state.parent / "lab-up.err"


def write_config(directory: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """A private copy of the default config on free ports, with ``overrides`` merged in."""
    data = tomllib.loads(default_text())
    data["ports"] = {"dns": 0, "internal": 0, "external": 0, "edge": 0, "admin": 0, "console": 0}
    data["pki"]["dir"] = str(directory / "certs")
    for dotted, table in (overrides or {}).items():
        node = data
        for key in dotted.split("."):
            node = node.setdefault(key, {})
        node.update(table)
    path = directory / "lab.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def start_lab(
    directory: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    nofile: int | None = None,
    up_args: tuple[str, ...] = (),
) -> LabProcess:
    """Start `lab up` (with ``up_args``) in ``directory`` and wait (by reading its output)
    until it is ready."""
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, overrides)
    state = directory / "state"

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    err = (directory / "lab-up.err").open("w")
    proc = subprocess.Popen(
        lab_cmd(config, state, "up", *up_args),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        preexec_fn=limit_files if nofile is not None else None,
    )
    err.close()
    assert proc.stdout is not None
    seen: list[str] = []
    # Blocking reads, not sleeps: the lab says "ready" once everything is bound.
    for line in proc.stdout:
        seen.append(line)
        if line.strip() == "ready":
            break
    else:
        proc.wait(timeout=10)
        log = (directory / "lab-up.err").read_text()
        pytest.fail(f"lab up ended early: {''.join(seen)} {log}")
    running = LabProcess(proc, config, state)
    running.info = json.loads((state / "run.json").read_text())
    return running


def stop_lab(running: LabProcess) -> None:
    """Stop the lab with SIGTERM (SIGKILL if it does not go)."""
    proc = running.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()


PASSWORDS = {"alice": "Passw0rd!", "bob": "Summer2026!", "carol": "Autumn2026!"}
"""The default lab's users' passwords, which `emulator run --user` asks for."""


def run_phone(
    state: Path, index: int, *, location: str = "inside", user: str | None = None
) -> dict[str, Any]:
    """One CX600 (``index``) run by `emulator run` against the lab of ``state`` until it
    settles, as its JSON (with the phone log)."""
    argv = [
        sys.executable,
        "-m",
        "emulator.cli",
        "run",
        "--state-dir",
        str(state),
        "--phones",
        "1",
        "--first-index",
        str(index),
        "--location",
        location,
        "--json",
        "--log",
    ]
    stdin = ""
    if user is not None:
        argv += ["--user", user]
        stdin = PASSWORDS[user] + "\n"  # asked for, as a person types it
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    [phone] = json.loads(done.stdout)["phones"]
    result: dict[str, Any] = phone
    return result


def samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by ``name{label="value",...}`` with
    the labels sorted."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found
