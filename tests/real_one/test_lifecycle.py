"""The whole life cycle of alias IPs through the real OpenNebula CLI: real oned, real
one_ipam running the installed IPAM driver, the real hook manager running the installed hook,
the Packet emulator as the API. After each step: oned's view, the API's routing, the lease
files, the hook executions and oned.log agree."""

from __future__ import annotations

import ipaddress
from typing import Dict, Optional

import pytest

from real_one.cloud import (
    CliError,
    Cloud,
    base64_texts,
    private_vnet,
    public_vnet,
    wait_for,
)

ACTIVE, POWEROFF, UNDEPLOYED, DONE = 3, 8, 9, 6
RUNNING = 3


@pytest.fixture(scope="module")
def nets(cloud: Cloud, packet_side) -> Dict[str, int]:
    priv = cloud.create("vnet", private_vnet("priv", "10.0.0.10", 100))
    pub = cloud.create("vnet", public_vnet("pub", packet_side.project, 8))
    return {"priv": priv, "pub": pub}


def vm_template(name: str, nets: Dict[str, int], fixed_ip: Optional[str] = None) -> str:
    alias = f'NIC_ALIAS = [ NETWORK_ID = "{nets["pub"]}", PARENT = "NIC0", EXTERNAL = "YES"'
    text = (f'NAME = "{name}"\nCPU = "0.1"\nMEMORY = "32"\n'
            f'NIC = [ NETWORK_ID = "{nets["priv"]}" ]\n{alias} ]\n')
    if fixed_ip:
        text += f'{alias}, IP = "{fixed_ip}" ]\n'
    return text


def device_of(cloud: Cloud, packet_side, host_id: int) -> str:
    return packet_side.devices[cloud.hosts.index(host_id)]


def expect_routed(cloud: Cloud, packet_side, vm_id: int, what: str) -> Dict[int, str]:
    """Wait until every alias of the VM is routed to its host's device, and only those."""
    host = cloud.vm_host(vm_id)
    device = device_of(cloud, packet_side, host)

    def probe():
        ips = set(cloud.aliases(vm_id).values())
        placed = packet_side.placement()
        mine = {ip for ip, dev in placed.items() if ip in ips}
        return ips if mine == ips and all(placed[ip] == device for ip in ips) else None

    wait_for(f"{what}: aliases of VM {vm_id} on device of host {host}", probe, timeout=60)
    return cloud.aliases(vm_id)


def expect_no_failed_hooks(cloud: Cloud, vm_id: int) -> None:
    """No hook run for this VM failed (other tests provoke failures on purpose)."""
    failed = [r for r in cloud.hook_records() if r["code"] != 0 and r["vm"] == vm_id]
    assert not failed, failed


def reservation_of(cloud: Cloud, vnet_id: int) -> str:
    return cloud.ar(vnet_id).findtext("DEPLOY_ID")


def test_install_kept_ruby_driver_aside(cloud: Cloud) -> None:
    backup = cloud.location / "var" / "packet_provider" / "backup" / str(
        cloud.location).lstrip("/") / "var" / "remotes" / "ipam" / "packet"
    for action in ("register_address_range", "get_address", "free_address"):
        kept = backup / action
        assert kept.is_file(), f"5.12's Ruby {action} was not kept aside"
        assert "ruby" in kept.read_text().splitlines()[0]
    installed = cloud.location / "var" / "remotes" / "ipam" / "packet" / "get_address"
    assert "python" in installed.read_text().splitlines()[0]


def test_oned_conf_changes_as_printed_are_enough(cloud: Cloud) -> None:
    assert any(line.startswith("VN_MAD_CONF") for line in cloud.applied_conf)
    # a vnet on alias_sdnat is accepted only with that change (checked by the fixture's use)
    assert "IPAM_MAD already enables packet" in cloud.install_outputs[0]


