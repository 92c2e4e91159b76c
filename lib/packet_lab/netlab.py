"""A small lab of network namespaces standing in for Packet's network, hypervisors and a VM.

Used by the demo and the end-to-end tests (standard library only; needs root, ``ip`` and
``iptables``). The topology::

    client ns (lo: 172.31.0.1)
       |-- veth 172.31.1.1/30 <-> 172.31.1.2/30 -- hv1 ns --+
       |-- veth 172.31.2.1/30 <-> 172.31.2.2/30 -- hv2 ns   |  veth 10.0.0.1/24 (gateway)
                                                            +-- vm ns: 10.0.0.5/24

The client reaches a public IP through the hypervisor ``route_public`` names: that is what
Packet does for an address assigned to a device. ``move_vm`` re-plugs the VM into another
hypervisor, keeping its address, as a migration does. A TCP echo server in the VM (and one in
the client) answers each connection with the peer address it saw, so a test sees both that
a connection arrived and which source address it came from.

    with Lab(hypervisors=2, vm_ip="10.0.0.5") as lab:
        prefix = lab.host_prefix(1)          # ["ip", "netns", "exec", "<hv1>"]
        lab.route_public("203.0.113.7", 1)
        lab.connect("client", "203.0.113.7") # -> "172.31.0.1", or None if nothing answered
        lab.connect_from_vm()                # the source the client saw

With ``bridged=True`` each hypervisor holds the VM's private network as a Linux bridge named
``lab.bridge`` (the gateway address on it, ``bridge-nf-call-iptables = 1`` as on the nodes),
and ``add_neighbour`` plugs a second VM namespace with its own echo server into the bridge of
the VM's host: ``lab.connect("vm", lab.neighbour_ip)`` is the source a neighbour on the same
private network sees.

Names are unique per lab (several labs may run at once) and everything is removed on exit,
also after an error.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

CLIENT_IP = "172.31.0.1"
GATEWAY = "10.0.0.1"
PORT = 8080
CONNECT_SECONDS = 2.0

_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    try:
        c.sendall((peer[0] + "\n").encode())
    finally:
        c.close()
"""

_CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(float(sys.argv[3]))
    print(c.recv(100).decode().strip())
except OSError as exc:
    print("error " + type(exc).__name__)
"""


class LabError(RuntimeError):
    pass


def bridge_missing_reason() -> str:
    """Why a bridged lab cannot be built here (no br_netfilter), or ""."""
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        return "no br_netfilter (modprobe br_netfilter)"
    return ""


def missing_reason() -> str:
    """Why a lab cannot be built here, or ""."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "iptables-save", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install iproute2 iptables)"
    return ""


