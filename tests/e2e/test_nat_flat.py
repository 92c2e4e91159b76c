"""post and clean stay flat in the other VMs' rules (issue 15): with N other VMs' chains on
the host, the post of a VM being deployed (no alias in ATTACH=YES) and the clean of a VM
leaving the host each run exactly one process as root, ``iptables-restore``, and never
``iptables-save``, whatever N.

The driver runs as root in a network namespace, the way one_vmm_exec runs it; every iptables
command it starts goes through a PATH wrapper that writes the command's name to a file
before running the real one. The other VMs' rules are written by the driver itself (one
post each). The controls (an address another VM still holds, a second post) show that the
wrappers do see ``iptables-save`` when the driver has to read the table.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from fixtures.common import REMOTES, netns_missing_reason
from fixtures.vmxml import vm_xml, vnm_stdin
from fixtures.vnmview import vnm_view

pytestmark = pytest.mark.skipif(bool(netns_missing_reason()),
                                reason=netns_missing_reason() or "-")

DRIVER = REMOTES / "vnm" / "alias_sdnat"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FLAVOURS = [f for f in ("legacy", "nft") if shutil.which(f"iptables-{f}-restore")]
COMMANDS = [f"iptables{f}{s}" for f in ("", "-legacy", "-nft") for s in ("", "-save", "-restore")]
# VM 7, being deployed: two aliases on one parent NIC
DEPLOYED = vm_xml(7, nics=[(0, "10.0.7.2")], aliases=[(1, 0, "203.0.113.71"),
                                                      (2, 0, "203.0.113.72")])


def other(vm_id: int) -> bytes:
    """Another VM on the host, with two aliases of its own."""
    return vm_xml(vm_id, nics=[(0, f"10.1.{vm_id // 256}.{vm_id % 256}")],
                  aliases=[(1, 0, f"198.18.{vm_id // 256}.{vm_id % 256}"),
                           (2, 0, f"198.19.{vm_id // 256}.{vm_id % 256}")])


class Host:
    """A namespace standing for a hypervisor, the driver as root with one iptables flavour,
    and the record of the iptables commands the driver starts."""

    def __init__(self, flavour: str, tmp: Path) -> None:
        self.flavour = flavour
        self.name = f"pf{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.prefix = ["ip", "netns", "exec", self.name]
        self.log = tmp / "spawned"
        shims = tmp / "shims"
        shims.mkdir()
        for name in COMMANDS:
            real = shutil.which(name, path=SYSTEM_PATH)
            if real is None:
                continue
            shim = shims / name
            shim.write_text(f'#!/bin/sh\necho {name} >> "{self.log}"\nexec {real} "$@"\n')
            shim.chmod(0o755)
        self.env = {"PATH": f"{shims}:{SYSTEM_PATH}", "ALIAS_SDNAT_IPTABLES": flavour,
                    "ALIAS_SDNAT_LOCK": str(tmp / "alias_sdnat.lock")}

    def run(self, action: str, xml: bytes, vm_id: int) -> List[str]:
        """Run ``action`` for the VM of ``xml``; the iptables commands it started, in order."""
        self.log.write_text("")
        args = [f"one-{vm_id}"] if action == "post" else []
        proc = subprocess.run([*self.prefix, str(DRIVER / action), *args],
                              input=vnm_stdin(vnm_view(xml)), capture_output=True,
                              env=self.env, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        spawned = self.log.read_text().split()
        assert f" {len(spawned)} iptables run(s)," in proc.stderr.decode(), proc.stderr.decode()
        return spawned

    def save(self) -> str:
        out = subprocess.run([*self.prefix, f"iptables-{self.flavour}-save", "-t", "nat"],
                             capture_output=True, text=True, check=True).stdout
        return "\n".join(line for line in out.splitlines() if not line.startswith("#"))

    def rules(self) -> List[str]:
        return [line for line in self.save().splitlines() if line.startswith("-A ")]

    def flush(self, chain: str) -> None:
        subprocess.run([*self.prefix, f"iptables-{self.flavour}", "-t", "nat", "-F", chain],
                       check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture(params=FLAVOURS)
def host(request, tmp_path: Path) -> Iterator[Host]:
    h = Host(request.param, tmp_path)
    try:
        yield h
    finally:
        h.close()


def restore(flavour: str) -> List[str]:
    return [f"iptables-{flavour}-restore"]


@pytest.mark.parametrize("others", [1, 40])
def test_deploy_post_and_leaving_clean_run_one_restore_and_no_save(host: Host, others: int):
    for vm_id in range(100, 100 + others):
        host.run("post", other(vm_id), vm_id)
    before = host.save()
    assert len(host.rules()) == 3 + others * (3 + 2 * (2 + 2 + 1))  # hooks; jumps, rules
    assert host.run("post", DEPLOYED, 7) == restore(host.flavour)
    mine = [r for r in host.rules() if r.split()[1].startswith("ALIAS_SDNAT_7_")]
    assert sum("-j DNAT" in r for r in mine) == 4 and sum("-j SNAT" in r for r in mine) == 1
    assert [r for r in host.rules() if "ALIAS_SDNAT_7_" not in r and "vm=7" not in r] == [
        r for r in before.splitlines() if r.startswith("-A ")]  # the others' left alone
    assert host.run("clean", DEPLOYED, 7) == restore(host.flavour)
    assert host.save() == before


def test_the_controls_read_the_table(host: Host):
    """A second post of the same VM, and a post of an address another VM still holds (its
    clean never ran here), or a post after a firewall reload flushed PREROUTING, are not the
    usual state: the blind transaction fails, then the
    driver reads the table and writes the VM's chains in a second one."""
    for vm_id in range(100, 105):
        host.run("post", other(vm_id), vm_id)
    assert host.run("post", DEPLOYED, 7) == restore(host.flavour)
    first = host.save()
    save = f"iptables-{host.flavour}-save"
    again = [*restore(host.flavour), save, *restore(host.flavour)]  # the same rules rewritten
    assert host.run("post", DEPLOYED, 7) == again
    assert host.save() == first
    holder = vm_xml(8, nics=[(0, "10.0.8.2")], aliases=[(1, 0, "203.0.113.81")])
    assert host.run("post", holder, 8) == restore(host.flavour)
    taker = vm_xml(9, nics=[(0, "10.0.9.2")], aliases=[(1, 0, "203.0.113.81")])
    assert host.run("post", taker, 9) == [*restore(host.flavour), save, *restore(host.flavour)]
    assert not [r for r in host.rules() if "ALIAS_SDNAT_8_" in r]
    # a firewall reload flushed PREROUTING: the blind post must fail there too (its -C)
    host.flush("PREROUTING")
    third = vm_xml(10, nics=[(0, "10.0.10.2")], aliases=[(1, 0, "203.0.113.101")])
    assert host.run("post", third, 10) == [*restore(host.flavour), save, *restore(host.flavour)]
    assert [r for r in host.rules() if r.startswith("-A PREROUTING ")] == [
        "-A PREROUTING -m comment --comment alias_sdnat -j ALIAS_SDNAT_PRE"]
