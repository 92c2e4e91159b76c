"""Benchmark command: prints a table of figures and writes them as JSON.

    .venv/bin/python bench/run.py [--repeat N] [--only NAME_PREFIX] [--json PATH]

Every ``bench/bench_*.py`` module defines ``run(bench)`` and calls ``bench.measure`` (wall
time of a callable, repeated; the median is reported with min and max) or ``bench.record``
(a count or any other figure). A ``python3 -c pass`` start-up baseline is measured in the
same run so the figures can be read against the cost of merely starting Python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "lib"))


class Bench:
    """Collects figures; owns lazily started emulators and a scratch directory."""

    def __init__(self, repeat: int, only: str) -> None:
        self.repeat = repeat
        self.only = only
        self.rows: List[Dict[str, Any]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self._cleanups: List[Callable[[], None]] = []

    def wanted(self, name: str) -> bool:
        return name.startswith(self.only)

    def measure(self, name: str, fn: Callable[[], Any], repeat: Optional[int] = None,
                setup: Optional[Callable[[], Any]] = None, note: str = "") -> Optional[dict]:
        """Time ``fn`` ``repeat`` times (``setup`` runs untimed before each run)."""
        if not self.wanted(name):
            return None
        times = []
        for _ in range(repeat or self.repeat):
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        row = {"name": name, "unit": "ms", "median": statistics.median(times),
               "min": min(times), "max": max(times), "runs": len(times), "note": note}
        self.rows.append(row)
        return row

    def record(self, name: str, value: float, unit: str, note: str = "") -> None:
        """Record a figure that is not a time (processes spawned, rules, ...)."""
        if self.wanted(name):
            self.rows.append({"name": name, "unit": unit, "median": value, "min": value,
                              "max": value, "runs": 1, "note": note})

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - clean-up goes on
                print(f"bench: clean-up failed: {exc}", file=sys.stderr)


def baseline(bench: Bench) -> None:
    python = sys.executable
    bench.measure("baseline: python3 -c pass",
                  lambda: subprocess.run([python, "-c", "pass"], check=True),
                  note="interpreter start-up, for scale")


def load_modules(names: List[str]) -> List[Any]:
    modules = []
    for path in sorted(HERE.glob("bench_*.py")):
        if names and path.stem not in names:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def print_table(rows: List[Dict[str, Any]]) -> None:
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"{'figure':<{width}}  {'median':>10}  {'min':>10}  {'max':>10}  {'runs':>4}  unit")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['median']:>10.2f}  {r['min']:>10.2f}  {r['max']:>10.2f}"
              f"  {r['runs']:>4}  {r['unit']}{'  ' + r['note'] if r['note'] else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "15")))
    parser.add_argument("--only", default="", help="run only figures whose name starts so")
    parser.add_argument("--module", action="append", default=[],
                        help="run only this bench module (e.g. bench_packet); repeatable")
    parser.add_argument("--json", default=str(HERE / "results.json"))
    args = parser.parse_args()
    bench = Bench(args.repeat, args.only)
    try:
        baseline(bench)
        for module in load_modules(args.module):
            module.run(bench)
    finally:
        bench.close()
    print_table(bench.rows)
    Path(args.json).write_text(json.dumps({"python": sys.version.split()[0],
                                           "figures": bench.rows}, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
