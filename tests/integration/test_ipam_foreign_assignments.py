"""The IPAM driver's free_address and unregister_address_range read a block's assignments:
an entry there that is not an elastic IPv4 /32 (an IPv6 or a management address, as real
answers have them, tests/data/packet-api/) is skipped, not parsed as IPv4 and not an error."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import template_vector
from packet_provider.packet import PacketClient

DATA = Path(__file__).resolve().parents[1] / "data" / "packet-api"
IPV6_ID = "1c3a7d2f-9e4b-4a6f-8b8c-2d3e4f5a6b7c"
MANAGEMENT_ID = "0b2f6c1e-8d3a-4f5e-9a7b-1c2d3e4f5a6b"


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


def with_foreign_entries(driver, ar):
    """Make the block's answer list two foreign assignments besides its own, each answered
    at its /ips/{id} with a real answer (an IPv6 /127, a management IPv4 /31)."""
    real = json.loads((DATA / "get_devices_e123s_ips.json").read_text())["ip_addresses"]
    packet = driver.packet
    with PacketClient(packet.url, packet.token) as client:
        block = client._call("GET", f"/ips/{ar['DEPLOY_ID']}")
    block["assignments"] += [{"href": f"/ips/{IPV6_ID}"}, {"href": f"/ips/{MANAGEMENT_ID}"}]
    for path, body in ((f"/ips/{ar['DEPLOY_ID']}", block),
                       (f"/ips/{IPV6_ID}", dict(real[1], id=IPV6_ID)),
                       (f"/ips/{MANAGEMENT_ID}", dict(real[0], id=MANAGEMENT_ID))):
        packet.fault(status=200, body=body, method="GET", path=path, count=100)


def assigned(driver, ar):
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(ip))
    return ip


def test_free_address_skips_foreign_entries_of_the_block(driver):
    ar = driver.register(4)
    ip = assigned(driver, ar)
    with_foreign_entries(driver, ar)
    result = driver.free(ar, ip)
    assert result.ok, result.message
    assert driver.assignments() == [] and driver.leases(ar["DEPLOY_ID"]) == []


def test_unregister_skips_foreign_entries_of_the_block(driver):
    ar = driver.register(4)
    assigned(driver, ar)
    with_foreign_entries(driver, ar)
    result = driver.unregister(ar)
    assert result.ok, result.message
    assert driver.assignments() == [] and driver.reservations() == []
    deletes = [r["path"] for r in driver.api_writes() if r["method"] == "DELETE"]
    assert not any(IPV6_ID in p or MANAGEMENT_ID in p for p in deletes)
