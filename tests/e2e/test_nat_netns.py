"""alias_sdnat with real iptables in network namespaces: the driver runs as the VMM driver runs
it (a subprocess inside the hypervisor's namespace, base64 VM XML and a newline on stdin),
and real TCP connections prove the DNAT and the SNAT."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from fixtures.common import REMOTES, netns_missing_reason
from fixtures.vmxml import vm_xml, vnm_stdin
from packet_provider import netlab

pytestmark = pytest.mark.skipif(bool(netns_missing_reason()),
                                reason=netns_missing_reason() or "-")

DRIVER = REMOTES / "vnm" / "alias_sdnat"
FLAVOURS = [f for f in ("legacy", "nft") if shutil.which(f"iptables-{f}-restore")]


def run(prefix: List[str], action: str, xml: bytes, env: dict,
        *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, str(DRIVER / action), *args], input=vnm_stdin(xml),
                          capture_output=True, env=env, timeout=60, check=False)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ALIAS_SDNAT_LOCK": str(tmp_path / "alias_sdnat.lock")}


class Host:
    """A bare namespace standing for a hypervisor, with one iptables flavour."""

    def __init__(self, flavour: str) -> None:
        self.name = f"pt{secrets.token_hex(4)}"
        self.flavour = flavour
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.prefix = ["ip", "netns", "exec", self.name]

    def save(self) -> str:
        out = subprocess.run([*self.prefix, f"iptables-{self.flavour}-save", "-t", "nat"],
                             capture_output=True, text=True, check=True).stdout
        return "\n".join(line for line in out.splitlines() if not line.startswith("#"))

    def rules(self) -> List[str]:
        return [line for line in self.save().splitlines() if line.startswith("-A ")]

    def ours(self, vm_id: int) -> List[str]:
        """The rules in the VM's own chains."""
        return [r for r in self.rules() if r.split()[1].startswith(f"ALIAS_SDNAT_{vm_id}_")]

    def restore(self, text: str) -> None:
        subprocess.run([*self.prefix, f"iptables-{self.flavour}-restore", "--noflush"],
                       input=text, text=True, check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture(params=FLAVOURS)
def host(request, env) -> Iterator[Host]:
    h = Host(request.param)
    env["ALIAS_SDNAT_IPTABLES"] = request.param
    yield h
    h.close()


# -- real packets ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.Lab]:
    with netlab.Lab(hypervisors=1, vm_ip="10.0.0.5") as lab:
        yield lab


def test_post_makes_the_public_ip_reach_the_vm_and_the_vm_leave_by_it(lab, env):
    prefix = lab.host_prefix(1)
    xml = vm_xml(5, aliases=[(1, 0, "203.0.113.7")])
    lab.route_public("203.0.113.7", 1)
    assert lab.connect("client", "203.0.113.7", timeout=0.5) is None  # nothing yet
    ok(run(prefix, "pre", xml, env))
    ok(run(prefix, "post", xml, env, "one-5"))
    try:
        assert lab.connect("client", "203.0.113.7") == lab.client_ip
        assert lab.connect_from_vm() == "203.0.113.7"
    finally:
        ok(run(prefix, "clean", xml, env))
    assert lab.connect("client", "203.0.113.7", timeout=0.5) is None
    # untranslated, the VM's packets carry 10.0.0.5, which the client cannot answer
    assert lab.connect_from_vm(timeout=0.5) is None
    assert not [r for r in lab.nat_rules(1) if "ALIAS_SDNAT_5_" in r or "vm=5" in r]


# -- the rules, per iptables flavour -----------------------------------------------------------

def test_post_twice_gives_the_same_table(host, env):
    xml = vm_xml(3, aliases=[(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")])
    ok(run(host.prefix, "post", xml, env, "one-3"))
    first = host.save()
    ok(run(host.prefix, "post", xml, env, "one-3"))
    assert host.save() == first
    assert len(host.ours(3)) == 5 and len(host.rules()) == 5 + 3 + 3


def test_clean_leaves_other_vms_and_operator_rules_alone(host, env):
    host.restore("*nat\n-A PREROUTING -d 203.0.113.1/32 -j DNAT --to-destination 10.0.0.1\n"
                 "-A POSTROUTING -s 10.0.0.1/32 -j MASQUERADE\nCOMMIT\n")
    operator = [r for r in host.rules()]
    first = vm_xml(1, nics=[(0, "10.0.0.1")], aliases=[(1, 0, "203.0.113.1")])
    second = vm_xml(10, nics=[(0, "10.0.0.10")], aliases=[(1, 0, "203.0.113.10")])
    ok(run(host.prefix, "post", first, env, "one-1"))
    ok(run(host.prefix, "post", second, env, "one-10"))
    theirs = host.ours(10)
    assert len(theirs) == 3 and len(host.ours(1)) == 3
    ok(run(host.prefix, "clean", first, env))
    assert host.ours(1) == []
    assert host.ours(10) == theirs
    assert all(r in host.rules() for r in operator)
    assert ":ALIAS_SDNAT_1_PRE" not in host.save()


def test_hot_attach_and_detach_of_one_alias_among_three(host, env):
    three = [(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2"), (3, 0, "203.0.113.3")]
    ok(run(host.prefix, "post", vm_xml(4, aliases=three[:2]), env, "one-4"))
    before = host.ours(4)
    ok(run(host.prefix, "post", vm_xml(4, aliases=three, attach=[3]), env, "one-4"))
    after = host.ours(4)
    assert set(before) <= set(after) and len(after) == len(before) + 2
    assert sum("203.0.113.3" in r for r in after) == 2  # DNAT in PRE and OUT; SNAT stays .1
    ok(run(host.prefix, "clean", vm_xml(4, aliases=three, attach=[2]), env))
    left = host.ours(4)
    assert not any("203.0.113.2" in r for r in left)
    assert sum("203.0.113.1" in r for r in left) == 3 and sum("203.0.113.3" in r for r in left) == 2


def test_a_failed_restore_leaves_the_previous_rules(host, env, tmp_path):
    xml = vm_xml(6, aliases=[(1, 0, "203.0.113.6")])
    ok(run(host.prefix, "post", xml, env, "one-6"))
    before = host.save()
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which(f"iptables-{host.flavour}-restore")
    wrapper = shim / f"iptables-{host.flavour}-restore"
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "script = sys.stdin.read().replace('COMMIT', '-A NO_SUCH_CHAIN -j ACCEPT\\nCOMMIT')\n"
        "r, w = os.pipe(); os.write(w, script.encode()); os.close(w); os.dup2(r, 0)\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n")
    wrapper.chmod(0o755)
    broken = dict(env, PATH=f"{shim}:{env['PATH']}")
    failed = run(host.prefix, "clean", xml, broken)
    err = failed.stderr.decode()
    assert failed.returncode != 0 and "ERROR MESSAGE --8<------" in err
    assert len(err.split("ERROR MESSAGE --8<------\n", 1)[1].splitlines()) == 2
    assert host.save() == before
    other = vm_xml(7, aliases=[(1, 0, "203.0.113.77")])
    assert run(host.prefix, "post", other, broken, "one-7").returncode != 0
    assert host.save() == before


def test_parallel_actions_for_different_vms_all_land(host, env):
    vms = [vm_xml(20 + i, nics=[(0, f"10.0.1.{i + 1}")], aliases=[(1, 0, f"198.51.100.{i + 1}")])
           for i in range(8)]
    results = [None] * len(vms)

    def post(i: int) -> None:
        results[i] = run(host.prefix, "post", vms[i], env, f"one-{20 + i}")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(vms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.returncode == 0 for r in results)
    assert all(len(host.ours(20 + i)) == 3 for i in range(len(vms)))
    cleaners = [threading.Thread(target=lambda i=i: ok(run(host.prefix, "clean", vms[i], env)))
                for i in range(0, len(vms), 2)]
    for t in cleaners:
        t.start()
    for t in cleaners:
        t.join()
    assert [len(host.ours(20 + i)) for i in range(len(vms))] == [0, 3] * 4