def test_hooks_twice_second_run_changes_nothing(cloud: Cloud) -> None:
    first, second = cloud.hooks_first, cloud.hooks_second
    assert first.count(": created (id") == 3, first
    assert second.count("unchanged") == 3, second
    assert "updated" not in second
    names = {h.findtext("NAME"): h for h in _hooks(cloud)}
    assert set(names) == {"alias_ip_running", "alias_ip_hotplug", "alias_ip_done"}
    for hook in names.values():
        template = hook.find("TEMPLATE")
        assert template.find("ON") is None, "oned drops ON; nothing may put it back"
    assert names["alias_ip_done"].findtext("TEMPLATE/STATE") == "DONE"
    assert names["alias_ip_hotplug"].findtext("TEMPLATE/LCM_STATE") == "HOTPLUG_NIC"


def _hooks(cloud: Cloud):
    import xml.etree.ElementTree as ET  # noqa: S405

    return ET.fromstring(cloud.cli("onehook", "list", "-x")).findall("HOOK")  # noqa: S314


def test_register_failure_reads_as_text_once_decoded(cloud: Cloud, packet_side) -> None:
    """oned 5.12 shows an IPAM failure base64-encoded: decoded, it says what failed."""
    bad = public_vnet("bad-size", packet_side.project, 3)
    with pytest.raises(CliError) as err:
        cloud.create("vnet", bad)
    said = err.value.proc.stdout + err.value.proc.stderr
    decoded = base64_texts(said)
    assert any("power of two" in text.lower() or "size" in text.lower() for text in decoded), \
        (said, decoded)
    assert not packet_side.reservations() or all(
        r.get("details", "").find("bad-size") < 0 for r in packet_side.reservations())


def test_life_cycle(cloud: Cloud, packet_side, nets: Dict[str, int]) -> None:
    log_start = len(cloud.oned_log())
    pub, hosts = nets["pub"], cloud.hosts
    block = cloud.ar(pub)
    first = ipaddress.IPv4Address(block.findtext("IP"))
    reservation = block.findtext("DEPLOY_ID")
    assert reservation and block.findtext("IPAM_MAD") == "packet"
    assert block.findtext("PACKET_TOKEN") in (None, ""), "the token stays in the config"
    fixed = str(first + 5)

    # deploy: one alias by get_address, one by allocate_address
    vm = cloud.deploy_vm(vm_template("lc", nets, fixed), hosts[0])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    aliases = expect_routed(cloud, packet_side, vm, "deploy")
    assert fixed in aliases.values() and len(aliases) == 2
    assert cloud.lease_files() == {reservation: sorted(aliases.values())}
    assert set(cloud.leased_ips(pub)) == set(aliases.values())

    # hot attach of an external alias, then detach it
    cloud.cli("onevm", "nic-attach", str(vm), "--file", cloud.template_file(
        "alias", f'NIC_ALIAS = [ NETWORK_ID = "{pub}", PARENT = "NIC0", EXTERNAL = "YES" ]\n'))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_for("the attached alias", lambda: len(cloud.aliases(vm)) == 3)
    aliases = expect_routed(cloud, packet_side, vm, "alias attach")
    new_nic = max(aliases)
    detached_ip = aliases[new_nic]
    cloud.cli("onevm", "nic-detach", str(vm), str(new_nic))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    wait_for("the detached alias unrouted", lambda: detached_ip not in packet_side.placement())
    aliases = expect_routed(cloud, packet_side, vm, "alias detach")
    assert detached_ip not in cloud.lease_files()[reservation]
    assert detached_ip not in cloud.leased_ips(pub)

    # live migration to the other host, cold migration back
    cloud.cli("onevm", "migrate", "--live", str(vm), str(hosts[1]))
    wait_for("live migration", lambda: cloud.vm_host(vm) == hosts[1]
             and cloud.vm_state(vm) == (ACTIVE, RUNNING))
    expect_routed(cloud, packet_side, vm, "live migration")
    cloud.cli("onevm", "migrate", str(vm), str(hosts[0]))
    wait_for("cold migration", lambda: cloud.vm_host(vm) == hosts[0]
             and cloud.vm_state(vm) == (ACTIVE, RUNNING), timeout=90)
    expect_routed(cloud, packet_side, vm, "cold migration")

    # poweroff / resume; undeploy / resume (the scheduler picks a host)
    cloud.cli("onevm", "poweroff", str(vm))
    cloud.wait_vm(vm, POWEROFF)
    cloud.cli("onevm", "resume", str(vm))
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    expect_routed(cloud, packet_side, vm, "resume from poweroff")
    cloud.cli("onevm", "undeploy", str(vm))
    cloud.wait_vm(vm, UNDEPLOYED)
    cloud.cli("onevm", "resume", str(vm))
    cloud.wait_vm(vm, ACTIVE, RUNNING, timeout=120)
    expect_routed(cloud, packet_side, vm, "resume from undeploy")
    assert cloud.lease_files() == {reservation: sorted(aliases.values())}

    # terminate: every address unrouted, every lease gone, in oned and on disk
    cloud.cli("onevm", "terminate", str(vm))
    cloud.wait_vm(vm, DONE)
    wait_for("termination unroutes", lambda: not packet_side.placement())
    assert cloud.lease_files() == {reservation: []}
    assert cloud.leased_ips(pub) == {}
    expect_no_failed_hooks(cloud, vm)

    # the range goes: rmar releases the block; the network is deleted
    cloud.cli("onevnet", "rmar", str(pub), "0")
    assert cloud.ar(pub) is None
    assert reservation not in {r["id"] for r in packet_side.reservations()}
    cloud.cli("onevnet", "delete", str(pub))
    assert cloud.driver_errors(log_start) == []


