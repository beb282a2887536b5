"""``python -m bench`` (what ``make bench`` runs): every known benchmark, a table, a JSON file.

The tools the chosen benchmarks drive are installed first when missing (bench.install:
apt-get as root; otherwise the command is printed). Results go to
``bench/results/<YYYY-MM-DD>.json`` with the raw numbers, the ratios and the machine they
were measured on; the table shows one line per figure. Exit codes: 0 every target met,
1 a target missed, 2 a tool is missing or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import console, dns, fleet, install, locust_fleet, scale, service, startup

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LEGEND = (
    "lab: front end fe01's internal site under `lab up`; aiohttp: a bare aiohttp TLS handler "
    "with a fixed answer; nginx: nginx with the same certificate (see bench/README.md)"
)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: what runs it (quick or not) and the tools it needs."""

    run: Callable[[bool], dict[str, Any]]
    tools: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {
    "dns": Benchmark(dns.run, ("dnsperf",)),
    "check": Benchmark(service.run_check, ("wrk", "h2load", "nginx", "curl")),
    "newtls": Benchmark(service.run_newtls, ("h2load", "nginx", "curl", "openssl")),
    "download": Benchmark(service.run_download, ("nginx", "curl")),
    "startup": Benchmark(startup.run, ()),
    "fleet": Benchmark(fleet.run, ()),
    "scale": Benchmark(scale.run, ()),
    "locust": Benchmark(locust_fleet.run, ()),
    "console": Benchmark(console.run, ("wrk",)),
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


def figures_of(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of one benchmark's result (the DNS benchmark reports one, in its own keys)."""
    if "figures" in result:
        figures: list[dict[str, Any]] = result["figures"]
        return figures
    return [
        {
            "name": name,
            "subject": result["subject"],
            "baseline": result["baseline"],
            "unit": "q/s",
            "subject_value": result["subject_qps"],
            "baseline_value": result["baseline_qps"],
            "ratio": result["ratio"],
            "target_ratio": result["target_ratio"],
            "passed": result["passed"],
        }
    ]


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def _target(figure: dict[str, Any]) -> str:
    if figure.get("target_max") is not None:
        return f"< {figure['target_max']:g} {figure['unit']}"
    if figure.get("target_ratio") is not None:
        return f">= {figure['target_ratio']:g}x"
    return "-"


def _result(figure: dict[str, Any]) -> str:
    return {True: "ok", False: "MISSED", None: "(reported)"}[figure["passed"]]


def table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the results: one line per figure."""
    header = ("figure", "subject", "baseline", "ratio", "target", "result")
    rows = [header]
    for name, result in results.items():
        for f in figures_of(name, result):
            rows.append(
                (
                    f["name"],
                    _number(f["subject_value"], f["unit"]),
                    _number(f["baseline_value"], f["unit"]),
                    "-" if f["ratio"] is None else f"{f['ratio']:.2f}x",
                    _target(f),
                    _result(f),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = []
    for name, result in results.items():
        if "error" in result:
            details.append(f"{name}: FAILED: {result['error']}")
            continue
        settings = ", ".join(
            f"{key} {value}"
            for key, value in result["settings"].items()
            if isinstance(value, int | float | str)
        )
        details.append(f"{name}: {settings}")
    return "\n".join([*lines, "", LEGEND, *details])


def write(results: dict[str, dict[str, Any]], quick: bool, directory: Path) -> Path:
    """Write today's JSON file (atomically) and return its path."""
    today = datetime.date.today().isoformat()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{today}.json"
    # A run of some benchmarks (--only) keeps the day's figures of the others.
    earlier: dict[str, Any] = {}
    if path.exists():
        try:
            earlier = json.loads(path.read_text()).get("benchmarks", {})
        except (OSError, ValueError):
            earlier = {}
    data = {
        "date": today,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
        "benchmarks": {**earlier, **results},
    }
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

    tools = sorted({tool for name in chosen for tool in BENCHMARKS[name].tools})
    problem = install.ensure(tools)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        print(f"running {name}{' (quick)' if args.quick else ''}...", flush=True)
        try:
            results[name] = BENCHMARKS[name].run(args.quick)
        except RuntimeError as exc:
            # One benchmark that cannot measure (a server that did not start, a client that
            # saw errors) must not cost the others' figures.
            print(f"bench {name}: {exc}", file=sys.stderr)
            results[name] = {"error": str(exc), "passed": False, "figures": [], "settings": {}}
    print(table(results))
    path = write(results, args.quick, args.results_dir)
    print(f"results written to {path}")
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
