"""The scale benchmark: 50,000 phones on one 2-core machine, and what each one costs.

One lab (`bench.rig`'s real ``lab up``) serves a fleet of 5,000 phones and then one of
50,000 (1,000 and 10,000 with ``--quick``), each through a whole update as in bench.fleet,
with 2 ``emulator run`` workers. Measured: the big run's wall time (target: under 300 s),
the peak memory of the emulator and of the lab added up (target: under 2 GiB), CPU per
phone of each, and how much more CPU a phone of the big run cost the lab than one of the
small run. The lab's part (the inventory, the audit logs, DNS and the check path) must not
grow faster than the fleet: that ratio's limit is 1.25.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.figures import limit, passed, reported
from bench.fleet import IMAGE_SIZE, SCALE, run_fleet
from bench.rig import LabProcess, make_lab_files

SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"small": 5_000, "big": 50_000, "wall_limit": 900.0},
    "quick": {"small": 1_000, "big": 10_000, "wall_limit": 300.0},
}
WORKERS = 2
TARGET_SECONDS = 300.0
TARGET_MEMORY_MIB = 2048.0
TARGET_GROWTH = 1.25
"""Lab CPU per phone of the big run over the small run's: no superlinear cost."""


def run(quick: bool = False) -> dict[str, Any]:
    """The small run, then the big one, on one lab; figures."""
    settings = SETTINGS["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        files = make_lab_files(Path(tmp), "ecdsa-p256", IMAGE_SIZE)
        with LabProcess(files, scale=SCALE) as lab:
            small = run_fleet(files.state_dir, lab, settings["small"], WORKERS)
            big = run_fleet(
                files.state_dir, lab, settings["big"], WORKERS, wall_limit=settings["wall_limit"]
            )
    for result in (small, big):
        result.pop("_curves", None)
    phones = big["phones"]
    memory = big["emulator_peak_rss_mib"] + big["lab_peak_rss_mib"]
    growth = big["lab_cpu_ms_per_phone"] / small["lab_cpu_ms_per_phone"]
    emulator_growth = big["emulator_cpu_ms_per_phone"] / small["emulator_cpu_ms_per_phone"]
    figures = [
        limit(
            f"scale {phones:,}: all converged",
            "emulator run",
            [big["wall_seconds"] if big["converged"] == phones else float("inf")],
            "s",
            TARGET_SECONDS,
        ),
        limit(
            f"scale {phones:,}: peak memory, emulator + lab",
            "both",
            [memory],
            "MiB",
            TARGET_MEMORY_MIB,
        ),
        limit(
            f"scale: lab CPU per phone, {phones:,} over {small['phones']:,}",
            "lab up",
            [growth],
            "x",
            TARGET_GROWTH,
        ),
        reported(
            "scale: emulator CPU per phone, big over small",
            "emulator run",
            round(emulator_growth, 3),
            "x",
        ),
        reported(
            f"scale {phones:,}: lab CPU per phone", "lab up", big["lab_cpu_ms_per_phone"], "ms"
        ),
        reported(
            f"scale {phones:,}: emulator CPU per phone",
            "emulator run",
            big["emulator_cpu_ms_per_phone"],
            "ms",
        ),
        reported(f"scale {phones:,}: lab peak memory", "lab up", big["lab_peak_rss_mib"], "MiB"),
        reported(
            f"scale {phones:,}: phones per second",
            "emulator run",
            big["phones_per_second"],
            "phones/s",
        ),
    ]
    return {
        "figures": figures,
        "passed": passed(figures),
        "runs": {"small": small, "big": big},
        "settings": {**settings, "workers": WORKERS, "scale": SCALE, "image_bytes": IMAGE_SIZE},
    }
