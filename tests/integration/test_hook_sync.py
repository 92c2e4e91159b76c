"""The alias_ip hook as a subprocess, fed like onehem feeds it, against both emulators (real
XML-RPC and HTTP servers on 127.0.0.1). oned's state is driven directly here; the life cycle
through the scenario driver is in tests/e2e/test_hook_lifecycle.py."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from fixtures.common import PYTHON, REMOTES
from packet_provider.packet import PacketClient

HOOK = REMOTES / "hooks" / "alias_ip" / "alias_ip.py"
ACTIVE, RUNNING, HOTPLUG_NIC, DONE, POWEROFF = 3, 3, 25, 6, 8


def _ip(text: str) -> str:
    return str(ipaddress.ip_interface(str(text)).ip)


@dataclass
class World:
    """Both emulators seeded like a small Packet cloud: two provisioned hosts (one device
    each), one host without DEPLOY_ID, a private network and a public alias_sdnat network
    with a packet AR over a real reservation."""

    oned: object
    packet: object
    env: Dict[str, str]
    log_dir: Path
    hosts: List[int]
    devices: List[str]
    private: int
    public: int
    reservation: object

    # -- oned side --

    def vm(self, aliases: int = 1, host: int = 0, state=(ACTIVE, RUNNING),
           public: Optional[int] = None) -> int:
        st = self.oned.state
        vm = st.add_vm("web")
        lease = st.take_lease(self.private, 0, vm.id)
        nic = st.add_nic(vm.id, self.private, 0, lease)
        for _ in range(aliases):
            self.attach(vm.id, int(nic["NIC_ID"]), public)
        st.add_history(vm.id, self.hosts[host])
        vm.set_state(*state)
        st.changed()
        return vm.id

    def attach(self, vm_id: int, parent: int = 0, public: Optional[int] = None,
               attach: bool = False) -> str:
        st = self.oned.state
        vnet = self.public if public is None else public
        lease = st.take_lease(vnet, 0, vm_id)
        alias = st.add_alias(vm_id, parent, vnet, 0, lease, external=True, attach=attach)
        st.changed()
        return alias["IP"]

    def detach(self, vm_id: int, ip: str) -> None:
        st = self.oned.state
        for alias in st.vm(vm_id).aliases:
            if alias["IP"] == ip:
                st.remove_alias(vm_id, int(alias["NIC_ID"]))
                st.release_lease(int(alias["NETWORK_ID"]), 0, ip)
        st.changed()

    def move(self, vm_id: int, host: int) -> None:
        st = self.oned.state
        st.set_action(vm_id, "live-migrate")
        st.close_history(vm_id, copy=False)
        st.add_history(vm_id, self.hosts[host])
        st.changed()

    def set_state(self, vm_id: int, state: int, lcm: int) -> None:
        self.oned.state.vm(vm_id).set_state(state, lcm)
        self.oned.state.changed()

    def xml(self, vm_id: int) -> bytes:
        return self.oned.state.vm_xml(vm_id).encode()

    # -- the hook --

    def run(self, vm_id: Optional[int] = None, xml: Optional[bytes] = None,
            argv: bool = False, env: Optional[Dict[str, str]] = None,
            ) -> subprocess.CompletedProcess:
        data = base64.b64encode(xml if xml is not None else self.xml(vm_id)).decode()
        args = [PYTHON, str(HOOK)] + ([data] if argv else [])
        return subprocess.run(args, input=b"" if argv else (data + " ").encode(),
                              capture_output=True, env=env or self.env, timeout=60)

    # -- Packet side --

    def placed(self) -> Dict[str, str]:
        """address -> device id of every assignment in the emulator."""
        return {_ip(a["address"]): a["device_id"] for a in self.packet.state()["assignments"]}

    def writes(self) -> List[str]:
        return [f"{r['method']} {r['path']}" for r in self.packet.requests()
                if r["method"] in ("POST", "DELETE")]

    def log(self) -> str:
        path = self.log_dir / "hook-alias_ip.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def world(oned, packet, remote_env, tmp_path, one_auth_file) -> World:
    with PacketClient(packet.url, packet.token) as client:
        reservation = client.reserve(packet.project_id, 8, facility="ams1")
    st = oned.state
    hosts = [st.add_host("hv1", deploy_id=packet.device_ids[0]),
             st.add_host("hv2", deploy_id=packet.device_ids[1]),
             st.add_host("plain-kvm")]
    private = st.add_vnet("private", vn_mad="dummy")
    st.add_ar(private, {"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "50"})
    public = st.add_vnet("public", vn_mad="alias_sdnat")
    st.add_ar(public, {"TYPE": "IP4", "IP": str(reservation.first_address),
                       "SIZE": str(reservation.size), "IPAM_MAD": "packet",
                       "DEPLOY_ID": reservation.id, "PACKET_TOKEN": packet.token,
                       "PACKET_PROJECT": packet.project_id})
    log_dir = tmp_path / "log"
    Path(remote_env["PACKET_PROVIDER_CONFIG"]).write_text(
        f"log_dir: {log_dir}\nretries: 1\nbackoff: 0.01\nconnect_timeout: 2\n"
        "read_timeout: 5\n")
    env = dict(remote_env, ONE_XMLRPC=oned.url, ONE_AUTH=str(one_auth_file),
               PACKET_API_URL=packet.url, ALIAS_IP_SETTLE_SECONDS="2")
    packet.clear_requests()
    return World(oned, packet, env, log_dir, hosts, list(packet.device_ids), private, public,
                 reservation)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    return done.stdout.decode()


def failed(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """The one-line reason of a failed run (oned's ERROR MESSAGE block)."""
    lines = done.stderr.decode().splitlines()
    assert done.returncode == code, done.stderr.decode()
    assert lines[0] == "ERROR MESSAGE --8<------" and lines[-1] == "ERROR MESSAGE ------>8--"
    assert len(lines) == 3 and "Traceback" not in done.stderr.decode()
    return lines[1]


def alias_ips(world: World, vm_id: int) -> List[str]:
    return [a["IP"] for a in world.oned.state.vm(vm_id).aliases]


# -- deploy, replay ----------------------------------------------------------------------------

def test_deploy_assigns_both_aliases_to_the_hosts_device(world):
    vm = world.vm(aliases=2)
    out = ok(world.run(vm))
    ips = alias_ips(world, vm)
    assert world.placed() == {ip: world.devices[0] for ip in ips}
    assert sorted(world.writes()) == [f"POST /devices/{world.devices[0]}/ips"] * 2
    assert "2 API write(s)" in out


def test_replaying_the_event_makes_no_api_write(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.packet.clear_requests()
    out = ok(world.run(vm))
    assert world.writes() == [] and "0 API write(s), 2 already right" in out
    assert [r["method"] for r in world.packet.requests()] == ["GET"]  # the device's list


def test_argv_form_works_like_stdin(world):
    vm = world.vm()
    ok(world.run(vm, argv=True))
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[0]}


def test_fast_path_vm_without_aliases_makes_no_call_at_all(world):
    vm = world.vm(aliases=0)
    world.oned.calls.clear()
    out = ok(world.run(vm))
    assert "nothing to do" in out
    assert list(world.oned.calls) == [] and world.packet.requests() == []
    assert world.log() == ""


# -- migrate, poweroff, done ---------------------------------------------------------------------

def test_live_migration_moves_the_address_unassigning_first(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.move(vm, 1)
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[1] for ip in alias_ips(world, vm)}
    writes = world.writes()
    assert len(writes) == 4
    for ip_writes in (writes[0:2], writes[2:4]):  # per address: DELETE then POST
        assert ip_writes[0].startswith("DELETE /ips/")
        assert ip_writes[1] == f"POST /devices/{world.devices[1]}/ips"


def test_a_stale_assignment_on_another_device_is_moved(world):
    vm = world.vm()
    (ip,) = alias_ips(world, vm)
    with PacketClient(world.packet.url, world.packet.token) as client:
        client.assign(world.devices[2], ipaddress.IPv4Address(ip))
    ok(world.run(vm))
    assert world.placed() == {ip: world.devices[0]}


@pytest.mark.parametrize("state", [POWEROFF, 5])
def test_poweroff_and_suspended_keep_the_address(world, state):
    vm = world.vm()
    ok(world.run(vm))
    world.set_state(vm, state, 0)
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.writes() == [] and len(world.placed()) == 1


def test_done_unassigns_and_a_replay_of_done_writes_nothing(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    world.set_state(vm, DONE, 0)
    ok(world.run(vm))
    assert world.placed() == {}
    world.packet.clear_requests()
    ok(world.run(vm))
    assert world.writes() == []


def test_a_late_running_event_after_terminate_unassigns(world):
    """The event is asynchronous: a RUNNING event handled after the VM is DONE."""
    vm = world.vm()
    ok(world.run(vm))
    running = world.xml(vm)
    world.set_state(vm, DONE, 0)
    ok(world.run(xml=running))
    assert world.placed() == {}


# -- hot-plug ----------------------------------------------------------------------------------

def test_hot_attach_assigns_the_new_alias(world):
    vm = world.vm()
    ok(world.run(vm))
    ip = world.attach(vm, attach=True)
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    event = world.xml(vm)
    for alias in world.oned.state.vm(vm).aliases:  # oned finishes the attach
        alias.pop("ATTACH", None)
    world.set_state(vm, ACTIVE, RUNNING)
    ok(world.run(xml=event))
    assert world.placed()[ip] == world.devices[0] and len(world.placed()) == 2


def test_hot_detach_unassigns_only_the_detached_alias(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    keep, gone = alias_ips(world, vm)
    for alias in world.oned.state.vm(vm).aliases:
        if alias["IP"] == gone:
            alias["ATTACH"] = "YES"
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    event = world.xml(vm)
    world.detach(vm, gone)
    world.set_state(vm, ACTIVE, RUNNING)
    world.packet.clear_requests()
    ok(world.run(xml=event))
    assert world.placed() == {keep: world.devices[0]}
    assert len(world.writes()) == 1 and world.writes()[0].startswith("DELETE /ips/")


def test_a_hotplug_still_in_flight_is_waited_for_then_fails_for_retry(world):
    vm = world.vm()
    ok(world.run(vm))
    world.attach(vm, attach=True)
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    world.packet.clear_requests()
    env = dict(world.env, ALIAS_IP_SETTLE_SECONDS="0.5")
    reason = failed(world.run(vm, env=env))
    assert "still hot-plugging a NIC" in reason and world.writes() == []


def test_a_detached_address_already_leased_to_another_vm_is_not_touched(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    _, gone = alias_ips(world, vm)
    for alias in world.oned.state.vm(vm).aliases:
        if alias["IP"] == gone:
            alias["ATTACH"] = "YES"
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    event = world.xml(vm)
    world.detach(vm, gone)
    world.set_state(vm, ACTIVE, RUNNING)
    # before the hook of the detach runs, another VM gets the address on the other host
    other = world.oned.state.add_vm("other")
    lease = world.oned.state.take_lease(world.private, 0, other.id)
    world.oned.state.add_nic(other.id, world.private, 0, lease)
    world.oned.state.take_lease(world.public, 0, other.id, ip=gone)
    with PacketClient(world.packet.url, world.packet.token) as client:
        for a in client.device_assignments(world.devices[0]):
            if str(a.address) == gone:
                client.unassign(a.id)
        client.assign(world.devices[1], ipaddress.IPv4Address(gone))
    world.packet.clear_requests()
    ok(world.run(xml=event))
    assert world.placed()[gone] == world.devices[1]
    assert world.writes() == []
    assert "leased to VM" in world.log()


# -- what the hook leaves alone --------------------------------------------------------------------

def test_aliases_on_a_non_packet_network_are_never_touched(world):
    st = world.oned.state
    other = st.add_vnet("elastic", vn_mad="alias_sdnat")
    st.add_ar(other, {"TYPE": "IP4", "IP": "100.64.0.10", "SIZE": "4"})
    vm = world.vm(aliases=1, public=other)
    out = ok(world.run(vm))
    assert world.packet.requests() == [] and world.placed() == {}
    assert "1 left alone" in out and "IPAM_MAD=-" in world.log()


def test_other_vms_addresses_are_not_touched(world):
    a, b = world.vm(), world.vm(host=1)
    ok(world.run(a))
    ok(world.run(b))
    world.set_state(a, DONE, 0)
    ok(world.run(a))
    assert world.placed() == {alias_ips(world, b)[0]: world.devices[1]}


# -- failures ------------------------------------------------------------------------------------

def test_packet_failing_then_recovering_under_retry(world):
    vm = world.vm(aliases=2)
    world.packet.fault(status=503, count=1000, method="POST")
    done = world.run(vm)
    reason = failed(done)
    assert reason.startswith("alias_ip: VM ") and "503" in reason
    assert world.placed() == {}
    world.packet.admin.clear_faults()
    ok(world.run(vm))  # what onehook retry does: the same command and stdin again
    assert len(world.placed()) == 2


def test_a_failed_move_never_leaves_the_address_on_two_devices(world):
    vm = world.vm()
    ok(world.run(vm))
    world.move(vm, 1)
    world.packet.fault(status=500, count=1000, method="POST")
    failed(world.run(vm))
    assert world.placed() == {}  # unassigned from the old device, not yet on the new one
    world.packet.admin.clear_faults()
    ok(world.run(vm))
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[1]}


def test_oned_unreachable_fails_with_one_line(world):
    vm = world.vm()
    env = dict(world.env, ONE_XMLRPC="http://127.0.0.1:9/RPC2")
    reason = failed(world.run(vm, env=env))
    assert "oned at http://127.0.0.1:9/RPC2" in reason and "unreachable" in reason
    assert world.packet.requests() == []


def test_a_bad_oned_session_fails_with_one_line(world, tmp_path):
    bad = tmp_path / "bad_auth"
    bad.write_text("oneadmin:wrong-password\n")
    reason = failed(world.run(world.vm(), env=dict(world.env, ONE_AUTH=str(bad))))
    assert "authentication failed" in reason and "wrong-password" not in reason


def test_a_host_without_deploy_id_fails_without_writes(world):
    vm = world.vm(host=2)
    reason = failed(world.run(vm))
    assert "host" in reason and "PROVISION/DEPLOY_ID" in reason
    assert world.writes() == []


def test_an_unknown_network_fails(world):
    vm = world.vm()
    xml = world.xml(vm).replace(f"<NETWORK_ID><![CDATA[{world.public}]]>".encode(),
                                b"<NETWORK_ID><![CDATA[999]]>")
    assert b"999" in xml
    reason = failed(world.run(xml=xml))
    assert "network 999 does not exist" in reason


# -- logs and secrets ------------------------------------------------------------------------------

def test_every_decision_and_write_is_logged_with_vm_id_and_timings_never_the_token(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    text = world.log()
    lines = [line for line in text.splitlines() if line]
    assert lines and all(f"vm={vm} " in line for line in lines)
    assert sum("decision=assign" in line for line in lines) == 2
    assert sum("action=assign" in line and "duration_ms=" in line for line in lines) == 2
    assert any("api POST" in line for line in lines)
    assert any("outcome=done" in line and "duration_ms=" in line for line in lines)
    assert world.packet.token not in text
    assert world.oned.auth.split(":")[1] not in text


def test_the_token_never_reaches_argv_or_the_error_line(world):
    vm = world.vm()
    world.packet.fault(status=401, count=1000)
    done = world.run(vm)
    reason = failed(done)
    assert world.packet.token not in done.stderr.decode() + done.stdout.decode()
    assert "401" in reason


# -- pyone and custom AR attributes ------------------------------------------------------------

def test_pyone_drops_the_custom_ar_attributes_and_the_hook_reads_them(world):
    from packet_provider import hook_oned, hook_plan, onexml

    typed = world.oned.client().vn.info(world.public, True)
    ar = typed.AR_POOL.AR[0]
    for name in ("DEPLOY_ID", "IPAM_MAD", "PACKET_TOKEN"):
        assert not hasattr(ar, name)
    client = hook_oned.OnedClient(world.oned.url, world.oned.auth, retries=0)
    (ours,) = hook_plan.parse_vnet(client.vnet(world.public)).values()
    assert ours.ipam_mad == "packet" and ours.reservation_id == world.reservation.id
    assert ours.token == world.packet.token  # decrypted
    raw = client.call("vn.info", world.public, False)
    (stored,) = hook_plan.parse_vnet(onexml.parse(raw.encode())).values()
    assert stored.token != world.packet.token  # encrypted at rest without decrypt

