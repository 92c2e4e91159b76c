"""Crash safety of the packet IPAM driver: actions killed (SIGKILL, as one_ipam's timeout or
an OOM kill would) at chosen moments, then the next call must leave things as if the killed
action had either not run or fully run: no orphan reservation, no lease oned does not know
about, no assignment left behind.

Moments are chosen two ways: a Packet API call that acts at once but answers late (the kill
lands after the change was made, before the answer), and an audit hook (a sitecustomize on
PYTHONPATH) that kills the process right after a given file was created: e.g. just after a
lease was claimed, before oned can have its answer.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from packet_lab.oned.one_ipam import action_data, template_vector
from packet_provider.packet import PacketClient
from reliability.relsupport import (
    REMOTES,
    base_env,
    count,
    ipam_actions,
    lost,
    reserved_ar,
    run,
    write_config,
)

IPAM_DIR = REMOTES / "ipam" / "packet"

KILLER = '''
import os, signal, sys
_match = os.environ.get("REL_KILL_AFTER_CREATE", "")
_armed = [False]
def _hook(event, args):
    if event != "open" or not _match:
        return
    if _armed[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    path, flags = str(args[0]), args[2] if len(args) > 2 else 0
    if _match in path and isinstance(flags, int) and flags & os.O_EXCL:
        _armed[0] = True   # the file is created by this call; die at the next open
sys.addaudithook(_hook)
'''

pytestmark = pytest.mark.skipif(not ipam_actions(), reason="no IPAM actions")


class Driver:
    def __init__(self, packet, tmp: Path) -> None:
        self.packet, self.tmp = packet, tmp
        config = tmp / "packet_provider.yaml"
        write_config(config, packet.url, tmp / "state", tmp / "log", retries=1,
                     read_timeout=5)
        self.env = base_env()
        self.env["PACKET_PROVIDER_CONFIG"] = str(config)

    def stdin(self, ar, address=None) -> bytes:
        return base64.b64encode(action_data(ar, address).encode())

    def run(self, action, ar, address=None, req=1):
        return run([str(IPAM_DIR / action), str(req)], self.stdin(ar, address), self.env)

    def killed(self, action, ar, address=None, after: float = 0.0,
               kill_after_create: Optional[str] = None, when=None) -> int:
        """Run an action and SIGKILL it ``after`` seconds, or once ``when()`` is true, or let
        the audit hook do it."""
        env = dict(self.env)
        if kill_after_create:
            hooks = self.tmp / "killer"
            hooks.mkdir(exist_ok=True)
            (hooks / "sitecustomize.py").write_text(KILLER)
            env["PYTHONPATH"] = f"{hooks}{os.pathsep}{env['PYTHONPATH']}"
            env["REL_KILL_AFTER_CREATE"] = kill_after_create
        proc = subprocess.Popen([str(IPAM_DIR / action), "9"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdin.write(self.stdin(ar, address))
        proc.stdin.close()
        if when is not None:
            deadline = time.monotonic() + 20
            while not when() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
        if not kill_after_create:
            time.sleep(after)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        count("killed_runs")
        return proc.returncode

    def reserve(self, size: int = 8) -> Dict[str, str]:
        return reserved_ar(self.packet, size)

    def leases(self, deploy_id: str) -> List[str]:
        folder = self.tmp / "state" / "packet" / deploy_id
        return sorted(os.listdir(folder)) if folder.exists() else []

    def reservations(self) -> set:
        return {r["id"] for r in self.packet.state()["reservations"]}

    def assigned(self) -> List[str]:
        return [str(ipaddress.ip_interface(a["address"]).ip)
                for a in self.packet.state()["assignments"]]


@pytest.fixture
def driver(packet, tmp_path: Path) -> Driver:
    return Driver(packet, tmp_path)


def test_register_killed_at_any_moment_leaves_no_orphan_after_the_next_call(driver, packet):
    """Registers killed before, during and after their POST (which acts at once and answers
    late); the next action of the driver releases every block whose answer oned never got."""
    user_ar = {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "4", "IPAM_MAD": "packet",
               "PACKET_TOKEN": packet.token, "PACKET_PROJECT": packet.project_id,
               "FACILITY": "ams1"}
    block = driver.reserve(8)
    packet.fault(method="POST", path="/projects/", latency=3.0, count=3)
    count("faults")
    codes = []
    for _ in range(2):  # killed once the block exists, before its answer
        known = driver.reservations()
        codes.append(driver.killed("register_address_range", user_ar, after=0.05,
                                   when=lambda k=known: bool(driver.reservations() - k)))
    codes.append(driver.killed("register_address_range", user_ar, after=0.05))  # early
    assert all(code == -signal.SIGKILL for code in codes), codes
    made = driver.reservations() - {block["DEPLOY_ID"]}
    assert made, "the kills were meant to land after a block was made"
    nxt = driver.run("get_address", block, {"SIZE": "1"}, req=2)
    assert nxt.rc == 0, nxt.stderr
    left = driver.reservations() - {block["DEPLOY_ID"]}
    if left:
        lost(f"ipam: {len(left)} orphan reservation(s) after killed registers")
    assert not left, f"orphans left: {left}"


def test_free_killed_after_its_unassign_is_finished_by_the_retry(driver, packet):
    ar = driver.reserve(8)
    ip = str(ipaddress.IPv4Address(ar["IP"]) + 2)
    assert driver.run("allocate_address", ar, {"IP": ip, "SIZE": "1"}).rc == 0
    with PacketClient(packet.url, packet.token) as client:
        client.assign(packet.device_ids[0], ipaddress.IPv4Address(ip))
    packet.fault(method="DELETE", path="/ips/", latency=5.0, count=1)
    count("faults")
    # killed once the DELETE has acted, while its answer is still on the way
    assert driver.killed("free_address", ar, {"IP": ip, "SIZE": "1"}, after=0.05,
                         when=lambda: ip not in driver.assigned()) < 0
    assert ip not in driver.assigned(), "the DELETE was meant to be made before the kill"
    assert driver.leases(ar["DEPLOY_ID"]) == [ip], "a killed free must keep the lease"
    again = driver.run("free_address", ar, {"IP": ip, "SIZE": "1"}, req=3)
    assert again.rc == 0, again.stderr
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_unregister_killed_midway_is_finished_by_the_retry(driver, packet):
    ar = driver.reserve(8)
    first = ipaddress.IPv4Address(ar["IP"])
    ips = [str(first + 1), str(first + 2)]
    for ip in ips:
        assert driver.run("allocate_address", ar, {"IP": ip, "SIZE": "1"}).rc == 0
        with PacketClient(packet.url, packet.token) as client:
            client.assign(packet.device_ids[1], ipaddress.IPv4Address(ip))
    packet.fault(method="DELETE", path="/ips/", latency=5.0, count=1)
    count("faults")
    assert driver.killed("unregister_address_range", ar, after=0.05,
                         when=lambda: len(driver.assigned()) < 2) < 0
    assert ar["DEPLOY_ID"] in driver.reservations()
    again = driver.run("unregister_address_range", ar, req=4)
    assert again.rc == 0, again.stderr
    assert ar["DEPLOY_ID"] not in driver.reservations()
    assert driver.assigned() == [] and driver.leases(ar["DEPLOY_ID"]) == []


def _drain(driver, ar, size: int) -> List[str]:
    answered = []
    for req in range(size + 1):
        result = driver.run("get_address", ar, {"SIZE": "1"}, req=20 + req)
        if result.rc != 0:
            break
        answered.append(template_vector(result.stdout, "ADDRESS")["IP"])
    return answered


def test_kill_hook_fires_where_meant(driver):
    """The audit hook kills right after the lease file is created: the lease exists, the
    process died by SIGKILL (so the check below is about the driver, not the harness)."""
    ar = driver.reserve(4)
    code = driver.killed("get_address", ar, {"SIZE": "1"},
                         kill_after_create=f"/packet/{ar['DEPLOY_ID']}/")
    assert code == -signal.SIGKILL
    assert len(driver.leases(ar["DEPLOY_ID"])) == 1


@pytest.mark.parametrize("action", ["get_address", "allocate_address"])
def test_address_claim_killed_before_the_answer_is_not_lost(driver, action):
    ar = driver.reserve(4)
    first = ipaddress.IPv4Address(ar["IP"])
    address = {"SIZE": "1"} if action == "get_address" else {"IP": str(first + 1), "SIZE": "1"}
    code = driver.killed(action, ar, address, kill_after_create=f"/packet/{ar['DEPLOY_ID']}/")
    assert code == -signal.SIGKILL  # oned: the action failed, no lease recorded
    answered = _drain(driver, ar, 4)
    if sorted(answered) != [str(first + i) for i in range(4)]:
        lost(f"ipam: {action} killed after its claim lost an address")
    assert sorted(answered) == [str(first + i) for i in range(4)], answered
