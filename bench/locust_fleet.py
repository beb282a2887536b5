"""Locust against ``emulator run``: CPU per phone of the two drivers of the same phones.

One lab (`bench.rig`'s real ``lab up``) serves the same fleet twice: 2,000 CX600 phones
through a whole update (500 with ``--quick``), once with ``emulator run`` (the asyncio
driver, one process) and once with Locust running the shipped locustfile headless in one
process (the gevent driver, emulator/cooperative.py). Reported, not held to a target: each
one's wall time and CPU per phone (from the children's rusage), and their ratio.
"""

from __future__ import annotations

import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.figures import passed, reported
from bench.fleet import IMAGE_SIZE, SCALE, child_env, run_fleet
from bench.rig import ROOT, LabProcess, make_lab_files

SETTINGS = {"full": 2_000, "quick": 500}
WALL_LIMIT = 300.0


def run_locust(state_dir: Path, phones: int, workdir: Path) -> dict[str, Any]:
    """One headless Locust process running ``phones`` phones until all converged."""
    locustfile = ROOT / "emulator" / "locustfile.py"
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(locustfile),
        "--headless",
        "--users",
        str(phones),
        "--spawn-rate",
        "500",
        "--run-time",
        f"{WALL_LIMIT:g}s",
        "--phone-state-dir",
        str(state_dir),
        "--phones-to-converge",
        str(phones),
        "--csv",
        str(workdir / "locust"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=WALL_LIMIT + 60,
        cwd=workdir,
        env=child_env(),
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"locust ended with status {done.returncode}: {done.stderr[-500:]}")
    rows = {
        (row["Type"], row["Name"]): row
        for row in csv.DictReader((workdir / "locust_stats.csv").read_text().splitlines())
    }
    converged = int(rows.get(("PHONE", "converged"), {}).get("Request Count", 0))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "phones": phones,
        "converged": converged,
        "wall_seconds": round(wall, 3),
        "cpu_ms_per_phone": round(cpu * 1000 / phones, 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The same fleet through ``emulator run`` and through Locust; figures."""
    phones = SETTINGS["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        files = make_lab_files(Path(tmp), "ecdsa-p256", IMAGE_SIZE)
        with LabProcess(files, scale=SCALE) as lab:
            asyncio_run = run_fleet(files.state_dir, lab, phones, 1)
            asyncio_run.pop("_curves", None)
            locust_run = run_locust(files.state_dir, phones, Path(tmp))
    if locust_run["converged"] != phones:
        raise RuntimeError(f"Locust converged {locust_run['converged']} of {phones} phones")
    ratio = locust_run["cpu_ms_per_phone"] / asyncio_run["emulator_cpu_ms_per_phone"]
    figures = [
        reported("locust: CPU per phone", "locust", locust_run["cpu_ms_per_phone"], "ms"),
        reported(
            "emulator run: CPU per phone",
            "emulator run",
            asyncio_run["emulator_cpu_ms_per_phone"],
            "ms",
        ),
        reported("locust over emulator run, CPU per phone", "locust", round(ratio, 3), "x"),
        reported("locust: wall time", "locust", locust_run["wall_seconds"], "s"),
        reported("emulator run: wall time", "emulator run", asyncio_run["wall_seconds"], "s"),
    ]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {"emulator_run": asyncio_run, "locust": locust_run},
        "settings": {"phones": phones, "scale": SCALE, "image_bytes": IMAGE_SIZE},
    }
