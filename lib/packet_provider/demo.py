"""The demo: the whole NIC alias IP life cycle on the emulators, through installed files.

``python -m packet_provider.demo [--keep] [--workdir DIR]`` (``./demo.sh`` sets up and runs
it). It installs the plugin into a temporary ONE_LOCATION with ``install.sh``, starts the
Packet API emulator (a subprocess, as a user would run it) and the oned emulator, creates the
hooks with ``install.sh --hooks``, and plays oned's part through the scenario driver: every
IPAM, VNM and hook action is the installed executable run with the argv and stdin oned uses.
As root the hypervisors and the VM are network namespaces, the VNM actions run inside the
hypervisor's namespace, and each deploy or migration is proven with real TCP connections.

Every step prints what it did and what it verified; the exit status is non-zero when any
verification failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from .emulator.admin import AdminClient
from .emulator.oned import OnedEmulator
from .emulator.scenario import Scenario

REPO = Path(__file__).resolve().parents[2]
ONE_AUTH = "oneadmin:demo-" + uuid.uuid4().hex[:12]
VM_PRIVATE_IP = "10.0.0.5"
FACILITY = "ams1"
WIDTH = 78


class Demo:
    """Step printing and verification bookkeeping."""

    def __init__(self) -> None:
        self.failures: List[str] = []
        self.checks = 0
        self.step_no = 0
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.step_no += 1
        print(f"\n{self.step_no:2d}. {title}", flush=True)
        began = time.monotonic()
        try:
            yield
        finally:
            print(f"    ({(time.monotonic() - began) * 1000:.0f} ms)", flush=True)

    def did(self, text: str) -> None:
        print(f"    - {text}", flush=True)

    def check(self, ok: bool, text: str, detail: str = "") -> bool:
        self.checks += 1
        mark = "ok  " if ok else "FAIL"
        print(f"    {mark} {text}" + (f": {detail}" if detail and not ok else ""), flush=True)
        if not ok:
            self.failures.append(text)
        return ok


def _run(argv: List[str], env: Dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _start_packet_emulator(token: str, project: str, devices: List[str],
                           state_file: Path) -> "tuple[subprocess.Popen, str]":
    """The Packet emulator as users run it; the token goes through the environment."""
    env = dict(os.environ, PACKET_EMULATOR_TOKENS=token, PYTHONPATH=str(REPO / "lib"))
    argv = [sys.executable, "-m", "packet_provider.emulator", "--port", "0",
            "--project", project, "--state-file", str(state_file)]
    for device in devices:
        argv += ["--device", f"{device}@{project}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"demo: the Packet emulator did not start ({line or 'no output'})")
    return proc, line.split(" ", 2)[2]


class Lab:
    """Namespaces when root, or nothing (the packet path is then skipped)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._stack = contextlib.ExitStack()
        self.net: Any = None

    def __enter__(self) -> Lab:
        if self.enabled:
            from . import netlab
            self.net = self._stack.enter_context(netlab.Lab(hypervisors=2, vm_ip=VM_PRIVATE_IP))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def host_prefix(self, index: int) -> List[str]:
        return list(self.net.host_prefix(index)) if self.enabled else []


def _rules(lab: Lab, index: int) -> List[str]:
    """Our NAT rules in hypervisor ``index`` (the lines iptables-save shows with our tag)."""
    out = subprocess.run(lab.host_prefix(index) + ["iptables-save", "-t", "nat"],
                         capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines()
            if line.startswith("-A ") and "alias_sdnat" in line]


def _assignments(admin: AdminClient) -> Dict[str, str]:
    """address -> device id, as Packet routes them."""
    return {str(ipaddress.ip_interface(a["address"]).ip): a["device_id"]
            for a in admin.state()["assignments"]}


def _hook_runs(sc: Scenario, since: int) -> List[Any]:
    return [e for e in sc.events[since:] if e.name.startswith("hook ")]


def _vnm_runs(sc: Scenario, since: int) -> List[Any]:
    return [e for e in sc.events[since:] if e.name.startswith("vnm ")]


def _summary(events: List[Any]) -> str:
    runs = [e for e in events if e.name.startswith(("ipam ", "vnm ", "hook "))
            and not e.detail.get("skipped")]
    return ", ".join(f"{e.name.split(' ', 1)[1]} rc={e.rc} {e.duration_ms:.0f} ms"
                     for e in runs) or "none"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m packet_provider.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary ONE_LOCATION (logs, leases, state) for reading")
    parser.add_argument("--no-netns", action="store_true",
                        help="skip the packet path even as root")
    args = parser.parse_args(argv)
    root = os.geteuid() == 0
    netns = root and not args.no_netns and shutil.which("ip") is not None
    demo = Demo()
    workdir = Path(tempfile.mkdtemp(prefix="packet-provider-demo-"))
    print("packet_provider demo: the NIC alias IP life cycle on the Packet and oned emulators")
    print(f"  ONE_LOCATION {workdir}")
    if not netns:
        why = "not root" if not root else "namespaces disabled or iproute2 missing"
        print(f"  {why}: everything runs except the packet path (VNM rules and TCP checks)")
    with contextlib.ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(shutil.rmtree, workdir, True)
        try:
            _play(demo, workdir, netns, cleanup)
        except Exception as exc:  # noqa: BLE001 - the demo reports, then exits non-zero
            demo.check(False, "the demo ran to its end", f"{type(exc).__name__}: {exc}")
    took = time.monotonic() - demo.started
    print(f"\n{demo.checks - len(demo.failures)}/{demo.checks} verifications passed "
          f"in {took:.1f} s" + (f"; kept {workdir}" if args.keep else ""))
    for failure in demo.failures:
        print(f"  failed: {failure}")
    return 1 if demo.failures else 0


