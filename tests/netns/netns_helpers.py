"""What the network mode's tests do from outside the lab: phones, bare connections, tshark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PASSWORDS = {"alice": "Passw0rd!"}

# A connection attempt from a segment, in a process of its own: it joins the lab's user
# namespace if the lab has one (only a process with one thread may), then makes its socket
# in the segment's namespace with the emulator's helper, as a phone does.
_CONNECT = """
import json, socket, sys
from emulator.lease import load_lease
lease = load_lease(__import__("pathlib").Path(sys.argv[1]))
lease.netns.join_user()
sock = lease.netns.socket(sys.argv[2], socket.SOCK_STREAM)
sock.bind((sys.argv[2], 0))
sock.settimeout(float(sys.argv[5]))
try:
    sock.connect((sys.argv[3], int(sys.argv[4])))
except TimeoutError:
    print("timed out")
except ConnectionRefusedError:
    print("refused")
else:
    print("connected")
"""


def connect_from(state: Path, source: str, host: str, port: int, *, timeout: float = 1.0) -> str:
    """A TCP connection from ``source`` (a phone's address) to ``host:port`` in the lab's
    network: "connected", "refused" (a reset) or "timed out" (no answer at all)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CONNECT,
            str(state / "lease.json"),
            source,
            host,
            str(port),
            str(timeout),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def run_phone(
    state: Path, *, index: int, location: str = "inside", user: str | None = None
) -> dict[str, Any]:
    """One CX600 run by `emulator run` until it settles, as JSON (with its log)."""
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
        stdin = PASSWORDS[user] + "\n"
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    [phone] = json.loads(done.stdout)["phones"]
    result: dict[str, Any] = phone
    return result


def tshark(
    pcap: Path, display: str, fields: list[str], keys: Path | None = None
) -> list[list[str]]:
    """The ``fields`` of every packet of ``pcap`` that ``display`` selects, decrypted with
    the key log ``keys`` when given."""
    argv = ["tshark", "-r", str(pcap), "-Y", display, "-T", "fields"]
    if keys is not None:
        argv += ["-o", f"tls.keylog_file:{keys}"]
    for field in fields:
        argv += ["-e", field]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines() if line]
