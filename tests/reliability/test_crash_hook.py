"""The alias_ip hook killed midway (onehem's TIMEOUT, an OOM kill): whatever it had done,
the retry (same command, same stdin) puts every address on the right device, and no
address is ever on two devices."""

from __future__ import annotations

import base64
import ipaddress
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from fixtures.common import PYTHON
from packet_provider.packet import PacketClient
from reliability.relsupport import count, hook_executables, hook_world, lost

pytestmark = pytest.mark.skipif(not hook_executables(), reason="no hook")


def placed(packet) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for item in packet.state()["assignments"]:
        out.setdefault(str(ipaddress.ip_interface(item["address"]).ip), []).append(
            item["device_id"])
    return out


@pytest.fixture
def world(oned, packet, tmp_path: Path, one_auth_file):
    return hook_world(oned, packet, tmp_path, one_auth_file, retries=1, read_timeout=10)


def killed_run(world, xml: bytes, when) -> int:
    proc = subprocess.Popen([PYTHON, str(world_hook())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=world.env, start_new_session=True)
    proc.stdin.write(base64.b64encode(xml) + b" ")
    proc.stdin.close()
    deadline = time.monotonic() + 20
    while not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    count("killed_runs")
    return proc.returncode


def world_hook() -> Path:
    return hook_executables()[0]


def test_hook_killed_in_the_middle_of_a_move_is_finished_by_the_retry(world, packet) -> None:
    """Two aliases move from device 0 to device 1 (unassign, then assign, per address). The
    hook is killed right after its first unassign acted, then (another VM) right after its
    first assign acted; each time the retry converges."""
    for moment in ("after the first unassign", "after the first assign"):
        vm = world.vm(aliases=2, host=0)
        ips = [a["IP"] for a in world.oned.state.vm(vm).aliases]
        with PacketClient(packet.url, packet.token) as client:  # where the hook put them
            for ip in ips:
                client.assign(world.devices[0], ipaddress.IPv4Address(ip))
        world.move(vm, 1)
        event = world.xml(vm)
        if moment == "after the first unassign":  # the DELETE acts, then answers late
            packet.fault(method="DELETE", path="/ips/", latency=5.0, count=10)

            def when(ips=ips) -> bool:
                now = placed(packet)
                return any(not now.get(ip) for ip in ips)
        else:  # the POST acts, then answers late
            packet.fault(method="POST", path="/devices/", latency=5.0, count=10)

            def when(ips=ips) -> bool:
                now = placed(packet)
                return any(world.devices[1] in now.get(ip, []) for ip in ips)
        count("faults")
        code = killed_run(world, event, when)
        packet.admin.clear_faults()
        assert code == -signal.SIGKILL, f"the hook ended by itself ({code}) {moment}"
        now = placed(packet)
        if any(len(devices) > 1 for devices in now.values()):
            lost(f"hook killed {moment}: an address on two devices")
        assert all(len(devices) <= 1 for devices in now.values()), now
        again = world.run(xml=event)
        assert again.returncode == 0, again.stderr.decode()
        want = {ip: [world.devices[1]] for ip in ips}
        got = {ip: placed(packet).get(ip, []) for ip in ips}
        if got != want:
            lost(f"hook killed {moment}: retry did not converge")
        assert got == want
