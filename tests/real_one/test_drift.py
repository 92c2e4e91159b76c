"""packet-provider check / reconcile under the real oned: every kind of drift is made behind
the components' backs (an assignment deleted or moved at Packet, a clean skipped, a free
during a Packet outage, lease files deleted or left over, a reservation orphaned or gone, an
empty lease directory as a new HA leader has), then ``check`` (run as oneadmin, installed by
install.sh) reports it with its kind and exit 1, ``reconcile`` fixes it, the next ``check``
is clean and a second ``reconcile`` does nothing."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
from typing import Any, Dict, List, Set, Tuple

import pytest

from packet_provider.ipam.leases import LeaseStore
from packet_provider.packet import PacketClient
from real_one.cloud import Cloud, private_vnet, public_vnet, wait_for
from real_one.test_lifecycle import expect_routed, reservation_of, vm_template

ACTIVE, RUNNING, DONE = 3, 3, 6


def command(cloud: Cloud) -> str:
    return str(cloud.location / "var" / "packet_provider" / "bin" / "packet-provider")


def run(cloud: Cloud, *args: str) -> Tuple[int, str, str]:
    proc = cloud.run(command(cloud), *args, check=False, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def check(cloud: Cloud) -> Tuple[int, List[Dict[str, Any]]]:
    code, out, err = run(cloud, "check", "--json")
    assert code in (0, 1), err
    return code, json.loads(out)["findings"]


def packet_writes(packet_side) -> int:
    return sum(1 for r in packet_side.admin.requests() if r["method"] in ("POST", "DELETE"))


@pytest.fixture(scope="module")
def preexisting(cloud: Cloud) -> Set[str]:
    """What other modules of the session left that reconcile cannot fix (nothing when this
    module runs alone): the module's checks compare against it."""
    run(cloud, "reconcile", "--release-orphans", "--grace", "0")
    _code, findings = check(cloud)
    return {f["text"] for f in findings}


@pytest.fixture(scope="module")
def client(packet_side):
    with PacketClient(packet_side.url, packet_side.token, retries=0) as c:
        yield c


