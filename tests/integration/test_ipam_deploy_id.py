"""DEPLOY_ID is an ordinary AR attribute (``onevnet updatear`` changes it; oned protects IP):
before acting on the reservation it names, every action checks that it is the block the
range was registered with (IP = the block's network, SIZE = its size, in the range's
PACKET_PROJECT), else refuses with one line and changes nothing at Packet or on disk."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import template_vector
from packet_provider.packet import PacketClient


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


@pytest.fixture
def two_ranges(driver):
    """Range A (with a lease) and range B (with a lease routed to a device)."""
    a, b = driver.register(4), driver.register(4)
    a_ip = template_vector(driver.get(a).stdout, "ADDRESS")["IP"]
    b_ip = template_vector(driver.get(b).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(b_ip))
    driver.packet.clear_requests()
    return a, a_ip, b, b_ip


def snapshot(driver, a, b):
    return (sorted(r["id"] for r in driver.reservations()),
            sorted(x["address"] for x in driver.assignments()),
            driver.leases(a["DEPLOY_ID"]), driver.leases(b["DEPLOY_ID"]))


def refused(result, *words):
    assert not result.ok and result.rc == 2, result.stderr
    assert "Traceback" not in result.stderr and "\n" not in result.message
    for word in words:
        assert word in result.message, result.message


def other_ip(ar, taken):
    first = ipaddress.IPv4Address(ar["IP"])
    return next(str(first + i) for i in range(4) if str(first + i) != taken)


def test_a_deploy_id_pointed_at_another_block_is_refused_by_every_action(driver, two_ranges):
    a, a_ip, b, b_ip = two_ranges
    before = snapshot(driver, a, b)
    moved = dict(a, DEPLOY_ID=b["DEPLOY_ID"])  # onevnet updatear on range A
    for result in (driver.unregister(moved), driver.free(moved, a_ip), driver.get(moved),
                   driver.allocate(moved, other_ip(a, a_ip))):
        refused(result, b["DEPLOY_ID"], "updatear", "Nothing was changed")
    assert driver.api_writes() == []
    assert snapshot(driver, a, b) == before
    assert driver.unregister(a).ok and driver.unregister(b).ok  # the real ones still work


def test_a_size_that_is_not_the_blocks_is_refused(driver, two_ranges):
    a, a_ip, b, b_ip = two_ranges
    before = snapshot(driver, a, b)
    refused(driver.unregister(dict(b, SIZE="8")), "8 addresses")
    refused(driver.free(dict(b, SIZE="8"), b_ip), "updatear")
    assert driver.api_writes() == [] and snapshot(driver, a, b) == before


def test_a_block_of_another_project_is_refused(driver, two_ranges):
    a, a_ip, b, b_ip = two_ranges
    before = snapshot(driver, a, b)
    stranger = str(uuid.uuid4())
    refused(driver.unregister(dict(b, PACKET_PROJECT=stranger)), stranger, "PACKET_PROJECT")
    refused(driver.free(dict(b, PACKET_PROJECT=stranger), b_ip), stranger)
    assert driver.api_writes() == [] and snapshot(driver, a, b) == before


def test_the_registered_block_passes_the_check(driver, two_ranges):
    a, a_ip, b, b_ip = two_ranges
    assert driver.free(b, b_ip).ok and driver.assignments() == []
    assert driver.allocate(a, other_ip(a, a_ip)).ok
    assert driver.unregister(a).ok
    assert [r["id"] for r in driver.reservations()] == [b["DEPLOY_ID"]]
