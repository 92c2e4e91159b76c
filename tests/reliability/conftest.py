"""Reliability suite set-up: prints the figures the note quotes when the session ends (and
writes them as JSON to $RELIABILITY_FIGURES when set)."""

from __future__ import annotations

import json
import os
from typing import Any

from reliability.relsupport import COUNTS, LOSSES

LABELS = [
    ("bad_inputs", "bad inputs tried (each run as a subprocess with oned's argv)"),
    ("bad_input_executables", "executables fed bad input"),
    ("hostile_requests", "hostile HTTP/XML-RPC requests to the two emulators"),
    ("bad_environments", "broken environments tried (config, auth file, directories)"),
    ("faults", "faults injected through the Packet emulator"),
    ("oned_faults", "faults injected through the oned emulator"),
    ("vnm_faults", "iptables-restore failures injected (VNM)"),
    ("faulted_runs", "component runs under a fault"),
    ("hook_retries", "hook retries after a failed run (each must converge)"),
    ("concurrent_runs", "concurrent runs"),
    ("killed_runs", "actions killed midway"),
    ("secret_samples", "process argument lists read while the life cycle ran"),
    ("secret_vnm_runs", "VNM actions run (in namespaces) during the secrets life cycle"),
    ("secret_processes_seen", "distinct processes whose argv was sampled"),
    ("secret_files_checked", "logs, outputs and state files checked for the tokens"),
]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not COUNTS and not LOSSES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability figures")
    for key, label in LABELS:
        if key in COUNTS:
            write(f"{label}: {COUNTS[key]}")
    for key in sorted(set(COUNTS) - {k for k, _ in LABELS}):
        write(f"{key}: {COUNTS[key]}")
    write(f"lost or duplicated (leases, reservations, addresses, rules): {len(LOSSES)}"
          + ("" if not LOSSES else " -> " + "; ".join(LOSSES)))
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:  # for the note: the same figures as JSON
        with open(target, "w", encoding="utf-8") as handle:
            json.dump({"counts": dict(COUNTS), "lost": LOSSES}, handle, indent=2, sort_keys=True)
