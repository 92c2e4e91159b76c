"""The SNAT leaves the VM's private network alone: only what leaves through another interface
than the parent NIC's bridge (BRIDGE in the VNM view) takes the public source. Hosts bridge
with bridge-nf-call-iptables = 1, so without that match a neighbour on the same private
network saw the VM's connections come from its public alias (tests/e2e proves it with
packets)."""

from __future__ import annotations

import ipaddress

import pytest

from fixtures.fake_iptables import NatTable
from fixtures.vmxml import vm_xml, vnm_stdin
from fixtures.vnmview import CAPTURED, vnm_view
from packet_provider.core import hostxml
from packet_provider.core.errors import InputError
from packet_provider.core.oned import parse_vnm_view
from packet_provider.vnm import nat
from unit.test_nat_rules import fake_host, run_action  # noqa: F401 - fixture
from unit.test_nat_sudo import effective, expected, host  # noqa: F401 - fixture

IP = ipaddress.IPv4Address


def vm_of(*args, **kw):
    return parse_vnm_view(hostxml.parse(vnm_view(vm_xml(*args, **kw))))


def test_the_snat_skips_what_goes_out_through_the_parents_bridge():
    vm = vm_of(5, nics=[(0, "10.0.0.5"), (1, "10.0.1.5")],
               aliases=[(2, 0, "203.0.113.2"), (3, 1, "203.0.113.3")], bridge="onebr.12")
    rules = nat.rules_for(5, nat.mappings(vm))
    assert [r.split(" -m ")[0] for r in rules["POSTROUTING"] if "-j SNAT" in r] == [
        "-s 10.0.0.5/32 ! -o onebr.12", "-s 10.0.1.5/32 ! -o onebr.12"]
    assert not any("-o" in r for r in rules["PREROUTING"] + rules["OUTPUT"])


def test_the_captured_view_gives_the_bridge():
    vm = parse_vnm_view(hostxml.parse(CAPTURED.read_bytes()))
    assert {m.bridge for m in nat.mappings(vm)} == {"br0"}


@pytest.mark.parametrize("bridge", ["br0 -j ACCEPT", "-o", "!x", "a" * 16, "br/0", "br:0",
                                    "br0\n-A"])
def test_a_bridge_that_is_not_an_interface_name_is_refused(bridge):
    vm = vm_of(5, aliases=[(1, 0, "203.0.113.1")], bridge=bridge)
    with pytest.raises(InputError, match="NIC 0 BRIDGE"):
        nat.mappings(vm)


def test_the_table_gives_back_each_parents_bridge():
    """A hot detach's clean (or a takeover) rebuilds the kept aliases from the table: their
    SNAT keeps its ! -o."""
    vm = vm_of(5, aliases=[(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")], bridge="br0")
    table = NatTable()
    table.restore(nat.restore_script(5, nat.read_view(table.save(), 5), nat.mappings(vm)))
    view = nat.read_view(table.save(), 5)
    assert view.current == nat.mappings(vm)
    detach = vm_of(5, aliases=[(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")], bridge="br0",
                   attach=[1])
    kept = nat.wanted("clean", detach, view.current)
    assert [(m.nic_id, m.bridge) for m in kept] == [(2, "br0")]
    assert "-s 10.0.0.5/32 ! -o br0 " in nat.rules_for(5, kept)["POSTROUTING"][1]


@pytest.mark.parametrize("allowed", [("iptables", "iptables-save", "iptables-restore"),
                                     ("iptables",)], ids=["transaction", "stock"])
def test_both_modes_write_it_and_a_repeat_writes_nothing(host, allowed):  # noqa: F811
    host.allow(*allowed)
    vm = vm_of(5, aliases=[(1, 0, "203.0.113.1")], bridge="br0")
    nat.apply("post", vm, nat.Iptables("", euid=999), host.lock)
    assert effective(host.table(), 5) == expected(5, nat.mappings(vm))
    assert "! -o br0" in effective(host.table(), 5)["POSTROUTING"][0]
    again = nat.Iptables("", euid=999)
    nat.apply("post", vm, again, host.lock)
    if allowed == ("iptables",):
        assert again.spawned == 2  # probe and -S: the rules read back equal the wanted ones


def test_a_takeover_keeps_the_other_vms_private_match(host):  # noqa: F811
    host.allow("iptables")
    old = vm_of(3, nics=[(0, "10.0.0.9")], aliases=[(1, 0, "203.0.113.7"), (2, 0, "203.0.113.8")],
                bridge="br0")
    nat.apply("post", old, nat.Iptables("", euid=999), host.lock)
    new = vm_of(5, aliases=[(1, 0, "203.0.113.7")], bridge="br0")
    nat.apply("post", new, nat.Iptables("", euid=999), host.lock)
    (snat,) = effective(host.table(), 3)["POSTROUTING"]
    assert snat.startswith("-s 10.0.0.9/32 ! -o br0 ") and "--to-source 203.0.113.8" in snat


def test_a_parent_without_bridge_is_named_in_a_warning(fake_host):  # noqa: F811
    proc = run_action("post", vnm_stdin(vnm_view(vm_xml(5, aliases=[(1, 0, "203.0.113.1")]))),
                      "one-5", env=fake_host)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "aliases 0 -> 1" in err, err
    assert "warning: alias NIC0_ALIAS1 (NIC_ID 1, 203.0.113.1): its parent NIC 0 has no " \
           "BRIDGE" in err
