"""The alias_sdnat VNM driver run by the real VMM driver: hosts are network namespaces with
sshd, ``onehost sync`` copies the installed remotes to them, and the real ``one_vmm_exec``
runs ``pre``/``post``/``clean`` over ssh as oneadmin with its own VM view, with nothing but
the stock OpenNebula node sudoers (ONE_NET). NAT is proven with TCP through the namespaces.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from fixtures import hostuser
from packet_lab.netlab import CLIENT_IP
from real_one.cloud import Cloud, private_vnet, public_vnet, wait_for
from real_one.conftest import FAKE_VM_MAD, SLOW_MIGRATE_FLAG
from real_one.hosts import SshLab, install_tools, management_ip

ACTIVE, RUNNING, DONE = 3, 3, 6
VM_IP = "10.0.0.5"


@pytest.fixture(scope="module")
def lab(cloud: Cloud, packet_side) -> Iterator[Dict[str, object]]:
    install_tools()
    workdir = cloud.location.parent / "ssh"
    # only the node sudoers OpenNebula 5.12 ships (ONE_NET): no iptables-save/-restore
    with hostuser.sudoers("real-one-stock", hostuser.stock_rule()), \
            SshLab(workdir, cloud.user, hypervisors=2, vm_ip=VM_IP) as net:
        hosts: Dict[int, int] = {}
        devices: Dict[int, str] = {}
        for index in (1, 2):
            device = packet_side.admin.add_device(packet_side.project,
                                                  hostname=f"hv{index}")
            out = cloud.cli("onehost", "create", management_ip(index), "-i", "dummy",
                            "-v", FAKE_VM_MAD)
            host_id = int(re.search(r"ID:\s*(\d+)", out).group(1))
            cloud.cli("onehost", "update", str(host_id), "--append", cloud.template_file(
                f"hv{index}", f'PROVISION = [ DEPLOY_ID = "{device}" ]\n'))
            hosts[index], devices[index] = host_id, device
        wait_for("the ssh hosts monitored", lambda: all(
            cloud.xml("host", h).findtext("STATE") == "2" for h in hosts.values()))
        synced = cloud.run("onehost", "sync", "--force",
                           ",".join(str(h) for h in hosts.values()), timeout=180)
        assert synced.returncode == 0, synced.stderr
        yield {"net": net, "hosts": hosts, "devices": devices}


def route_like_packet(lab, packet_side, ips: List[str]) -> None:
    """Point the client's routes for ``ips`` at the hypervisor Packet routes them to."""
    placed = packet_side.placement()
    for ip in ips:
        index = next(i for i, d in lab["devices"].items() if placed.get(ip) == d)
        lab["net"].route_public(ip, index)


def wait_routed(cloud: Cloud, packet_side, lab, vm_id: int, index: int) -> Dict[int, str]:
    device = lab["devices"][index]

    def probe():
        ips = set(cloud.aliases(vm_id).values())
        placed = packet_side.placement()
        return ips if all(placed.get(ip) == device for ip in ips) else None

    wait_for(f"aliases of VM {vm_id} routed to hv{index}", probe, timeout=60)
    return cloud.aliases(vm_id)


def vm_chains(lab, index: int, vm_id: int) -> List[str]:
    return [r for r in lab["net"].nat_rules(index) if f"ALIAS_SDNAT_{vm_id}_" in r]


def nic_ids(cloud: Cloud, vm_id: int) -> List[int]:
    return sorted(int(n.findtext("NIC_ID")) for n in cloud.xml("vm", vm_id).findall(
        "TEMPLATE/NIC"))


def vnm_lines(cloud: Cloud, vm_id: int) -> List[str]:
    return [line for line in cloud.vm_log(vm_id).splitlines() if "alias_sdnat" in line]


