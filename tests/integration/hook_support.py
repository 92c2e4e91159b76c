"""Shared by the alias_ip hook's integration tests: both emulators seeded like a small Packet
cloud, oned's state driven directly, and the hook run as a subprocess the way onehem runs it."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fixtures.common import PYTHON, REMOTES
from packet_provider.core.onedefs import (
    LCM_HOTPLUG_NIC,
    LCM_RUNNING,
    STATE_ACTIVE,
    STATE_DONE,
    STATE_POWEROFF,
)
from packet_provider.packet import PacketClient

HOOK = REMOTES / "hooks" / "alias_ip" / "alias_ip.py"
ACTIVE, RUNNING, HOTPLUG_NIC, DONE, POWEROFF = (
    STATE_ACTIVE, LCM_RUNNING, LCM_HOTPLUG_NIC, STATE_DONE, STATE_POWEROFF)


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

    def hot_detach(self, vm_id: int, ip: str) -> bytes:
        """oned's detach of the alias holding ``ip``: the event's XML (alias marked
        ATTACH=YES, VM in HOTPLUG_NIC), then the alias gone and the VM RUNNING again."""
        for alias in self.oned.state.vm(vm_id).aliases:
            if alias["IP"] == ip:
                alias["ATTACH"] = "YES"
        self.set_state(vm_id, ACTIVE, HOTPLUG_NIC)
        event = self.xml(vm_id)
        self.detach(vm_id, ip)
        self.set_state(vm_id, ACTIVE, RUNNING)
        return event

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


def hook_env(oned, packet, remote_env, state_dir: Path, one_auth_file, log_dir: Path,
             settle_seconds: float) -> Tuple[Dict[str, str], Path]:
    """The environment the hook runs in against both emulators, its config written (quick
    retries and timeouts); returns it and the log directory."""
    Path(remote_env["PACKET_PROVIDER_CONFIG"]).write_text(
        f"log_dir: {log_dir}\nipam_state_dir: {state_dir}\nretries: 1\n"
        "backoff: 0.01\nconnect_timeout: 2\nread_timeout: 5\n")
    env = dict(remote_env, ONE_XMLRPC=oned.url, ONE_AUTH=str(one_auth_file),
               PACKET_API_URL=packet.url, ALIAS_IP_SETTLE_SECONDS=f"{settle_seconds:g}")
    return env, log_dir


def make_world(oned, packet, remote_env, tmp_path, one_auth_file) -> World:
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
    env, log_dir = hook_env(oned, packet, remote_env, tmp_path / "state", one_auth_file,
                            tmp_path / "log", settle_seconds=2)
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


