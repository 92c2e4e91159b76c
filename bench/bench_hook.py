"""The alias_ip hook run as onehem runs it (a process per event, base64 VM on stdin) against
the oned and Packet emulators on loopback: the fast path (a VM without external aliases) and
the full path (read oned, check Packet; with and without API writes), each paired with
``python -c pass`` on the same interpreter (A B A B: the ratio is the one to read on a busy
machine), their processes' CPU time, their summed import times, and the API calls of one run
(the Packet emulator's request log, oned's call log), also beside 200 assigned addresses.
Upstream's Ruby hook (OpenNebula 5.12's hooks/alias_ip, see upstream.py) does the full path
beside ours on the same event, oned and Packet, in turn (ours A, upstream B)."""

from __future__ import annotations

import base64
import ipaddress
import os
import resource
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable, Dict, List

from packet_lab.oned.emulator import OnedEmulator
from packet_lab.packet.admin import AdminClient
from packet_lab.packet.emulator import PacketEmulator
from packet_provider.packet import PacketClient

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "remotes" / "hooks" / "alias_ip" / "alias_ip.py"
OTHERS = 200


def run(bench) -> None:
    from run import pair_floor, record_process_costs  # bench/run.py, loaded as __main__ or run
    from upstream import Upstream

    token = "bench-" + uuid.uuid4().hex
    project, devices = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]
    packet = PacketEmulator(tokens=[token], projects=[project],
                            devices=[f"{d}@{project}" for d in devices]).start()
    bench.on_exit(packet.stop)
    admin = AdminClient(packet.url)
    auth = "oneadmin:" + uuid.uuid4().hex
    oned = OnedEmulator(auth=auth).start()
    bench.on_exit(oned.stop)
    client = PacketClient(packet.url, token, retries=0)
    bench.on_exit(client.close)
    reservation = client.reserve(project, 8, facility="ams1")

    st = oned.state
    host = st.add_host("hv1", deploy_id=devices[0])
    private = st.add_vnet("private", vn_mad="dummy")
    st.add_ar(private, {"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "250"})

    def packet_network(block) -> int:
        vnet = st.add_vnet(f"public-{block.id[:8]}", vn_mad="alias_sdnat")
        st.add_ar(vnet, {"TYPE": "IP4", "IP": str(block.first_address),
                         "SIZE": str(block.size), "IPAM_MAD": "packet", "DEPLOY_ID": block.id,
                         "PACKET_TOKEN": token, "PACKET_PROJECT": project})
        return vnet

    public = packet_network(reservation)

    def make_vm(aliases: int, vnet: int = public) -> int:
        vm = st.add_vm("bench")
        nic = st.add_nic(vm.id, private, 0, st.take_lease(private, 0, vm.id))
        for _ in range(aliases):
            st.add_alias(vm.id, int(nic["NIC_ID"]), vnet, 0, st.take_lease(vnet, 0, vm.id))
        st.add_history(vm.id, host)
        vm.set_state(3, 3)
        st.changed()
        return vm.id

    def event(vm_id: int) -> bytes:
        return base64.b64encode(st.vm_xml(vm_id).encode()) + b" "

    plain, with_aliases = event(make_vm(0)), event(make_vm(2))

    (bench.tmp / "one_auth").write_text(auth + "\n")
    config = bench.tmp / "packet_provider.yaml"
    config.write_text(f"log_dir: {bench.tmp / 'log'}\nipam_state_dir: {bench.tmp / 'state'}\n"
                      "retries: 1\nbackoff: 0.05\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(bench.tmp),
           "PACKET_PROVIDER_CONFIG": str(config), "ONE_XMLRPC": oned.url,
           "ONE_AUTH": str(bench.tmp / "one_auth"), "PACKET_API_URL": packet.url}
    cpu: Dict[str, List[float]] = {}

    def hook(stdin: bytes, label: str = "") -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, str(HOOK)], input=stdin, env=env, check=False,
                              capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode())
        if label:
            cpu.setdefault(label, []).append(
                (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)

    def baseline() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.setdefault("python -c pass", []).append(
            (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)

    def unassign_all() -> None:
        for assignment in client.device_assignments(devices[0]):
            client.unassign(assignment.id)

    base = "hook baseline: python -c pass (paired)"
    bench.pair("hook: fast path (VM without external alias)", lambda: hook(plain, "fast"),
               base, baseline, note="expat only: no typing/re/logging, no pyone/requests/"
                                    "lxml/yaml, no network call")
    bench.pair("hook: full path, nothing to change (replay)",
               lambda: hook(with_aliases, "replay"), base, baseline,
               note="2 aliases: 3 oned calls + 1 Packet GET")
    assigned = bench.pair("hook: full path, assign 2 aliases",
                          lambda: hook(with_aliases, "assign"), base, baseline,
                          setup=unassign_all, note="3 oned calls + 1 Packet GET + 2 POSTs")
    if assigned is not None:  # measured (not left out by --only): the hook really assigned
        first = ipaddress.IPv4Address(reservation.first_address)
        placed = [a.address for a in client.device_assignments(devices[0])]
        assert first in placed, (first, placed)
    pair_floor(bench, "hook: floor, import requests and pyone (the clients, nothing run)",
               sys.executable, "requests, pyone")
    for label, name in (("python -c pass", "hook baseline: python -c pass"),
                        ("fast", "hook: fast path"), ("replay", "hook: full path, replay"),
                        ("assign", "hook: full path, assign 2")):
        if cpu.get(label):
            bench.record(f"{name}: process CPU (user+sys)", statistics.median(cpu[label]), "ms",
                         note="median; steadier than wall time on a shared machine")
    record_process_costs(bench, "hook: fast path", [sys.executable, str(HOOK)], plain, env)
    record_process_costs(bench, "hook: full path, replay", [sys.executable, str(HOOK)],
                         with_aliases, env)
    bench.measure("hook: in-process fast path (parse + decide)", lambda: _in_process(plain),
                  repeat=max(bench.repeat, 200), note="the part that is not interpreter start")
    _against_upstream(bench, Upstream(bench.tmp, packet.url), hook, with_aliases, env,
                      unassign_all, client, devices[0], reservation)
    if bench.wanted("hook: API calls"):
        _api_calls(bench, client, admin, oned, hook, make_vm, event, packet_network, project,
                   devices[0], unassign_all)


def _api_calls(bench, client: PacketClient, admin: AdminClient, oned: OnedEmulator,
               hook: Callable[..., None], make_vm: Callable[..., int],
               event: Callable[[int], bytes], packet_network: Callable[..., int], project: str,
               device: str, unassign_all: Callable[[], None]) -> None:
    """Requests of one full run, assigning one alias beside ``OTHERS`` assigned ones."""
    unassign_all()
    block = client.reserve(project, 256, facility="ams1")
    big = packet_network(block)
    vm_id = make_vm(OTHERS + 1, big)
    ips = [a["IP"] for a in oned.state.vm(vm_id).aliases]
    for ip in ips[:OTHERS]:
        client.assign(device, ipaddress.IPv4Address(ip))
    admin.clear_requests()
    oned.calls.clear()
    hook(event(vm_id))
    requests = admin.requests()
    bench.record(f"hook: API calls, 1 alias to assign beside {OTHERS} assigned: Packet",
                 len(requests), "requests",
                 note=", ".join(sorted({f"{r['method']} {r['path'].split('?')[0][:5]}"
                                        for r in requests})))
    bench.record(f"hook: API calls, 1 alias to assign beside {OTHERS} assigned: oned",
                 len(oned.calls), "calls", note=" ".join(sorted(m for m, _ in oned.calls)))
    unassign_all()


def _in_process(stdin: bytes) -> None:
    import io

    from packet_provider.hook import entry as hook

    hook.run([], io.BytesIO(stdin), env={}, out=io.StringIO())


def _against_upstream(bench, upstream, hook: Callable[..., None], stdin: bytes,
                      env: Dict[str, str], unassign_all: Callable[[], None],
                      client: PacketClient, device: str, reservation) -> None:
    """The full path, ours (A) and upstream's (B) in turn: assigning a VM's two aliases
    (both start unassigned), and the replay of the same event (nothing to change)."""
    if upstream.missing(bench, "Ruby alias_ip hook"):
        return
    oned_env = {k: env[k] for k in ("ONE_XMLRPC", "ONE_AUTH", "HOME")}
    script = upstream.script("hooks", "alias_ip", "alias_ip.rb")

    def theirs() -> None:
        upstream.run([script], stdin, oned_env, name="alias_ip.rb")

    unassign_all()
    theirs()  # it must do the same work: both aliases on the host's device
    placed = {a.address for a in client.device_assignments(device)}
    if reservation.first_address not in placed or len(placed) != 2:
        raise RuntimeError(f"upstream's hook did not assign the VM's aliases: {placed}")
    for label, setup in (("assign 2 aliases", unassign_all), ("replay, nothing to change",
                                                              None)):
        upstream.pair(bench, f"hook vs upstream: full path, {label}", lambda: hook(stdin),
                      theirs, setup=setup, base_setup=setup, what="hooks/alias_ip")