def test_nat_through_the_real_vmm_driver(cloud: Cloud, packet_side, lab) -> None:
    net = lab["net"]
    lan = cloud.create("vnet", private_vnet("lan", VM_IP, 1))
    pub = cloud.create("vnet", public_vnet("pub-nat", packet_side.project, 4))
    alias = f'NIC_ALIAS = [ NETWORK_ID = "{pub}", PARENT = "NIC0", EXTERNAL = "YES" ]\n'
    vm = cloud.deploy_vm(f'NAME = "nat"\nCPU = "0.1"\nMEMORY = "32"\n'
                         f'NIC = [ NETWORK_ID = "{lan}" ]\n{alias}', lab["hosts"][1])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    first = wait_routed(cloud, packet_side, lab, vm, 1)
    ip = next(iter(first.values()))
    route_like_packet(lab, packet_side, [ip])
    assert net.connect("client", ip) == CLIENT_IP, "DNAT: the VM answers on its public IP"
    assert net.connect_from_vm() == ip, "SNAT: the VM's connections leave with its alias"
    assert vm_chains(lab, 1, vm) and not vm_chains(lab, 2, vm)
    log = "\n".join(vnm_lines(cloud, vm))
    assert re.search(rf"alias_sdnat post vm={vm}: aliases 0 -> 1", log), cloud.vm_log(vm)

    # hot attach of a second external alias: pre and post on the host
    cloud.cli("onevm", "nic-attach", str(vm), "--file", cloud.template_file("nat-alias", alias))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_for("the second alias", lambda: len(cloud.aliases(vm)) == 2)
    both = wait_routed(cloud, packet_side, lab, vm, 1)
    second_nic = max(both)
    second = both[second_nic]
    route_like_packet(lab, packet_side, [second])
    assert net.connect("client", second) == CLIENT_IP
    assert net.connect("client", ip) == CLIENT_IP

    # hot detach: clean on the host; the detached alias no longer answers, the other does
    cloud.cli("onevm", "nic-detach", str(vm), str(second_nic))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_for("the detach", lambda: second_nic not in cloud.aliases(vm))
    net.route_public(second, 1)  # even if Packet still routed it here
    assert net.connect("client", second) is None
    assert net.connect("client", ip) == CLIENT_IP
    assert not [r for r in vm_chains(lab, 1, vm) if f"{second}/32" in r]

    # a plain NIC hot attached then detached: clean (for every driver of the VM) must leave
    # the alias of NIC0 translated
    lan2 = cloud.create("vnet", private_vnet("lan2", "10.0.7.5", 1, bridge="br1"))
    cloud.cli("onevm", "nic-attach", str(vm), "--network", str(lan2))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    plain = wait_for("the plain NIC", lambda: max(nic_ids(cloud, vm)) if len(
        nic_ids(cloud, vm)) == 2 else None)
    cloud.cli("onevm", "nic-detach", str(vm), str(plain))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_for("the plain NIC detached", lambda: nic_ids(cloud, vm) == [0])
    assert net.connect("client", ip) == CLIENT_IP, "a plain NIC detach kept the alias's NAT"
    assert [r for r in vm_chains(lab, 1, vm) if f"{ip}/32" in r]

    # live migration: clean on the source, post on the destination
    cloud.cli("onevm", "migrate", "--live", str(vm), str(lab["hosts"][2]))
    wait_for("live migration", lambda: cloud.vm_host(vm) == lab["hosts"][2]
             and cloud.vm_state(vm) == (ACTIVE, RUNNING), timeout=90)
    net.move_vm(2)
    wait_routed(cloud, packet_side, lab, vm, 2)
    route_like_packet(lab, packet_side, [ip])
    assert vm_chains(lab, 2, vm) and not vm_chains(lab, 1, vm), "rules on the new host only"
    assert net.connect("client", ip) == CLIENT_IP
    assert net.connect_from_vm() == ip

    # terminate: clean removes the rules; the address is unrouted
    cloud.cli("onevm", "terminate", "--hard", str(vm))
    cloud.wait_vm(vm, DONE)
    assert not vm_chains(lab, 2, vm)
    wait_for("termination unroutes", lambda: ip not in packet_side.placement())
    errors = [line for line in vnm_lines(cloud, vm) if "[E]" in line or "ERROR" in line]
    assert not errors, cloud.vm_log(vm)
    for vnet in (pub, lan, lan2):
        cloud.cli("onevnet", "delete", str(vnet))


def test_remotes_synced_as_installed(cloud: Cloud, lab) -> None:
    """onehost sync put the installed driver where one_vmm_exec runs it on the hosts."""
    synced = Path("/var/tmp/one/vnm/alias_sdnat/post")
    installed = cloud.location / "var" / "remotes" / "vnm" / "alias_sdnat" / "post"
    assert synced.exists() and synced.resolve().read_bytes() == installed.resolve().read_bytes()


def test_a_hook_run_during_a_live_migration_moves_nothing(cloud: Cloud, packet_side, lab) -> None:
    """The live migration is held in MIGRATE (the fake hypervisor's migrate waits on a flag)
    while the RUNNING hook runs again (onehook retry): oned's last history record already
    names the destination, but the VM still runs on the source, so nothing moves until it
    runs there."""
    lan = cloud.create("vnet", private_vnet("lan-mig", "10.0.9.5", 1))
    pub = cloud.create("vnet", public_vnet("pub-mig", packet_side.project, 1))
    vm = cloud.deploy_vm(f'NAME = "mig"\nCPU = "0.1"\nMEMORY = "32"\n'
                         f'NIC = [ NETWORK_ID = "{lan}" ]\n'
                         f'NIC_ALIAS = [ NETWORK_ID = "{pub}", PARENT = "NIC0", '
                         'EXTERNAL = "YES" ]\n', lab["hosts"][1])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    (ip,) = wait_routed(cloud, packet_side, lab, vm, 1).values()
    ran = wait_for("the RUNNING hook's run", lambda: next(
        (r for r in cloud.hook_records() if r["vm"] == vm and r["hook"] == "alias_ip_running"
         and r["code"] == 0), None))
    Path(SLOW_MIGRATE_FLAG).touch()
    try:
        cloud.cli("onevm", "migrate", "--live", str(vm), str(lab["hosts"][2]))
        wait_for("the VM in MIGRATE", lambda: cloud.vm_state(vm) == (ACTIVE, 4))
        assert cloud.vm_host(vm) == lab["hosts"][2], "oned already names the destination"
        cloud.cli("onehook", "retry", str(ran["hook_id"]), str(ran["execution"]))
        retried = wait_for("the retried run", lambda: next(
            (r for r in cloud.hook_records() if r["vm"] == vm and r["retry"]), None))
        assert cloud.vm_state(vm) == (ACTIVE, 4), "still migrating when the hook ran"
        assert packet_side.placement().get(ip) == lab["devices"][1], retried
    finally:
        Path(SLOW_MIGRATE_FLAG).unlink(missing_ok=True)
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_routed(cloud, packet_side, lab, vm, 2)
    cloud.cli("onevm", "terminate", "--hard", str(vm))
    cloud.wait_vm(vm, DONE)
    wait_for("termination unroutes", lambda: ip not in packet_side.placement())
    for vnet in (pub, lan):
        cloud.cli("onevnet", "delete", str(vnet))
