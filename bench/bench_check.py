"""``packet-provider check`` on a cloud of 200 VMs with 2 packet aliases each (4 networks of
one /25 reservation each, 4 hosts with a Packet device each, every address routed and
leased: nothing differs), against the oned and Packet emulators on loopback. Figures: the
wall time (the executable as an operator runs it, and the check alone in-process) and the
number of oned and Packet API calls one check makes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from packet_lab.oned.emulator import OnedEmulator
from packet_lab.packet.emulator import PacketEmulator
from packet_provider.ipam.leases import LeaseStore
from packet_provider.ops import command
from packet_provider.packet import PacketClient

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ROOT / "share" / "bin" / "packet-provider"
VMS, ALIASES, NETWORKS, HOSTS = 200, 2, 4, 4


def run(bench) -> None:
    if not bench.wanted("check"):
        return
    token = "bench-" + uuid.uuid4().hex
    project = str(uuid.uuid4())
    devices = [str(uuid.uuid4()) for _ in range(HOSTS)]
    packet = PacketEmulator(tokens=[token], projects=[project],
                            devices=[f"{d}@{project}" for d in devices]).start()
    bench.on_exit(packet.stop)
    auth = "oneadmin:" + uuid.uuid4().hex
    oned = OnedEmulator(auth=auth).start()
    bench.on_exit(oned.stop)
    client = PacketClient(packet.url, token, retries=0)
    bench.on_exit(client.close)
    state_dir = bench.tmp / "check-state"
    store = LeaseStore(str(state_dir))

    st = oned.state
    hosts = [st.add_host(f"hv{n}", deploy_id=d) for n, d in enumerate(devices)]
    private = st.add_vnet("private", vn_mad="dummy")
    st.add_ar(private, {"TYPE": "IP4", "IP": "10.1.0.2", "SIZE": str(VMS + 10)})
    publics = []
    for n in range(NETWORKS):
        reservation = client.reserve(project, 128, facility="ams1")
        vnet = st.add_vnet(f"public{n}", vn_mad="alias_sdnat")
        st.add_ar(vnet, {"TYPE": "IP4", "IP": str(reservation.first_address), "SIZE": "128",
                         "IPAM_MAD": "packet", "DEPLOY_ID": reservation.id,
                         "PACKET_PROJECT": project})
        publics.append((vnet, reservation))
    for n in range(VMS):
        vm = st.add_vm(f"bench{n}")
        nic = st.add_nic(vm.id, private, 0, st.take_lease(private, 0, vm.id))
        host = n % HOSTS
        vnet, reservation = publics[n % NETWORKS]
        for _ in range(ALIASES):
            lease = st.take_lease(vnet, 0, vm.id)
            alias = st.add_alias(vm.id, int(nic["NIC_ID"]), vnet, 0, lease)
            client.assign(devices[host], alias["IP"])
            store.claim(reservation.id, alias["IP"]).commit()
        st.add_history(vm.id, hosts[host])
        vm.set_state(3, 3)
    st.changed()

    (bench.tmp / "check_one_auth").write_text(auth + "\n")
    config = bench.tmp / "check.yaml"
    config.write_text(f"log_dir: {bench.tmp / 'check-log'}\nipam_state_dir: {state_dir}\n"
                      f"retries: 1\nbackoff: 0.05\ntokens:\n  {project}: {token}\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(bench.tmp),
           "PACKET_PROVIDER_CONFIG": str(config), "ONE_XMLRPC": oned.url,
           "ONE_AUTH": str(bench.tmp / "check_one_auth"), "PACKET_API_URL": packet.url,
           "PYTHONDONTWRITEBYTECODE": "1"}
    report = {}

    def in_process() -> None:
        out = io.StringIO()
        code = command.run(["check", "--json"], env=env, out=out, err=io.StringIO())
        report.update(json.loads(out.getvalue()))
        if code != 0:
            raise RuntimeError(f"check found differences: {report['counts']}")

    def executable() -> None:
        done = subprocess.run([sys.executable, str(COMMAND), "check"], env=env,
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stdout.decode() + done.stderr.decode())

    size = f"{VMS} VMs x {ALIASES} aliases"
    repeat = min(bench.repeat, 5)
    bench.measure(f"check: {size}, executable", executable, repeat=repeat,
                  note="a process, as an operator runs it")
    bench.measure(f"check: {size}, in-process", in_process, repeat=repeat,
                  note="reading oned, Packet and the leases, and comparing")
    if report:
        bench.record(f"check: {size}, oned calls", report["oned_calls"], "calls",
                     note=f"{NETWORKS} packet networks: vnpool + vn each + vmpool + hostpool")
        bench.record(f"check: {size}, Packet calls", report["packet_calls"], "calls",
                     note=f"{NETWORKS} reservations in 1 project, assignments embedded")
        bench.record(f"check: {size}, leases compared", report["leased"], "leases")