def mine(findings: List[Dict[str, Any]], preexisting: Set[str]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for f in findings:
        if f["text"] not in preexisting:
            found.setdefault(f["kind"], []).append(f.get("ip") or f.get("reservation_id")
                                                   or f"{f.get('vnet_id')}/{f.get('ar_id')}")
    return {k: sorted(v) for k, v in found.items()}


def expect_clean(cloud: Cloud, preexisting: Set[str]) -> None:
    code, findings = check(cloud)
    assert mine(findings, preexisting) == {}
    assert code == (1 if preexisting else 0)


def lease_dir(cloud: Cloud, rid: str):
    return cloud.location / "var" / "ipam_state" / "packet" / rid


def own(cloud: Cloud, path) -> None:
    os.chown(path, cloud.user.pw_uid, cloud.user.pw_gid)


def test_each_kind_of_drift_is_reported_then_reconciled(cloud: Cloud, packet_side, client,
                                                        preexisting) -> None:
    nets = {"priv": cloud.create("vnet", private_vnet("drift-priv", "10.21.0.10", 20)),
            "pub": cloud.create("vnet", public_vnet("drift-pub", packet_side.project, 8))}
    rid = reservation_of(cloud, nets["pub"])
    two = vm_template("drift-a", nets).replace(
        'EXTERNAL = "YES" ]', 'EXTERNAL = "YES" ]\nNIC_ALIAS = [ NETWORK_ID = "{}", '
        'PARENT = "NIC0", EXTERNAL = "YES" ]'.format(nets["pub"]), 1)
    a = cloud.deploy_vm(two, cloud.hosts[0])
    b = cloud.deploy_vm(vm_template("drift-b", nets), cloud.hosts[0])
    c = cloud.deploy_vm(vm_template("drift-c", nets), cloud.hosts[0])
    for vm in (a, b, c):
        cloud.wait_vm(vm, ACTIVE, RUNNING)
        expect_routed(cloud, packet_side, vm, "deployed")
    a_ips = sorted(cloud.aliases(a).values())
    (b_ip,) = cloud.aliases(b).values()
    (c_ip,) = cloud.aliases(c).values()
    assert len(a_ips) == 2
    expect_clean(cloud, preexisting)
    dev0, dev1 = packet_side.devices[0], packet_side.devices[1]

    # a clean skipped: a free_address while Packet is down (the DONE hook fails too), so
    # the unassignment is deferred and the address stays routed
    packet_side.admin.fault(status=503, rate=1.0, method="DELETE", path="/ips/")
    try:
        cloud.cli("onevm", "terminate", "--hard", str(c))
        cloud.wait_vm(c, DONE)
        wait_for("oned dropping C's lease", lambda: c_ip not in cloud.leased_ips(nets["pub"]))
        wait_for("the journalled unassignment", lambda: (
            cloud.location / "var" / "ipam_state" / "packet" / ".unassign" / rid / c_ip
        ).exists())
    finally:
        packet_side.admin.clear_faults()
    _r, assignments = client.reservation_with_assignments(rid)
    placed = {str(x.address): x for x in assignments}
    # unrouted: A's first alias unassigned at Packet behind the hook's back
    client.unassign(placed[a_ips[0]].id)
    # wrong device: B's alias moved to the other host's device
    client.unassign(placed[b_ip].id)
    client.assign(dev1, ipaddress.IPv4Address(b_ip))
    # routed while no VM holds it: an unleased address routed (a clean that never ran)
    leased = set(cloud.leased_ips(nets["pub"]))
    free = [str(ipaddress.IPv4Address(cloud.ar(nets["pub"]).findtext("IP")) + n)
            for n in range(8)]
    free = [ip for ip in free if ip not in leased and ip != c_ip]
    client.assign(dev0, ipaddress.IPv4Address(free[0]))
    # lease files: one deleted, one oned does not know (old enough not to be in flight)
    (lease_dir(cloud, rid) / a_ips[1]).unlink()
    claim = LeaseStore(str(cloud.location / "var" / "ipam_state")).claim(rid, free[1])
    claim.commit()
    stale = lease_dir(cloud, rid) / free[1]
    own(cloud, stale)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    # a reservation no range refers to
    orphan = client.reserve(packet_side.project, 1, facility="ams1")

    code, findings = check(cloud)
    assert code == 1
    assert mine(findings, preexisting) == {
        "unrouted": [a_ips[0]],
        "wrong-device": [b_ip],
        "routed-unheld": sorted([free[0], c_ip]),
        "missing-lease-file": [a_ips[1]],
        "stale-lease-file": [free[1]],
        "orphan-reservation": [orphan.id],
        "deferred-unassign": [c_ip],
    }
    code, out, _err = run(cloud, "check")
    assert code == 1 and f"  wrong-device: {b_ip} " in out

    code, out, _err = run(cloud, "reconcile", "--dry-run")
    assert code == 1 and f"would: route {a_ips[0]} to device {dev0}" in out
    assert len(mine(check(cloud)[1], preexisting)) == 7  # nothing changed

    code, out, err = run(cloud, "reconcile")
    assert code == 1, out + err
    assert f"left: reservation {orphan.id}" in out  # never released without the option
    code, findings = check(cloud)
    assert mine(findings, preexisting) == {"orphan-reservation": [orphan.id]}
    placement = packet_side.placement()
    assert {ip: placement.get(ip) for ip in a_ips + [b_ip, c_ip, free[0]]} == {
        a_ips[0]: dev0, a_ips[1]: dev0, b_ip: dev0, c_ip: None, free[0]: None}
    assert sorted(cloud.lease_files()[rid]) == sorted(a_ips + [b_ip])

    code, out, err = run(cloud, "reconcile", "--release-orphans")
    assert code == (1 if preexisting else 0), out + err
    assert f"released reservation {orphan.id}" in out
    assert orphan.id not in {r["id"] for r in packet_side.reservations()}
    expect_clean(cloud, preexisting)

    writes = packet_writes(packet_side)
    code, out, _err = run(cloud, "reconcile")
    assert code == (1 if preexisting else 0)
    if not preexisting:
        assert "nothing to do" in out
    assert packet_writes(packet_side) == writes  # the second run changed nothing

    for vm in (a, b):
        cloud.cli("onevm", "terminate", "--hard", str(vm))
        cloud.wait_vm(vm, DONE)
    wait_for("all unrouted", lambda: not set(packet_side.placement()) & set(a_ips + [b_ip]))
    for vnet in (nets["pub"], nets["priv"]):
        cloud.cli("onevnet", "delete", str(vnet))
    expect_clean(cloud, preexisting)


def test_new_leader_empty_lease_directory_rebuilt_from_oned_alone(cloud: Cloud, packet_side,
                                                                  preexisting) -> None:
    nets = {"priv": cloud.create("vnet", private_vnet("ha-priv", "10.22.0.10", 20)),
            "pub": cloud.create("vnet", public_vnet("ha-pub", packet_side.project, 4))}
    rid = reservation_of(cloud, nets["pub"])
    vm = cloud.deploy_vm(vm_template("ha", nets), cloud.hosts[1])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    expect_routed(cloud, packet_side, vm, "deployed")
    leased = sorted(cloud.leased_ips(nets["pub"]))
    assert cloud.lease_files()[rid] == leased
    # a new leader's state directory: nothing in it
    state = cloud.location / "var" / "ipam_state" / "packet"
    aside = state.with_name("packet.old-leader")
    state.rename(aside)
    try:
        code, findings = check(cloud)
        assert code == 1
        assert mine(findings, preexisting).get("missing-lease-file") == leased
        requests = len(packet_side.admin.requests())
        code, out, err = run(cloud, "reconcile", "--leases")
        assert code == 0, out + err
        assert f"fixed: wrote the lease file of {leased[0]} in {rid}" in out
        assert len(packet_side.admin.requests()) == requests  # oned alone, no Packet call
        assert cloud.lease_files()[rid] == leased
        assert (state / rid / leased[0]).stat().st_uid == cloud.user.pw_uid
        expect_clean(cloud, preexisting)
        code, out, _err = run(cloud, "reconcile", "--leases")
        assert code == 0 and "nothing to do" in out
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    # the driver hands out addresses again, and none oned already leases
    more = cloud.deploy_vm(vm_template("ha2", nets), cloud.hosts[0])
    cloud.wait_vm(more, ACTIVE, RUNNING)
    expect_routed(cloud, packet_side, more, "deployed after the rebuild")
    (new_ip,) = cloud.aliases(more).values()
    assert new_ip not in leased
    assert cloud.lease_files()[rid] == sorted(leased + [new_ip])
    expect_clean(cloud, preexisting)
    for gone in (vm, more):
        cloud.cli("onevm", "terminate", "--hard", str(gone))
        cloud.wait_vm(gone, DONE)
    for vnet in (nets["pub"], nets["priv"]):
        cloud.cli("onevnet", "delete", str(vnet))


def test_range_whose_reservation_is_gone_is_reported_and_left(cloud: Cloud, packet_side,
                                                              client, preexisting) -> None:
    pub = cloud.create("vnet", public_vnet("gone-pub", packet_side.project, 2))
    rid = reservation_of(cloud, pub)
    client.release(rid)  # behind oned's back
    code, findings = check(cloud)
    assert code == 1
    assert mine(findings, preexisting) == {"missing-reservation": [rid]}
    code, out, _err = run(cloud, "reconcile")
    assert code == 1 and f"left: network {pub} AR 0: its reservation {rid} is gone" in out
    cloud.cli("onevnet", "delete", str(pub))
    wait_for("the network gone", lambda: cloud.run("onevnet", "show", str(pub),
                                                   check=False).returncode != 0)
    expect_clean(cloud, preexisting)


def test_unreachable_oned_is_one_line_exit_2(cloud: Cloud) -> None:
    env = cloud.env(ONE_XMLRPC="http://127.0.0.1:9/RPC2")
    proc = cloud.run(command(cloud), "check", check=False, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("packet-provider: ")
