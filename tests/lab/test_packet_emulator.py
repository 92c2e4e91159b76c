"""The Packet API emulator's semantics over real HTTP: carving, available, assignment
conflicts, refused release, auth, 404s, pagination, the admin API, faults, the state file and
the command line."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from fixtures.common import LIB, PYTHON
from packet_lab.packet.admin import AdminClient, AdminError
from packet_lab.packet.emulator import (
    MANAGEMENT_POOL,
    POOLS,
    ApiError,
    PacketEmulator,
    carve,
)

FAMILY = [ipaddress.IPv4Network(n) for n in POOLS]


class Api:
    """Raw HTTP against the emulator (no client library in between)."""

    def __init__(self, url, token):
        self.url = url
        self.session = requests.Session()
        if token is not None:
            self.session.headers["X-Auth-Token"] = token

    def call(self, method, path, body=None, **params):
        return self.session.request(method, self.url + path, json=body, params=params or None,
                                    timeout=10)

    def reserve(self, project, quantity, **extra):
        body = {"type": "public_ipv4", "quantity": quantity, "facility": "ams1", **extra}
        return self.call("POST", f"/projects/{project}/ips", body)

    def ok(self, method, path, body=None, status=200, **params):
        response = self.call(method, path, body, **params)
        assert response.status_code == status, (response.status_code, response.text)
        return response.json() if response.content else None


@pytest.fixture
def api(packet):
    api = Api(packet.url, packet.token)
    yield api
    api.session.close()


def network_of(res):
    return ipaddress.IPv4Network(f"{res['network']}/{res['cidr']}")


def errors(response):
    return " ".join(response.json()["errors"])


# -- carving ------------------------------------------------------------------------------


def test_blocks_of_many_sizes_never_overlap_and_are_aligned(api, packet):
    other = packet.admin.add_project()
    blocks = []
    for quantity in (1, 8, 2, 256, 4, 1, 32, 16, 128, 2, 64, 1, 8, 256, 4):
        for project in (packet.project_id, other):
            res = api.ok("POST", f"/projects/{project}/ips",
                         {"type": "public_ipv4", "quantity": quantity, "facility": "ams1"},
                         status=201)
            net = network_of(res)
            assert net.num_addresses == quantity and res["cidr"] == 32 - quantity.bit_length() + 1
            assert res["netmask"] == str(net.netmask)
            assert any(net.subnet_of(pool) for pool in FAMILY), net
            blocks.append(net)
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            assert not a.overlaps(b), (a, b)
    assert len(packet.state()["reservations"]) == len(blocks)


def test_carving_moves_to_the_next_pool_and_reuses_released_space(api, packet):
    nets = [network_of(api.ok("POST", f"/projects/{packet.project_id}/ips",
                              {"type": "public_ipv4", "quantity": 256, "facility": "ams1"},
                              status=201)) for _ in range(4)]
    assert [str(n) for n in nets] == ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                      "198.18.0.0/24"]
    first = api.ok("GET", f"/projects/{packet.project_id}/ips")["ip_addresses"][0]
    api.ok("DELETE", f"/ips/{first['id']}", status=204)
    again = api.reserve(packet.project_id, 256).json()
    assert network_of(again) == ipaddress.IPv4Network("192.0.2.0/24")


def test_carve_reports_exhaustion():
    assert carve(24, FAMILY) is None
    assert carve(32, FAMILY[:3]) == ipaddress.IPv4Network("198.18.0.0/32")
    assert carve(29, [ipaddress.IPv4Network("192.0.2.0/30")]) == ipaddress.IPv4Network(
        "192.0.2.8/29")


def test_concurrent_reservations_do_not_overlap(packet):
    results = []

    def worker():
        api = Api(packet.url, packet.token)
        for _ in range(5):
            results.append(api.reserve(packet.project_id, 4))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nets = [network_of(r.json()) for r in results if r.status_code == 201]
    assert len(nets) == 30 and len(set(nets)) == 30


@pytest.mark.parametrize("body, text", [
    ({"quantity": 3}, "power of two"),
    ({"quantity": 0}, "power of two"),
    ({"quantity": "8"}, "integer"),
    ({"quantity": 512}, "approval"),
    ({"quantity": 4, "facility": None}, "facility or metro"),
    ({"quantity": 4, "type": "private_ipv4"}, "not served"),
    ({"quantity": 4, "type": "bogus"}, "type must be"),
    ({"quantity": 2, "type": "global_ipv4"}, "exactly 1"),
    ({"quantity": 4, "customdata": "x"}, "customdata"),
    ({"quantity": 4, "tags": "x"}, "tags"),
])
def test_bad_reservation_requests_are_refused(api, packet, body, text):
    response = api.reserve(packet.project_id, **body)
    assert response.status_code == 422 and text in errors(response)
    assert packet.state()["reservations"] == []


def test_metro_instead_of_facility_and_global_ipv4(api, packet):
    res = api.ok("POST", f"/projects/{packet.project_id}/ips",
                 {"type": "public_ipv4", "quantity": 2, "metro": "am"}, status=201)
    assert res["metro"]["code"] == "am"
    one = api.ok("POST", f"/projects/{packet.project_id}/ips",
                 {"type": "global_ipv4", "quantity": 1}, status=201)
    assert one["cidr"] == 32 and one["global_ip"] is True


def test_details_tags_customdata_are_returned_by_get_and_list(api, packet):
    res = api.reserve(packet.project_id, 4, details="range 7", tags=["opennebula"],
                      customdata={"opennebula_request": "m-1", "n": [1, 2]}).json()
    got = api.ok("GET", f"/ips/{res['id']}")
    listed = api.ok("GET", f"/projects/{packet.project_id}/ips")["ip_addresses"]
    for obj in (res, got, listed[0]):
        assert obj["details"] == "range 7" and obj["tags"] == ["opennebula"]
        assert obj["customdata"] == {"opennebula_request": "m-1", "n": [1, 2]}
        assert obj["facility"]["code"] == "ams1" and obj["state"] == "created"
        assert obj["href"] == f"/ips/{res['id']}"
        assert obj["project"]["href"] == f"/projects/{packet.project_id}"


# -- available and assignments ------------------------------------------------------------


def test_available_excludes_assigned_addresses(api, packet):
    res = api.reserve(packet.project_id, 8).json()
    net = network_of(res)
    everything = [f"{ip}/32" for ip in net]
    assert api.ok("GET", f"/ips/{res['id']}/available", cidr=32)["available"] == everything
    device = packet.device_ids[0]
    a = api.ok("POST", f"/devices/{device}/ips", {"address": f"{net[3]}/32"}, status=201)
    assert a["address"] == a["network"] == str(net[3]) and a["cidr"] == 32
    assert a["assigned_to"]["href"] == f"/devices/{device}"
    assert a["parent_block"] == {"network": str(net.network_address),
                                 "netmask": str(net.netmask), "cidr": 29,
                                 "href": f"/ips/{res['id']}"}
    free = api.ok("GET", f"/ips/{res['id']}/available")["available"]
    assert f"{net[3]}/32" not in free and len(free) == 7
    pairs = api.ok("GET", f"/ips/{res['id']}/available", cidr=31)["available"]
    assert pairs == [f"{net[0]}/31", f"{net[4]}/31", f"{net[6]}/31"]
    assert api.call("GET", f"/ips/{res['id']}/available", cidr=28).status_code == 422
    assert api.call("GET", f"/ips/{a['id']}/available").status_code == 422
    api.ok("DELETE", f"/ips/{a['id']}", status=204)
    assert api.ok("GET", f"/ips/{res['id']}/available")["available"] == everything


def test_an_address_is_on_one_device_at_a_time(api, packet):
    res = api.reserve(packet.project_id, 4).json()
    ip = network_of(res)[1]
    d0, d1, _ = packet.device_ids
    first = api.ok("POST", f"/devices/{d0}/ips", {"address": f"{ip}/32"}, status=201)
    for device in (d0, d1):
        response = api.call("POST", f"/devices/{device}/ips", {"address": f"{ip}/32"})
        assert response.status_code == 422 and f"assigned to device {d0}" in errors(response)
    block = api.call("POST", f"/devices/{d1}/ips", {"address": f"{network_of(res)[0]}/31"})
    assert block.status_code == 422
    api.ok("DELETE", f"/ips/{first['id']}", status=204)
    moved = api.ok("POST", f"/devices/{d1}/ips", {"address": str(ip)}, status=201)
    assert moved["assigned_to"]["href"] == f"/devices/{d1}"
    assert [x["device_id"] for x in packet.state()["assignments"]] == [d1]


def test_concurrent_assignments_of_one_address_admit_one(packet, api):
    res = api.reserve(packet.project_id, 2).json()
    ip = network_of(res)[0]
    codes = []

    def worker(device):
        codes.append(Api(packet.url, packet.token).call(
            "POST", f"/devices/{device}/ips", {"address": f"{ip}/32"}).status_code)

    threads = [threading.Thread(target=worker, args=(d,)) for d in packet.device_ids * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] + [422] * 8


def test_assignments_outside_the_devices_reservations_are_refused(api, packet):
    other = packet.admin.add_project()
    stranger = packet.admin.add_device(other, hostname="elsewhere")
    res = api.reserve(packet.project_id, 4).json()
    ip = network_of(res)[2]
    response = api.call("POST", f"/devices/{stranger}/ips", {"address": f"{ip}/32"})
    assert response.status_code == 422 and "device's project" in errors(response)
    for address in ("203.0.113.77/32", "not-an-ip", "192.0.2.1/30", "", None):
        response = api.call("POST", f"/devices/{packet.device_ids[0]}/ips",
                            {"address": address})
        assert response.status_code == 422, address
    assert packet.state()["assignments"] == []


def test_a_reservation_with_assignments_cannot_be_released(api, packet):
    res = api.reserve(packet.project_id, 2).json()
    a = api.ok("POST", f"/devices/{packet.device_ids[2]}/ips",
               {"address": f"{res['network']}/32"}, status=201)
    assert api.ok("GET", f"/ips/{res['id']}")["assignments"] == [{"href": f"/ips/{a['id']}"}]
    embedded = api.ok("GET", f"/ips/{res['id']}", include="assignments")["assignments"]
    assert embedded[0]["id"] == a["id"]
    response = api.call("DELETE", f"/ips/{res['id']}")
    assert response.status_code == 422 and "unassign" in errors(response)
    assert api.ok("GET", f"/ips/{res['id']}")["id"] == res["id"]
    api.ok("DELETE", f"/ips/{a['id']}", status=204)
    api.ok("DELETE", f"/ips/{res['id']}", status=204)
    assert api.call("GET", f"/ips/{res['id']}").status_code == 404
    assert api.call("DELETE", f"/ips/{res['id']}").status_code == 404


def test_device_shows_its_addresses(api, packet):
    res = api.reserve(packet.project_id, 4).json()
    device = packet.device_ids[1]
    made = [api.ok("POST", f"/devices/{device}/ips", {"address": f"{ip}/32"}, status=201)["id"]
            for ip in list(network_of(res))[:2]]
    dev = api.ok("GET", f"/devices/{device}")
    assert dev["id"] == device and [x["id"] for x in dev["ip_addresses"][3:]] == made
    assert [x["management"] for x in dev["ip_addresses"]] == [True] * 3 + [False] * 2
    assert dev["project"]["href"] == f"/projects/{packet.project_id}"
    listed = api.ok("GET", f"/devices/{device}/ips")["ip_addresses"]
    assert listed == dev["ip_addresses"]
    assert api.ok("GET", f"/ips/{made[0]}")["assigned_to"]["href"] == f"/devices/{device}"
    bare = api.ok("GET", f"/devices/{packet.device_ids[0]}/ips")["ip_addresses"]
    assert [x["management"] for x in bare] == [True] * 3
    devices = api.ok("GET", f"/projects/{packet.project_id}/devices")["devices"]
    assert sorted(d["id"] for d in devices) == sorted(packet.device_ids)


# -- devices and answers as real ones are (tests/data/packet-api/) --------------------------

REAL = Path(__file__).resolve().parents[1] / "data" / "packet-api"


def real(name):
    return json.loads((REAL / name).read_text())


def kinds(addresses):
    return [(a["address_family"], a["cidr"], a["public"], a["management"]) for a in addresses]


def same_shape(ours, theirs, where):
    """Every field of the real object is in ours, with a value of the same JSON type (a
    real null stands for any type)."""
    missing = sorted(set(theirs) - set(ours))
    assert not missing, f"{where}: missing {missing}"
    for key, value in theirs.items():
        if value is not None:
            assert type(ours[key]) is type(value), (where, key, ours[key], value)


def test_a_device_lists_its_provisioning_addresses_first_as_a_real_one(api, packet):
    theirs = real("get_devices_e123s_ips.json")["ip_addresses"]
    device = packet.device_ids[0]
    res = api.reserve(packet.project_id, 2).json()
    elastic = api.ok("POST", f"/devices/{device}/ips", {"address": f"{res['network']}/32"},
                     status=201)
    answer = api.ok("GET", f"/devices/{device}/ips")
    assert set(answer) == set(real("get_devices_e123s_ips.json"))  # no meta, like the real one
    ours = answer["ip_addresses"]
    assert kinds(ours) == kinds(theirs) + [(4, 32, True, False)]
    assert ours == api.ok("GET", f"/devices/{device}")["ip_addresses"]
    for mine, real_one in zip(ours, theirs):
        same_shape(mine, real_one, f"{mine['address_family']}/{mine['cidr']}")
        net = ipaddress.ip_network(f"{mine['network']}/{mine['cidr']}")
        assert str(net.netmask) == mine["netmask"]
        assert mine["address"] == str(net.network_address + 1)  # as on Packet
        assert mine["gateway"] == mine["network"] and "parent_block" not in mine
        assert mine["assigned_to"] == {"href": f"/devices/{device}"}
        assert api.ok("GET", f"/ips/{mine['id']}") == mine
    public4, ipv6, private4 = (ipaddress.ip_network(f"{a['network']}/{a['cidr']}")
                               for a in ours[:3])
    assert public4.subnet_of(MANAGEMENT_POOL)  # public space no reservation is carved from
    assert private4.subnet_of(ipaddress.ip_network("10.0.0.0/8"))
    assert ipv6.subnet_of(ipaddress.ip_network("2001:db8::/32"))
    same_shape(ours[3], theirs[0], "elastic")  # an elastic one carries the same fields
    assert ours[3]["id"] == elastic["id"] and ours[3]["parent_block"]["href"] == res["href"]
    others = [api.ok("GET", f"/devices/{d}/ips")["ip_addresses"][0]["network"]
              for d in packet.device_ids]
    assert len(set(others)) == 3  # each device its own


def test_provisioning_addresses_are_never_available_assigned_or_removed(api, packet):
    d0, d1, _ = packet.device_ids
    mine = api.ok("GET", f"/devices/{d0}/ips")["ip_addresses"]
    kept = packet.admin.addresses(d0)
    assert [(a["id"], a["network"]) for a in kept] == [
        (a["id"], f"{a['network']}/{a['cidr']}") for a in mine]
    with pytest.raises(AdminError):
        packet.admin.addresses(str(uuid.uuid4()))
    for address in mine:
        assert api.call("DELETE", f"/ips/{address['id']}").status_code == 422
        assert api.call("GET", f"/ips/{address['id']}/available").status_code == 422
        moved = api.call("POST", f"/devices/{d1}/ips",
                         {"address": f"{address['network']}/{address['cidr']}"})
        assert moved.status_code == 422
    assert api.ok("GET", f"/devices/{d0}/ips")["ip_addresses"] == mine
    assert packet.state()["assignments"] == []


def test_reservations_are_never_carved_from_management_space(packet):
    emu = PacketEmulator(tokens=["t"], projects=[packet.project_id],
                         devices=[f"{d}@{packet.project_id}" for d in packet.device_ids])
    body = {"type": "public_ipv4", "quantity": 256, "facility": "ams1"}
    with pytest.raises(ApiError):
        while True:
            emu.model.reserve(packet.project_id, body)
    carved = [ipaddress.ip_network(r["network"]) for r in emu.model.reservations.values()]
    assert len(carved) == 3 + 512 - 2  # every /24 of the pools but 198.19.254-255
    management = [ipaddress.ip_network(a["network"]) for d in emu.model.devices.values()
                  for a in d["addresses"]]
    assert not any(c.overlaps(m) for c in carved for m in management if m.version == 4)


def test_project_list_holds_reservations_then_management_addresses(api, packet):
    res = api.reserve(packet.project_id, 4).json()
    listed = api.ok("GET", f"/projects/{packet.project_id}/ips")["ip_addresses"]
    assert listed[0]["id"] == res["id"] and len(listed) == 1 + 3 * 3
    assert all(x["management"] and "assigned_to" in x for x in listed[1:])
    for x in listed[1:]:
        same_shape(x, real("get_projects_438659f0_ips.json")["ip_addresses"][0], "listed")
    only = api.ok("GET", f"/projects/{packet.project_id}/ips", types="public_ipv6")
    assert kinds(only["ip_addresses"]) == [(6, 127, True, True)] * 3
    meta = real("get_projects_438659f0_devices.json")["meta"]
    assert set(meta) <= set(api.ok("GET", f"/projects/{packet.project_id}/ips")["meta"])


def test_management_addresses_survive_reset_and_restart(tmp_path, packet):
    before = [d["addresses"] for d in packet.state()["devices"]]
    packet.admin.reset()
    assert [d["addresses"] for d in packet.state()["devices"]] == before
    path = tmp_path / "state.json"
    token, project, device = "t-" + uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    PacketEmulator(tokens=[token], projects=[project], devices=[f"{device}@{project}"],
                   state_file=str(path)).start().stop()
    kept = json.loads(path.read_text())
    assert len(kept["devices"][0].pop("addresses")) == 3
    path.write_text(json.dumps(kept))  # a state file written before devices had addresses
    again = PacketEmulator(state_file=str(path)).start()
    try:
        listed = Api(again.url, token).ok("GET", f"/devices/{device}/ips")["ip_addresses"]
        assert kinds(listed) == [(4, 31, True, True), (6, 127, True, True),
                                 (4, 31, False, True)]
    finally:
        again.stop()
    resumed = json.loads(path.read_text())["devices"][0]["addresses"]
    assert [a["id"] for a in resumed] == [a["id"] for a in listed]


# -- auth, 404, pagination ------------------------------------------------------------------


def test_requests_without_a_valid_token_are_401(packet):
    path = f"/projects/{packet.project_id}/ips"
    for token in (None, "", "wrong", packet.token + "x"):
        response = Api(packet.url, token).call("GET", path)
        assert response.status_code == 401, token
        assert response.json()["errors"] and packet.token not in response.text
    added = "added-" + uuid.uuid4().hex
    assert Api(packet.url, added).call("GET", path).status_code == 401
    packet.admin.add_token(added)
    assert Api(packet.url, added).call("GET", path).status_code == 200
    assert packet.token not in json.dumps(packet.state()) and added not in json.dumps(
        packet.state())
    packet.admin.reset()
    assert Api(packet.url, added).call("GET", path).status_code == 401


def test_unknown_ids_and_paths_are_404(api):
    unknown = str(uuid.uuid4())
    for path in (f"/ips/{unknown}", f"/ips/{unknown}/available", f"/devices/{unknown}",
                 f"/devices/{unknown}/ips", f"/projects/{unknown}/ips",
                 f"/projects/{unknown}", "/ips/not-a-uuid", "/ips/../etc/passwd", "/nothing"):
        response = api.call("GET", path)
        assert response.status_code == 404, path
        assert response.json() == {"errors": ["Not found"]}
    assert api.call("DELETE", f"/ips/{unknown}").status_code == 404
    assert api.call("POST", f"/devices/{unknown}/ips", {"address": "192.0.2.1"}
                    ).status_code == 404
    assert api.reserve(unknown, 1).status_code == 404
    response = api.call("PUT", f"/ips/{unknown}")
    assert response.status_code == 405 and "DELETE" in response.headers["Allow"]


def test_bad_json_body_is_422(api, packet):
    response = api.session.post(f"{api.url}/projects/{packet.project_id}/ips", data=b"{nope",
                                headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 422 and "JSON" in errors(response)
    response = api.call("POST", f"/projects/{packet.project_id}/ips", [1, 2])
    assert response.status_code == 422 and "object" in errors(response)


def test_lists_are_paged_with_meta_and_next_links(api, packet):
    project = packet.admin.add_project()  # no devices, so no management addresses listed
    made = [api.reserve(project, 1).json()["id"] for _ in range(7)]
    first = api.ok("GET", f"/projects/{project}/ips", per_page=3)
    meta = first["meta"]
    assert [r["id"] for r in first["ip_addresses"]] == made[:3]
    assert meta["total"] == 7 and meta["current_page"] == 1 and meta["last_page"] == 3
    assert meta["previous"] is None and "page=3" in meta["last"]["href"]
    seen, href = [], f"/projects/{project}/ips?per_page=3"
    while href:
        page = api.ok("GET", href)
        seen += [r["id"] for r in page["ip_addresses"]]
        href = (page["meta"]["next"] or {}).get("href")
    assert seen == made
    default = api.ok("GET", f"/projects/{project}/ips")
    assert len(default["ip_addresses"]) == 7 and default["meta"]["next"] is None
    beyond = api.ok("GET", f"/projects/{project}/ips", page=9, per_page=3)
    assert beyond["ip_addresses"] == [] and beyond["meta"]["next"] is None
    for bad in ({"page": 0}, {"page": "x"}, {"per_page": 0}, {"per_page": 100000}):
        assert api.call("GET", f"/projects/{project}/ips", **bad).status_code == 422


def test_later_api_prefix_is_served(api, packet):
    res = api.reserve(packet.project_id, 1).json()
    assert api.ok("GET", f"/metal/v1/ips/{res['id']}")["id"] == res["id"]


# -- admin API ------------------------------------------------------------------------------


def test_admin_seeds_projects_and_devices(api, packet):
    project = str(uuid.uuid4())
    assert packet.admin.add_project(project) == project
    device = packet.admin.add_device(project, hostname="hv9")
    assert api.ok("GET", f"/devices/{device}")["hostname"] == "hv9"
    assert api.ok("GET", f"/projects/{project}")["id"] == project
    state = packet.state()
    assert {p["id"] for p in state["projects"]} == {packet.project_id, project}
    assert {d["id"]: d["project_id"] for d in state["devices"]}[device] == project
    with pytest.raises(AdminError) as err:
        packet.admin.add_device(project="nope")
    assert err.value.status == 422
    packet.admin.reset()
    state = packet.state()
    assert [p["id"] for p in state["projects"]] == [packet.project_id]
    assert sorted(d["id"] for d in state["devices"]) == sorted(packet.device_ids)


def test_admin_state_and_request_log(api, packet):
    res = api.reserve(packet.project_id, 4, customdata={"k": "v"}).json()
    ip = network_of(res)[0]
    a = api.ok("POST", f"/devices/{packet.device_ids[0]}/ips", {"address": f"{ip}/32"},
               status=201)
    api.call("GET", f"/ips/{res['id']}/available", cidr=32)
    state = packet.state()
    assert state["reservations"][0]["id"] == res["id"]
    assert state["reservations"][0]["assignment_ids"] == [a["id"]]
    assert state["reservations"][0]["customdata"] == {"k": "v"}
    assert state["assignments"] == [{"id": a["id"], "address": str(ip), "cidr": 32,
                                     "device_id": packet.device_ids[0],
                                     "reservation_id": res["id"],
                                     "created_at": a["created_at"]}]
    log = packet.requests()
    assert [(r["method"], r["status"]) for r in log] == [("POST", 201), ("POST", 201),
                                                         ("GET", 200)]
    assert log[2]["path"] == f"/ips/{res['id']}/available?cidr=32"
    assert log[0]["body"]["quantity"] == 4 and log[0]["outcome"] == "answered"
    packet.clear_requests()
    assert packet.requests() == []
    packet.admin.reset()
    assert packet.state()["reservations"] == [] and packet.state()["assignments"] == []


# -- faults -----------------------------------------------------------------------------------


def test_status_fault_with_retry_after_for_the_next_n_requests(api, packet):
    path = f"/projects/{packet.project_id}/ips"
    packet.fault(status=429, retry_after=3, count=2, method="GET", path="/projects/")
    assert api.call("POST", path, {"type": "public_ipv4", "quantity": 1, "facility": "ams1"}
                    ).status_code == 201  # other method: untouched
    for _ in range(2):
        response = api.call("GET", path)
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
        assert "injected" in errors(response)
    assert api.call("GET", path).status_code == 200
    assert packet.admin.faults() == []
    log = packet.requests()
    assert [r["fault"] for r in log] == [None, "429", "429", None]


def test_fault_with_custom_body_and_path_prefix(api, packet):
    res = api.reserve(packet.project_id, 1).json()
    packet.fault(status=503, body={"error": "maintenance"}, path="/ips/", count=1)
    assert api.call("GET", f"/projects/{packet.project_id}/ips").status_code == 200
    response = api.call("GET", f"/ips/{res['id']}")
    assert response.status_code == 503 and response.json() == {"error": "maintenance"}


def test_fault_applies_before_auth(packet):
    packet.fault(status=500, count=1)
    assert Api(packet.url, None).call("GET", "/projects").status_code == 500


def test_latency_delays_the_answer_but_not_the_change(api, packet):
    packet.fault(latency=0.6, count=1, method="POST")
    start = time.monotonic()
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(r=api.reserve(packet.project_id, 1)))
    thread.start()
    time.sleep(0.3)
    assert len(packet.state()["reservations"]) == 1  # made already, answer still pending
    thread.join()
    assert holder["r"].status_code == 201 and time.monotonic() - start >= 0.6


def test_drop_closes_the_connection_before_acting(api, packet):
    packet.fault(drop=True, count=1, method="POST")
    with pytest.raises(requests.ConnectionError):
        api.reserve(packet.project_id, 1)
    assert packet.state()["reservations"] == []
    assert packet.requests()[-1]["outcome"] == "dropped"
    assert api.reserve(packet.project_id, 1).status_code == 201


def test_drop_after_acts_then_loses_the_answer(api, packet):
    res = api.reserve(packet.project_id, 2).json()
    packet.fault(drop_after=True, count=1, method="DELETE")
    with pytest.raises(requests.ConnectionError):
        api.call("DELETE", f"/ips/{res['id']}")
    assert packet.state()["reservations"] == []
    assert packet.requests()[-1]["outcome"] == "dropped_after"


def test_rate_faults_hit_a_share_of_requests_until_cleared(api, packet):
    packet.fault(status=502, rate=0.5, seed=7, method="GET")
    codes = [api.call("GET", "/projects").status_code for _ in range(60)]
    assert 10 < codes.count(502) < 50 and codes.count(200) == 60 - codes.count(502)
    assert packet.admin.faults()[0]["hits"] == codes.count(502)
    packet.admin.clear_faults()
    assert {api.call("GET", "/projects").status_code for _ in range(10)} == {200}
    packet.fault(status=502, rate=1.0)
    assert {api.call("GET", "/projects").status_code for _ in range(5)} == {502}


@pytest.mark.parametrize("spec", [
    {"status": 99}, {"count": -1, "status": 500}, {"rate": 2, "status": 500},
    {"latency": -1}, {"status": 500, "drop": True}, {"retry_after": 1},
    {"path": "ips", "status": 500}, {"method": "GE T", "status": 500}, {},
])
def test_bad_fault_specs_are_refused(packet, spec):
    with pytest.raises(AdminError) as err:
        packet.admin._call("POST", "/faults", spec)
    assert err.value.status == 400
    assert packet.admin.faults() == []


# -- state file -------------------------------------------------------------------------------


def test_state_file_lets_a_restart_resume(tmp_path):
    path = tmp_path / "state.json"
    token, project, device = "t-" + uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    emu = PacketEmulator(tokens=[token], projects=[project], devices=[f"{device}@{project}"],
                         state_file=str(path)).start()
    try:
        api = Api(emu.url, token)
        res = api.reserve(project, 8, customdata={"m": 1}).json()
        a = api.ok("POST", f"/devices/{device}/ips",
                   {"address": f"{network_of(res)[5]}/32"}, status=201)
        extra = AdminClient(emu.url).add_project()
    finally:
        emu.stop()
    text = path.read_text()
    assert token not in text and oct(path.stat().st_mode & 0o777) == "0o600"
    # no temporary left over (the lock file stays: removing it would race a new emulator)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]
    again = PacketEmulator(state_file=str(path)).start()  # no token given: digests persisted
    try:
        assert again.resumed
        api = Api(again.url, token)
        got = api.ok("GET", f"/ips/{res['id']}")
        assert got["customdata"] == {"m": 1} and got["assignments"] == [
            {"href": f"/ips/{a['id']}"}]
        assert f"{network_of(res)[5]}/32" not in api.ok(
            "GET", f"/ips/{res['id']}/available")["available"]
        assert api.ok("GET", f"/projects/{extra}")["id"] == extra
        second = api.reserve(project, 8).json()
        assert not network_of(second).overlaps(network_of(res))
    finally:
        again.stop()


def test_two_emulators_never_share_a_state_file(tmp_path):
    path = tmp_path / "state.json"
    token, project = "t-" + uuid.uuid4().hex, str(uuid.uuid4())
    emu = PacketEmulator(tokens=[token], projects=[project], state_file=str(path)).start()
    try:
        Api(emu.url, token).reserve(project, 4)
        before = path.read_bytes()
        with pytest.raises(ValueError, match=f"state file {path} is in use by another "
                                             f"emulator \\(pid {os.getpid()}\\)"):
            PacketEmulator(tokens=["other"], projects=[str(uuid.uuid4())], state_file=str(path))
        assert path.read_bytes() == before  # neither read into nor written over
    finally:
        emu.stop()
    again = PacketEmulator(state_file=str(path)).start()  # stop released it
    try:
        assert again.resumed and len(again.model.reservations) == 1
    finally:
        again.stop()


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        PacketEmulator(state_file=str(path))


# -- command line -----------------------------------------------------------------------------


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_")}
    env.update(PYTHONPATH=str(LIB), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def test_cli_serves_and_logs_one_line_per_request_without_the_token(tmp_path):
    token, project, device = "cli-" + uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    proc = subprocess.Popen(
        [PYTHON, "-m", "packet_lab.packet", "--port", "0", "--project", project,
         "--device", f"{device}@{project}", "--per-page", "2",
         "--state-file", str(tmp_path / "s.json")],
        env=_env(PACKET_EMULATOR_TOKENS=f"other,{token}"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        api = Api(match.group(1), token)
        for _ in range(3):
            api.reserve(project, 1)
        page = api.ok("GET", f"/projects/{project}/ips")
        assert len(page["ip_addresses"]) == 2 and page["meta"]["next"]
        assert Api(match.group(1), "bad").call("GET", "/projects").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert token not in err
    lines = [x for x in err.splitlines() if re.search(r" (GET|POST) /", x)]
    assert len(lines) == 5, err
    assert " POST /projects/" in lines[0] and " 201 " in lines[0]
    assert lines[-1].split()[3:5] == ["/projects", "401"]


def test_cli_token_file_is_created_when_missing(tmp_path):
    path = tmp_path / "token"
    proc = subprocess.Popen([PYTHON, "-m", "packet_lab.packet", "--token-file",
                             str(path), "--quiet"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        token = path.read_text().strip()
        assert len(token) >= 32 and oct(path.stat().st_mode & 0o777) == "0o600"
        assert Api(url, token).call("GET", "/projects").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert token not in err and " GET " not in err


@pytest.mark.parametrize("args, text", [
    ([], "no API token"),
    (["--project", "nope"], "project must be a UUID"),
    (["--device", "x@y"], "UUID@PROJECT"),
])
def test_cli_bad_arguments_are_one_line_errors(args, text):
    env = _env(PACKET_EMULATOR_TOKENS="t") if args else _env()
    result = subprocess.run([PYTHON, "-m", "packet_lab.packet", *args], env=env,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and result.stdout == ""
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_port_in_use_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([PYTHON, "-m", "packet_lab.packet", "--port",
                                 str(port)], env=_env(PACKET_EMULATOR_TOKENS="t"),
                                capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "in use" in result.stderr


def test_cli_help_explains_tokens_and_the_admin_api():
    result = subprocess.run([PYTHON, "-m", "packet_lab.packet", "--help"], env=_env(),
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    for text in ("PACKET_EMULATOR_TOKENS", "--token-file", "--state-file", "/_emulator/faults",
                 "drop_after", "192.0.2.0/24", "listening on"):
        assert text in result.stdout, text


def test_retry_after_numbers_are_whole_seconds_and_strings_verbatim(api, packet):
    packet.fault(status=429, retry_after=0.2, count=1)
    assert api.call("GET", "/projects").headers["Retry-After"] == "1"
    packet.fault(status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", count=1)
    assert api.call("GET", "/projects").headers["Retry-After"].endswith("07:28:00 GMT")


def test_request_log_keeps_small_bodies_and_blanks_secret_parameters(api, packet):
    api.call("GET", "/projects", token="leak-me", page=1)
    api.call("POST", f"/projects/{packet.project_id}/ips",
             {"type": "public_ipv4", "quantity": 1, "facility": "ams1", "details": "x" * 9000})
    first, second = packet.requests()
    assert "leak-me" not in first["path"] and "token=***" in first["path"]
    assert second["status"] == 201 and second["body"] == "(not JSON or too big to log)"


def test_stop_hangs_up_on_keep_alive_clients():
    token, project = "k-" + uuid.uuid4().hex, str(uuid.uuid4())
    emu = PacketEmulator(tokens=[token], projects=[project]).start()
    api = Api(emu.url, token)
    assert api.call("GET", "/projects").status_code == 200  # connection now pooled
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        api.call("GET", "/projects")


def test_restart_on_the_same_port_with_the_state_file(tmp_path):
    path, token, project = tmp_path / "s.json", "r-" + uuid.uuid4().hex, str(uuid.uuid4())
    emu = PacketEmulator(tokens=[token], projects=[project], state_file=str(path)).start()
    port = emu.port
    res = Api(emu.url, token).reserve(project, 4).json()
    emu.stop()
    again = PacketEmulator(port=port, state_file=str(path)).start()
    try:
        assert again.url == emu.url
        assert Api(again.url, token).ok("GET", f"/ips/{res['id']}")["network"] == res["network"]
    finally:
        again.stop()


def _raw(url, request: bytes) -> bytes:
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


@pytest.mark.parametrize("headers, status", [
    ("Content-Length: 99999999\r\n", b" 413 "),
    ("Transfer-Encoding: chunked\r\n", b" 411 "),
    ("Content-Length: lots\r\n", b" 400 "),
])
def test_unreadable_bodies_are_refused_and_the_connection_closed(packet, headers, status):
    answer = _raw(packet.url, (f"POST /projects/{packet.project_id}/ips HTTP/1.1\r\n"
                               f"Host: x\r\nX-Auth-Token: {packet.token}\r\n{headers}\r\n"
                               ).encode())
    assert status in answer.split(b"\r\n", 1)[0], answer[:80]
    assert packet.state()["reservations"] == []
