"""A fleet's JSON reaches its reader whole, however late the reader comes (--workers).

After uvloop has run, a worker's write of its share to a pipe nobody was reading yet came
back short, as writes to a non-blocking pipe do, and the rest was lost. The test gives the
writer exactly that: a pipe already full and set non-blocking.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARE = {"phones": ["x" * 100] * 3000}
WORKER = 'from emulator.cli import _print_json; _print_json({"phones": ["x" * 100] * 3000}, True)'


def _fill(fd: int) -> bytes:
    """Fill the pipe ``fd`` writes to and leave it non-blocking: its reader is late."""
    os.set_blocking(fd, False)
    written = bytearray()
    try:
        while True:
            written += b"-" * os.write(fd, b"-" * 4096)
    except BlockingIOError:
        return bytes(written)


def test_a_large_json_written_into_a_full_pipe_arrives_whole() -> None:
    read_end, write_end = os.pipe()
    filler = _fill(write_end)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER], stdout=write_end, stderr=subprocess.PIPE, cwd=ROOT
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        received = reader.read()
    _, errors = worker.communicate()
    assert worker.returncode == 0, errors.decode()
    assert received[: len(filler)] == filler
    assert received.endswith(b"\n")
    assert json.loads(received[len(filler) :]) == SHARE
