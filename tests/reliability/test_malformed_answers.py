"""Malformed answers from the Packet API: a 200 whose body is not what the call expects
(wrong types, missing fields, bad addresses, a list, a string). The emulator answers them
without acting. The IPAM actions and the hook must fail with one clean line (not the
"internal error" exit 70), leave no lease or reservation behind, and the hook's retry must
converge once the API is sane again."""

from __future__ import annotations

import base64
import concurrent.futures
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from fixtures.common import error_block
from packet_lab.oned.one_ipam import action_data
from packet_provider.packet import PacketClient
from reliability.faults import CloudPool
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

WORKERS = 6
BODIES: Dict[str, Any] = {
    "empty_object": {},
    "a_list": [1, 2, 3],
    "a_string": "surprise",
    "null_fields": {"id": None, "network": None, "cidr": None, "available": None,
                    "ip_addresses": None, "assignments": None, "address": None},
    "wrong_types": {"id": 5, "network": ["x"], "cidr": "wide", "available": "147.75.1.9/32",
                    "ip_addresses": {"a": 1}, "assignments": "none", "address": 7},
    "bad_addresses": {"id": "99d5d741-3756-4ebe-a014-34ea7a2e2be1", "network": "999.1.1.0",
                      "cidr": 40, "available": ["999.1.1.1/32", "::1/128", None, 5],
                      "ip_addresses": [{"id": "x", "address": "nope"}],
                      "assignments": [{"href": 5}], "address": "1.2.3.4/99"},
    "paging_loop": {"ip_addresses": [], "meta": {"next": {"href": "/projects/x/ips?page=1"}}},
}
CALLS = {
    "register_address_range": [("POST", "/projects/")],
    "get_address": [("GET", "/ips/")],
    "allocate_address": [("GET", "/ips/")],
    "free_address": [("GET", "/ips/")],
    "unregister_address_range": [("GET", "/ips/")],
}


def clean_failure(result: Run) -> List[str]:
    lines = result.message_lines
    why = []
    if "Traceback" in result.stderr:
        why.append("traceback")
    if result.rc in (0, 70) or lines is None or len(lines) != 1 \
            or "internal error" in lines[0]:
        why.append(f"rc={result.rc} {result.stderr.strip()[-300:]!r}")
    return why


def ipam_case(pool: CloudPool, tmp: Path, action: str, call: Tuple[str, str],
              body_name: str) -> List[str]:
    with pool.lend() as cloud:
        config = tmp / "packet_provider.yaml"
        write_config(config, cloud.url, tmp / "state", tmp / "log", retries=1,
                     read_timeout=5)
        env = base_env()
        env["PACKET_PROVIDER_CONFIG"] = str(config)
        address: Optional[Dict[str, str]] = None
        if action == "register_address_range":
            ar = {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "8", "IPAM_MAD": "packet",
                  "PACKET_TOKEN": cloud.token, "PACKET_PROJECT": cloud.project_id,
                  "FACILITY": "ams1"}
        else:
            with PacketClient(cloud.url, cloud.token) as client:
                res = client.reserve(cloud.project_id, 8, facility="ams1")
                ip = str(res.first_address + 1)
                if action in ("free_address", "unregister_address_range"):
                    client.assign(cloud.device_ids[0], ipaddress.IPv4Address(ip))
            ar = {"AR_ID": "0", "TYPE": "IP4", "IP": str(res.first_address), "SIZE": "8",
                  "IPAM_MAD": "packet", "DEPLOY_ID": res.id, "PACKET_TOKEN": cloud.token,
                  "PACKET_PROJECT": cloud.project_id}
            if action != "unregister_address_range":
                address = {"SIZE": "1"} if action == "get_address" else {"IP": ip,
                                                                         "SIZE": "1"}
            if action in ("free_address", "unregister_address_range"):
                (tmp / "state" / "packet" / res.id).mkdir(parents=True)
                (tmp / "state" / "packet" / res.id / ip).write_text("seed\n")
        before = {r["id"] for r in cloud.state()["reservations"]}
        cloud.admin.fault(status=200, body=BODIES[body_name], method=call[0], path=call[1],
                          count=1000)
        count("faults")
        result = run([str(REMOTES / "ipam" / "packet" / action), "3"],
                     base64.b64encode(action_data(ar, address).encode()), env, timeout=60)
        count("faulted_runs")
        cloud.admin.clear_faults()
        why = clean_failure(result)
        after = {r["id"] for r in cloud.state()["reservations"]}
        if after - before:
            why.append("a reservation was made")
            lost(f"ipam {action}/{body_name}: reservation left")
        if action in ("get_address", "allocate_address"):
            folder = tmp / "state" / "packet" / ar["DEPLOY_ID"]
            if folder.exists() and os.listdir(folder):
                why.append(f"lease left: {os.listdir(folder)}")
                lost(f"ipam {action}/{body_name}: lease left by a failure")
        if action in ("free_address", "unregister_address_range"):
            if not (tmp / "state" / "packet" / ar["DEPLOY_ID"] / ip).exists():
                why.append("a failed action dropped the lease")
                lost(f"ipam {action}/{body_name}: lease lost")
        return why


