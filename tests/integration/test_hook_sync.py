"""The alias_ip hook as a subprocess, fed like onehem feeds it, against both emulators (real
XML-RPC and HTTP servers on 127.0.0.1): what it assigns, moves and unassigns, and what it
leaves alone. Failures are in test_hook_failures.py; the life cycle through the scenario
driver in tests/e2e/test_hook_lifecycle.py."""

from __future__ import annotations

import ipaddress
import json
import uuid
from pathlib import Path

import pytest

from integration.hook_support import (
    ACTIVE,
    DONE,
    HOTPLUG_NIC,
    POWEROFF,
    RUNNING,
    PacketClient,
    World,
    alias_ips,
    make_world,
    ok,
)


@pytest.fixture
def world(oned, packet, remote_env, tmp_path, one_auth_file) -> World:
    return make_world(oned, packet, remote_env, tmp_path, one_auth_file)


# -- deploy, replay ----------------------------------------------------------------------------

def test_deploy_assigns_both_aliases_to_the_hosts_device(world):
    vm = world.vm(aliases=2)
    out = ok(world.run(vm))
    ips = alias_ips(world, vm)
    assert world.placed() == {ip: world.devices[0] for ip in ips}
    assert sorted(world.writes()) == [f"POST /devices/{world.devices[0]}/ips"] * 2
    assert "2 API write(s)" in out


def test_replaying_the_event_makes_no_api_write(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.packet.clear_requests()
    out = ok(world.run(vm))
    assert world.writes() == [] and "0 API write(s), 2 already right" in out
    assert [r["method"] for r in world.packet.requests()] == ["GET"]  # the reservation, whole


def test_argv_form_works_like_stdin(world):
    vm = world.vm()
    ok(world.run(vm, argv=True))
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[0]}


def test_fast_path_vm_without_aliases_makes_no_call_at_all(world):
    vm = world.vm(aliases=0)
    world.oned.calls.clear()
    out = ok(world.run(vm))
    assert "nothing to do" in out
    assert list(world.oned.calls) == [] and world.packet.requests() == []
    assert world.log() == ""


# -- migrate, poweroff, done ---------------------------------------------------------------------

def test_live_migration_moves_the_address_unassigning_first(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.move(vm, 1)
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[1] for ip in alias_ips(world, vm)}
    writes = world.writes()
    assert len(writes) == 4
    for ip_writes in (writes[0:2], writes[2:4]):  # per address: DELETE then POST
        assert ip_writes[0].startswith("DELETE /ips/")
        assert ip_writes[1] == f"POST /devices/{world.devices[1]}/ips"


@pytest.mark.parametrize("lcm", [4, 7, 8, 35])  # MIGRATE, SAVE_MIGRATE, PROLOG_, BOOT_
def test_a_run_during_a_migration_moves_nothing_until_the_vm_runs_there(world, lcm):
    """oned opens the destination's history record when the migration starts: a hook run
    then (a late RUNNING event, a retry) must not route the addresses to the destination
    while the VM still runs on the source. The RUNNING event after the migration does."""
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    late_event = world.xml(vm)
    ips = alias_ips(world, vm)
    world.move(vm, 1)
    world.set_state(vm, ACTIVE, lcm)
    world.packet.clear_requests()
    out = ok(world.run(xml=late_event))
    assert world.packet.requests() == [] and "2 left alone" in out
    assert world.placed() == {ip: world.devices[0] for ip in ips}
    assert world.log().count("until it runs on its host") == 2
    world.set_state(vm, ACTIVE, RUNNING)
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[1] for ip in ips}


def test_a_stale_assignment_on_another_device_is_moved(world):
    vm = world.vm()
    (ip,) = alias_ips(world, vm)
    with PacketClient(world.packet.url, world.packet.token) as client:
        client.assign(world.devices[2], ipaddress.IPv4Address(ip))
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[0]}


@pytest.mark.parametrize("state", [POWEROFF, 5])
def test_poweroff_and_suspended_keep_the_address(world, state):
    vm = world.vm()
    ok(world.run(vm))
    world.set_state(vm, state, 0)
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.writes() == [] and len(world.placed()) == 1


