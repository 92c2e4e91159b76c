"""free_address while Packet is down: oned never retries a free and keeps the lease for ever
when it fails, so the free succeeds once the lease is dropped and the unassignment is
journalled durably (``<ipam_state_dir>/packet/.unassign/<reservation>/<IP>``, no token);
later actions make the unassignment, and no address is handed out while it is owed."""

from __future__ import annotations

import ipaddress
import json

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import template_vector
from packet_provider.packet import PacketClient


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


def routed(driver):
    return {str(ipaddress.ip_interface(a["address"]).ip): a["device_id"]
            for a in driver.assignments()}


def owed(driver, deploy_id):
    folder = driver.state_dir / "packet" / ".unassign" / deploy_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def leased_and_routed(driver, size=4):
    """A range with its lowest address leased and routed to device 0."""
    ar = driver.register(size)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(ip))
    return ar, ip


def free_during_outage(driver, ar, ip, **fault):
    driver.packet.fault(count=1000, **(fault or {"status": 503}))
    result = driver.free(ar, ip)
    driver.packet.admin.clear_faults()
    assert result.ok and result.stdout == "", result.message
    assert driver.leases(ar["DEPLOY_ID"]) == []  # oned's lease goes, so does ours
    assert owed(driver, ar["DEPLOY_ID"]) == [ip]
    assert routed(driver) == {ip: driver.packet.device_ids[0]}  # Packet could not be told
    line = driver.log_lines()[-1]
    assert "result=ok" in line and "deferred" in line
    return result


@pytest.mark.parametrize("fault", [{"status": 503}, {"drop": True},
                                   {"status": 429, "retry_after": 0}])
def test_free_during_an_outage_succeeds_and_the_next_action_unassigns(driver, fault):
    ar, ip = leased_and_routed(driver)
    free_during_outage(driver, ar, ip, **fault)
    entry = driver.state_dir / "packet" / ".unassign" / ar["DEPLOY_ID"] / ip
    data = json.loads(entry.read_text())
    assert data["reservation"] == ar["DEPLOY_ID"] and data["ip"] == ip
    assert driver.packet.token not in entry.read_text()
    got = driver.get(ar)  # Packet is back: this action makes the owed unassignment first
    assert got.ok, got.message
    assert routed(driver) == {} and owed(driver, ar["DEPLOY_ID"]) == []
    assert not (driver.state_dir / "packet" / ".unassign" / ar["DEPLOY_ID"]).exists()


def test_an_action_on_another_range_makes_the_owed_unassignment(driver):
    ar, ip = leased_and_routed(driver)
    other = driver.register(2)
    free_during_outage(driver, ar, ip)
    assert driver.get(other).ok
    assert ip not in routed(driver) and owed(driver, ar["DEPLOY_ID"]) == []
    assert any("action=unassign" in line and "result=done" in line
               for line in driver.log_lines())


def test_an_owed_address_is_never_handed_out_still_routed(driver):
    ar, ip = leased_and_routed(driver)
    free_during_outage(driver, ar, ip)
    # Packet answers again, but refuses to unassign for now
    driver.packet.fault(method="DELETE", path="/ips/", status=503, count=1000)
    refused = driver.allocate(ar, ip)
    assert not refused.ok and "\n" not in refused.message
    assert driver.leases(ar["DEPLOY_ID"]) == [] and owed(driver, ar["DEPLOY_ID"]) == [ip]
    got = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    assert got != ip  # get_address skips it
    assert routed(driver) == {ip: driver.packet.device_ids[0]}
    driver.packet.admin.clear_faults()
    again = driver.allocate(ar, ip)  # unassigned first, then handed out
    assert again.ok, again.message
    assert ip not in routed(driver) and owed(driver, ar["DEPLOY_ID"]) == []
    assert sorted(driver.leases(ar["DEPLOY_ID"])) == sorted([ip, got])


def test_a_refusal_is_not_deferred(driver):
    ar, ip = leased_and_routed(driver)
    driver.packet.fault(method="DELETE", path="/ips/", status=422, count=1)
    result = driver.free(ar, ip)
    assert not result.ok and "422" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == [ip] and owed(driver, ar["DEPLOY_ID"]) == []


def test_unregister_drops_what_is_owed_with_the_block(driver):
    ar, ip = leased_and_routed(driver)
    free_during_outage(driver, ar, ip)
    driver.packet.fault(method="DELETE", path="/ips/", status=503, count=2)  # the next
    assert driver.get(driver.register(2)).ok  # action cannot make it
    driver.packet.admin.clear_faults()
    result = driver.unregister(ar)
    assert result.ok, result.message
    assert ip not in routed(driver) and owed(driver, ar["DEPLOY_ID"]) == []
    assert ar["DEPLOY_ID"] not in [r["id"] for r in driver.reservations()]


def test_an_owed_unassignment_never_removes_the_addresses_next_use(driver):
    ar, ip = leased_and_routed(driver)
    free_during_outage(driver, ar, ip)
    with PacketClient(driver.packet.url, driver.packet.token) as client:  # the DONE hook
        client.unassign(client.find_assignment(ar["DEPLOY_ID"], ipaddress.IPv4Address(ip)).id)
    # the recovery before the action fails; the action itself settles what it hands out
    driver.packet.fault(method="GET", path=f"/ips/{ar['DEPLOY_ID']}", status=503, count=1)
    got = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    assert got == ip and owed(driver, ar["DEPLOY_ID"]) == []
    with PacketClient(driver.packet.url, driver.packet.token) as client:  # its new VM's hook
        client.assign(driver.packet.device_ids[1], ipaddress.IPv4Address(ip))
    assert driver.get(driver.register(2)).ok and driver.get(ar).ok  # later actions
    assert routed(driver)[ip] == driver.packet.device_ids[1]
