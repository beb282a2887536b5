"""Start-up benchmark: ``lab up`` from process start to its ``ready`` line, certificates made.

The lab is the default one on free ports (bench.rig) with an approved update in its store.
A first start, untimed for the target, makes nothing: the certificates already exist
(``make_lab_files`` made them), so it only warms the file system cache as any second start
would. Then ``runs`` starts are timed, each stopped with SIGTERM once ready; the median
must stay under 2 seconds. After each, the time a bare ``import lab.cli`` takes is
measured too: importing the lab's modules is most of a start (``python -X importtime -c
'import lab.cli'`` breaks it down).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.figures import limit, passed
from bench.rig import ROOT, LabProcess, make_lab_files
from bench.service import RECOMMENDED_KEY

TARGET_SECONDS = 2.0
SETTINGS = {"full": {"runs": 5}, "quick": {"runs": 2}}
IMAGE_SIZE = 1024 * 1024


def import_seconds() -> float:
    """How long ``import lab.cli`` takes in a fresh interpreter (measured inside it)."""
    code = "import time; t = time.perf_counter(); import lab.cli; print(time.perf_counter() - t)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout)


def run(quick: bool = False) -> dict[str, Any]:
    """Time ``lab up`` to ready; the median against the 2 s target."""
    settings = SETTINGS["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        files = make_lab_files(Path(tmp) / "lab", RECOMMENDED_KEY, IMAGE_SIZE)
        with LabProcess(files) as first:
            warm = first.startup_seconds
        times: list[float] = []
        imports: list[float] = []
        for _ in range(settings["runs"]):
            with LabProcess(files) as lab:
                times.append(lab.startup_seconds)
            # Right after, under the same load: how much of it the imports alone take.
            imports.append(import_seconds())
    figures = [limit("start-up, lab up to ready", "lab up", times, "s", TARGET_SECONDS)]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {
            "ready_seconds": [round(t, 3) for t in times],
            "first_start_seconds": round(warm, 3),
            "import_lab_cli_seconds": [round(t, 3) for t in imports],
        },
        "settings": {**settings, "key_type": RECOMMENDED_KEY, "certificates": "already made"},
    }
