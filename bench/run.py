"""Benchmark command: prints a table of figures and writes them as JSON.

    .venv/bin/python bench/run.py [--repeat N] [--only NAME_PREFIX] [--module bench_x] [--json PATH]

Every ``bench/bench_*.py`` module defines ``run(bench)`` and calls ``bench.measure`` (wall
time of a callable, repeated; the median is reported with min and max), ``bench.pair`` (a
figure and its baseline run in turn, A B A B ..., in the same run, with the median of the
pairwise ratios A/B) or ``bench.record`` (a count or any other figure).
``process_costs`` tells what one process spends importing (``-X importtime``, summed) and
between its last output and its exit (the interpreter's teardown).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
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

    def pair(self, name: str, fn: Callable[[], Any], base_name: str,
             base_fn: Callable[[], Any], repeat: Optional[int] = None,
             setup: Optional[Callable[[], Any]] = None,
             base_setup: Optional[Callable[[], Any]] = None, note: str = "",
             base_note: str = "") -> Optional[dict]:
        """Time ``fn`` and its baseline ``base_fn`` in turn (A B A B ...: both see the same
        machine), and record both with the median of the pairwise ratios A/B."""
        if not self.wanted(name):
            return None
        times: List[float] = []
        base_times: List[float] = []
        for _ in range(repeat or self.repeat):
            for run, prepare, into in ((fn, setup, times), (base_fn, base_setup, base_times)):
                if prepare is not None:
                    prepare()
                start = time.perf_counter()
                run()
                into.append((time.perf_counter() - start) * 1000)
        ratios = [a / b for a, b in zip(times, base_times) if b > 0]
        row = self._row(name, times, note)
        row.update(ratio=statistics.median(ratios) if ratios else None, vs=base_name)
        self.rows.append(row)
        self.rows.append(self._row(base_name, base_times, base_note or "baseline, paired"))
        return row

    @staticmethod
    def _row(name: str, times: List[float], note: str) -> Dict[str, Any]:
        return {"name": name, "unit": "ms", "median": statistics.median(times),
                "min": min(times), "max": max(times), "runs": len(times), "note": note}

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
        shutil.rmtree(self.tmp, ignore_errors=True)


def baseline(bench: Bench) -> None:
    python = sys.executable
    bench.measure("baseline: python3 -c pass",
                  lambda: subprocess.run([python, "-c", "pass"], check=True),
                  note="interpreter start-up, for scale")


def pair_floor(bench: Bench, name: str, python: str, modules: str,
               env: Optional[Dict[str, str]] = None) -> None:
    """The least a process that uses ``modules`` costs: ``python -c "import <modules>"``
    paired with ``python -c pass`` (what an action spends beyond it is its own doing)."""
    bench.pair(name, lambda: subprocess.run([python, "-c", f"import {modules}"], check=True,
                                            env=env),
               f"{name.split(':', maxsplit=1)[0]} baseline: python -c pass",
               lambda: subprocess.run([python, "-c", "pass"], check=True, env=env),
               note=f"only the imports of {modules}, nothing run",
               base_note="same interpreter, in turn")


def process_costs(argv: List[str], stdin: bytes = b"", env: Optional[Dict[str, str]] = None,
                  setup: Optional[Callable[[], Any]] = None) -> Dict[str, float]:
    """One run of ``argv`` with ``-X importtime`` (PYTHONPROFILEIMPORTTIME): the summed
    import times (ms), and one plain run: the wall time (ms) and the time from its last byte
    of output to its exit (the end of both pipes: the teardown, ms). ``setup`` runs before
    each of the two."""
    import selectors

    if setup is not None:
        setup()
    traced = subprocess.run(argv, input=stdin, capture_output=True, check=False,
                            env=dict(env or os.environ, PYTHONPROFILEIMPORTTIME="1"))
    imports_us = 0
    for line in traced.stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            self_us = line.split(":", 1)[1].split("|")[0].strip()
            imports_us += int(self_us) if self_us.isdigit() else 0
    if setup is not None:
        setup()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdin.write(stdin)
    proc.stdin.close()
    last = started
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                if os.read(key.fileobj.fileno(), 65536):
                    last = time.perf_counter()
                else:
                    sel.unregister(key.fileobj)
    ended = time.perf_counter()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return {"imports_ms": imports_us / 1000, "wall_ms": (ended - started) * 1000,
            "teardown_ms": (ended - last) * 1000, "rc": float(proc.returncode)}


def record_process_costs(bench: Bench, name: str, argv: List[str], stdin: bytes = b"",
                         env: Optional[Dict[str, str]] = None, runs: int = 5,
                         setup: Optional[Callable[[], Any]] = None) -> None:
    """Median import and teardown costs of ``argv`` over ``runs`` runs, as figures."""
    if not bench.wanted(name):
        return
    found = [process_costs(argv, stdin, env, setup) for _ in range(runs)]
    for key, what in (("imports_ms", "imports (-X importtime, summed)"),
                      ("teardown_ms", "last output to exit")):
        values = [f[key] for f in found]
        bench.rows.append({"name": f"{name}: {what}", "unit": "ms",
                           "median": statistics.median(values), "min": min(values),
                           "max": max(values), "runs": runs, "note": ""})


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
    print(f"{'figure':<{width}}  {'median':>10}  {'min':>10}  {'max':>10}  {'runs':>4}  "
          f"{'A/B':>6}  unit")
    for r in rows:
        ratio = f"{r['ratio']:>6.2f}" if r.get("ratio") is not None else " " * 6
        notes = [n for n in (f"B = {r['vs']}" if r.get("vs") else "", r["note"]) if n]
        print(f"{r['name']:<{width}}  {r['median']:>10.2f}  {r['min']:>10.2f}  {r['max']:>10.2f}"
              f"  {r['runs']:>4}  {ratio}  {r['unit']}{'  ' + '; '.join(notes) if notes else ''}")


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
                                           "interpreter": os.path.realpath(sys.executable),
                                           "figures": bench.rows}, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
