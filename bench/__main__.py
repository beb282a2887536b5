"""``python -m bench`` (what ``make bench`` runs): every known benchmark, a table, a JSON file.

Results go to ``bench/results/<YYYY-MM-DD>.json`` with the raw numbers, the ratios and the
machine they were measured on. Exit codes: 0 every target met, 1 a target missed,
2 a tool is missing or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import dns

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# name -> (run(quick) -> result, tool check returning a problem or None)
BENCHMARKS: dict[str, tuple[Callable[[bool], dict[str, Any]], Callable[[], str | None]]] = {
    "dns": (
        dns.run,
        lambda: (
            None
            if dns.find_dnsperf()
            else "dnsperf is not installed; install it with: apt-get install dnsperf"
        ),
    ),
}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the results."""
    header = ("benchmark", "subject q/s", "baseline q/s", "ratio", "target", "result")
    rows = [header] + [
        (
            name,
            f"{r['subject_qps']:,.0f}",
            f"{r['baseline_qps']:,.0f}",
            f"{r['ratio']:.2f}x",
            f">= {r['target_ratio']:.0f}x",
            "ok" if r["passed"] else "MISSED",
        )
        for name, r in results.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = [
        f"{name}: {r['subject']} vs {r['baseline']}, median of {r['settings']['runs']} "
        f"run(s) of {r['settings']['seconds']} s each"
        for name, r in results.items()
    ]
    return "\n".join([*lines, "", *details])


def write(results: dict[str, dict[str, Any]], quick: bool, directory: Path) -> Path:
    """Write today's JSON file (atomically) and return its path."""
    today = datetime.date.today().isoformat()
    data = {
        "date": today,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
        "benchmarks": results,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{today}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks and report them."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark"
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (a rough figure)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = args.only or sorted(BENCHMARKS)

    for name in chosen:
        problem = BENCHMARKS[name][1]()
        if problem:
            print(f"bench {name}: {problem}", file=sys.stderr)
            return 2
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        print(f"running {name}{' (quick)' if args.quick else ''}...", flush=True)
        results[name] = BENCHMARKS[name][0](args.quick)
    print(table(results))
    path = write(results, args.quick, args.results_dir)
    print(f"results written to {path}")
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