@pytest.fixture(scope="module")
def pool():
    cloud_pool = CloudPool(WORKERS)
    yield cloud_pool
    cloud_pool.close()


@pytest.mark.skipif(not ipam_actions(), reason="no IPAM actions")
def test_ipam_on_malformed_answers(pool: CloudPool, tmp_path: Path) -> None:
    cases = [(a, c, b) for a, calls in CALLS.items() for c in calls for b in BODIES]

    def one(case):
        action, call, body = case
        return f"{action} {call[0]} {call[1]} {body}", ipam_case(
            pool, Path(tempfile.mkdtemp(dir=tmp_path)), action, call, body)

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as executor:
        outcomes = list(executor.map(one, cases))
    broken = {name: why for name, why in outcomes if why}
    assert not broken, "\n".join(f"{n}: {'; '.join(w)}" for n, w in broken.items())


HOOK_CALLS = [("GET", "/devices/"), ("GET", "/ips/"), ("POST", "/devices/")]
# the hook starts pyone on every run: the shapes that differ most, not all of them
HOOK_BODIES = ["a_list", "null_fields", "wrong_types", "bad_addresses", "paging_loop"]


@pytest.mark.skipif(not hook_executables(), reason="no hook")
@pytest.mark.parametrize("call", HOOK_CALLS, ids=[f"{m} {p}" for m, p in HOOK_CALLS])
def test_hook_on_malformed_answers(call, oned, packet, tmp_path: Path, one_auth_file) -> None:
    world = hook_world(oned, packet, tmp_path, one_auth_file, retries=1,
                       read_timeout=5)
    broken = []
    for name in HOOK_BODIES:
        body = BODIES[name]
        vm = world.vm(aliases=1, host=0)
        event = world.xml(vm)
        packet.fault(status=200, body=body, method=call[0], path=call[1], count=1000)
        count("faults")
        first = world.run(xml=event)
        count("faulted_runs")
        packet.admin.clear_faults()
        text = first.stderr.decode()
        if "Traceback" in text or first.returncode == 70 or "internal error" in text:
            broken.append(f"{name}: rc={first.returncode} {text[-300:]!r}")
        elif first.returncode != 0 and error_block(text) is None:
            broken.append(f"{name}: no error block {text[-200:]!r}")
        again = world.run(xml=event)
        count("hook_retries")
        ip = world.oned.state.vm(vm).aliases[0]["IP"]
        where = packet.placement().get(ip)
        if again.returncode != 0 or where != world.devices[0]:
            broken.append(f"{name}: retry rc={again.returncode} placed on {where}")
            lost(f"hook {call} {name}: retry did not converge")
    assert not broken, "\n".join(broken)
