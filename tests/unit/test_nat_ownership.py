"""Which aliases the driver translates, and what it says about the others: only aliases with
an EXTERNAL element (oned runs VNM actions on their hot attach and detach, and on no other
alias's), and a warning in the VM's log for every alias_sdnat alias it leaves without NAT."""

from __future__ import annotations

import ipaddress

import pytest

from fixtures.fake_iptables import NatTable
from fixtures.vmxml import vm_xml, vnm_stdin
from fixtures.vnmview import vnm_view
from packet_provider.core import hostxml
from packet_provider.core.oned import parse_vnm_view
from packet_provider.vnm import nat
from unit.test_nat_rules import fake_host, run_action  # noqa: F401 - fixture
from unit.test_nat_sudo import effective, expected, host  # noqa: F401 - fixture

IP = ipaddress.IPv4Address


def vm_of(*args, **kw):
    return parse_vnm_view(hostxml.parse(vnm_view(vm_xml(*args, **kw))))


def m(nic, alias, parent="10.0.0.5"):
    return nat.Mapping(nic, IP(alias), IP(parent))


THREE = [(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2"), (3, 0, "203.0.113.3")]


def test_only_aliases_with_an_external_element_are_translated():
    """oned's attach/detach test is that EXTERNAL exists: EXTERNAL=NO counts, none does
    not."""
    vm = vm_of(5, aliases=THREE, external={2: "NO", 3: None})
    assert nat.mappings(vm) == [m(1, "203.0.113.1"), m(2, "203.0.113.2")]
    assert nat.wanted("post", vm, []) == [m(1, "203.0.113.1"), m(2, "203.0.113.2")]


def test_a_hot_attach_drops_rules_of_aliases_no_longer_translated():
    """Rules of an alias without EXTERNAL (an older driver translated it) or of an alias
    that is gone from the VM (detached with no VNM action) do not survive the next post."""
    vm = vm_of(5, aliases=[*THREE, (4, 0, "203.0.113.4")], external={3: None}, attach=[4])
    current = [m(1, "203.0.113.1"), m(3, "203.0.113.3"), m(7, "203.0.113.7")]
    assert nat.wanted("post", vm, current) == [m(1, "203.0.113.1"), m(4, "203.0.113.4")]


def test_an_alias_without_external_is_named_in_a_warning(fake_host, tmp_path):  # noqa: F811
    xml = vm_xml(5, aliases=THREE[:2], external={2: None}, bridge="br0")
    proc = run_action("post", vnm_stdin(vnm_view(xml)), "one-5", env=fake_host)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert line.startswith("alias_sdnat post vm=5: warning: alias NIC0_ALIAS2 (NIC_ID 2, "
                           "203.0.113.2) gets no NAT: it has no EXTERNAL element")
    assert "aliases 0 -> 1" in err
    assert "203.0.113.2" not in (tmp_path / "restored").read_text()


def test_an_alias_on_an_ipv6_only_parent_is_named_in_a_warning(fake_host):  # noqa: F811
    """The alias gets no NAT (IPv4 only) but the action succeeds and says why."""
    xml = vm_xml(5, nics=[(0, "10.0.0.5"), (1, None)],
                 aliases=[(2, 0, "203.0.113.2"), (3, 1, "203.0.113.3")], bridge="br0")
    proc = run_action("post", vnm_stdin(vnm_view(xml)), "one-5", env=fake_host)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert line == ("alias_sdnat post vm=5: warning: alias NIC1_ALIAS3 (NIC_ID 3, "
                    "203.0.113.3) gets no NAT: its parent NIC 1 has no IPv4 address")
    assert "aliases 0 -> 1" in err


# -- a public IP reaches only the VM that holds it now ---------------------------------------

OLD = vm_of(3, nics=[(0, "10.0.0.9")], aliases=[(1, 0, "203.0.113.7"), (2, 0, "203.0.113.8")])
NEW = vm_of(5, aliases=[(1, 0, "203.0.113.7")])


def dnat_targets(table, ip):
    """Where a packet for ``ip`` is sent: the --to-destination of every DNAT rule for it
    reachable from PREROUTING, in order (the first one wins)."""
    return [r.split("--to-destination ")[1] for _, r in table.effective("PREROUTING")
            if f"-d {ip}/32 " in r]


@pytest.mark.parametrize("allowed", [("iptables", "iptables-save", "iptables-restore"),
                                     ("iptables",)], ids=["transaction", "stock"])
def test_post_takes_an_address_over_from_a_vm_whose_clean_never_ran(host, allowed):  # noqa: F811
    """VM 3 held 203.0.113.7 on this host and left without clean (dead host, recover
    --delete); VM 5 gets the address: its post removes VM 3's rules for that address (only
    those) and says so."""
    host.allow(*allowed)
    nat.apply("post", OLD, nat.Iptables("", euid=999), host.lock)
    theirs_before = effective(host.table(), 3)
    outcome = nat.apply("post", NEW, nat.Iptables("", euid=999), host.lock)
    table = host.table()
    assert dnat_targets(table, "203.0.113.7") == ["10.0.0.5"]
    assert dnat_targets(table, "203.0.113.8") == ["10.0.0.9"]  # VM 3's other alias stays
    assert effective(table, 3) == expected(3, [m(2, "203.0.113.8", "10.0.0.9")])
    assert effective(table, 3) != theirs_before
    assert effective(table, 5) == expected(5, nat.mappings(NEW))
    assert outcome.notes == ["took over 203.0.113.7 from vm=3: that VM's rules for it removed"]
    again = nat.apply("post", NEW, nat.Iptables("", euid=999), host.lock)
    assert again.notes == [] and effective(host.table(), 3) == effective(table, 3)


def test_a_vm_whose_every_address_is_taken_loses_its_chains(host):  # noqa: F811
    host.allow("iptables")
    old = vm_of(3, nics=[(0, "10.0.0.9")], aliases=[(1, 0, "203.0.113.7")])
    nat.apply("post", old, nat.Iptables("", euid=999), host.lock)
    nat.apply("post", NEW, nat.Iptables("", euid=999), host.lock)
    table = host.table()
    assert not [c for c in table.chains if c.startswith("ALIAS_SDNAT_3_")]
    assert dnat_targets(table, "203.0.113.7") == ["10.0.0.5"]


def test_takeover_in_one_transaction_and_clean_takes_nothing():
    table = NatTable()
    table.restore(nat.restore_script(3, nat.read_view(table.save(), 3), nat.mappings(OLD)))
    view = nat.read_view(table.save(), 5)
    assert view.claims == {IP("203.0.113.7"): {3}, IP("203.0.113.8"): {3}}
    others = nat.takeovers(table.save(), 5, view, nat.mappings(NEW))
    assert [(o.vm_id, o.taken) for o in others] == [(3, [IP("203.0.113.7")])]
    script = nat.restore_script(5, view, nat.mappings(NEW), others)
    assert script.count("*nat") == 1 and script.count("COMMIT") == 1
    table.restore(script)
    assert dnat_targets(table, "203.0.113.7") == ["10.0.0.5"]
    # clean of a VM never takes anything
    assert nat.wanted("clean", NEW, []) == []


def test_an_address_only_the_other_vms_snat_still_names_is_taken_too():
    """VM 3's last action (stock sudoers) was cut between its chain switches: its PRE chain
    no longer has 203.0.113.7 but its POST chain still SNATs to it. VM 5's post removes
    that too."""
    table = NatTable()
    table.restore(nat.restore_script(3, nat.read_view(table.save(), 3), nat.mappings(OLD)))
    keep = [m(2, "203.0.113.8", "10.0.0.9")]
    commands = nat.stock_commands(3, nat.read_view(table.listing(), 3), keep)
    switch_pre = next(i for i, c in enumerate(commands) if c[:2] == ["-R", "ALIAS_SDNAT_PRE"])
    for args in commands[:switch_pre + 1]:  # killed right after switching PRE
        table.run(args)
    assert "--to-source 203.0.113.7" in effective(table, 3)["POSTROUTING"][0]
    view = nat.read_view(table.listing(), 5)
    others = nat.takeovers(table.listing(), 5, view, nat.mappings(NEW))
    assert [(o.vm_id, o.taken) for o in others] == [(3, [IP("203.0.113.7")])]
    for other in others:
        for args in nat.stock_commands(other.vm_id, other.view, other.maps):
            table.run(args)
    assert effective(table, 3) == expected(3, keep)
