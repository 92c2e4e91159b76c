"""Faults on every Packet API call the alias_ip hook makes (and on its oned calls), in the
three things it does: assign on deploy, move on a migration, unassign on DONE.

Transient faults must be ridden out; persistent ones end with a one-line error and a
non-zero exit. Whatever happened, an address is never on two devices, and a retry of the
hook (``onehook retry``: same command, same stdin) once the fault is gone converges to the
right assignment.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import queue
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from fixtures.common import LIB
from packet_provider.packet import PacketClient
from reliability.faults import (
    FAULT_KINDS,
    MAX_RETRY_AFTER,
    READ_TIMEOUT,
    RETRIES,
    RUN_BOUND_S,
    new_cloud,
)
from reliability.relsupport import count, hook_executables, lost, write_config

integration = pytest.importorskip("integration.hook_support")
OnedEmulator = pytest.importorskip("packet_lab.oned.emulator").OnedEmulator

WORKERS = 6
AUTH = "oneadmin:rel-" + "f" * 8
KINDS = ["429_retry_after", "5xx_burst", "read_timeout", "slow_answers", "dropped_connection",
         "lost_answer", "503_persistent"]
# (scenario, API call) pairs: every call the hook makes in that scenario
CALLS: List[Tuple[str, Tuple[str, str]]] = [
    ("deploy", ("GET", "/ips/")), ("deploy", ("POST", "/devices/")),
    ("move", ("DELETE", "/ips/")), ("move", ("POST", "/devices/")),
    ("done", ("GET", "/ips/")), ("done", ("DELETE", "/ips/")),
]
# oned calls: (method prefix, fault) - the hook fails cleanly, a retry converges
ONED_FAULTS = [("one.vm.info", {"code": 0x100}), ("one.vn.info", {"drop": True}),
               ("one.host.info", {"latency": 0.2, "code": 0x2000}),
               ("one.vm.info", {"status": 502})]


class Worlds:
    """Pairs of (Packet emulator, oned emulator), one case at a time on each."""

    def __init__(self, size: int) -> None:
        self.pairs = [(new_cloud(), OnedEmulator(auth=AUTH).start()) for _ in range(size)]
        self.free: queue.Queue = queue.Queue()
        for pair in self.pairs:
            self.free.put(pair)

    @contextmanager
    def lend(self, tmp: Path) -> Iterator[object]:
        cloud, oned = self.free.get()
        try:
            cloud.admin.reset()
            cloud.admin.clear_faults()
            oned.state.reset()
            oned.clear_faults()
            oned.calls.clear()
            yield make_world(cloud, oned, tmp)
        finally:
            cloud.admin.clear_faults()
            oned.clear_faults()
            self.free.put((cloud, oned))

    def close(self) -> None:
        threads = [threading.Thread(target=s.stop) for c, o in self.pairs
                   for s in (c.emulator, o)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def make_world(cloud, oned, tmp: Path):
    auth_file = tmp / "one_auth"
    auth_file.write_text(AUTH + "\n")
    config = tmp / "packet_provider.yaml"
    env = {"PYTHONPATH": str(LIB), "PACKET_PROVIDER_CONFIG": str(config),
           "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    world = integration.make_world(oned, cloud, env, tmp, auth_file)
    write_config(config, cloud.url, tmp / "state", tmp / "log", retries=RETRIES,
                 read_timeout=READ_TIMEOUT, backoff=0.01, max_retry_after=MAX_RETRY_AFTER)
    return world


def placed(world) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for item in world.packet.state()["assignments"]:
        out.setdefault(str(ipaddress.ip_interface(item["address"]).ip), []).append(
            item["device_id"])
    return out


def prepare(world, scenario: str) -> Tuple[int, Dict[str, List[str]]]:
    """The VM in the state the scenario starts from, and where its address must end up."""
    vm = world.vm(aliases=1, host=0)
    ip = world.oned.state.vm(vm).aliases[0]["IP"]
    if scenario == "deploy":
        return vm, {ip: [world.devices[0]]}
    # where an earlier, successful run of the hook left it (assigned directly: cheaper)
    with PacketClient(world.packet.url, world.packet.token) as client:
        client.assign(world.devices[0], ipaddress.IPv4Address(ip))
    if scenario == "move":
        world.move(vm, 1)
        return vm, {ip: [world.devices[1]]}
    world.set_state(vm, 6, 0)  # DONE
    return vm, {}


def clean_failure(done) -> List[str]:
    text = done.stderr.decode()
    lines = text.splitlines()
    block = (lines.count("ERROR MESSAGE --8<------") == 1
             and lines.count("ERROR MESSAGE ------>8--") == 1)
    why = []
    if "Traceback" in text:
        why.append("traceback")
    if done.returncode in (0, 70) or not block:
        why.append(f"not a clean failure: rc={done.returncode} {text[-300:]!r}")
    else:
        inner = lines[lines.index("ERROR MESSAGE --8<------") + 1:
                      lines.index("ERROR MESSAGE ------>8--")]
        if len(inner) != 1:
            why.append(f"error is {len(inner)} lines")
    return why


def check(world, scenario: str, inject, expect: str, tag: str) -> List[str]:
    vm, want = prepare(world, scenario)
    event = world.xml(vm)
    inject()
    started = time.monotonic()
    first = world.run(xml=event)
    took = time.monotonic() - started
    count("faulted_runs")
    world.packet.admin.clear_faults()
    world.oned.clear_faults()
    why = []
    if took > RUN_BOUND_S:
        why.append(f"took {took:.1f}s")
    if b"Traceback" in first.stderr:
        why.append("traceback")
    if expect == "fail" and first.returncode == 0:
        why.append("a persistent fault did not fail the run (is that call made?)")
    if expect == "recover" and first.returncode != 0:
        why.append(f"did not ride out the fault: {first.stderr.decode()[-300:]}")
    if first.returncode != 0:
        why.extend(clean_failure(first))
    now = placed(world)
    if any(len(devices) > 1 for devices in now.values()):
        why.append(f"address on two devices: {now}")
        lost(f"hook {tag}: address on two devices")
    if first.returncode == 0 and now != want:
        why.append(f"succeeded but placed {now}, want {want}")
        lost(f"hook {tag}: wrong assignment after success")
    if first.returncode != 0:
        again = world.run(xml=event)  # onehook retry: same command, same stdin
        count("hook_retries")
        if again.returncode != 0 or placed(world) != want:
            why.append(f"retry did not converge: rc={again.returncode} placed={placed(world)}"
                       f" want {want} {again.stderr.decode()[-200:]}")
            lost(f"hook {tag}: retry did not converge")
    return why


HOOK_PRESENT = bool(hook_executables())


@pytest.fixture(scope="module")
def worlds():
    pool = Worlds(WORKERS)
    yield pool
    pool.close()


@pytest.mark.skipif(not HOOK_PRESENT, reason="no hook under remotes/hooks/alias_ip")
def test_hook_under_packet_faults(worlds: Worlds, tmp_path: Path) -> None:
    cases = [(scenario, call, kind) for scenario, call in CALLS for kind in KINDS]

    def one(case):
        scenario, call, kind = case
        specs, expect = FAULT_KINDS[kind]
        tag = f"{scenario} {call[0]} {call[1]} {kind}"
        with worlds.lend(Path(tempfile.mkdtemp(dir=tmp_path))) as world:
            def inject():
                for spec in specs:
                    world.packet.admin.fault(method=call[0], path=call[1], **spec)
                count("faults", len(specs))
            return tag, check(world, scenario, inject, expect, tag)

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as executor:
        outcomes = list(executor.map(one, cases))
    broken = {tag: why for tag, why in outcomes if why}
    assert not broken, "\n".join(f"{t}: {'; '.join(w)}" for t, w in broken.items())


@pytest.mark.skipif(not HOOK_PRESENT, reason="no hook under remotes/hooks/alias_ip")
def test_hook_under_oned_faults(worlds: Worlds, tmp_path: Path) -> None:
    def one(case):
        scenario, (method, fault) = case
        tag = f"{scenario} oned {method} {sorted(fault)}"
        with worlds.lend(Path(tempfile.mkdtemp(dir=tmp_path))) as world:
            def inject():
                world.oned.fault(method=method, **fault)
                count("oned_faults")
            return tag, check(world, scenario, inject, "either", tag)

    cases = [(s, f) for s in ("deploy", "move") for f in ONED_FAULTS]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as executor:
        outcomes = list(executor.map(one, cases))
    broken = {tag: why for tag, why in outcomes if why}
    assert not broken, "\n".join(f"{t}: {'; '.join(w)}" for t, w in broken.items())
