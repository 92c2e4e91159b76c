"""alias_sdnat with real iptables in network namespaces: the driver runs as the VMM driver runs
it (a subprocess inside the hypervisor's namespace, base64 of the VNM view and a newline on
stdin), and real TCP connections prove the DNAT and the SNAT.

Every chain of a VM that translates a public IP first jumps to the IP's marker (an empty chain
``ALIAS_SDNAT_C_<IP in hex>``): the tests count a VM's NAT rules (DNAT, SNAT) and those jumps
apart, and check that each NAT rule follows the jump to its own IP's marker
(:meth:`Host.nat`), and which markers exist.

Each test runs in three set-ups (``mode``):

- ``root``: the driver as root (one iptables-restore transaction), once per iptables flavour;
- ``dropin``: as oneadmin from a remotes tree like /var/tmp/one, through real sudo with
  OpenNebula's stock ONE_NET rule plus the drop-in ``install.sh --node`` writes (transaction);
- ``stock``: as oneadmin with the stock ONE_NET rule only (single iptables commands).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

import pytest

from fixtures import hostuser
from fixtures.common import REMOTES, netns_missing_reason
from fixtures.vmxml import vm_xml, vnm_stdin
from fixtures.vnmview import vnm_view
from packet_lab import netlab

pytestmark = pytest.mark.skipif(bool(netns_missing_reason()),
                                reason=netns_missing_reason() or "-")

DRIVER = REMOTES / "vnm" / "alias_sdnat"
FLAVOURS = [f for f in ("legacy", "nft") if shutil.which(f"iptables-{f}-restore")]
MODES = ["root", "dropin", "stock"]
MARKER_PREFIX = "ALIAS_SDNAT_C_"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AS_ONEADMIN = hostuser.missing_reason()
REAL_DROPIN = hostuser.REAL_DROPIN


class Driver:
    """How the driver is run: ``argv(ns_prefix, action)``, its environment, and the mode
    it must report (``transaction`` or ``stock-sudoers``)."""

    def __init__(self, mode: str, tmp: Path, remotes: Path = REMOTES) -> None:
        self.mode, self.remotes = mode, remotes
        self.env = {"PATH": SYSTEM_PATH}
        if mode == "root":
            self.env["ALIAS_SDNAT_LOCK"] = str(tmp / "alias_sdnat.lock")
        else:  # oneadmin's PATH has no sbin: sudo finds iptables on its secure_path
            self.env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        self.reports = "stock-sudoers mode" if mode == "stock" else "transaction mode"

    def argv(self, prefix: List[str], action: str) -> List[str]:
        path = str(self.remotes / "vnm" / "alias_sdnat" / action)
        return [*prefix, path] if self.mode == "root" else [*prefix, *hostuser.as_user([path])]


@contextmanager
def driver_in(mode: str, tmp: Path) -> Iterator[Driver]:
    """The driver in ``mode``: as root from the checkout, or as oneadmin from a remotes tree
    like /var/tmp/one with the mode's real sudoers in /etc/sudoers.d meanwhile."""
    if mode == "root":
        yield Driver(mode, tmp)
        return
    with hostuser.driver_setup(mode, tmp) as tree:
        yield Driver(mode, tmp, tree)


@pytest.fixture
def driver(request, tmp_path: Path) -> Iterator[Driver]:
    with driver_in(request.param, tmp_path) as found:
        yield found


