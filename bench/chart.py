"""The chart of a fleet run (PNG): phones converged, and phones past each stage, against wall time.

matplotlib is used here only, never by the lab or the emulator; when the virtual
environment lacks it, it is installed there with pip (the venv's own) on first use.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=True
        )
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # no display: write files only
    return importlib.import_module("matplotlib.pyplot")


def fleet_chart(
    path: Path,
    title: str,
    curves: Mapping[str, Sequence[float]],
    phones: int,
    target_seconds: float | None = None,
) -> Path:
    """Draw one step curve per entry of ``curves`` (wall seconds at which each phone got
    there) against wall time, and write it to ``path``."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5), dpi=100)
    for label, times in curves.items():
        ordered = sorted(times)
        axes.step([0.0, *ordered], range(len(ordered) + 1), where="post", label=label)
    if target_seconds is not None:
        axes.axvline(target_seconds, color="grey", linestyle="--", label="target")
    axes.axhline(phones, color="grey", linestyle=":")
    axes.set_xlabel("wall time since the emulator started (s)")
    axes.set_ylabel("phones")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
