"""The demo: the whole NIC alias IP life cycle on the emulators, through installed files.

``python -m packet_lab.demo [--keep] [--workdir DIR]`` (``./demo.sh`` sets up and runs
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
from typing import Any, Dict, Iterator, List, Optional, Tuple

from packet_lab import netlab
from packet_lab.oned.emulator import OnedEmulator
from packet_lab.oned.scenario import Scenario
from packet_lab.packet.admin import AdminClient

LAB_ROOT = Path(__file__).resolve().parents[1]  # the directory that holds packet_lab
CHECKOUT = LAB_ROOT.parent  # a checkout of the project: lib/packet_lab, install.sh beside
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
                           state_file: Path) -> Tuple[subprocess.Popen, str]:
    """The Packet emulator as users run it; the token goes through the environment."""
    env = dict(os.environ, PACKET_EMULATOR_TOKENS=token, PYTHONPATH=str(LAB_ROOT))
    argv = [sys.executable, "-m", "packet_lab.packet", "--port", "0",
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
            self.net = self._stack.enter_context(netlab.Lab(hypervisors=2, vm_ip=VM_PRIVATE_IP))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def host_prefix(self, index: int) -> List[str]:
        return list(self.net.host_prefix(index)) if self.enabled else []


def _rules(lab: Lab, index: int) -> List[str]:
    """The NAT rules of ours for VMs in hypervisor ``index``: the DNAT and SNAT rules tagged
    with an alias (not the jumps to the addresses' marker chains, which carry the tag too)."""
    return [line for line in lab.net.nat_rules(index) if "alias_sdnat vm=" in line
            and "alias=" in line and (" -j DNAT " in line or " -j SNAT " in line)]


def _assignments(admin: AdminClient) -> Dict[str, str]:
    """address -> device id, as Packet routes them."""
    return {str(ipaddress.ip_interface(a["address"]).ip): a["device_id"]
            for a in admin.state()["assignments"]}


def _summary(events: List[Any]) -> str:
    runs = [e for e in events if e.name.startswith(("ipam ", "vnm ", "hook "))
            and not e.detail.get("skipped")]
    return ", ".join(f"{e.name.split(' ', 1)[1]} rc={e.rc} {e.duration_ms:.0f} ms"
                     for e in runs) or "none"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m packet_lab.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary ONE_LOCATION (logs, leases, state) for reading")
    parser.add_argument("--no-netns", action="store_true",
                        help="skip the packet path even as root")
    parser.add_argument("--packet-fault", type=int, metavar="STATUS",
                        help="make the Packet API answer every call with this HTTP status "
                             "(e.g. 503), to see how the plugin reports a Packet outage")
    parser.add_argument("--source", type=Path, default=CHECKOUT, metavar="DIR",
                        help="the project checkout whose install.sh the demo installs "
                             "(default: the one this lab came from, %(default)s)")
    args = parser.parse_args(argv)
    if not (args.source / "install.sh").is_file():
        print(f"packet_lab.demo: no install.sh in {args.source}: give the project checkout "
              "with --source DIR", file=sys.stderr)
        return 2
    why = "namespaces disabled (--no-netns)" if args.no_netns else netlab.missing_reason()
    netns = not why
    demo = Demo()
    workdir = Path(tempfile.mkdtemp(prefix="packet-provider-demo-"))
    print("packet_provider demo: the NIC alias IP life cycle on the Packet and oned emulators")
    print(f"  ONE_LOCATION {workdir}")
    if not netns:
        print(f"  {why}: everything runs except the packet path (VNM rules and TCP checks)")
    with contextlib.ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(shutil.rmtree, workdir, True)
        try:
            LifeCycle(demo, workdir, netns, cleanup, args.packet_fault, args.source).play()
        except Exception as exc:  # noqa: BLE001 - the demo reports, then exits non-zero
            demo.check(False, "the demo ran to its end", f"{type(exc).__name__}: {exc}")
    took = time.monotonic() - demo.started
    print(f"\n{demo.checks - len(demo.failures)}/{demo.checks} verifications passed "
          f"in {took:.1f} s" + (f"; kept {workdir}" if args.keep else ""))
    for failure in demo.failures:
        print(f"  failed: {failure}")
    return 1 if demo.failures else 0


class LifeCycle:
    """The demo's steps, in order; each prints what it did and checks what it claims."""

    def __init__(self, demo: Demo, workdir: Path, netns: bool,
                 cleanup: contextlib.ExitStack, packet_fault: Optional[int] = None,
                 source: Path = CHECKOUT) -> None:
        self.demo, self.workdir, self.netns, self.cleanup = demo, workdir, netns, cleanup
        self.source = source
        self.packet_fault = packet_fault
        self.token = "demo-token-" + uuid.uuid4().hex
        self.project, self.device1, self.device2 = (str(uuid.uuid4()) for _ in range(3))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "PACKET_"))}
        self.env.update(ONE_LOCATION=str(workdir), PYTHONDONTWRITEBYTECODE="1")
        self.remotes = workdir / "var" / "remotes"
        self.admin: Any = None
        self.sc: Any = None
        self.lab: Any = None
        self.ips: Dict[str, int] = {}  # alias IP -> NIC_ID

    def play(self) -> None:
        for step in (self.install, self.start_emulators, self.create_hooks, self.register,
                     self.create_vm, self.deploy, self.migrate, self.detach, self.terminate,
                     self.unregister, self.check_secrets):
            step()

    def install(self) -> None:
        demo = self.demo
        with demo.step("install into a temporary ONE_LOCATION (install.sh)"):
            proc = _run(["bash", str(self.source / "install.sh"), "--python", sys.executable, "-q"],
                        self.env)
            demo.check(proc.returncode == 0, "install.sh succeeded", proc.stderr.strip()[-300:])
            for exe in ("ipam/packet/register_address_range", "ipam/packet/get_address",
                        "vnm/alias_sdnat/post", "vnm/alias_sdnat/clean",
                        "hooks/alias_ip/alias_ip.py"):
                demo.check(os.access(self.remotes / exe, os.X_OK),
                           f"{exe} installed and executable")
            printed = proc.stdout
            demo.check("packet" in printed and "alias_sdnat" in printed and
                       printed.count("onehook create") == 3,
                       "printed the oned.conf changes and the three onehook commands")

    def start_emulators(self) -> None:
        demo = self.demo
        with demo.step("start the Packet API emulator and the oned emulator"):
            proc, url = _start_packet_emulator(self.token, self.project,
                                               [self.device1, self.device2],
                                               self.workdir / "packet-emulator.json")
            self.cleanup.callback(proc.wait, 10)
            self.cleanup.callback(proc.terminate)
            self.admin = AdminClient(url)
            self.oned = OnedEmulator(auth=ONE_AUTH).start()
            self.cleanup.callback(self.oned.stop)
            auth_file = self.workdir / "one_auth"
            auth_file.write_text(ONE_AUTH + "\n")
            auth_file.chmod(0o600)
            config = self.workdir / "etc" / "packet_provider.yaml"
            config.write_text(f"api_url: {url}\nconnect_timeout: 2\nread_timeout: 5\n"
                              f"retries: 2\nbackoff: 0.1\n"
                              f"tokens:\n  {self.project}: {self.token}\n")
            config.chmod(0o600)
            self.env.update(ONE_XMLRPC=self.oned.url, ONE_AUTH=str(auth_file))
            demo.did(f"Packet API {url} (a subprocess): project {self.project[:8]}, devices "
                     f"{self.device1[:8]} (host1) and {self.device2[:8]} (host2)")
            demo.did(f"oned XML-RPC {self.oned.url}; the API token is in the config only")
            demo.check(self.admin.state()["reservations"] == [],
                       "Packet starts with no reservation")
            if self.packet_fault:
                self.admin.fault(status=self.packet_fault, rate=1.0)
                demo.did(f"the Packet API now answers every call with {self.packet_fault}")

    def create_hooks(self) -> None:
        demo = self.demo
        with demo.step("create the three hooks through oned (install.sh --hooks)"):
            proc = _run(["bash", str(self.source / "install.sh"), "--python", sys.executable, "-q",
                         "--hooks"], self.env)
            demo.check(proc.returncode == 0, "install.sh --hooks succeeded", proc.stderr.strip())
            names = sorted(hook.name for hook in self.oned.state.hooks.values())
            demo.did("hooks: " + ", ".join(names))
            demo.check(len(names) == 3, "three alias_ip hooks in oned's hook pool", str(names))
        self.lab = self.cleanup.enter_context(Lab(self.netns))
        self.sc = Scenario(self.oned, self.remotes, env=self.env,
                           vnm_drivers=["alias_sdnat"] if self.netns else [])
        self.host1 = self.sc.add_host("host1", deploy_id=self.device1,
                                      host_prefix=self.lab.host_prefix(1))
        self.host2 = self.sc.add_host("host2", deploy_id=self.device2,
                                      host_prefix=self.lab.host_prefix(2))
        self.hv_of_device = {self.device1: 1, self.device2: 2}

    def register(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("create a network with a packet address range (register_address_range)"):
            self.private = sc.create_vnet("private", vn_mad="dummy", ars=[
                {"TYPE": "IP4", "IP": VM_PRIVATE_IP, "SIZE": "16"}])
            self.public = sc.create_vnet("public", vn_mad="alias_sdnat")
            mark = len(sc.events)
            self.ar_id = sc.add_ar(self.public, {
                "TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "8", "IPAM_MAD": "packet",
                "PACKET_PROJECT": self.project, "FACILITY": FACILITY})
            ar = sc.state.vnet(self.public).ar(self.ar_id)
            demo.did(_summary(sc.events[mark:]))
            reservations = self.admin.state()["reservations"]
            demo.check(len(reservations) == 1, "Packet holds exactly one reservation")
            self.block = ipaddress.ip_network(reservations[0]["network"])
            self.reservation = reservations[0]["id"]
            demo.did(f"AR {self.ar_id}: IP {ar.attrs.get('IP')} SIZE {ar.attrs.get('SIZE')} "
                     f"DEPLOY_ID {ar.attrs.get('DEPLOY_ID')} (block {self.block})")
            demo.check(ar.attrs.get("IP") == str(self.block.network_address)
                       and self.block.num_addresses == 8,
                       "the AR starts at the first address of the /29 reserved at Packet "
                       "(the fake IP given is ignored)")
            demo.check(ar.attrs.get("DEPLOY_ID") == self.reservation,
                       "DEPLOY_ID is the reservation id")
            demo.check("PACKET_TOKEN" not in ar.attrs,
                       "no token in the AR (it came from the config)")
        self.chosen = str(self.block.network_address + 5)
        self.leases = self.workdir / "var" / "ipam_state" / "packet" / self.reservation

    def create_vm(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("create a VM with two external aliases (get_address, allocate_address)"):
            mark = len(sc.events)
            self.vm = sc.create_vm("web", nics=[{"network_id": self.private, "ip": VM_PRIVATE_IP}],
                                   aliases=[{"network_id": self.public},
                                            {"network_id": self.public, "ip": self.chosen}])
            demo.did(_summary(sc.events[mark:]))
            self.ips = {a["IP"]: int(a["NIC_ID"]) for a in sc.state.vm(self.vm).aliases}
            demo.did("aliases: " + ", ".join(f"NIC_ID {n} {ip}" for ip, n in self.ips.items()))
            demo.check(sorted(p.name for p in self.leases.iterdir()) == sorted(self.ips),
                       "one lease file per alias IP, in the Ruby driver's layout")
            demo.check(self.chosen in self.ips and str(self.block.network_address) in self.ips,
                       "get_address gave the lowest free address, allocate_address the chosen one")

    def _verify_on(self, index: int, device: str, wanted: List[str],
                   show_rules: bool = False) -> None:
        demo = self.demo
        assigned = _assignments(self.admin)
        demo.check(all(assigned.get(ip) == device for ip in wanted)
                   and len(assigned) == len(wanted),
                   f"Packet routes {', '.join(wanted)} to host{index}'s device only",
                   str(assigned))
        if not self.netns:
            return
        here, other = _rules(self.lab, index), _rules(self.lab, 3 - index)
        demo.did(f"{len(here)} NAT rules of ours on host{index}, {len(other)} on host{3 - index}")
        if show_rules:
            for rule in here:
                demo.did("  " + rule)
        demo.check(len(here) == 2 * len(wanted) + 1 and not other,
                   f"DNAT (PREROUTING, OUTPUT) for {len(wanted)} alias(es) and one SNAT, "
                   f"on host{index} only")
        net = self.lab.net
        for ip in wanted:
            net.route_public(ip, self.hv_of_device[assigned[ip]])
            seen = net.connect("client", ip)
            demo.check(seen == net.client_ip,
                       f"TCP client -> {ip} reached the server in the VM (peer {seen})")
        source = net.connect_from_vm()
        demo.check(source in wanted, f"TCP VM -> client arrives from a public IP ({source})")

    def deploy(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("deploy on host1 (VNM pre and post, hook on RUNNING)"):
            mark = len(sc.events)
            sc.deploy(self.vm, self.host1)
            demo.did(_summary(sc.events[mark:]))
            demo.check(all(e.ok for e in sc.events[mark:]), "every action succeeded")
            self._verify_on(1, self.device1, list(self.ips), show_rules=True)

    def migrate(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("live-migrate to host2 (the hook moves the addresses, the rules move)"):
            mark = len(sc.events)
            sc.migrate(self.vm, self.host2, live=True)
            if self.netns:
                self.lab.net.move_vm(2)
            demo.did(_summary(sc.events[mark:]))
            demo.check(all(e.ok for e in sc.events[mark:]), "every action succeeded")
            self._verify_on(2, self.device2, list(self.ips))

    def detach(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step(f"hot-detach alias {self.chosen} (VNM clean, hook, free_address)"):
            mark = len(sc.events)
            sc.detach_alias(self.vm, self.ips.pop(self.chosen))
            demo.did(_summary(sc.events[mark:]))
            demo.check(all(e.ok for e in sc.events[mark:]), "every action succeeded")
            self._verify_on(2, self.device2, list(self.ips))
            demo.check(not (self.leases / self.chosen).exists(),
                       f"the lease of {self.chosen} is gone")
            if self.netns:
                seen = self.lab.net.connect("client", self.chosen, timeout=0.5)
                demo.check(seen is None, f"TCP client -> {self.chosen} no longer reaches "
                           "the VM", f"peer {seen}")

    def terminate(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("terminate (VNM clean, hook on DONE, free_address)"):
            mark = len(sc.events)
            sc.terminate(self.vm)
            demo.did(_summary(sc.events[mark:]))
            demo.check(all(e.ok for e in sc.events[mark:]), "every action succeeded")
            demo.check(_assignments(self.admin) == {}, "no address is assigned at Packet")
            if self.netns:
                left = [line for i in (1, 2) for line in self.lab.net.nat_rules(i)
                        if "alias_sdnat vm=" in line]
                demo.check(left == [], "no NAT rule of ours (nor jump to an address's marker "
                                       "chain) is left on either host", "; ".join(left[:3]))
            demo.check(not any(self.leases.iterdir()) if self.leases.exists() else True,
                       "no lease is left")

    def unregister(self) -> None:
        demo, sc = self.demo, self.sc
        with demo.step("remove the address range (unregister_address_range)"):
            mark = len(sc.events)
            sc.rm_ar(self.public, self.ar_id)
            demo.did(_summary(sc.events[mark:]))
            demo.check(self.admin.state()["reservations"] == [],
                       "the reservation is released at Packet")

    def check_secrets(self) -> None:
        demo = self.demo
        with demo.step("look for the API token where it must never be"):
            logs = sorted(self.workdir.glob("var/*.log"))
            demo.did("logs: " + ", ".join(p.name for p in logs))
            leaked = [p.name for p in logs if self.token in p.read_text(errors="replace")]
            outputs = [e.name for e in self.sc.events
                       if self.token in e.stdout or self.token in e.stderr
                       or self.token in " ".join(e.argv)]
            demo.check(not leaked, "the API token appears in no log", ", ".join(leaked))
            demo.check(not outputs, "nor in any action's argv, stdout or stderr",
                       ", ".join(outputs))


if __name__ == "__main__":
    sys.exit(main())
