"""Concurrency: many IPAM actions on one block at once, the hook for several VMs at once.

Runs are real subprocesses started together (a barrier releases the threads that start
them). Whatever the interleaving: no address handed out twice, leases are exactly what was
answered, an address is on one device only, and every VM's aliases end where its host is.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from packet_lab.oned.one_ipam import action_data, template_vector
from packet_provider.packet import PacketClient
from reliability.relsupport import (
    REMOTES,
    Run,
    base_env,
    count,
    hook_executables,
    hook_world,
    ipam_actions,
    lost,
    run,
    write_config,
)

IPAM_DIR = REMOTES / "ipam" / "packet"


def together(jobs: List) -> List:
    """Start every job at the same moment (one thread each); results in job order."""
    barrier = threading.Barrier(len(jobs))
    results: List = [None] * len(jobs)

    def work(index: int) -> None:
        barrier.wait()
        results[index] = jobs[index]()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count("concurrent_runs", len(jobs))
    return results


def ipam_env(packet, tmp_path: Path) -> Dict[str, str]:
    config = tmp_path / "packet_provider.yaml"
    write_config(config, packet.url, tmp_path / "state", tmp_path / "log", retries=2,
                 read_timeout=5)
    env = base_env()
    env["PACKET_PROVIDER_CONFIG"] = str(config)
    return env


def reserve(packet, size: int) -> Dict[str, str]:
    with PacketClient(packet.url, packet.token) as client:
        res = client.reserve(packet.project_id, size, facility="ams1")
    return {"AR_ID": "0", "TYPE": "IP4", "IP": str(res.first_address), "SIZE": str(size),
            "IPAM_MAD": "packet", "DEPLOY_ID": res.id, "PACKET_TOKEN": packet.token,
            "PACKET_PROJECT": packet.project_id, "FACILITY": "ams1"}


def ipam(action: str, ar, address, env, req: int) -> Run:
    data = base64.b64encode(action_data(ar, address).encode())
    return run([str(IPAM_DIR / action), str(req)], data, env, timeout=60)


def leases(tmp_path: Path, deploy_id: str) -> List[str]:
    folder = tmp_path / "state" / "packet" / deploy_id
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.mark.skipif(not ipam_actions(), reason="no IPAM actions")
def test_parallel_get_allocate_free_on_one_block(packet, tmp_path: Path) -> None:
    """A block of 8 with 2 addresses leased: 8 get_address, 3 allocate_address (two free
    addresses, one already leased) and 2 free_address at once."""
    env = ipam_env(packet, tmp_path)
    ar = reserve(packet, 8)
    block = [str(ipaddress.IPv4Address(ar["IP"]) + i) for i in range(8)]
    for ip in block[:2]:
        done = ipam("allocate_address", ar, {"IP": ip, "SIZE": "1"}, env, 1)
        assert done.rc == 0, done.stderr
    jobs = []
    for req in range(8):
        jobs.append(("get", None, lambda r=req: ipam("get_address", ar, {"SIZE": "1"}, env,
                                                     100 + r)))
    for ip in (block[6], block[7], block[1]):
        jobs.append(("allocate", ip, lambda ip=ip: ipam("allocate_address", ar,
                                                        {"IP": ip, "SIZE": "1"}, env, 200)))
    for ip in block[:2]:
        jobs.append(("free", ip, lambda ip=ip: ipam("free_address", ar,
                                                    {"IP": ip, "SIZE": "1"}, env, 300)))
    results = together([job for _, _, job in jobs])
    handed: List[str] = []
    freed: List[str] = []
    for (kind, ip, _), result in zip(jobs, results):
        assert "Traceback" not in result.stderr
        if result.rc != 0:
            assert result.message_lines and len(result.message_lines) == 1, result.stderr
            continue
        if kind == "get":
            handed.append(template_vector(result.stdout, "ADDRESS")["IP"])
        elif kind == "allocate":
            handed.append(ip)
        else:
            freed.append(ip)
    final = leases(tmp_path, ar["DEPLOY_ID"])
    twice = sorted({ip for ip in handed if handed.count(ip) > 1})
    if twice:
        lost(f"ipam: {twice} handed out twice")
    expected = sorted((set(block[:2]) - set(freed)) | set(handed))
    if final != expected:
        lost(f"ipam: leases {final} differ from the answers {expected}")
    assert not twice, f"handed out twice: {twice}"
    assert final == expected
    assert len(freed) == 2, "free_address of leased addresses failed"
    # an address leased at the start is handed out again only once it was freed
    for ip in block[:2]:
        assert ip not in handed or ip in freed
    # 6 addresses were free all along: 11 requests for them leave none unused
    assert 6 <= len(handed) <= 8


@pytest.mark.skipif(not ipam_actions(), reason="no IPAM actions")
def test_parallel_get_address_on_two_blocks_and_registers(packet, tmp_path: Path) -> None:
    """Registers running while get_address drains two blocks: one reservation per register,
    each block's addresses handed out once."""
    env = ipam_env(packet, tmp_path)
    blocks = [reserve(packet, 4), reserve(packet, 4)]
    user_ar = {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "2", "IPAM_MAD": "packet",
               "PACKET_TOKEN": packet.token, "PACKET_PROJECT": packet.project_id,
               "FACILITY": "ams1"}
    jobs: List[Tuple[str, object]] = []
    for req in range(12):
        block = blocks[req % 2]
        jobs.append((block["DEPLOY_ID"], lambda b=block, r=req: ipam(
            "get_address", b, {"SIZE": "1"}, env, r)))
    for req in range(4):
        jobs.append(("register", lambda r=req: ipam("register_address_range", user_ar, None,
                                                    env, 50 + r)))
    results = together([job for _, job in jobs])
    got: Dict[str, List[str]] = {b["DEPLOY_ID"]: [] for b in blocks}
    registered = []
    for (key, _), result in zip(jobs, results):
        assert "Traceback" not in result.stderr
        if key == "register":
            assert result.rc == 0, result.stderr
            registered.append(template_vector(result.stdout, "AR")["DEPLOY_ID"])
        elif result.rc == 0:
            got[key].append(template_vector(result.stdout, "ADDRESS")["IP"])
        else:
            assert "no free address" in result.stderr
    for deploy_id, answered in got.items():
        assert len(answered) == 4 and len(set(answered)) == 4, answered
        assert leases(tmp_path, deploy_id) == sorted(answered)
    reservations = {r["id"] for r in packet.state()["reservations"]}
    assert len(set(registered)) == 4
    assert reservations == set(registered) | {b["DEPLOY_ID"] for b in blocks}