def test_hook_retry_after_packet_outage(cloud: Cloud, packet_side) -> None:
    nets = {"priv": int(_vnet_id(cloud, "priv")),
            "pub": cloud.create("vnet", public_vnet("pub-outage", packet_side.project, 4))}
    before = {(r["hook_id"], r["execution"]) for r in cloud.hook_records()}
    packet_side.admin.fault(status=503, rate=1.0, method="POST", path="/devices/")
    try:
        vm = cloud.deploy_vm(vm_template("outage", nets), cloud.hosts[0])
        cloud.wait_vm(vm, ACTIVE, RUNNING)

        def failed_run():
            for rec in cloud.hook_records():
                key = (rec["hook_id"], rec["execution"])
                if key not in before and rec["vm"] == vm and rec["code"] != 0:
                    return rec
            return None

        failed = wait_for("the hook failing during the outage", failed_run, timeout=60)
        assert "503" in failed["stderr"] or "unavailable" in failed["stderr"].lower(), failed
        assert not packet_side.placement()
    finally:
        packet_side.admin.clear_faults()
    cloud.cli("onehook", "retry", str(failed["hook_id"]), str(failed["execution"]))
    expect_routed(cloud, packet_side, vm, "onehook retry")
    retried = [r for r in cloud.hook_records() if r["retry"] and r["vm"] == vm]
    assert retried and retried[-1]["code"] == 0, retried
    cloud.cli("onevm", "terminate", "--hard", str(vm))
    cloud.wait_vm(vm, DONE)
    wait_for("termination unroutes", lambda: not packet_side.placement())
    cloud.cli("onevnet", "delete", str(nets["pub"]))


def _vnet_id(cloud: Cloud, name: str) -> str:
    import xml.etree.ElementTree as ET  # noqa: S405

    pool = ET.fromstring(cloud.cli("onevnet", "list", "-x"))  # noqa: S314
    for vnet in pool.findall("VNET"):
        if vnet.findtext("NAME") == name:
            return vnet.findtext("ID")
    raise AssertionError(f"no vnet {name}")
