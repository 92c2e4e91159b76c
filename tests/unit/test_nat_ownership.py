"""Which aliases the driver translates, and what it says about the others: only aliases with
an EXTERNAL element (oned runs VNM actions on their hot attach and detach, and on no other
alias's), and a warning in the VM's log for every alias_sdnat alias it leaves without NAT."""

from __future__ import annotations

import ipaddress

from fixtures.vmxml import vm_xml, vnm_stdin
from fixtures.vnmview import vnm_view
from packet_provider import hostxml, nat
from packet_provider.vm import parse_vnm_view
from unit.test_nat_rules import fake_host, run_action  # noqa: F401 - fixture

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
    xml = vm_xml(5, aliases=THREE[:2], external={2: None})
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
                 aliases=[(2, 0, "203.0.113.2"), (3, 1, "203.0.113.3")])
    proc = run_action("post", vnm_stdin(vnm_view(xml)), "one-5", env=fake_host)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert line == ("alias_sdnat post vm=5: warning: alias NIC1_ALIAS3 (NIC_ID 3, "
                    "203.0.113.3) gets no NAT: its parent NIC 1 has no IPv4 address")
    assert "aliases 0 -> 1" in err
