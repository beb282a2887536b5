"""The tools the benchmarks drive, and installing the missing ones (what ``make bench`` does first).

Every tool comes from the system's package manager: dnsperf, nginx (``nginx-light`` where
the distribution still has it, which is nginx with only the core modules, TLS included;
``nginx`` otherwise), h2load from ``nghttp2-client``, wrk, curl and openssl. When one is
missing and we run as root, ``apt-get update`` and one ``apt-get install -y`` bring them
all; otherwise the command to run is printed and ``python -m bench`` exits 2. Nothing here
starts a system service: nginx only ever runs as a foreground process of the nginx
benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

# sbin directories hold nginx but are not on every user's PATH.
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin", "/bin")
APT_TIMEOUT = 600


@dataclass(frozen=True)
class Tool:
    """An executable a benchmark needs and the packages that may provide it, preferred first."""

    name: str
    packages: tuple[str, ...]


TOOLS: dict[str, Tool] = {
    "dnsperf": Tool("dnsperf", ("dnsperf",)),
    "nginx": Tool("nginx", ("nginx-light", "nginx")),
    "h2load": Tool("h2load", ("nghttp2-client",)),
    "wrk": Tool("wrk", ("wrk",)),
    "curl": Tool("curl", ("curl",)),
    "openssl": Tool("openssl", ("openssl",)),
}


def find(name: str) -> str | None:
    """The path of executable ``name``, looking in the sbin directories too."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SEARCH_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def require(name: str) -> str:
    """The path of tool ``name``; RuntimeError naming the package when it is missing."""
    path = find(name)
    if path is None:
        tool = TOOLS[name]
        raise RuntimeError(f"{name} is not installed (apt-get install {tool.packages[0]})")
    return path


def has_candidate(package: str) -> bool:
    """Whether apt can install ``package`` (``apt-cache policy`` shows a candidate)."""
    try:
        done = subprocess.run(
            ["apt-cache", "policy", package], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    for line in done.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            return value.strip() not in ("", "(none)")
    return False


def package_for(tool: Tool) -> str:
    """The first of the tool's packages this system's apt offers (the first one if none)."""
    for package in tool.packages:
        if has_candidate(package):
            return package
    return tool.packages[0]


def install_command(packages: Sequence[str]) -> list[str]:
    """The apt-get command that installs ``packages``."""
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure(names: Sequence[str]) -> str | None:
    """Install whichever of the tools ``names`` are missing; a problem to report, or None.

    As root the packages are installed (after ``apt-get update``); otherwise the problem
    names the command to run.
    """
    missing = [TOOLS[name] for name in names if find(name) is None]
    if not missing:
        return None
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        packages = [tool.packages[0] for tool in missing]
        if apt is not None:
            packages = [package_for(tool) for tool in missing]
        command = " ".join(install_command(packages))
        return f"{', '.join(t.name for t in missing)} missing; install with: {command}"
    # The package lists may be stale or absent (fresh containers): refresh them first, and
    # only then ask which nginx package exists.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    problem = _run(["apt-get", "update"], env)
    if problem is None:
        problem = _run(install_command([package_for(tool) for tool in missing]), env)
    if problem is not None:
        return problem
    still = [tool.name for tool in missing if find(tool.name) is None]
    if still:
        return f"{', '.join(still)} still missing after installing"
    return None


def _run(command: list[str], env: dict[str, str]) -> str | None:
    print("bench: " + " ".join(command), flush=True)
    try:
        # apt's chatter goes to stderr so that stdout stays the benchmarks' report.
        done = subprocess.run(command, env=env, timeout=APT_TIMEOUT, stdout=sys.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(command)} failed: {exc}"
    if done.returncode != 0:
        return f"{' '.join(command)} failed with exit code {done.returncode}"
    return None


if __name__ == "__main__":
    problem = ensure(sys.argv[1:] or list(TOOLS))
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        raise SystemExit(2)
