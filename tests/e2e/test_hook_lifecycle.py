"""A VM's whole life through the scenario driver (oned's part: IPAM through one_ipam, state
hooks like onehem, asynchronously) with the real alias_ip hook registered from the shipped
templates, against the oned and Packet emulators.

VNM actions are not run here (``vnm_drivers=()``): NAT with real packets is proven in
tests/e2e/test_nat_netns.py; this file is about where Packet routes each alias address.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Dict, List

import pytest

from fixtures.common import PYTHON, REMOTES, ROOT
from integration.hook_support import hook_env
from packet_lab.oned.scenario import Scenario

TEMPLATES = ROOT / "share" / "examples" / "alias_ip"


def _ip(text: str) -> str:
    return str(ipaddress.ip_interface(str(text)).ip)


class Life:
    """The scenario plus what the tests look at."""

    def __init__(self, sc: Scenario, packet, hooks: Dict[str, int], hosts: List[int],
                 private: int, public: int, log_dir: Path) -> None:
        self.sc, self.packet, self.hooks, self.hosts = sc, packet, hooks, hosts
        self.private, self.public, self.log_dir = private, public, log_dir

    def new_vm(self, aliases: int = 2, network=None) -> int:
        net = self.public if network is None else network
        return self.sc.create_vm("web", nics=[self.private],
                                 aliases=[{"network_id": net}] * aliases)

    def flush(self) -> list:
        """Run the queued hook events (onehem runs them after the state changed)."""
        return self.sc.flush_hooks()

    def flush_ok(self) -> list:
        records = self.flush()
        assert records, "no hook ran"
        for record in records:
            assert record.code == 0, record.stderr
        return records

    def aliases(self, vm: int) -> List[str]:
        return [a["IP"] for a in self.sc.state.vm(vm).aliases]

    def alias_id(self, vm: int, ip: str) -> int:
        return next(int(a["NIC_ID"]) for a in self.sc.state.vm(vm).aliases if a["IP"] == ip)

    def placed(self) -> Dict[str, str]:
        return {_ip(a["address"]): a["device_id"] for a in self.packet.state()["assignments"]}

    def device(self, host_index: int) -> str:
        return self.packet.device_ids[host_index]

    def hook_writes(self) -> List[str]:
        return [f"{r['method']} {r['path']}" for r in self.packet.requests()
                if r["method"] in ("POST", "DELETE")]


@pytest.fixture
def life(oned, packet, remote_env, tmp_path, one_auth_file) -> Life:
    env, log_dir = hook_env(oned, packet, remote_env, tmp_path / "ipam", one_auth_file,
                            tmp_path / "log", settle_seconds=3)
    # the executables start with "#!/usr/bin/env python3": the one with pyone and lxml
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    sc = Scenario(oned, remotes_dir=REMOTES, env=env, vnm_drivers=(), defer_hooks=True,
                  hook_timeout=60)
    hooks = {name: sc.add_hook((TEMPLATES / name).read_text())
             for name in ("running_hook", "hotplug_hook", "done_hook")}
    hosts = [sc.add_host("hv1", deploy_id=packet.device_ids[0]),
             sc.add_host("hv2", deploy_id=packet.device_ids[1])]
    private = sc.create_vnet("private", vn_mad="dummy",
                             ars=[{"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "32"}])
    public = sc.create_vnet("public", vn_mad="alias_sdnat")
    sc.add_ar(public, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
                       "PACKET_PROJECT": packet.project_id, "PACKET_TOKEN": packet.token,
                       "FACILITY": "ams1"})
    yield Life(sc, packet, hooks, hosts, private, public, log_dir)
    sc.detach()


def deployed(life: Life, aliases: int = 2, host: int = 0) -> int:
    vm = life.new_vm(aliases)
    life.sc.deploy(vm, life.hosts[host])
    life.flush_ok()
    return vm


def test_deploy_with_two_aliases_puts_both_on_the_hosts_device(life):
    vm = life.new_vm(2)
    life.sc.deploy(vm, life.hosts[0])
    assert life.placed() == {}  # the hook has not run yet (onehem is asynchronous)
    (record,) = life.flush_ok()
    assert record.hook_id == life.hooks["running_hook"]
    assert "2 API write(s)" in record.stdout
    assert life.placed() == {ip: life.device(0) for ip in life.aliases(vm)}


def test_hot_attach_then_hot_detach(life):
    vm = deployed(life, 1)
    (first,) = life.aliases(vm)
    new_id = life.sc.attach_alias(vm, life.public)
    records = life.flush_ok()  # HOTPLUG_NIC then RUNNING
    assert [r.hook_id for r in records] == [life.hooks["hotplug_hook"],
                                            life.hooks["running_hook"]]
    new = next(a["IP"] for a in life.sc.state.vm(vm).aliases if a["NIC_ID"] == str(new_id))
    assert life.placed() == {first: life.device(0), new: life.device(0)}
    assert "already right" in records[1].stdout and "0 API write(s)" in records[1].stdout

    life.sc.detach_alias(vm, new_id)
    life.flush_ok()
    assert life.placed() == {first: life.device(0)}
    assert "alias detached" in (life.log_dir / "hook-alias_ip.log").read_text()


def test_live_migration_moves_the_addresses_to_the_new_device(life):
    vm = deployed(life, 2)
    life.sc.migrate(vm, life.hosts[1])
    life.packet.clear_requests()
    life.flush_ok()
    assert life.placed() == {ip: life.device(1) for ip in life.aliases(vm)}
    writes = life.hook_writes()
    assert [w.split()[0] for w in writes] == ["DELETE", "POST", "DELETE", "POST"]


def test_poweroff_and_resume_keep_the_addresses_without_writes(life):
    vm = deployed(life, 2)
    before = life.placed()
    life.packet.clear_requests()
    life.sc.poweroff(vm)
    life.flush()  # no shipped hook fires on POWEROFF
    life.sc.resume(vm)
    life.flush_ok()
    assert life.placed() == before and life.hook_writes() == []


def test_terminate_leaves_nothing_assigned(life):
    vm = deployed(life, 2)
    life.sc.terminate(vm)
    records = life.flush_ok()
    assert [r.hook_id for r in records] == [life.hooks["done_hook"]]
    assert life.placed() == {}


def test_aliases_on_a_non_packet_network_are_left_alone(life):
    other = life.sc.create_vnet("elastic", vn_mad="alias_sdnat",
                                ars=[{"TYPE": "IP4", "IP": "100.64.0.10", "SIZE": "4"}])
    life.packet.clear_requests()
    vm = life.new_vm(2, network=other)
    life.sc.deploy(vm, life.hosts[0])
    (record,) = life.flush_ok()
    assert "2 left alone" in record.stdout
    assert life.packet.requests() == [] and life.placed() == {}


def test_a_replayed_event_makes_no_api_write(life):
    vm = deployed(life, 2)
    (record,) = [r for r in life.sc.hook_executions(life.hooks["running_hook"])]
    life.packet.clear_requests()
    again = life.sc.retry_hook(life.hooks["running_hook"], record.execution_id)
    assert again.code == 0 and life.hook_writes() == []
    assert life.placed() == {ip: life.device(0) for ip in life.aliases(vm)}


def test_packet_failing_then_onehook_retry_recovers(life):
    vm = life.new_vm(2)
    life.packet.fault(status=503, count=1000, method="POST")
    life.sc.deploy(vm, life.hosts[0])
    (failed,) = life.flush()
    assert failed.code != 0
    lines = failed.stderr.splitlines()
    assert lines[0] == "ERROR MESSAGE --8<------" and len(lines) == 3 and "503" in lines[1]
    assert life.placed() == {}
    life.packet.admin.clear_faults()
    retried = life.sc.retry_hook(life.hooks["running_hook"], failed.execution_id)
    assert retried.code == 0 and retried.retry
    assert life.placed() == {ip: life.device(0) for ip in life.aliases(vm)}


def test_oned_unreachable_fails_then_retry_recovers(life):
    vm = life.new_vm(1)
    good = life.sc.env["ONE_XMLRPC"]
    life.sc.env["ONE_XMLRPC"] = "http://127.0.0.1:9/RPC2"
    life.sc.deploy(vm, life.hosts[0])
    (failed,) = life.flush()
    assert failed.code != 0 and "unreachable" in failed.stderr
    assert life.placed() == {}
    life.sc.env["ONE_XMLRPC"] = good
    retried = life.sc.retry_hook(life.hooks["running_hook"], failed.execution_id)
    assert retried.code == 0 and len(life.placed()) == 1


def test_an_alias_attached_while_powered_off_is_assigned_on_resume(life):
    vm = deployed(life, 1)
    life.sc.poweroff(vm)
    life.flush()
    new_id = life.sc.attach_alias(vm, life.public)
    life.flush()  # HOTPLUG_NIC_POWEROFF: no shipped hook fires on it
    new = next(a["IP"] for a in life.sc.state.vm(vm).aliases if a["NIC_ID"] == str(new_id))
    assert new not in life.placed()
    life.sc.resume(vm)
    life.flush_ok()
    assert life.placed() == {ip: life.device(0) for ip in life.aliases(vm)}


def test_cold_migration_moves_the_addresses(life):
    vm = deployed(life, 2)
    life.sc.migrate(vm, life.hosts[1], live=False)
    life.flush_ok()
    assert life.placed() == {ip: life.device(1) for ip in life.aliases(vm)}
