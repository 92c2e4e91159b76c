"""The alias_ip hook under the real OpenNebula 5.12.13 (see conftest.py), where the oned
emulator could be wrong: networks made by ``onevnet reserve``."""

from __future__ import annotations

import re

from real_one.cloud import Cloud, private_vnet, public_vnet, wait_for
from real_one.test_lifecycle import expect_routed

ACTIVE, RUNNING, DONE = 3, 3, 6


def test_aliases_of_a_reservation_network_are_routed_then_unrouted(cloud: Cloud,
                                                                   packet_side) -> None:
    priv = cloud.create("vnet", private_vnet("priv-resv", "10.2.0.10", 20))
    pub = cloud.create("vnet", public_vnet("pub-resv", packet_side.project, 8))
    block = cloud.ar(pub)
    reservation = block.findtext("DEPLOY_ID")
    said = cloud.cli("onevnet", "reserve", str(pub), "--name", "resv", "--size", "1")
    resv = int(re.search(r"Reservation VNET ID:\s*(\d+)", said).group(1))

    # what oned makes of it: the packet AR copied without IPAM_MAD, PARENT_NETWORK_AR_ID
    # added, IP and SIZE those of the reserved part; the parent in PARENT_NETWORK_ID
    copy = cloud.ar(resv)
    assert cloud.xml("vnet", resv).findtext("PARENT_NETWORK_ID") == str(pub)
    assert copy.find("IPAM_MAD") is None and copy.findtext("PARENT_NETWORK_AR_ID") == "0"
    assert copy.findtext("DEPLOY_ID") == reservation and copy.findtext("SIZE") == "1"
    assert sorted(c.tag for c in copy) == sorted(
        [c.tag for c in block if c.tag not in ("IPAM_MAD", "LEASES")]
        + ["PARENT_NETWORK_AR_ID", "LEASES"])
    leases = cloud.ar(pub).findall("LEASES/LEASE")  # the parent's: held by the reservation
    assert [(lease.findtext("IP"), lease.findtext("VNET")) for lease in leases] == [
        (copy.findtext("IP"), str(resv))]

    vm = cloud.deploy_vm(
        f'NAME = "on-resv"\nCPU = "0.1"\nMEMORY = "32"\nNIC = [ NETWORK_ID = "{priv}" ]\n'
        f'NIC_ALIAS = [ NETWORK_ID = "{resv}", PARENT = "NIC0", EXTERNAL = "YES" ]\n',
        cloud.hosts[0])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    (ip,) = expect_routed(cloud, packet_side, vm, "deploy on a reservation").values()
    assert ip == copy.findtext("IP")

    cloud.cli("onevm", "migrate", "--live", str(vm), str(cloud.hosts[1]))
    wait_for("live migration", lambda: cloud.vm_host(vm) == cloud.hosts[1]
             and cloud.vm_state(vm) == (ACTIVE, RUNNING))
    expect_routed(cloud, packet_side, vm, "live migration on a reservation")

    cloud.cli("onevm", "terminate", str(vm))
    cloud.wait_vm(vm, DONE)
    wait_for("termination unroutes", lambda: ip not in packet_side.placement())
    runs = [r for r in cloud.hook_records() if r["vm"] == vm]
    assert runs and all(r["code"] == 0 for r in runs), runs

    # the reservation goes back to its parent, the range is released
    cloud.cli("onevnet", "delete", str(resv))
    wait_for("the reserved address back in the parent", lambda: not cloud.leased_ips(pub))
    cloud.cli("onevnet", "delete", str(pub))
    cloud.cli("onevnet", "delete", str(priv))
    wait_for("the range's block released",
             lambda: reservation not in {r["id"] for r in packet_side.reservations()})
    assert not packet_side.placement()
    assert reservation not in cloud.lease_files()
