"""The demo is the README's first command: the whole life cycle through installed copies of
the executables, on both emulators. It must pass, and it must fail when a step is broken."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from fixtures.common import LIB, PYTHON, ROOT, netns_missing_reason


def run_demo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PYTHONPATH=str(LIB), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([PYTHON, "-m", "packet_lab.demo", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def verdict(out: str) -> tuple:
    match = re.search(r"^(\d+)/(\d+) verifications passed", out, re.M)
    assert match, out[-2000:]
    return int(match.group(1)), int(match.group(2))


@pytest.mark.skipif(bool(netns_missing_reason()), reason=netns_missing_reason() or "-")
def test_demo_plays_the_whole_life_cycle_with_real_packets():
    proc = run_demo()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed, total = verdict(proc.stdout)
    assert passed == total and total >= 40
    assert "FAIL" not in proc.stdout
    for step in ("install.sh", "register_address_range", "deploy on host1", "live-migrate",
                 "hot-detach", "terminate", "unregister_address_range"):
        assert step in proc.stdout
    assert "TCP client ->" in proc.stdout and "TCP VM -> client" in proc.stdout


def test_demo_without_the_packet_path_still_verifies_the_rest():
    proc = run_demo("--no-netns")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed, total = verdict(proc.stdout)
    assert passed == total and total >= 25
    assert "TCP client" not in proc.stdout


def test_demo_exits_non_zero_when_a_verification_fails():
    """A Packet outage makes register_address_range fail: the demo must say so and go red."""
    proc = run_demo("--no-netns", "--packet-fault", "503")
    assert proc.returncode == 1, proc.stdout[-3000:]
    passed, total = verdict(proc.stdout)
    assert passed < total
    assert "failed:" in proc.stdout and "503" in proc.stdout
