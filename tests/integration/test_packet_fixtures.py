"""The Packet client on answers of the real API (tests/data/packet-api/, from packet-python's
test fixtures): devices list their provisioning addresses (management IPv4 /31s, an IPv6 /127)
and project lists hold management assignments. Only elastic IPv4 /32 assignments and
elastic IPv4 reservations are the plugin's: everything else is skipped, never an error. The
answers reach the client over HTTP, served by the emulator in place of its own."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from packet_provider import packet as api

DATA = Path(__file__).resolve().parents[1] / "data" / "packet-api"
DEVICE_LISTS = ["get_devices_e123s_ips.json", "get_devices_9dec7266.json",
                "patch_devices_e781ae1b.json"]
PROJECT_LISTS = ["get_projects_438659f0_ips.json", "get_projects_438659f1_ips.json"]


def real(name):
    return json.loads((DATA / name).read_text())


def elastic_from(entry, device, address, reservation):
    """A real address object turned into the elastic /32 the schema describes (the fixtures
    hold none): not management, /32, address = network, with its parent block."""
    made = copy.deepcopy(entry)
    made.update(id="6f1f5b52-3a3e-4c55-9d0a-2b7f4f0c9e11", management=False, cidr=32,
                netmask="255.255.255.255", network=address, address=address, gateway=address,
                href="/ips/6f1f5b52-3a3e-4c55-9d0a-2b7f4f0c9e11",
                assigned_to={"href": f"/devices/{device}"},
                parent_block={"network": address, "netmask": "255.255.255.248", "cidr": 29,
                              "href": f"/ips/{reservation}"})
    return made


@pytest.fixture
def client(packet):
    with api.PacketClient(packet.url, packet.token, retries=0) as c:
        yield c


def serve(packet, path, body):
    """The emulator answers GET ``path`` with ``body`` (a 200), as the real API did."""
    packet.fault(status=200, body=body, method="GET", path=path, count=100)


# -- the parse functions -------------------------------------------------------------------


@pytest.mark.parametrize("name", DEVICE_LISTS + PROJECT_LISTS + ["get_ips_e123s.json"])
def test_no_real_provisioning_address_is_taken_for_ours(name):
    data = real(name)
    entries = data.get("ip_addresses") or [data]
    families = {e["address_family"] for e in entries}
    assert entries and all(e["management"] for e in entries)
    assert not any(api.is_elastic_assignment(e) for e in entries)
    assert not any(api.is_elastic_reservation(e) for e in entries)
    if name in DEVICE_LISTS:
        assert families == {4, 6}  # with the IPv6 /127 the hook used to parse as IPv4


def test_real_field_shapes_parse():
    """What the client reads, as the real answers shape it: ``cidr`` an int, ``address`` =
    network + 1 on a /31 (so an elastic /32 is read by ``address``), ``global_ip`` null,
    ``project`` an empty object, ``facility`` whole or null, no ``parent_block``."""
    public, ipv6, private = real("get_devices_e123s_ips.json")["ip_addresses"]
    assert public["address"] != public["network"] and isinstance(public["cidr"], int)
    assert public["project"] == {} and public["global_ip"] is None and "parent_block" not in public
    made = elastic_from(public, "54ffd20d-d972-4c8d-8628-9da18e67ae17", "147.75.84.90",
                        "5d0e8f3a-7b21-4c9e-a6f4-2b8d1e0c9a37")
    assert api.is_elastic_assignment(made)
    got = api.parse_assignment(made)
    assert got.address == ipaddress.IPv4Address("147.75.84.90") and got.cidr == 32
    assert got.device_id == "54ffd20d-d972-4c8d-8628-9da18e67ae17"
    assert got.reservation_id == "5d0e8f3a-7b21-4c9e-a6f4-2b8d1e0c9a37"
    del made["parent_block"]  # optional in the schema: the assignment is still read
    assert api.parse_assignment(made).reservation_id is None
    for entry in (ipv6, private, dict(made, cidr=31), dict(made, public=False)):
        assert not api.is_elastic_assignment(entry)
    # a reservation with the real common fields (project {}, facility whole, or null)
    block = {k: v for k, v in public.items() if k not in ("assigned_to", "interface")}
    block.update(management=False, cidr=29, network="147.75.84.88", type="public_ipv4")
    assert api.is_elastic_reservation(block)
    res = api.parse_reservation(block)
    assert str(res.network) == "147.75.84.88/29" and res.facility == "ams1"
    assert res.project_id == "" and res.assignment_ids == ()
    lite = dict(block, facility=None, project_lite={
        "href": "/projects/438659f0-8d50-4b1d-9f2c-3c4c1a5e0b11"})
    assert api.parse_reservation(lite).project_id == "438659f0-8d50-4b1d-9f2c-3c4c1a5e0b11"
    assert api.parse_reservation(lite).facility == ""


# -- the client over HTTP ------------------------------------------------------------------


@pytest.mark.parametrize("name", DEVICE_LISTS)
def test_device_assignments_skip_the_real_provisioning_addresses(client, packet, name):
    device = packet.device_ids[0]
    data = real(name)
    serve(packet, f"/devices/{device}/ips", {"ip_addresses": data["ip_addresses"]})
    assert client.device_assignments(device) == []
    mine = elastic_from(data["ip_addresses"][0], device, "192.0.2.9",
                        "5d0e8f3a-7b21-4c9e-a6f4-2b8d1e0c9a37")
    packet.admin.clear_faults()
    serve(packet, f"/devices/{device}/ips", {"ip_addresses": data["ip_addresses"] + [mine]})
    (found,) = client.device_assignments(device)
    assert found.address == ipaddress.IPv4Address("192.0.2.9") and found.device_id == device


def test_an_elastic_entry_that_does_not_parse_is_still_an_error(client, packet):
    device = packet.device_ids[0]
    broken = {"id": "x", "address": "nope"}  # nothing says it is not ours: not skipped
    serve(packet, f"/devices/{device}/ips", {"ip_addresses": [broken]})
    with pytest.raises(api.PacketError, match="malformed assignment"):
        client.device_assignments(device)


@pytest.mark.parametrize("name", PROJECT_LISTS)
def test_list_reservations_skips_the_real_management_entries(client, packet, name):
    res = client.reserve(packet.project_id, 8, facility="ams1")
    listed = real(name)["ip_addresses"]
    serve(packet, f"/projects/{packet.project_id}/ips", {"ip_addresses": listed})
    assert client.list_reservations(packet.project_id) == []
    assert client.find_marked(packet.project_id, "m-1") is None
    packet.admin.clear_faults()
    assert [r.id for r in client.list_reservations(packet.project_id)] == [res.id]


def test_the_emulators_own_project_list_gives_the_reservations_only(client, packet):
    """The emulator lists its devices' management addresses after the reservations, as the
    real list does: list_reservations leaves them out."""
    res = client.reserve(packet.project_id, 4, facility="ams1")
    assert [r.id for r in client.list_reservations(packet.project_id)] == [res.id]


def test_a_reservations_assignments_skip_foreign_entries(client, packet):
    """A block's assignments hold only our /32s; if an IPv6 or a management entry ever
    appears among them (here: the real answer of GET /ips/{id}), embedded or as a bare href
    read on its own, it is skipped."""
    res = client.reserve(packet.project_id, 8, facility="ams1")
    device = packet.device_ids[0]
    mine = client.assign(device, res.first_address + 1)
    assert [a.id for a in client.reservation_with_assignments(res.id)[1]] == [mine.id]
    foreign = dict(real("get_ips_e123s.json"), id="0b2f6c1e-8d3a-4f5e-9a7b-1c2d3e4f5a6b")
    ipv6 = dict(real("get_devices_e123s_ips.json")["ip_addresses"][1],
                id="1c3a7d2f-9e4b-4a6f-8b8c-2d3e4f5a6b7c")
    serve(packet, f"/ips/{foreign['id']}", foreign)
    serve(packet, f"/ips/{ipv6['id']}", ipv6)
    block = client._call("GET", f"/ips/{res.id}", params={"include": "assignments"})
    hrefs = [{"href": f"/ips/{i}"} for i in (foreign["id"], mine.id, ipv6["id"])]
    for entries in (hrefs, [foreign, *block["assignments"], ipv6]):
        serve(packet, f"/ips/{res.id}", dict(block, assignments=entries))
        assert [a.id for a in client.reservation_with_assignments(res.id)[1]] == [mine.id]
    with pytest.raises(api.PacketError, match="not an elastic"):
        client.get_assignment(ipv6["id"])


def test_find_assignment_ignores_a_sub_block_assigned_whole(client, packet):
    """Only /32s are ours: a /31 of the block assigned to a device is left alone."""
    res = client.reserve(packet.project_id, 8, facility="ams1")
    client._call("POST", f"/devices/{packet.device_ids[1]}/ips",
                 {"address": f"{res.first_address}/31"})
    assert client.reservation_with_assignments(res.id)[1] == []
    assert client.find_assignment(res.id, res.first_address) is None
    assert client.device_assignments(packet.device_ids[1]) == []
