"""What the network mode's tests do from outside the lab: phones, bare connections, tshark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A connection attempt from a segment, in a process of its own: it joins the lab's user
# namespace if the lab has one (only a process with one thread may), then makes its socket
# in the segment's namespace with the emulator's helper, as a phone does.
_CONNECT = """
import socket, sys
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


def connect_from(state: Path, source: str, host: str, port: int, *, timeout: float = 0.5) -> str:
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
