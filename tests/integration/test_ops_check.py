"""packet-provider check / reconcile against both emulators: each kind of drift is reported
with its kind (exit 1), reconcile fixes it, a second check is clean and a second reconcile
does nothing. The command runs as the installed executable runs (a subprocess)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from fixtures.common import PYTHON, ROOT
from integration.hook_support import make_world
from packet_provider.ipam.leases import LeaseStore, UnassignJournal
from packet_provider.packet import PacketClient

COMMAND = ROOT / "share" / "bin" / "packet-provider"


def run(world: Any, *args: str) -> Tuple[int, str, str]:
    done = subprocess.run([PYTHON, str(COMMAND), *args], capture_output=True,
                          env=world.env, timeout=120)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def check(world: Any) -> Tuple[int, Dict[str, Any]]:
    code, out, err = run(world, "check", "--json")
    assert "Traceback" not in err
    return code, json.loads(out)


def kinds(report: Dict[str, Any]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["kind"], []).append(finding.get("ip") or
                                                     finding.get("reservation_id"))
    return found


@pytest.fixture
def world(oned, packet, remote_env, tmp_path, one_auth_file):
    w = make_world(oned, packet, remote_env, tmp_path, one_auth_file)
    Path(w.env["PACKET_PROVIDER_CONFIG"]).write_text(
        Path(w.env["PACKET_PROVIDER_CONFIG"]).read_text()
        + f"tokens:\n  {packet.project_id}: {packet.token}\n")
    w.state_dir = tmp_path / "state"
    w.store = LeaseStore(str(w.state_dir))
    return w


def settle(world: Any, vm_id: int) -> None:
    """What the hook and the IPAM driver would have made true for a new VM: its lease
    files, its addresses routed to its host."""
    for alias in world.oned.state.vm(vm_id).aliases:
        claim = world.store.claim(world.reservation.id, alias["IP"])
        if claim is not None:
            claim.commit()
    device = world.devices[world.hosts.index(host_of(world, vm_id))]
    with PacketClient(world.packet.url, world.packet.token) as client:
        for alias in world.oned.state.vm(vm_id).aliases:
            client.assign(device, ipaddress.IPv4Address(alias["IP"]))


def host_of(world: Any, vm_id: int) -> int:
    xml = world.oned.state.vm_xml(vm_id)
    return int(xml.split("<HID>")[-1].split("</HID>")[0])


def lease_files_of(world: Any) -> set:
    return {str(ip) for ip in world.store.leased(world.reservation.id)}


def test_clean_cloud_is_clean_and_reconcile_does_nothing(world):
    vm = world.vm(aliases=2)
    settle(world, vm)
    code, report = check(world)
    assert code == 0, report
    assert report["ok"] and report["findings"] == [] and report["leased"] == 2
    world.packet.clear_requests()
    code, out, err = run(world, "reconcile")
    assert code == 0, out + err
    assert "nothing to do" in out
    assert world.writes() == []


def test_each_kind_reported_then_fixed(world, packet):
    running = world.vm(aliases=2, host=0)
    moved = world.vm(aliases=1, host=0)
    gone = world.vm(aliases=1, host=0)
    for vm in (running, moved, gone):
        settle(world, vm)
    ips = {vm: [a["IP"] for a in world.oned.state.vm(vm).aliases]
           for vm in (running, moved, gone)}
    # unrouted: the assignment deleted at Packet behind the hook's back
    with PacketClient(packet.url, packet.token) as client:
        _r, assignments = client.reservation_with_assignments(world.reservation.id)
        by_ip = {str(a.address): a for a in assignments}
        client.unassign(by_ip[ips[running][0]].id)
        # wrong device: the VM's host changed and the hook never ran
        world.move(moved, 1)
        world.set_state(moved, 3, 3)
        # routed while no VM holds it: the VM's alias and lease gone, no clean ran
        world.detach(gone, ips[gone][0])
        # an orphan reservation the driver made
        orphan = client.reserve(packet.project_id, 2, facility="ams1")
    # lease files: one dropped, one oned does not know (old enough)
    (world.state_dir / "packet" / world.reservation.id / ips[running][1]).unlink()
    stale_ip = str(world.reservation.first_address + 7)
    claim = world.store.claim(world.reservation.id, stale_ip)
    claim.commit()
    old = time.time() - 3600
    for ip in (stale_ip, ips[gone][0]):
        os.utime(world.store.path(world.reservation.id, ip), (old, old))
    # a deferred unassignment (the free_address ran while Packet was down)
    owed_ip = ips[gone][0]
    UnassignJournal(str(world.state_dir)).record(world.reservation.id, owed_ip, {
        "project": packet.project_id, "ar_ip": str(world.reservation.first_address),
        "ar_size": world.reservation.size})

    code, report = check(world)
    assert code == 1
    found = kinds(report)
    assert found["unrouted"] == [ips[running][0]]
    assert found["wrong-device"] == [ips[moved][0]]
    assert found["routed-unheld"] == [owed_ip]
    assert found["missing-lease-file"] == [ips[running][1]]
    assert sorted(found["stale-lease-file"]) == sorted([stale_ip, owed_ip])
    assert found["orphan-reservation"] == [orphan.id]
    assert found["deferred-unassign"] == [owed_ip]
    assert report["oned_calls"] <= 3 + 1  # vnpool, vn (one packet network), vmpool, hostpool
    # text output: grouped, one line each
    code, out, _err = run(world, "check")
    assert code == 1 and "  unrouted: " + ips[running][0] in out

    code, out, err = run(world, "reconcile", "--dry-run")
    assert code == 1 and "would: route " + ips[running][0] in out, out + err
    assert check(world)[0] == 1  # a dry run changes nothing

    code, out, err = run(world, "reconcile")
    assert code == 1, out + err  # the orphan is left without --release-orphans
    assert "left: reservation " + orphan.id in out
    placed = world.placed()
    assert placed[ips[running][0]] == world.devices[0]
    assert placed[ips[moved][0]] == world.devices[1]
    assert owed_ip not in placed
    assert lease_files_of(world) == {ips[running][0], ips[running][1], ips[moved][0]}
    assert not UnassignJournal(str(world.state_dir)).pending(world.reservation.id)
    code, report = check(world)
    assert code == 1 and kinds(report) == {"orphan-reservation": [orphan.id]}

    code, out, err = run(world, "reconcile", "--release-orphans")
    assert code == 0, out + err
    assert "released reservation " + orphan.id in out
    code, report = check(world)
    assert code == 0, report
    world.packet.clear_requests()
    code, out, _err = run(world, "reconcile")
    assert code == 0 and "nothing to do" in out
    assert world.writes() == []


def test_reconcile_leases_rebuilds_an_empty_directory_from_oned_alone(world):
    vm = world.vm(aliases=2)
    settle(world, vm)
    ips = sorted(a["IP"] for a in world.oned.state.vm(vm).aliases)
    directory = world.state_dir / "packet" / world.reservation.id
    for path in directory.iterdir():
        path.unlink()
    world.packet.clear_requests()
    code, out, err = run(world, "reconcile", "--leases")
    assert code == 0, out + err
    assert sorted(lease_files_of(world)) == ips
    assert world.packet.requests() == []  # Packet never asked
    code, out, _err = run(world, "reconcile", "--leases")
    assert code == 0 and "nothing to do" in out


def test_fresh_stale_lease_file_is_left_alone(world):
    claim = world.store.claim(world.reservation.id, str(world.reservation.first_address))
    claim.commit()
    code, out, _err = run(world, "reconcile")
    assert code == 1 and "left: lease file" in out
    assert lease_files_of(world) == {str(world.reservation.first_address)}


def test_held_lease_is_never_removed(world):
    held = world.store.claim(world.reservation.id, str(world.reservation.first_address))
    try:
        code, out, _err = run(world, "reconcile", "--grace", "0")
        assert code == 1 and "an IPAM action holds it" in out
        assert lease_files_of(world) == {str(world.reservation.first_address)}
    finally:
        held.abandon()


def test_could_not_look_is_one_line_exit_2(world, oned):
    oned.stop()
    code, out, err = run(world, "check")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("packet-provider: oned")
    assert "Traceback" not in err


def test_bad_packet_token_is_exit_2_without_the_token(world, packet):
    config = Path(world.env["PACKET_PROVIDER_CONFIG"])
    config.write_text(config.read_text().replace(packet.token, "not-the-token-xyz"))
    world.vm(aliases=1)
    code, out, err = run(world, "check")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "not-the-token-xyz" not in err and packet.token not in err + out


def test_bad_arguments_exit_2_one_line(world):
    code, _out, err = run(world, "check", "--bogus")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("packet-provider: ")


def test_an_alias_on_a_reservation_network_is_held_through_its_parent_range(world):
    """onevnet reserve: the parent's AR leases the reserved addresses to the reservation
    network (LEASE/VNET: lease files are owed for them), whose own AR, without IPAM_MAD,
    leases them to VMs: those VMs hold the parent's addresses."""
    st = world.oned.state
    resv = st.reserve(world.public, 2, "resv")
    vm = world.vm(public=resv)
    (ip,) = [a["IP"] for a in st.vm(vm).aliases]
    first = world.reservation.first_address
    reserved = [str(first), str(first + 1)]  # the first free ones of the parent's range
    assert ip in reserved
    for address in reserved:
        world.store.claim(world.reservation.id, address).commit()
    with PacketClient(world.packet.url, world.packet.token) as client:
        client.assign(world.devices[0], ipaddress.IPv4Address(ip))
    code, report = check(world)
    assert code == 0, report["findings"]
    assert report["leased"] == 2
    world.move(vm, 1)
    world.set_state(vm, 3, 3)
    code, report = check(world)
    assert code == 1 and kinds(report) == {"wrong-device": [ip]}
    assert report["findings"][0]["vm_id"] == vm
    code, out, err = run(world, "reconcile")
    assert code == 0, out + err
    assert world.placed() == {ip: world.devices[1]}
    assert check(world)[0] == 0


def test_no_token_in_any_output(world, packet):
    vm = world.vm(aliases=2)
    settle(world, vm)
    with PacketClient(packet.url, packet.token) as client:
        client.reserve(packet.project_id, 1, facility="ams1")
    outputs = [run(world, "check"), run(world, "check", "--json"),
               run(world, "reconcile", "--dry-run", "--release-orphans", "--json"),
               run(world, "reconcile", "--release-orphans")]
    log = (world.log_dir / "packet-provider.log").read_text()
    assert "released reservation" in log
    for _code, out, err in outputs:
        assert packet.token not in out + err
    assert packet.token not in log