# -- the hook for several VMs at once ------------------------------------------------------------


HOOK = hook_executables()


@pytest.mark.skipif(not HOOK, reason="no hook")
def test_hook_for_several_vms_at_once(oned, packet, tmp_path: Path, one_auth_file) -> None:
    """Four VMs with two aliases each on one host; their hooks run at once on deploy, again
    at once after all migrate, and at once on DONE."""
    world = hook_world(oned, packet, tmp_path, one_auth_file, retries=2,
                       read_timeout=5)
    vms = [world.vm(aliases=2, host=0) for _ in range(4)]
    ips = {vm: [a["IP"] for a in oned.state.vm(vm).aliases] for vm in vms}

    def round_(expected_device) -> None:
        results = together([lambda vm=vm: world.run(vm) for vm in vms])
        for result in results:
            assert result.returncode == 0, result.stderr.decode()
        placed: Dict[str, List[str]] = {}
        for item in packet.state()["assignments"]:
            placed.setdefault(str(ipaddress.ip_interface(item["address"]).ip), []).append(
                item["device_id"])
        want = {ip: [expected_device] for vm in vms for ip in ips[vm]} if expected_device \
            else {}
        if placed != want:
            lost(f"hook concurrency: placed {placed}, want {want}")
        assert placed == want

    round_(world.devices[0])
    for vm in vms:
        world.move(vm, 1)
    round_(world.devices[1])
    for vm in vms:
        world.set_state(vm, 6, 0)
    round_(None)



@pytest.mark.skipif(not HOOK, reason="no hook")
def test_hook_runs_at_once_under_random_faults_converge_with_retries(
        oned, packet, tmp_path: Path, one_auth_file) -> None:
    """Four VMs' hooks at once while a share of every API call fails in some way (deploy,
    then a migration of all four); each failed run is retried like `onehook retry` once the
    faults are gone: every address ends on its VM's host, none on two devices."""
    world = hook_world(oned, packet, tmp_path, one_auth_file, retries=1,
                       read_timeout=0.5, backoff=0.01, max_retry_after=0.2)
    vms = [world.vm(aliases=2, host=0) for _ in range(4)]
    ips = {vm: [a["IP"] for a in oned.state.vm(vm).aliases] for vm in vms}
    for host in (0, 1):
        if host:
            for vm in vms:
                world.move(vm, 1)
        for seed, spec in enumerate([{"status": 503}, {"status": 429, "retry_after": 0},
                                     {"drop": True}, {"drop_after": True},
                                     {"latency": 1.0}]):
            packet.fault(rate=0.1, seed=seed + 10 * host, **spec)
            count("faults")
        events = {vm: world.xml(vm) for vm in vms}
        results = together([lambda xml=events[vm]: world.run(xml=xml) for vm in vms])
        packet.admin.clear_faults()
        count("faulted_runs", len(vms))
        for vm, result in zip(vms, results):
            assert b"Traceback" not in result.stderr
            if result.returncode != 0:
                count("hook_retries")
                again = world.run(xml=events[vm])
                assert again.returncode == 0, again.stderr.decode()
        placed: Dict[str, List[str]] = {}
        for item in packet.state()["assignments"]:
            placed.setdefault(str(ipaddress.ip_interface(item["address"]).ip), []).append(
                item["device_id"])
        want = {ip: [world.devices[host]] for vm in vms for ip in ips[vm]}
        if placed != want:
            lost(f"hook under random faults: placed {placed}, want {want}")
        assert placed == want