def _run(argv: List[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


class Lab:
    def __init__(self, hypervisors: int = 2, vm_ip: str = "10.0.0.5",
                 port: int = PORT, bridged: bool = False) -> None:
        self.vm_ip = str(ipaddress.IPv4Address(vm_ip))
        self.client_ip = CLIENT_IP
        self.port = port
        tag = secrets.token_hex(3)
        self.tag = tag
        self.client = f"pl{tag}c"
        self.hvs = {i: f"pl{tag}h{i}" for i in range(1, hypervisors + 1)}
        self.vm = f"pl{tag}v"
        self.bridged = bridged
        self.bridge = f"pl{tag}br" if bridged else ""  # the same name on every hypervisor
        self.neighbour = f"pl{tag}n"
        self.neighbour_ip: Optional[str] = None
        self.vm_host: Optional[int] = None
        self._servers: List[subprocess.Popen] = []

    # -- life --

    def __enter__(self) -> Lab:
        reason = missing_reason() or (bridge_missing_reason() if self.bridged else "")
        if reason:
            raise LabError(reason)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, name: str) -> str:
        """The namespace for "client", "vm", or a hypervisor index."""
        if name == "client":
            return self.client
        if name == "vm":
            return self.vm
        if name == "neighbour":
            return self.neighbour
        return self.hvs[int(name)]

    def exec(self, ns: str, argv: List[str], check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.ns(ns), *argv], check)

    def host_prefix(self, index: int) -> List[str]:
        return ["ip", "netns", "exec", self.hvs[index]]

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.exec(ns, [sys.executable, "-c",
                       "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", path, value])

    def _build(self) -> None:
        for ns in [self.client, self.vm, *self.hvs.values()]:
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.client, "addr", "add", f"{CLIENT_IP}/32", "dev", "lo"])
        for i, hv in self.hvs.items():
            a, b = f"pl{self.tag}c{i}", f"pl{self.tag}u{i}"
            _run(["ip", "link", "add", a, "netns", self.client, "type", "veth", "peer",
                  "name", b, "netns", hv])
            _run(["ip", "-n", self.client, "addr", "add", f"172.31.{i}.1/30", "dev", a])
            _run(["ip", "-n", hv, "addr", "add", f"172.31.{i}.2/30", "dev", b])
            _run(["ip", "-n", self.client, "link", "set", a, "up"])
            _run(["ip", "-n", hv, "link", "set", b, "up"])
            _run(["ip", "-n", hv, "route", "add", f"{CLIENT_IP}/32", "via", f"172.31.{i}.1"])
            self._sysctl(str(i), "net.ipv4.ip_forward", "1")
            if self.bridged:
                _run(["ip", "-n", hv, "link", "add", self.bridge, "type", "bridge"])
                _run(["ip", "-n", hv, "addr", "add", f"{GATEWAY}/24", "dev", self.bridge])
                _run(["ip", "-n", hv, "link", "set", self.bridge, "up"])
                self._sysctl(str(i), "net.bridge.bridge-nf-call-iptables", "1")
        self.move_vm(1)
        self._servers.append(self._serve("vm"))
        self._servers.append(self._serve("client"))

    def _serve(self, ns: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), sys.executable, "-c",
                                 _SERVER, str(self.port)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise LabError(f"the TCP server in {ns} did not start")
        return proc

    def close(self) -> None:
        for proc in self._servers:
            proc.kill()
            proc.wait()
        self._servers.clear()
        for ns in [self.vm, self.client, *self.hvs.values()]:
            _run(["ip", "netns", "del", ns], check=False)
        if self.neighbour_ip is not None:
            _run(["ip", "netns", "del", self.neighbour], check=False)

    # -- what tests and the demo do --

    def move_vm(self, index: int) -> None:
        """Plug the VM into hypervisor ``index`` (unplugging it from the previous one)."""
        vm_if, hv_if = f"pl{self.tag}vm", f"pl{self.tag}g{index}"
        if self.vm_host is not None:
            _run(["ip", "-n", self.vm, "link", "del", vm_if], check=False)
        hv = self.hvs[index]
        _run(["ip", "link", "add", vm_if, "netns", self.vm, "type", "veth", "peer", "name",
              hv_if, "netns", hv])
        _run(["ip", "-n", self.vm, "addr", "add", f"{self.vm_ip}/24", "dev", vm_if])
        if self.bridged:
            _run(["ip", "-n", hv, "link", "set", hv_if, "master", self.bridge])
        else:
            _run(["ip", "-n", hv, "addr", "add", f"{GATEWAY}/24", "dev", hv_if])
        _run(["ip", "-n", self.vm, "link", "set", vm_if, "up"])
        _run(["ip", "-n", hv, "link", "set", hv_if, "up"])
        _run(["ip", "-n", self.vm, "route", "replace", "default", "via", GATEWAY])
        self.vm_host = index

    def add_neighbour(self, ip: str = "10.0.0.6") -> str:
        """A second VM namespace with ``ip`` on the private network of the VM's host (its
        bridge; bridged labs only), running the echo server; its namespace name."""
        if not self.bridged or self.vm_host is None:
            raise LabError("a neighbour needs a bridged lab (Lab(bridged=True))")
        if self.neighbour_ip is not None:
            raise LabError("this lab has a neighbour already")
        address = str(ipaddress.IPv4Address(ip))
        hv = self.hvs[self.vm_host]
        nb_if, hv_if = f"pl{self.tag}nb", f"pl{self.tag}nh"
        _run(["ip", "netns", "add", self.neighbour])
        self.neighbour_ip = address
        _run(["ip", "-n", self.neighbour, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", nb_if, "netns", self.neighbour, "type", "veth", "peer",
              "name", hv_if, "netns", hv])
        _run(["ip", "-n", self.neighbour, "addr", "add", f"{address}/24", "dev", nb_if])
        _run(["ip", "-n", hv, "link", "set", hv_if, "master", self.bridge])
        _run(["ip", "-n", self.neighbour, "link", "set", nb_if, "up"])
        _run(["ip", "-n", hv, "link", "set", hv_if, "up"])
        _run(["ip", "-n", self.neighbour, "route", "replace", "default", "via", GATEWAY])
        self._servers.append(self._serve("neighbour"))
        return self.neighbour

    def route_public(self, ip: str, index: int) -> None:
        """Route ``ip`` from the client to hypervisor ``index`` (Packet's assignment)."""
        address = ipaddress.IPv4Address(ip)
        _run(["ip", "-n", self.client, "route", "replace", f"{address}/32", "via",
              f"172.31.{index}.2", "src", CLIENT_IP])

    def connect(self, ns: str, ip: str, timeout: float = CONNECT_SECONDS) -> Optional[str]:
        """Open a TCP connection from ``ns`` to ``ip``; the peer address the server saw, or
        None when no server answered."""
        address = str(ipaddress.IPv4Address(ip))
        out = self.exec(ns, [sys.executable, "-c", _CLIENT, address, str(self.port),
                             str(timeout)]).stdout.strip()
        return None if not out or out.startswith("error") else out

    def connect_from_vm(self, timeout: float = CONNECT_SECONDS) -> Optional[str]:
        """A connection from the VM to the client: the source address the client saw."""
        return self.connect("vm", CLIENT_IP, timeout)

    def nat_rules(self, index: int) -> List[str]:
        """The nat table of hypervisor ``index`` as ``iptables-save`` rule lines."""
        out = self.exec(str(index), ["iptables-save", "-t", "nat"]).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def names(self) -> Dict[str, str]:
        names = {"client": self.client, "vm": self.vm,
                 **{f"hv{i}": n for i, n in self.hvs.items()}}
        if self.neighbour_ip is not None:
            names["neighbour"] = self.neighbour
        return names