def test_done_unassigns_and_a_replay_of_done_writes_nothing(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.set_state(vm, DONE, 0)
    ok(world.run(vm))
    assert world.placed() == {}
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.writes() == []


def test_the_block_and_its_assignments_are_read_in_one_request(world):
    """Other VMs' addresses in the same block cost no request: the reservation is read with
    its assignments embedded (?include=assignments), not one GET per assignment."""
    vms = [world.vm(host=i % 2) for i in range(4)]
    for vm in vms:
        ok(world.run(vm))
    world.set_state(vms[0], DONE, 0)
    world.packet.clear_requests()
    ok(world.run(vms[0]))
    assert [(r["method"], r["path"]) for r in world.packet.requests()] == [
        ("GET", f"/ips/{world.reservation.id}?include=assignments"),
        ("DELETE", world.writes()[0].split(" ", 1)[1])]
    assert len(world.placed()) == 3


def test_an_answer_without_the_assignments_embedded_is_read_one_by_one(world):
    """An API that ignores ?include=assignments answers bare hrefs: each is read on its own."""
    vm = world.vm()
    ok(world.run(vm))
    with PacketClient(world.packet.url, world.packet.token) as client:
        plain = client._call("GET", f"/ips/{world.reservation.id}")
    assert all(set(a) == {"href"} for a in plain["assignments"])
    world.packet.fault(status=200, body=plain, method="GET",
                       path=f"/ips/{world.reservation.id}", count=1)
    world.set_state(vm, DONE, 0)
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.placed() == {}
    assert [r["method"] for r in world.packet.requests()] == ["GET", "GET", "DELETE"]


def test_a_late_running_event_after_terminate_unassigns(world):
    """The event is asynchronous: a RUNNING event handled after the VM is DONE."""
    vm = world.vm()
    ok(world.run(vm))
    running = world.xml(vm)
    world.set_state(vm, DONE, 0)
    ok(world.run(xml=running))
    assert world.placed() == {}


# -- hot-plug ----------------------------------------------------------------------------------

def test_hot_attach_assigns_the_new_alias(world):
    vm = world.vm()
    ok(world.run(vm))
    ip = world.attach(vm, attach=True)
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    event = world.xml(vm)
    for alias in world.oned.state.vm(vm).aliases:  # oned finishes the attach
        alias.pop("ATTACH", None)
    world.set_state(vm, ACTIVE, RUNNING)
    ok(world.run(xml=event))
    assert world.placed()[ip] == world.devices[0] and len(world.placed()) == 2


def test_hot_detach_unassigns_only_the_detached_alias(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    keep, gone = alias_ips(world, vm)
    event = world.hot_detach(vm, gone)
    world.packet.clear_requests()
    ok(world.run(xml=event))
    assert world.placed() == {keep: world.devices[0]}
    assert len(world.writes()) == 1 and world.writes()[0].startswith("DELETE /ips/")


def test_a_detached_address_already_leased_to_another_vm_is_not_touched(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    _, gone = alias_ips(world, vm)
    event = world.hot_detach(vm, gone)
    # before the hook of the detach runs, another VM gets the address on the other host
    other = world.oned.state.add_vm("other")
    lease = world.oned.state.take_lease(world.private, 0, other.id)
    world.oned.state.add_nic(other.id, world.private, 0, lease)
    world.oned.state.take_lease(world.public, 0, other.id, ip=gone)
    with PacketClient(world.packet.url, world.packet.token) as client:
        for a in client.device_assignments(world.devices[0]):
            if str(a.address) == gone:
                client.unassign(a.id)
        client.assign(world.devices[1], ipaddress.IPv4Address(gone))
    world.packet.clear_requests()
    ok(world.run(xml=event))
    assert world.placed()[gone] == world.devices[1]
    assert world.writes() == []
    assert "leased to VM" in world.log()


# -- reservation networks (onevnet reserve) -----------------------------------------------------

def test_an_alias_on_a_reservation_network_follows_the_vm_until_done(world):
    """A reservation's AR is oned's copy of the packet AR without IPAM_MAD: the hook routes
    its addresses through the parent's range (its DEPLOY_ID, its token, its IP and SIZE for
    the reservation check), not through the copy, which a user may change."""
    st = world.oned.state
    resv = st.reserve(world.public, 2, "resv")
    ar = st.vnet(resv).ar(0)
    assert "IPAM_MAD" not in ar.attrs and ar.attrs["PARENT_NETWORK_AR_ID"] == "0"
    ar.attrs["DEPLOY_ID"] = str(uuid.uuid4())  # the copy: changed, never used
    ar.attrs.pop("PACKET_TOKEN")
    vm = world.vm(public=resv)
    (ip,) = alias_ips(world, vm)
    assert ipaddress.IPv4Address(ip) in world.reservation.network
    assert "1 API write(s)" in ok(world.run(vm))
    assert world.placed() == {ip: world.devices[0]}
    assert f"network={world.public} ar=0 via_reservation_network={resv}/0" in world.log()
    world.move(vm, 1)
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[1]}
    st.release_lease(resv, 0, ip)  # terminate: oned frees the lease in the reservation
    world.set_state(vm, DONE, 0)
    ok(world.run(vm))
    assert world.placed() == {}


DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_emulators_reservation_networks_read_like_real_onevnet_reserve(world):
    """The oned emulator's reservation as the real 5.12.13 writes one (tests/data, captured
    with onevnet show -x): the same AR attributes, the parent in PARENT_NETWORK_ID, and the
    parent's lease of the reserved addresses owned by the reservation (LEASE/VNET)."""
    from xml.etree import ElementTree as ET

    def shape(xml):
        root = ET.fromstring(xml)
        ar = root.find("AR_POOL/AR")
        return (bool(root.findtext("PARENT_NETWORK_ID")), [c.tag for c in ar],
                [[c.tag for c in lease] for lease in ar.findall("LEASES/LEASE")])

    st = world.oned.state
    public = st.vnet(world.public).ar(0).attrs
    public.pop("PACKET_TOKEN")  # as captured: the token in the config, the AR as registered
    public.update(FACILITY="ams1", PACKET_IP_TYPE="public_ipv4")
    resv = st.reserve(world.public, 1, "resv")
    vm = world.vm(public=resv)
    for name, vnet_id in (("vnet-reservation-captured-5.12.13.xml", resv),
                          ("vnet-reservation-parent-captured-5.12.13.xml", world.public)):
        assert shape(st.vnet_xml(vnet_id).encode()) == shape((DATA / name).read_bytes()), name
    (alias,) = st.vm(vm).aliases
    assert alias["PARENT_NETWORK_ID"] == str(world.public)


# -- what the hook leaves alone --------------------------------------------------------------------

def test_aliases_on_a_non_packet_network_are_never_touched(world):
    st = world.oned.state
    other = st.add_vnet("elastic", vn_mad="alias_sdnat")
    st.add_ar(other, {"TYPE": "IP4", "IP": "100.64.0.10", "SIZE": "4"})
    vm = world.vm(aliases=1, public=other)
    out = ok(world.run(vm))
    assert world.packet.requests() == [] and world.placed() == {}
    assert "1 left alone" in out and "IPAM_MAD=-" in world.log()


def test_other_vms_addresses_are_not_touched(world):
    a, b = world.vm(), world.vm(host=1)
    ok(world.run(a))
    ok(world.run(b))
    world.set_state(a, DONE, 0)
    ok(world.run(a))
    assert world.placed() == {alias_ips(world, b)[0]: world.devices[1]}




# -- devices as real ones are: provisioning addresses besides the elastic ones ----------------

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "packet-api"


def test_a_device_with_its_provisioning_addresses_gets_the_alias(world):
    """A real device lists its management IPv4 /31s and its IPv6 /127 in ip_addresses: the
    hook skips them (it used to fail parsing the IPv6 one as IPv4) and never touches them."""
    device = world.devices[0]
    with PacketClient(world.packet.url, world.packet.token) as client:
        listed = client._call("GET", f"/devices/{device}/ips")["ip_addresses"]
    assert {(a["address_family"], a["cidr"], a["public"], a["management"]) for a in listed} \
        == {(4, 31, True, True), (6, 127, True, True), (4, 31, False, True)}
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    assert world.placed() == {ip: device for ip in alias_ips(world, vm)}
    world.packet.clear_requests()
    out = ok(world.run(vm))  # found on the device among its management addresses
    assert world.writes() == [] and "2 already right" in out
    world.set_state(vm, DONE, 0)
    ok(world.run(vm))
    assert world.placed() == {}
    with PacketClient(world.packet.url, world.packet.token) as client:
        after = client._call("GET", f"/devices/{device}/ips")["ip_addresses"]
    assert after == listed  # the management addresses are as they were


def test_the_real_device_answer_does_not_stop_the_hook(world):
    """The device list exactly as the real API answered it (packet-python's fixture: two
    management IPv4 /31s and an IPv6 /127, no meta): nothing there is ours, so the hook finds
    the address through the reservation and assigns it."""
    body = json.loads((FIXTURES / "get_devices_e123s_ips.json").read_text())
    vm = world.vm()
    world.packet.fault(status=200, body=body, method="GET",
                       path=f"/devices/{world.devices[0]}/ips", count=1000)
    ok(world.run(vm))
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[0]}
