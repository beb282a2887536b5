"""Profile the lab under one benchmark's load with py-spy: where a check's time goes.

``python -m bench.profile phones|check|newtls|download [--seconds N]`` starts the lab as
the benchmarks do (bench.rig, bench.service), samples ``lab up`` with ``py-spy record``
while the benchmark's client loads it (``phones``: wrk with the checks of 10,000 distinct
phones, bench.phones; ``check``: h2load with one body), and prints the top frames by own
time and by time including callees, with the lab's CPU time per request. The raw samples
(collapsed stacks, one line per stack) are kept for flame graphs. py-spy is a measuring
tool, not a dependency of the lab: install it into the virtual environment with
``.venv/bin/pip install py-spy`` when needed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.loadgen import curl_download, h2load, new_connection_checks, process_cpu, wrk
from bench.phones import MIX, fleet, write_bodies
from bench.rig import MODEL, make_lab_files
from bench.service import (
    CHECK_IMAGE,
    CLIENT_ADDRESS,
    DOWNLOAD_IMAGE,
    LAB,
    RECOMMENDED_KEY,
    Servers,
)

SAMPLE_RATE = 250
TOP = 25


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the virtual environment) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def top_frames(raw: Path, count: int = TOP) -> str:
    """The ``count`` frames with the most samples, by own time and including callees."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples (the lab busy); own time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(count)]
    lines.append("including callees:")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(count)]
    return "\n".join(lines)


def load(servers: Servers, stage: str, seconds: float) -> int:
    """Run ``stage``'s client against the lab for about ``seconds``; requests made."""
    if stage == "phones":
        bodies = servers.work / "phones.txt"
        if not bodies.exists():
            write_bodies(bodies, fleet())
        run = wrk(servers.check_url(LAB), bodies, seconds=max(1, round(seconds)))
        return run.requests
    if stage == "check":
        return h2load(servers.check_url(LAB), servers.request_file, seconds=seconds).requests
    done = 0
    deadline = time.monotonic() + seconds
    files = servers.files
    while time.monotonic() < deadline:
        if stage == "newtls":
            done += new_connection_checks(
                servers.check_url(LAB), servers.request_file, bursts=10
            ).requests
        else:
            curl_download(
                servers.url(LAB, f"{files.files_path}/{files.image_path}"),
                resolve=servers.resolve(LAB),
                cacert=files.pki.ca_cert,
                interface=CLIENT_ADDRESS,
                expected_size=files.image_size,
            )
            done += 1
    return done


def main() -> int:
    """Profile one stage and print its top frames."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("stage", choices=("phones", "check", "newtls", "download"))
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to sample")
    parser.add_argument("--output", type=Path, help="where to keep the raw samples")
    args = parser.parse_args()
    py_spy = find_py_spy()
    if py_spy is None:
        print("bench.profile: py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    size = DOWNLOAD_IMAGE if args.stage == "download" else CHECK_IMAGE
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        raw = args.output or work / "samples.txt"
        models = MIX if args.stage == "phones" else (MODEL,)
        files = make_lab_files(work / "lab", RECOMMENDED_KEY, size, models)
        with Servers(files, work, baseline=False) as servers:
            load(servers, args.stage, 1.0)  # warm-up, not sampled
            # --function: one line per function, whatever line of it was running.
            record = [py_spy, "record", "--pid", str(servers.lab.pid), "--nonblocking"]
            record += ["--function"]
            record += ["--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(raw)]
            record += ["--duration", str(round(args.seconds + 1))]
            spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            before = process_cpu([servers.lab.pid])
            requests = load(servers, args.stage, args.seconds)
            cpu = process_cpu([servers.lab.pid]) - before
            _, errors = spy.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0 or not raw.exists():
            print(f"bench.profile: py-spy failed: {errors.decode().strip()}", file=sys.stderr)
            return 1
        per_request = cpu * 1e6 / max(requests, 1)
        print(f"{args.stage}: {requests} requests, lab CPU {per_request:.0f} us each")
        print(top_frames(raw))
        if args.output:
            print(f"raw samples in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
