"""What a VNM action really reads: the VNM view one_vmm_exec builds (no STATE, no history
SEQ/HID, every NIC and NIC_ALIAS in its own TEMPLATE wrapper), captured from OpenNebula
5.12.13, parsed into the same VM model the hook uses."""

from __future__ import annotations

import ipaddress

import pytest

from fixtures.vmxml import vm_xml
from fixtures.vnmview import CAPTURED, DATA, OF_VM, vnm_view, wrappers
from packet_provider import onexml
from packet_provider.core import hostxml, oned, onedefs
from packet_provider.core.errors import InputError
from packet_provider.vnm import nat

IP = ipaddress.IPv4Address
FULL = DATA / "vm-with-nic-alias.xml"


def test_the_captured_view_gives_every_nic_and_alias():
    model = oned.parse_vnm_view(hostxml.parse(CAPTURED.read_bytes()))
    assert model.id == 0 and model.state is None and model.deploy_id == ""
    assert [(n.nic_id, str(n.ip)) for n in model.nics] == [(0, "10.0.0.10")]
    assert [(a.nic_id, str(a.ip), a.parent_id) for a in model.aliases] == [
        (1, "198.18.0.5", 0), (2, "198.18.0.0", 0)]
    assert nat.mappings(model) == [nat.Mapping(1, IP("198.18.0.5"), IP("10.0.0.10"), "br0"),
                                   nat.Mapping(2, IP("198.18.0.0"), IP("10.0.0.10"), "br0")]


def test_the_view_of_the_reference_vm():
    model = oned.parse_vnm_view(hostxml.parse(OF_VM.read_bytes()))
    assert model.id == 42 and model.deploy_id == "one-42"
    assert nat.mappings(model) == [nat.Mapping(1, IP("147.75.84.90"), IP("192.168.150.2"), "br0")]


@pytest.mark.parametrize("path", [CAPTURED, OF_VM], ids=["captured", "of-vm"])
def test_the_hooks_reader_still_wants_the_whole_vm(path):
    """parse_vm (the hook's, on one.vm.info documents) keeps requiring STATE and SEQ."""
    with pytest.raises(InputError, match="SEQ|STATE"):
        oned.parse_vm(hostxml.parse(path.read_bytes()))


@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
def test_a_whole_vm_gives_the_same_nics_and_aliases_to_both_readers(parse):
    root = parse(FULL.read_bytes())
    whole, view = oned.parse_vm(root), oned.parse_vnm_view(root)
    assert (view.id, view.nics, view.aliases) == (whole.id, whole.nics, whole.aliases)
    assert whole.state == onedefs.STATE_ACTIVE and whole.current_history.hid == 3


def test_the_view_builder_makes_the_shape_oned_sends():
    """fixtures.vnmview, which the VNM tests feed the driver, builds what one_vmm_exec
    builds: the same wrappers in the same order as the reference view of the same VM."""
    ours = wrappers(vnm_view(FULL.read_bytes()))
    reference = [w for w in wrappers(OF_VM.read_bytes()) if "SECURITY_GROUP_RULE" not in w]
    assert ours == reference
    model = oned.parse_vnm_view(hostxml.parse(vnm_view(FULL.read_bytes())))
    assert nat.mappings(model) == [nat.Mapping(1, IP("147.75.84.90"), IP("192.168.150.2"), "br0")]


def test_aliases_in_separate_wrappers_are_all_read():
    """Each alias in its own TEMPLATE: reading only the first TEMPLATE would miss them."""
    doc = vnm_view(vm_xml(7, nics=[(0, "10.0.0.7"), (3, "10.0.1.7")],
                          aliases=[(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2"),
                                   (4, 3, "203.0.113.4")]))
    assert doc.count(b"<TEMPLATE>") == 5
    model = oned.parse_vnm_view(hostxml.parse(doc))
    assert [m.nic_id for m in nat.mappings(model)] == [1, 2, 4]
    assert nat.mappings(model)[2].parent_ip == IP("10.0.1.7")


def test_a_bad_value_in_any_wrapper_is_refused():
    doc = vnm_view(vm_xml(7, aliases=[(1, 0, "203.0.113.1"), (2, 0, "1.2.3.4; touch /x")]))
    with pytest.raises(InputError, match="NIC_ALIAS 2 IP"):
        oned.parse_vnm_view(hostxml.parse(doc))
    with pytest.raises(InputError, match="VM ID"):
        oned.parse_vnm_view(hostxml.parse(b"<VM><ID>x</ID></VM>"))
    with pytest.raises(InputError, match="<VM>"):
        oned.parse_vnm_view(hostxml.parse(b"<HOST><ID>1</ID></HOST>"))
