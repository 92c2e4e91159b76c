"""Issue 16: oned sends USED_LEASES (how many addresses of the range it has leased) with
get_address and allocate_address. A lease directory holding fewer leases of that range (a new
HA leader, a lost or restored state directory) would let an address oned has leased be handed
out again: the driver refuses with one line naming ``packet-provider reconcile --leases``,
before any API call, and hands out addresses again once the leases are back."""

from __future__ import annotations

import shutil

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.objects import OnedState
from packet_lab.oned.one_ipam import template_vector

COMMAND = "packet-provider reconcile --leases"


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


class Oned:
    """oned's side of one range, as the oned emulator keeps it: its leases, and the AR it
    sends the driver (stored attributes, then MAC_END, IP_END, USED_LEASES)."""

    def __init__(self, ar):
        self.state = OnedState()
        self.vnet = self.state.add_vnet("public")
        stored = {k: v for k, v in ar.items() if k != "AR_ID"}
        self.ar_id = self.state.add_ar(self.vnet, stored)
        self.next_vm = 100

    def ar(self):
        return dict(self.state.vnet(self.vnet).ar(self.ar_id).ipam_attrs())

    def lease(self, ip):
        self.state.take_lease(self.vnet, self.ar_id, self.next_vm, ip)
        self.next_vm += 1


def get(driver, oned):
    """get_address as oned sends it; the address is leased in oned when handed out."""
    result = driver.get(oned.ar())
    if result.ok:
        oned.lease(template_vector(result.stdout, "ADDRESS")["IP"])
    return result


def test_a_lease_directory_missing_leases_oned_has_refuses_to_hand_out(driver):
    oned = Oned(driver.register(8))
    deploy_id = oned.ar()["DEPLOY_ID"]
    first, second = get(driver, oned), get(driver, oned)
    assert first.ok and second.ok
    assert oned.ar()["USED_LEASES"] == "2"
    shutil.rmtree(driver.state_dir / "packet" / deploy_id)  # the new leader's empty directory
    driver.packet.clear_requests()

    refused = get(driver, oned)
    assert not refused.ok and refused.rc != 0
    assert COMMAND in refused.message and "\n" not in refused.message
    assert "0 lease(s)" in refused.message and "2 in use" in refused.message
    ip = template_vector(second.stdout, "ADDRESS")["IP"]
    allocated = driver.allocate(oned.ar(), ip)  # the address oned leased: never given twice
    assert not allocated.ok and COMMAND in allocated.message
    assert driver.api_calls() == []  # refused before asking Packet anything
    assert driver.leases(deploy_id) == []
    assert "result=error" in driver.log_lines()[-1] and COMMAND in driver.log_lines()[-1]

    # once the leases are rebuilt (what reconcile --leases does), addresses are handed out
    rebuilt = driver.state_dir / "packet" / deploy_id
    rebuilt.mkdir()
    for lease in (first, second):
        (rebuilt / template_vector(lease.stdout, "ADDRESS")["IP"]).write_text("claimed\n")
    third = get(driver, oned)
    assert third.ok, third.message
    assert template_vector(third.stdout, "ADDRESS")["IP"] not in {
        template_vector(r.stdout, "ADDRESS")["IP"] for r in (first, second)}


def test_as_many_leases_as_oned_has_is_fine_and_free_is_not_checked(driver):
    oned = Oned(driver.register(4))
    got = get(driver, oned)
    assert got.ok and oned.ar()["USED_LEASES"] == "1"
    again = get(driver, oned)
    assert again.ok, again.message
    shutil.rmtree(driver.state_dir / "packet" / oned.ar()["DEPLOY_ID"])
    freed = driver.free(oned.ar(), template_vector(got.stdout, "ADDRESS")["IP"])
    assert freed.ok, freed.message  # a free never hands anything out


def test_an_unreadable_used_leases_is_a_clean_failure(driver):
    ar = dict(driver.register(4), USED_LEASES="many")
    result = driver.get(ar)
    assert not result.ok and "USED_LEASES" in result.message and "\n" not in result.message