def _play(demo: Demo, workdir: Path, netns: bool, cleanup: contextlib.ExitStack) -> None:
    token = "demo-token-" + uuid.uuid4().hex
    project, device1, device2 = (str(uuid.uuid4()) for _ in range(3))
    auth_file = workdir / "one_auth"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "PACKET_"))}
    env["ONE_LOCATION"] = str(workdir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    remotes = workdir / "var" / "remotes"

    with demo.step("install into a temporary ONE_LOCATION (install.sh)"):
        proc = _run(["bash", str(REPO / "install.sh"), "--python", sys.executable, "-q"], env)
        demo.check(proc.returncode == 0, "install.sh succeeded", proc.stderr.strip()[-300:])
        actions = sorted(p.name for p in (remotes / "ipam" / "packet").iterdir())
        demo.did("IPAM actions: " + " ".join(a for a in actions if not a.endswith(".py")))
        for exe in ("ipam/packet/get_address", "vnm/alias_sdnat/post",
                    "hooks/alias_ip/alias_ip.py"):
            demo.check(os.access(remotes / exe, os.X_OK), f"{exe} installed and executable")
        printed = proc.stdout
        demo.check("packet" in printed and "alias_sdnat" in printed and
                   printed.count("onehook create") == 3,
                   "printed the oned.conf changes and the three onehook commands")

    with demo.step("start the Packet API emulator and the oned emulator"):
        packet_proc, packet_url = _start_packet_emulator(
            token, project, [device1, device2], workdir / "packet-emulator.json")
        cleanup.callback(packet_proc.wait, 10)
        cleanup.callback(packet_proc.terminate)
        admin = AdminClient(packet_url)
        oned = OnedEmulator(auth=ONE_AUTH).start()
        cleanup.callback(oned.stop)
        auth_file.write_text(ONE_AUTH + "\n")
        auth_file.chmod(0o600)
        (workdir / "etc" / "packet_provider.yaml").write_text(
            f"api_url: {packet_url}\nconnect_timeout: 2\nread_timeout: 5\nretries: 2\n"
            f"backoff: 0.1\ntokens:\n  {project}: {token}\n")
        env.update(ONE_XMLRPC=oned.url, ONE_AUTH=str(auth_file))
        demo.did(f"Packet API {packet_url}: project {project[:8]}, devices "
                 f"{device1[:8]} (host1) and {device2[:8]} (host2)")
        demo.did(f"oned XML-RPC {oned.url}; the token is in the config, not in oned")
        demo.check(admin.state()["reservations"] == [], "Packet starts with no reservation")

    with demo.step("create the three hooks through oned (install.sh --hooks)"):
        proc = _run(["bash", str(REPO / "install.sh"), "--python", sys.executable, "-q",
                     "--hooks"], env)
        demo.check(proc.returncode == 0, "install.sh --hooks succeeded", proc.stderr.strip())
        names = sorted(hook.name for hook in oned.state.hooks.values())
        demo.did("hooks: " + ", ".join(names))
        demo.check(len(names) == 3, "three alias_ip hooks in oned's hook pool", str(names))

    lab = cleanup.enter_context(Lab(netns))
    sc = Scenario(oned, remotes, env=env, vnm_drivers=["alias_sdnat"] if netns else [])
    host1 = sc.add_host("host1", deploy_id=device1, host_prefix=lab.host_prefix(1))
    host2 = sc.add_host("host2", deploy_id=device2, host_prefix=lab.host_prefix(2))
    hv_of_device = {device1: 1, device2: 2}

    with demo.step("create a network with a packet address range (register_address_range)"):
        private = sc.create_vnet("private", vn_mad="dummy", ars=[
            {"TYPE": "IP4", "IP": VM_PRIVATE_IP, "SIZE": "16"}])
        public = sc.create_vnet("public", vn_mad="alias_sdnat")
        mark = len(sc.events)
        ar_id = sc.add_ar(public, {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "8",
                                   "IPAM_MAD": "packet", "PACKET_PROJECT": project,
                                   "FACILITY": FACILITY})
        ar = sc.state.vnet(public).ar(ar_id)
        demo.did(_summary(sc.events[mark:]))
        reservations = admin.state()["reservations"]
        demo.check(len(reservations) == 1, "Packet holds exactly one reservation")
        block = ipaddress.ip_network(reservations[0]["network"])
        demo.did(f"AR {ar_id}: IP {ar.attrs.get('IP')} SIZE {ar.attrs.get('SIZE')} "
                 f"DEPLOY_ID {ar.attrs.get('DEPLOY_ID')} (block {block})")
        demo.check(ar.attrs.get("IP") == str(block.network_address) and block.num_addresses == 8,
                   "the AR starts at the first address of the /29 reserved at Packet")
        demo.check(ar.attrs.get("DEPLOY_ID") == reservations[0]["id"],
                   "DEPLOY_ID is the reservation id")
        demo.check("PACKET_TOKEN" not in ar.attrs, "no token in the AR (it came from the config)")
    chosen = str(block.network_address + 5)

    with demo.step("create a VM with two external aliases (get_address, allocate_address)"):
        mark = len(sc.events)
        vm = sc.create_vm("web", nics=[{"network_id": private, "ip": VM_PRIVATE_IP}],
                          aliases=[{"network_id": public}, {"network_id": public, "ip": chosen}])
        demo.did(_summary(sc.events[mark:]))
        aliases = {a["IP"]: int(a["NIC_ID"]) for a in sc.state.vm(vm).aliases}
        ips = list(aliases)
        demo.did("aliases: " + ", ".join(f"NIC_ID {n} {ip}" for ip, n in aliases.items()))
        leases = workdir / "var" / "ipam_state" / "packet" / reservations[0]["id"]
        demo.check(sorted(p.name for p in leases.iterdir()) == sorted(ips),
                   "one lease file per alias IP in the Ruby driver's layout")
        demo.check(chosen in ips and str(block.network_address) in ips,
                   "get_address gave the lowest free address, allocate_address the chosen one")

    def verify_on(host_index: int, device: str, wanted: List[str]) -> None:
        assigned = _assignments(admin)
        demo.check(all(assigned.get(ip) == device for ip in wanted) and
                   len(assigned) == len(wanted),
                   f"Packet routes {', '.join(wanted)} to host{host_index}'s device only",
                   str(assigned))
        if not netns:
            return
        here, other = _rules(lab, host_index), _rules(lab, 3 - host_index)
        demo.did(f"{len(here)} NAT rules of ours on host{host_index}, {len(other)} on "
                 f"host{3 - host_index}")
        demo.check(len(here) == 3 * len(wanted) and not other,
                   f"DNAT/SNAT rules for {len(wanted)} alias(es) on host{host_index} only")
        for ip in wanted:
            lab.net.route_public(ip, hv_of_device[assigned[ip]])
            seen = lab.net.connect("client", ip)
            demo.check(seen == lab.net.client_ip,
                       f"TCP client -> {ip}:{lab.net.port} reached the VM (peer {seen})")
        source = lab.net.connect_from_vm()
        demo.check(source in wanted, f"TCP VM -> client arrives from a public IP ({source})")

    with demo.step("deploy on host1 (VNM post, hook on RUNNING)"):
        mark = len(sc.events)
        sc.deploy(vm, host1)
        demo.did("vnm: " + _summary(_vnm_runs(sc, mark)))
        demo.did("hooks: " + _summary(_hook_runs(sc, mark)))
        demo.check(all(e.ok for e in _hook_runs(sc, mark) + _vnm_runs(sc, mark)),
                   "every action succeeded")
        verify_on(1, device1, ips)

    with demo.step("live-migrate to host2 (rules and addresses move)"):
        mark = len(sc.events)
        sc.migrate(vm, host2, live=True)
        if netns:
            lab.net.move_vm(2)
        demo.did("vnm: " + _summary(_vnm_runs(sc, mark)))
        demo.did("hooks: " + _summary(_hook_runs(sc, mark)))
        verify_on(2, device2, ips)

    with demo.step(f"hot-detach alias {chosen} (VNM clean, hook, free_address)"):
        mark = len(sc.events)
        sc.detach_alias(vm, aliases[chosen])
        demo.did(_summary(sc.events[mark:]))
        kept = [ip for ip in ips if ip != chosen]
        verify_on(2, device2, kept)
        demo.check(not (leases / chosen).exists(), f"the lease of {chosen} is gone")

    with demo.step("terminate (VNM clean, hook on DONE, free_address)"):
        mark = len(sc.events)
        sc.terminate(vm)
        demo.did(_summary(sc.events[mark:]))
        demo.check(_assignments(admin) == {}, "no address is assigned at Packet")
        if netns:
            demo.check(_rules(lab, 1) == [] and _rules(lab, 2) == [],
                       "no NAT rule of ours is left on either host")
        demo.check(not leases.exists() or not any(leases.iterdir()), "no lease is left")

    with demo.step("remove the address range (unregister_address_range)"):
        mark = len(sc.events)
        sc.rm_ar(public, ar_id)
        demo.did(_summary(sc.events[mark:]))
        demo.check(admin.state()["reservations"] == [], "the reservation is released at Packet")

    logs = sorted(p.name for p in (workdir / "var").glob("*.log"))
    leaked = [name for name in logs if token in (workdir / "var" / name).read_text()]
    demo.did("logs: " + ", ".join(logs))
    demo.check(not leaked, "the API token appears in no log", ", ".join(leaked))


Check = Callable[[], bool]

if __name__ == "__main__":
    sys.exit(main())