def run(prefix: List[str], action: str, xml: bytes, drv: Driver,
        *args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run ``action`` in the namespace of ``prefix`` the way one_vmm_exec does: base64 of
    the VM's VNM view and a newline on stdin."""
    return subprocess.run(drv.argv(prefix, action), input=vnm_stdin(vnm_view(xml)),
                          capture_output=True, env=env or drv.env, timeout=60, check=False)


def ok(proc: subprocess.CompletedProcess, drv: Optional[Driver] = None) -> None:
    assert proc.returncode == 0, proc.stderr.decode()
    if drv is not None and b"aliases " in proc.stderr and b"-> 0," not in proc.stderr:
        assert drv.reports in proc.stderr.decode(), proc.stderr.decode()


def marker(ip: str) -> str:
    """The marker chain of a public IP (written out here, not taken from the driver)."""
    return MARKER_PREFIX + "".join(f"{int(octet):02X}" for octet in ip.split("."))


def nat_of(rules: List[str]) -> List[str]:
    """The NAT rules (DNAT, SNAT) among ``rules`` (iptables-save lines of a VM's chains),
    after checking that each one is right after a jump, with the same comment, to the marker
    of the public IP it translates, and that every marker jump is followed so."""
    found = []
    for number, rule in enumerate(rules):
        words = rule.split()
        if words[-2:-1] == ["-j"] and words[-1].startswith(MARKER_PREFIX):
            assert number + 1 < len(rules) and rules[number + 1].split()[1] == words[1], rule
            continue
        assert "-j DNAT" in rule or "-j SNAT" in rule, rule
        public = (words[words.index("-d") + 1].split("/")[0] if "-j DNAT" in rule
                  else words[words.index("--to-source") + 1])
        comment = rule[rule.index("--comment"):].split(" -j ")[0]
        assert number > 0, rule
        jump = rules[number - 1]
        assert jump.split()[1] == words[1] and jump.endswith(f" -j {marker(public)}"), (jump, rule)
        assert f"{comment} -j {marker(public)}" in jump, (jump, rule)
        found.append(rule)
    assert len(found) * 2 == len(rules), rules
    return found


class Host:
    """A bare namespace standing for a hypervisor, with one iptables flavour ("" for the
    system's default, which is what the driver uses through sudo)."""

    def __init__(self, flavour: str) -> None:
        self.name = f"pt{secrets.token_hex(4)}"
        self.flavour = flavour
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.prefix = ["ip", "netns", "exec", self.name]

    def command(self, suffix: str) -> str:
        return f"iptables-{self.flavour}{suffix}" if self.flavour else f"iptables{suffix}"

    def save(self) -> str:
        out = subprocess.run([*self.prefix, self.command("-save"), "-t", "nat"],
                             capture_output=True, text=True, check=True).stdout
        return "\n".join(line for line in out.splitlines() if not line.startswith("#"))

    def rules(self) -> List[str]:
        return [line for line in self.save().splitlines() if line.startswith("-A ")]

    def ours(self, vm_id: int) -> List[str]:
        """The rules in the VM's own chains: NAT rules and the jumps to their IPs' markers."""
        return [r for r in self.rules() if r.split()[1].startswith(f"ALIAS_SDNAT_{vm_id}_")]

    def nat(self, vm_id: int) -> List[str]:
        """The NAT rules in the VM's own chains, each checked to follow the jump to its IP's
        marker (:func:`nat_of`)."""
        return nat_of(self.ours(vm_id))

    def markers(self) -> Set[str]:
        """The marker chains in the table."""
        return {line[1:].split()[0] for line in self.save().splitlines()
                if line.startswith(f":{MARKER_PREFIX}")}

    def restore(self, text: str) -> None:
        subprocess.run([*self.prefix, self.command("-restore"), "--noflush"],
                       input=text, text=True, check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


SETUPS = [("root", f) for f in FLAVOURS] + [("dropin", ""), ("stock", "")]


@pytest.fixture(params=SETUPS, ids=[f"{m}-{f}" if f else m for m, f in SETUPS])
def host_driver(request, tmp_path: Path) -> Iterator[Tuple[Host, Driver]]:
    """A scratch hypervisor namespace and the driver in one set-up."""
    mode, flavour = request.param
    with driver_in(mode, tmp_path) as drv:
        if flavour:
            drv.env["ALIAS_SDNAT_IPTABLES"] = flavour
        h = Host(flavour)
        try:
            yield h, drv
        finally:
            h.close()


# -- real packets ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.Lab]:
    with netlab.Lab(hypervisors=1, vm_ip="10.0.0.5") as lab:
        yield lab


@pytest.mark.parametrize("driver", MODES, indirect=True)
def test_post_makes_the_public_ip_reach_the_vm_and_the_vm_leave_by_it(lab, driver):
    prefix = lab.host_prefix(1)
    xml = vm_xml(5, aliases=[(1, 0, "203.0.113.7")])
    lab.route_public("203.0.113.7", 1)
    assert lab.connect("client", "203.0.113.7", timeout=0.5) is None  # nothing yet
    ok(run(prefix, "pre", xml, driver))
    ok(run(prefix, "post", xml, driver, "one-5", "147.75.80.21"), driver)  # 6.x adds the host
    try:
        assert lab.connect("client", "203.0.113.7") == lab.client_ip
        assert lab.connect_from_vm() == "203.0.113.7"
    finally:
        ok(run(prefix, "clean", xml, driver), driver)
    assert lab.connect("client", "203.0.113.7", timeout=0.5) is None
    # untranslated, the VM's packets carry 10.0.0.5, which the client cannot answer
    assert lab.connect_from_vm(timeout=0.5) is None
    assert not [r for r in lab.nat_rules(1) if "ALIAS_SDNAT_5_" in r or "vm=5" in r]


@pytest.mark.parametrize("driver", MODES[1:], indirect=True)
def test_an_alias_change_as_oneadmin_keeps_the_traffic_flowing(lab, driver):
    """post with another alias set on a VM whose rules are in place: the new address works,
    the old one stops, and a connection attempt at any point sees old or new rules."""
    prefix = lab.host_prefix(1)
    first = vm_xml(5, aliases=[(1, 0, "203.0.113.7")])
    second = vm_xml(5, aliases=[(2, 0, "203.0.113.8")])
    lab.route_public("203.0.113.7", 1)
    lab.route_public("203.0.113.8", 1)
    ok(run(prefix, "post", first, driver, "one-5"), driver)
    try:
        ok(run(prefix, "post", second, driver, "one-5"), driver)
        assert lab.connect("client", "203.0.113.8") == lab.client_ip
        assert lab.connect("client", "203.0.113.7", timeout=0.5) is None
        assert lab.connect_from_vm() == "203.0.113.8"
    finally:
        ok(run(prefix, "clean", second, driver), driver)
    assert not [r for r in lab.nat_rules(1) if "vm=5" in r]


@pytest.mark.parametrize("driver", MODES, indirect=True)
def test_the_next_owner_of_an_address_gets_it_when_the_old_vms_clean_never_ran(lab, driver):
    """VM 3 (gone: its clean never ran here) still has rules for 203.0.113.7 and .8; VM 5
    gets .7 on this host: its post takes .7 over (one line naming VM 3) and leaves .8."""
    prefix = lab.host_prefix(1)
    dead = vm_xml(3, nics=[(0, "10.0.0.9")], aliases=[(1, 0, "203.0.113.7"), (2, 0, "203.0.113.8")])
    new = vm_xml(5, aliases=[(1, 0, "203.0.113.7")])
    lab.route_public("203.0.113.7", 1)
    ok(run(prefix, "post", dead, driver, "one-3"), driver)
    try:
        proc = run(prefix, "post", new, driver, "one-5")
        ok(proc, driver)
        assert "alias_sdnat post vm=5: took over 203.0.113.7 from vm=3" in proc.stderr.decode()
        assert lab.connect("client", "203.0.113.7") == lab.client_ip
        assert lab.connect_from_vm() == "203.0.113.7"
        rules = lab.nat_rules(1)
        left = nat_of([r for r in rules if r.split()[1].startswith("ALIAS_SDNAT_3_")])
        assert left and all("203.0.113.8" in r for r in left), left
        assert not [r for r in rules if "vm=3 alias=" in r and "203.0.113.7" in r]
        # the marker of .7: jumped to by VM 5's chains only; that of .8 by VM 3's only
        assert {r.split()[1] for r in rules if r.endswith(f"-j {marker('203.0.113.7')}")} == {
            "ALIAS_SDNAT_5_PRE", "ALIAS_SDNAT_5_OUT", "ALIAS_SDNAT_5_POST"}
        assert {r.split()[1].rstrip("2") for r in rules
                if r.endswith(f"-j {marker('203.0.113.8')}")} == {
            "ALIAS_SDNAT_3_PRE", "ALIAS_SDNAT_3_OUT", "ALIAS_SDNAT_3_POST"}
    finally:
        ok(run(prefix, "clean", new, driver), driver)
        ok(run(prefix, "clean", dead, driver), driver)
    assert not [r for r in lab.nat_rules(1) if "vm=3" in r or "vm=5" in r or MARKER_PREFIX in r]
    assert MARKER_PREFIX not in lab.exec("1", ["iptables-save", "-t", "nat"]).stdout


@pytest.mark.parametrize("driver", MODES, indirect=True)
def test_an_alias_without_external_gets_no_nat(lab, driver):
    """oned runs no VNM action when an alias without EXTERNAL is detached, so the driver
    never translates one (its rules would outlive it); the VM's log says so."""
    prefix = lab.host_prefix(1)
    xml = vm_xml(5, aliases=[(1, 0, "203.0.113.7"), (2, 0, "203.0.113.9")], external={2: None})
    lab.route_public("203.0.113.7", 1)
    lab.route_public("203.0.113.9", 1)
    proc = run(prefix, "post", xml, driver, "one-5")
    ok(proc, driver)
    try:
        assert "warning: alias NIC0_ALIAS2 (NIC_ID 2, 203.0.113.9) gets no NAT" \
            in proc.stderr.decode()
        assert lab.connect("client", "203.0.113.7") == lab.client_ip
        assert lab.connect("client", "203.0.113.9", timeout=0.5) is None
        assert not [r for r in lab.nat_rules(1) if "203.0.113.9" in r]
    finally:
        ok(run(prefix, "clean", xml, driver), driver)


@pytest.fixture(scope="module")
def bridged_lab() -> Iterator[netlab.Lab]:
    """The VM on its host's bridge (bridge-nf-call-iptables = 1, as on the nodes) and a
    neighbour VM on the same private network."""
    if netlab.bridge_missing_reason():
        pytest.skip(netlab.bridge_missing_reason())
    with netlab.Lab(hypervisors=1, vm_ip="10.0.0.5", bridged=True) as lab:
        lab.add_neighbour("10.0.0.6")
        yield lab


@pytest.mark.parametrize("driver", MODES, indirect=True)
def test_a_neighbour_on_the_private_network_sees_the_private_source(bridged_lab, driver):
    """Bridged traffic crosses the host's POSTROUTING: only what leaves the private network
    (not through the parent NIC's BRIDGE) takes the public source."""
    lab = bridged_lab
    prefix = lab.host_prefix(1)
    xml = vm_xml(5, aliases=[(1, 0, "203.0.113.7")], bridge=lab.bridge)
    lab.route_public("203.0.113.7", 1)
    assert lab.connect("vm", lab.neighbour_ip) == lab.vm_ip  # before any rule
    ok(run(prefix, "post", xml, driver, "one-5"), driver)
    try:
        assert lab.connect("vm", lab.neighbour_ip) == lab.vm_ip
        assert lab.connect_from_vm() == "203.0.113.7"
        assert lab.connect("client", "203.0.113.7") == lab.client_ip
        snat = [r for r in lab.nat_rules(1) if "-j SNAT" in r and "vm=5" in r]
        assert len(snat) == 1 and f"! -o {lab.bridge} " in snat[0], snat
    finally:
        ok(run(prefix, "clean", xml, driver), driver)
    assert not [r for r in lab.nat_rules(1) if "vm=5" in r]


# -- the rules, per set-up ------------------------------------------------------------------------

def test_post_twice_gives_the_same_table(host_driver):
    host, drv = host_driver
    xml = vm_xml(3, aliases=[(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")])
    ok(run(host.prefix, "post", xml, drv, "one-3"), drv)
    first = host.save()
    ok(run(host.prefix, "post", xml, drv, "one-3"), drv)
    assert host.save() == first
    # DNAT of each alias in PRE and OUT, one SNAT; each after a jump to its IP's marker
    assert len(host.nat(3)) == 5 and len(host.ours(3)) == 5 + 5
    assert host.markers() == {marker("203.0.113.1"), marker("203.0.113.2")}
    assert len(host.rules()) == 5 + 5 + 3 + 3  # + the VM's 3 jumps and the 3 dispatchers'


def test_clean_leaves_other_vms_and_operator_rules_alone(host_driver):
    host, drv = host_driver
    host.restore("*nat\n-A PREROUTING -d 203.0.113.1/32 -j DNAT --to-destination 10.0.0.1\n"
                 "-A POSTROUTING -s 10.0.0.1/32 -j MASQUERADE\nCOMMIT\n")
    operator = [r for r in host.rules()]
    first = vm_xml(1, nics=[(0, "10.0.0.1")], aliases=[(1, 0, "203.0.113.1")])
    second = vm_xml(10, nics=[(0, "10.0.0.10")], aliases=[(1, 0, "203.0.113.10")])
    ok(run(host.prefix, "post", first, drv, "one-1"), drv)
    ok(run(host.prefix, "post", second, drv, "one-10"), drv)
    theirs = host.ours(10)
    assert len(host.nat(10)) == 3 and len(theirs) == 3 + 3 and len(host.nat(1)) == 3
    assert host.markers() == {marker("203.0.113.1"), marker("203.0.113.10")}
    moved = vm_xml(1, nics=[(0, "10.0.0.1")], aliases=[(2, 0, "203.0.113.2")])
    ok(run(host.prefix, "post", moved, drv, "one-1"), drv)  # a change: other rules stay
    assert host.ours(10) == theirs and all(r in host.rules() for r in operator)
    assert len(host.nat(1)) == 3 and all("203.0.113.1/" not in r for r in host.nat(1))
    assert host.markers() == {marker("203.0.113.2"), marker("203.0.113.10")}
    ok(run(host.prefix, "clean", moved, drv), drv)
    assert host.ours(1) == []
    assert host.ours(10) == theirs
    assert all(r in host.rules() for r in operator)
    assert ":ALIAS_SDNAT_1_" not in host.save()
    assert host.markers() == {marker("203.0.113.10")}


def test_hot_attach_and_detach_of_one_alias_among_three(host_driver):
    host, drv = host_driver
    three = [(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2"), (3, 0, "203.0.113.3")]
    ok(run(host.prefix, "post", vm_xml(4, aliases=three[:2]), drv, "one-4"), drv)
    before = host.nat(4)
    ok(run(host.prefix, "post", vm_xml(4, aliases=three, attach=[3]), drv, "one-4"), drv)
    after = host.nat(4)
    assert len(after) == len(before) + 2 and len(host.ours(4)) == 2 * len(after)
    assert host.markers() == {marker(ip) for _, _, ip in three}
    assert {_rule(r) for r in before} <= {_rule(r) for r in after}
    assert sum("203.0.113.3" in r for r in after) == 2  # DNAT in PRE and OUT; SNAT stays .1
    ok(run(host.prefix, "clean", vm_xml(4, aliases=three, attach=[2]), drv), drv)
    left = host.nat(4)
    assert not any("203.0.113.2" in r for r in left)
    assert host.markers() == {marker("203.0.113.1"), marker("203.0.113.3")}
    assert sum("203.0.113.1" in r for r in left) == 3 and sum("203.0.113.3" in r for r in left) == 2


def _rule(line: str) -> str:
    """A rule without its chain's generation suffix (ALIAS_SDNAT_4_PRE2 -> ALIAS_SDNAT_4_PRE)."""
    words = line.split()
    words[1] = words[1].rstrip("2") if words[1].endswith(("PRE2", "OUT2", "POST2")) else words[1]
    return " ".join(words)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_failed_restore_leaves_the_previous_rules(flavour, tmp_path):
    drv = Driver("root", tmp_path)
    drv.env["ALIAS_SDNAT_IPTABLES"] = flavour
    host = Host(flavour)
    try:
        _failed_restore(host, drv, tmp_path)
    finally:
        host.close()


def _failed_restore(host: Host, drv: Driver, tmp_path: Path) -> None:
    xml = vm_xml(6, aliases=[(1, 0, "203.0.113.6")])
    ok(run(host.prefix, "post", xml, drv, "one-6"))
    before = host.save()
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which(host.command("-restore"))
    wrapper = shim / host.command("-restore")
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "script = sys.stdin.read().replace('COMMIT', '-A NO_SUCH_CHAIN -j ACCEPT\\nCOMMIT')\n"
        "r, w = os.pipe(); os.write(w, script.encode()); os.close(w); os.dup2(r, 0)\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n")
    wrapper.chmod(0o755)
    broken = dict(drv.env, PATH=f"{shim}:{drv.env['PATH']}")
    failed = run(host.prefix, "clean", xml, drv, env=broken)
    err = failed.stderr.decode()
    assert failed.returncode != 0 and "ERROR MESSAGE --8<------" in err
    assert len(err.split("ERROR MESSAGE --8<------\n", 1)[1].splitlines()) == 2
    assert host.save() == before
    other = vm_xml(7, aliases=[(1, 0, "203.0.113.77")])
    assert run(host.prefix, "post", other, drv, "one-7", env=broken).returncode != 0
    assert host.save() == before


def test_parallel_actions_for_different_vms_all_land(host_driver):
    host, drv = host_driver
    vms = [vm_xml(20 + i, nics=[(0, f"10.0.1.{i + 1}")], aliases=[(1, 0, f"198.51.100.{i + 1}")])
           for i in range(8)]
    results = [None] * len(vms)

    def post(i: int) -> None:
        results[i] = run(host.prefix, "post", vms[i], drv, f"one-{20 + i}")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(vms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.returncode == 0 for r in results), [
        r.stderr for r in results if r is not None and r.returncode]
    assert [len(host.nat(20 + i)) for i in range(len(vms))] == [3] * len(vms)
    assert host.markers() == {marker(f"198.51.100.{i + 1}") for i in range(len(vms))}
    cleaners = [threading.Thread(target=lambda i=i: ok(run(host.prefix, "clean", vms[i], drv)))
                for i in range(0, len(vms), 2)]
    for t in cleaners:
        t.start()
    for t in cleaners:
        t.join()
    assert [len(host.nat(20 + i)) for i in range(len(vms))] == [0, 3] * 4
    assert [len(host.ours(20 + i)) for i in range(len(vms))] == [0, 6] * 4
    assert host.markers() == {marker(f"198.51.100.{i + 1}") for i in range(1, len(vms), 2)}


# -- refusals as oneadmin -----------------------------------------------------------------------

@pytest.mark.skipif(bool(AS_ONEADMIN), reason=AS_ONEADMIN or "-")
def test_without_any_sudoers_rule_one_line_naming_it(tmp_path):
    if REAL_DROPIN.exists():
        pytest.skip(f"{REAL_DROPIN} exists on this machine: the sudoers set-up is not ours")
    host = Host("")
    try:
        with hostuser.no_sudoers(), hostuser.remotes_tree() as tree:
            probe = subprocess.run(hostuser.as_user(["sudo", "-n", "-l", "iptables"]),
                                   capture_output=True, check=False)
            if probe.returncode == 0:
                pytest.skip("this machine's sudoers let oneadmin run iptables already")
            drv = Driver("stock", tmp_path, tree)
            before = host.save()
            failed = run(host.prefix, "post", vm_xml(2, aliases=[(1, 0, "203.0.113.2")]), drv,
                         "one-2")
            err = failed.stderr.decode()
            assert failed.returncode != 0 and "Traceback" not in err
            (line,) = err.split("ERROR MESSAGE --8<------\n", 1)[1].splitlines()[:1]
            assert line.startswith("alias_sdnat post: sudo refused iptables for oneadmin: ")
            assert "ONE_NET sudoers rule" in line and "install.sh --node" in line
            assert host.save() == before
    finally:
        host.close()
