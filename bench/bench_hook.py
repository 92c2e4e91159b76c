"""The alias_ip hook run as onehem runs it (a process per event, base64 VM on stdin) against
the oned and Packet emulators on loopback: the fast path (a VM without external aliases) and
the full path (read oned, check Packet; with and without API writes)."""

from __future__ import annotations

import base64
import ipaddress
import os
import subprocess
import sys
import uuid
from pathlib import Path

from packet_lab.oned.emulator import OnedEmulator
from packet_lab.packet.emulator import PacketEmulator
from packet_provider.packet import PacketClient

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "remotes" / "hooks" / "alias_ip" / "alias_ip.py"


def run(bench) -> None:
    token = "bench-" + uuid.uuid4().hex
    project, devices = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]
    packet = PacketEmulator(tokens=[token], projects=[project],
                            devices=[f"{d}@{project}" for d in devices]).start()
    bench.on_exit(packet.stop)
    auth = "oneadmin:" + uuid.uuid4().hex
    oned = OnedEmulator(auth=auth).start()
    bench.on_exit(oned.stop)
    client = PacketClient(packet.url, token, retries=0)
    bench.on_exit(client.close)
    reservation = client.reserve(project, 8, facility="ams1")

    st = oned.state
    host = st.add_host("hv1", deploy_id=devices[0])
    private = st.add_vnet("private", vn_mad="dummy")
    st.add_ar(private, {"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "50"})
    public = st.add_vnet("public", vn_mad="alias_sdnat")
    st.add_ar(public, {"TYPE": "IP4", "IP": str(reservation.first_address), "SIZE": "8",
                       "IPAM_MAD": "packet", "DEPLOY_ID": reservation.id,
                       "PACKET_TOKEN": token, "PACKET_PROJECT": project})

    def make_vm(aliases: int) -> bytes:
        vm = st.add_vm("bench")
        nic = st.add_nic(vm.id, private, 0, st.take_lease(private, 0, vm.id))
        for _ in range(aliases):
            st.add_alias(vm.id, int(nic["NIC_ID"]), public, 0,
                         st.take_lease(public, 0, vm.id))
        st.add_history(vm.id, host)
        vm.set_state(3, 3)
        st.changed()
        return base64.b64encode(st.vm_xml(vm.id).encode()) + b" "

    plain, with_aliases = make_vm(0), make_vm(2)

    (bench.tmp / "one_auth").write_text(auth + "\n")
    config = bench.tmp / "packet_provider.yaml"
    config.write_text(f"log_dir: {bench.tmp / 'log'}\nipam_state_dir: {bench.tmp / 'state'}\n"
                      "retries: 1\nbackoff: 0.05\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(bench.tmp),
           "PACKET_PROVIDER_CONFIG": str(config), "ONE_XMLRPC": oned.url,
           "ONE_AUTH": str(bench.tmp / "one_auth"), "PACKET_API_URL": packet.url,
           "PYTHONDONTWRITEBYTECODE": "1"}

    def hook(stdin: bytes) -> None:
        done = subprocess.run([sys.executable, str(HOOK)], input=stdin, env=env, check=False,
                              capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode())

    def unassign_all() -> None:
        for assignment in client.device_assignments(devices[0]):
            client.unassign(assignment.id)

    bench.measure("hook: fast path (VM without external alias)", lambda: hook(plain),
                  note="no pyone/requests/lxml/yaml import, no network call")
    bench.measure("hook: full path, nothing to change (replay)", lambda: hook(with_aliases),
                  setup=lambda: None, note="2 aliases: 2 oned calls + 1 Packet GET")
    assigned = bench.measure("hook: full path, assign 2 aliases", lambda: hook(with_aliases),
                             setup=unassign_all, note="2 oned calls + 2 Packet GETs + 2 POSTs")
    if assigned is not None:  # measured (not left out by --only): the hook really assigned
        first = ipaddress.IPv4Address(reservation.first_address)
        placed = [a.address for a in client.device_assignments(devices[0])]
        assert first in placed, (first, placed)
    bench.measure("hook: in-process fast path (parse + decide)", lambda: _in_process(plain),
                  repeat=max(bench.repeat, 200), note="the part that is not interpreter start")


def _in_process(stdin: bytes) -> None:
    import io

    from packet_provider.hook import entry as hook

    hook.run([], io.BytesIO(stdin), env={}, out=io.StringIO())
