"""The alias_ip hook's decisions, as pure functions over the reference examples."""

import copy
import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from packet_provider import onexml
from packet_provider.core import hostxml, onedefs
from packet_provider.core.errors import InputError, ProviderError
from packet_provider.core.oned import parse_host, parse_vm, parse_vnet
from packet_provider.hook import decide
from packet_provider.packet import Assignment

DATA = Path(__file__).resolve().parents[1] / "data"
VM_XML = (DATA / "vm-with-nic-alias.xml").read_bytes()
VNET_XML = (DATA / "vnet-packet-ar.xml").read_bytes()
HOST_XML = (DATA / "host-packet.xml").read_bytes()
# onevnet show -x of a reservation (network 2, one address, leased to VM 0) and of its
# parent, a packet range (network 1), as a real oned 5.12.13 wrote them
RESV_XML = (DATA / "vnet-reservation-captured-5.12.13.xml").read_bytes()
PARENT_XML = (DATA / "vnet-reservation-parent-captured-5.12.13.xml").read_bytes()

IP = ipaddress.IPv4Address("147.75.84.90")
IP2 = ipaddress.IPv4Address("147.75.84.91")
RESERVATION = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
DEVICE = "54ffd20d-d972-4c8d-8628-9da18e67ae17"
OTHER_DEVICE = "11111111-2222-4333-8444-555555555555"
ASSIGNMENT = "4edf9211-142e-476e-b926-ebd247fb7b66"


def vm_tree():
    return ET.fromstring(VM_XML)


def set_text(root, path, value):
    root.find(path).text = str(value)


def add_alias(root, ip, nic_id, network_id=2, ar_id=0, external=True, vn_mad="alias_sdnat",
              attach=False):
    template = root.find("TEMPLATE")
    alias = copy.deepcopy(ET.fromstring(VM_XML).find("TEMPLATE/NIC_ALIAS"))
    set_text(alias, "IP", ip)
    set_text(alias, "NIC_ID", nic_id)
    set_text(alias, "NAME", f"NIC0_ALIAS{nic_id}")
    set_text(alias, "NETWORK_ID", network_id)
    set_text(alias, "AR_ID", ar_id)
    set_text(alias, "VN_MAD", vn_mad)
    if not external:
        alias.remove(alias.find("EXTERNAL"))
    if attach:
        ET.SubElement(alias, "ATTACH").text = "YES"
    template.append(alias)
    return root


def drop_aliases(root):
    template = root.find("TEMPLATE")
    for alias in template.findall("NIC_ALIAS"):
        template.remove(alias)
    return root


def model(root):
    return parse_vm(root)


def vm_with(state=3, lcm=3, extra=(), no_aliases=False):
    root = vm_tree()
    set_text(root, "STATE", state)
    set_text(root, "LCM_STATE", lcm)
    if no_aliases:
        drop_aliases(root)
    for kwargs in extra:
        add_alias(root, **kwargs)
    return model(root)


def ranges(vnet_xml=VNET_XML):
    return {(2, ar_id): ar for ar_id, ar in parse_vnet(onexml.parse(vnet_xml)).items()}


# -- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
def test_vnet_parsing_keeps_the_custom_ar_attributes(parse):
    (ar,) = parse_vnet(parse(VNET_XML)).values()
    assert (ar.vnet_id, ar.ar_id, ar.ipam_mad) == (2, 0, "packet")
    assert ar.reservation_id == RESERVATION
    assert ar.token == "token-shown-decrypted-when-info-is-called-with-decrypt"
    assert ar.leases == {IP: 42}


def test_the_token_is_not_in_the_repr_of_an_address_range_or_target():
    ar = ranges()[(2, 0)]
    assert ar.token and ar.token not in repr(ar)
    (target,), _ = decide.targets(vm_with(), vm_with(), ranges())
    assert target.token == ar.token and ar.token not in repr(target)


def test_host_device_is_read_from_the_provision_deploy_id():
    assert parse_host(onexml.parse(HOST_XML)) == (3, "147.75.84.10", DEVICE)


def test_a_host_without_provision_deploy_id_has_no_device():
    root = ET.fromstring(HOST_XML)
    root.find("TEMPLATE").remove(root.find("TEMPLATE/PROVISION"))
    assert parse_host(root) == (3, "147.75.84.10", None)


def test_a_malformed_device_id_is_refused():
    root = ET.fromstring(HOST_XML)
    root.find("TEMPLATE/PROVISION/DEPLOY_ID").text = "../../etc"
    with pytest.raises(InputError, match="DEPLOY_ID"):
        parse_host(root)


def test_the_wrong_document_kind_is_refused():
    with pytest.raises(InputError):
        parse_vnet(ET.fromstring(HOST_XML))
    with pytest.raises(InputError):
        parse_host(ET.fromstring(VNET_XML))


# -- candidates (the fast path) -------------------------------------------------------------

def test_the_example_alias_is_a_candidate():
    assert [str(a.ip) for a in decide.candidates(vm_with())] == [str(IP)]


def test_a_vm_without_aliases_has_no_candidate():
    assert decide.candidates(vm_with(no_aliases=True)) == ()


def test_an_internal_alias_on_another_vn_mad_is_not_a_candidate():
    vm = vm_with(no_aliases=True, extra=[dict(ip="10.0.0.5", nic_id=1, external=False,
                                              vn_mad="bridge")])
    assert decide.candidates(vm) == ()


@pytest.mark.parametrize("external,vn_mad", [(True, "bridge"), (False, "alias_sdnat")])
def test_external_or_alias_sdnat_is_enough(external, vn_mad):
    vm = vm_with(no_aliases=True, extra=[dict(ip="147.75.84.91", nic_id=1, external=external,
                                              vn_mad=vn_mad)])
    assert len(decide.candidates(vm)) == 1


def test_hotplug_in_flight_only_while_in_a_hotplug_nic_state():
    assert decide.hotplug_in_flight(vm_with(lcm=25))
    assert decide.hotplug_in_flight(vm_with(state=8, lcm=65))
    assert decide.hotplug_in_flight(vm_with(state=3, lcm=65))
    assert not decide.hotplug_in_flight(vm_with(lcm=3))
    assert not decide.hotplug_in_flight(vm_with(state=6, lcm=0))


def test_hotplug_lcm_states_are_oneds_numbers():
    import pyone

    assert decide.HOTPLUG_NIC_STATES == {pyone.LCM_STATE.HOTPLUG_NIC.value,
                                       pyone.LCM_STATE.HOTPLUG_NIC_POWEROFF.value}
    assert onedefs.ADDRESS_KEEPING_STATES == {pyone.VM_STATE.ACTIVE.value,
                                              pyone.VM_STATE.SUSPENDED.value,
                                              pyone.VM_STATE.POWEROFF.value}
    assert all(pyone.VM_STATE(n).name == name for n, name in onedefs.STATE_NAMES.items())


def test_networks_of_covers_the_event_and_the_current_vm():
    event = vm_with(extra=[dict(ip="10.9.0.1", nic_id=2, network_id=7)])
    current = vm_with(extra=[dict(ip="10.9.0.2", nic_id=3, network_id=5)])
    assert decide.networks_of(event, current) == [2, 5, 7]
    assert decide.networks_of(event, None) == [2, 7]


# -- targets --------------------------------------------------------------------------------

@pytest.mark.parametrize("lcm", [3, 17, 24, 26, 57, 59, 62])
def test_a_vm_running_on_its_host_wants_the_address_assigned(lcm):
    """RUNNING, and the live operations during which it runs where its last history record
    says (disk hot-plug, snapshots, save-as, disk resize)."""
    current = vm_with(state=3, lcm=lcm)
    (target,), skipped = decide.targets(vm_with(), current, ranges())
    assert skipped == []
    assert target.assigned and target.ip == IP and target.reservation_id == RESERVATION
    assert (target.vnet_id, target.ar_id) == (2, 0)


MIGRATION_LCM = [4, 7, 8, 35, 37, 38, 43, 44, 45, 46, 60, 61]


@pytest.mark.parametrize("lcm", MIGRATION_LCM)
def test_a_migrating_vm_leaves_its_addresses_where_they_are(lcm):
    """During a migration the last history record is already the destination while the VM
    still runs on the source: nothing moves (the RUNNING event after it does), nothing is
    unassigned either."""
    found, skipped = decide.targets(vm_with(), vm_with(state=3, lcm=lcm), ranges())
    assert found == []
    assert [s.ip for s in skipped] == [IP] and "MIGRATE" in skipped[0].reason
    assert "until it runs on its host" in skipped[0].reason


@pytest.mark.parametrize("state,lcm,name", [(3, 1, "PROLOG"), (3, 2, "BOOT"),
                                            (3, 16, "UNKNOWN"), (3, 12, "SHUTDOWN"),
                                            (5, 0, "SUSPENDED"), (8, 0, "POWEROFF"),
                                            (3, 65, "HOTPLUG_NIC_POWEROFF")])
def test_a_vm_not_running_on_its_host_keeps_its_addresses_but_gets_none_moved(state, lcm,
                                                                           name):
    found, skipped = decide.targets(vm_with(), vm_with(state=state, lcm=lcm), ranges())
    assert found == [] and name in skipped[0].reason


def test_migration_states_are_oneds_numbers():
    import pyone

    assert onedefs.LCM_MIGRATING == {s.value for s in pyone.LCM_STATE
                                         if "MIGRATE" in s.name} == set(MIGRATION_LCM)
    assert all(pyone.LCM_STATE(n).name == name for n, name in enumerate(onedefs.LCM_NAMES))
    assert len(onedefs.LCM_NAMES) == len(pyone.LCM_STATE)


def test_the_named_states_are_oneds_numbers():
    import pyone

    for name in ("ACTIVE", "SUSPENDED", "DONE", "POWEROFF"):
        assert getattr(onedefs, f"STATE_{name}") == pyone.VM_STATE[name].value
    for name in ("RUNNING", "HOTPLUG_NIC", "HOTPLUG_NIC_POWEROFF"):
        assert getattr(onedefs, f"LCM_{name}") == pyone.LCM_STATE[name].value
    assert onedefs.LCM_ON_HOST == {3, 17, 24, 25, 26, 57, 58, 59, 62}


@pytest.mark.parametrize("state,reason", [(6, "DONE"), (4, "STOPPED"), (9, "UNDEPLOYED"),
                                          (1, "PENDING")])
def test_other_states_want_the_address_unassigned(state, reason):
    (target,), _ = decide.targets(vm_with(), vm_with(state=state, lcm=0), ranges())
    assert not target.assigned and reason in target.reason


def test_the_current_state_wins_over_the_event():
    """The RUNNING event arrives after the VM was terminated: unassign."""
    (target,), _ = decide.targets(vm_with(state=3), vm_with(state=6, lcm=0), ranges())
    assert not target.assigned


def test_a_vm_gone_from_oned_wants_its_addresses_unassigned():
    (target,), _ = decide.targets(vm_with(), None, ranges())
    assert not target.assigned and "no longer exists" in target.reason


def test_hot_detached_alias_is_unassigned_and_the_remaining_one_kept():
    vnet = add_lease(VNET_XML, IP2, 42)
    event = vm_with(lcm=25, extra=[dict(ip=str(IP2), nic_id=2, attach=True)])
    current = vm_with()  # the alias with IP2 is gone after the detach
    found, _ = decide.targets(event, current, ranges(vnet))
    by_ip = {t.ip: t for t in found}
    assert by_ip[IP].assigned
    assert not by_ip[IP2].assigned and by_ip[IP2].reason == "alias detached"


def test_hot_attached_alias_is_assigned():
    vnet = add_lease(VNET_XML, IP2, 42)
    event = vm_with(lcm=25, extra=[dict(ip=str(IP2), nic_id=2, attach=True)])
    current = vm_with(extra=[dict(ip=str(IP2), nic_id=2)])
    found, _ = decide.targets(event, current, ranges(vnet))
    assert sorted((str(t.ip), t.assigned) for t in found) == [(str(IP), True),
                                                             (str(IP2), True)]


def test_an_alias_only_in_the_current_vm_is_handled_too():
    vnet = add_lease(VNET_XML, IP2, 42)
    current = vm_with(extra=[dict(ip=str(IP2), nic_id=2)])
    found, _ = decide.targets(vm_with(), current, ranges(vnet))
    assert {t.ip for t in found if t.assigned} == {IP, IP2}


def test_aliases_on_other_ipam_drivers_are_skipped():
    root = ET.fromstring(VNET_XML)
    root.find("AR_POOL/AR/IPAM_MAD").text = "dummy"
    found, skipped = decide.targets(vm_with(), vm_with(), ranges(ET.tostring(root)))
    assert found == [] and skipped[0].reason == "IPAM_MAD=dummy"


def test_an_ar_without_ipam_mad_is_skipped():
    root = ET.fromstring(VNET_XML)
    ar = root.find("AR_POOL/AR")
    ar.remove(ar.find("IPAM_MAD"))
    found, skipped = decide.targets(vm_with(), vm_with(), ranges(ET.tostring(root)))
    assert found == [] and skipped[0].reason == "IPAM_MAD=-"


def test_an_address_leased_to_another_vm_is_never_touched():
    """The alias was detached and oned already leased the address to VM 43."""
    vnet = add_lease(VNET_XML, IP2, 43)
    event = vm_with(lcm=25, extra=[dict(ip=str(IP2), nic_id=2, attach=True)])
    found, skipped = decide.targets(event, vm_with(), ranges(vnet))
    assert [t.ip for t in found] == [IP]
    assert [(s.ip, s.reason) for s in skipped] == [(IP2, "leased to VM 43")]


def test_done_vm_whose_address_was_reused_leaves_it_alone():
    root = ET.fromstring(VNET_XML)
    root.find("AR_POOL/AR/LEASES/LEASE/VM").text = "77"
    found, skipped = decide.targets(vm_with(), vm_with(state=6, lcm=0), ranges(ET.tostring(root)))
    assert found == [] and skipped[0].reason == "leased to VM 77"


def test_a_released_lease_is_still_cleaned_up_when_done():
    root = ET.fromstring(VNET_XML)
    ar = root.find("AR_POOL/AR")
    ar.remove(ar.find("LEASES"))
    (target,), _ = decide.targets(vm_with(), vm_with(state=6, lcm=0), ranges(ET.tostring(root)))
    assert not target.assigned


def test_a_missing_address_range_fails_when_the_address_must_be_assigned():
    with pytest.raises(ProviderError, match="address range 0 not found in network 2"):
        decide.targets(vm_with(), vm_with(), {})


def test_a_missing_address_range_is_skipped_when_nothing_must_be_assigned():
    found, skipped = decide.targets(vm_with(), vm_with(state=6, lcm=0), {})
    assert found == [] and "gone" in skipped[0].reason


def test_a_packet_ar_without_deploy_id_fails():
    root = ET.fromstring(VNET_XML)
    ar = root.find("AR_POOL/AR")
    ar.remove(ar.find("DEPLOY_ID"))
    with pytest.raises(ProviderError, match="no DEPLOY_ID"):
        decide.targets(vm_with(), vm_with(), ranges(ET.tostring(root)))


def test_a_malformed_reservation_id_is_refused():
    root = ET.fromstring(VNET_XML)
    root.find("AR_POOL/AR/DEPLOY_ID").text = "x/../y"
    with pytest.raises(InputError):
        decide.targets(vm_with(), vm_with(), ranges(ET.tostring(root)))


def add_lease(vnet_xml, ip, vm_id):
    root = ET.fromstring(vnet_xml)
    leases = root.find("AR_POOL/AR/LEASES")
    lease = ET.SubElement(leases, "LEASE")
    ET.SubElement(lease, "IP").text = str(ip)
    ET.SubElement(lease, "VM").text = str(vm_id)
    return ET.tostring(root)


# -- changes ------------------------------------------------------------------------------

def placed(assignment_id, device_id, ip=IP):
    """Packet's assignment of ``ip`` to ``device_id``, as locate() passes it on."""
    return Assignment(assignment_id, ip, 32, device_id, RESERVATION)


def target(assigned=True, ip=IP):
    return decide.Target(ip=ip, alias="NIC0_ALIAS0", vnet_id=2, ar_id=0,
                       reservation_id=RESERVATION, project_id=None, assigned=assigned,
                       reason="test")


def test_already_on_the_device_is_kept_without_writes():
    steps = decide.changes([target()], DEVICE, {IP: placed(ASSIGNMENT, DEVICE)})
    assert [s.kind for s in steps] == ["keep"] and decide.writes(steps) == 0


def test_unassigned_address_is_assigned_to_the_device():
    steps = decide.changes([target()], DEVICE, {IP: None})
    assert [(s.kind, s.device_id) for s in steps] == [("assign", DEVICE)]


def test_address_on_another_device_is_unassigned_first_then_assigned():
    steps = decide.changes([target()], DEVICE, {IP: placed(ASSIGNMENT, OTHER_DEVICE)})
    assert [(s.kind, s.device_id, s.assignment_id) for s in steps] == [
        ("unassign", OTHER_DEVICE, ASSIGNMENT), ("assign", DEVICE, None)]
    assert decide.writes(steps) == 2


def test_unwanted_address_is_unassigned_wherever_it_is():
    steps = decide.changes([target(False)], None, {IP: placed(ASSIGNMENT, OTHER_DEVICE)})
    assert [(s.kind, s.assignment_id) for s in steps] == [("unassign", ASSIGNMENT)]


def test_unwanted_and_unassigned_address_needs_no_write():
    steps = decide.changes([target(False)], None, {})
    assert [s.kind for s in steps] == ["keep"] and decide.writes(steps) == 0


def test_assigning_without_a_device_is_an_error():
    with pytest.raises(ProviderError, match="no Packet device"):
        decide.changes([target()], None, {IP: None})


def test_replaying_the_result_of_a_plan_makes_no_writes():
    """Apply the changes to a model of Packet, plan again: nothing left to do."""
    wanted = [target(True, IP), target(False, IP2)]
    placements = {IP: placed("a-old", OTHER_DEVICE), IP2: placed("a-2", DEVICE, IP2)}
    for step in decide.changes(wanted, DEVICE, placements):
        if step.kind == "unassign":
            placements[step.ip] = None
        elif step.kind == "assign":
            placements[step.ip] = placed("a-new", step.device_id, step.ip)
    assert placements == {IP: placed("a-new", DEVICE), IP2: None}
    assert decide.writes(decide.changes(wanted, DEVICE, placements)) == 0


# -- the re-check before an unassign ----------------------------------------------------------

def test_an_address_oned_now_leases_to_another_vm_is_reported():
    fresh = ranges(add_lease(VNET_XML, IP2, 43)).values()
    assert decide.leased_elsewhere(42, IP2, fresh) == 43


@pytest.mark.parametrize("holder", [42, None])
def test_an_address_that_is_free_or_still_ours_may_be_unassigned(holder):
    root = ET.fromstring(VNET_XML)
    if holder is None:
        ar = root.find("AR_POOL/AR")
        ar.remove(ar.find("LEASES"))
    assert decide.leased_elsewhere(42, IP, ranges(ET.tostring(root)).values()) is None


def test_a_target_names_the_networks_whose_leases_are_rechecked():
    (target,), _ = decide.targets(vm_with(), vm_with(state=6, lcm=0), ranges())
    assert target.lease_networks == (2,)


# -- is the reservation the range's? ----------------------------------------------------------

def reservation(network="147.75.84.88/29"):
    from packet_provider.packet import Reservation

    return Reservation(id=RESERVATION, network=ipaddress.IPv4Network(network),
                       type="public_ipv4", state="created", facility="ams1", project_id="",
                       assignment_ids=())


def test_the_address_range_keeps_its_ip_and_size():
    ar = ranges()[(2, 0)]
    assert (ar.first_ip, ar.size) == ("147.75.84.88", "8")
    (target,), _ = decide.targets(vm_with(), vm_with(), ranges())
    assert (target.range_ip, target.range_size) == ("147.75.84.88", "8")


@pytest.mark.parametrize("ip,size,ok", [
    ("147.75.84.88", "8", True), (" 147.75.84.88 ", 8, True),
    ("147.75.84.89", "8", False),  # not the block's network address
    ("147.75.84.88", "4", False), ("147.75.84.88", "16", False),  # another size
    ("147.75.84.80", "8", False), ("", "8", False), ("147.75.84.88", "", False),
    ("x", "8", False), ("147.75.84.88", "eight", False)])
def test_a_reservation_matches_a_range_by_network_and_size(ip, size, ok):
    from packet_provider.packet import reservation_matches_range

    assert reservation_matches_range(reservation(), ip, size) is ok


# -- reservation networks (onevnet reserve) ---------------------------------------------------

RESV_IP = ipaddress.IPv4Address("192.0.2.0")
PARENT_RESERVATION = "6303e189-33ba-423f-afae-2609c303334c"


def captured(*docs):
    out = {}
    for doc in docs or (RESV_XML, PARENT_XML):
        root = onexml.parse(doc) if isinstance(doc, bytes) else doc
        out.update({(ar.vnet_id, ar.ar_id): ar for ar in parse_vnet(root).values()})
    return out


def vm_on(network, state=3, lcm=3, vm_id=0):
    root = drop_aliases(vm_tree())
    set_text(root, "ID", vm_id)
    set_text(root, "STATE", state)
    set_text(root, "LCM_STATE", lcm)
    return model(add_alias(root, str(RESV_IP), 1, network_id=network, ar_id=0))


def test_a_reservation_ar_is_read_with_its_parent_as_oned_writes_it():
    """oned copies the parent AR into the reservation without IPAM_MAD, adds
    PARENT_NETWORK_AR_ID, and records the parent network in the VNET's PARENT_NETWORK_ID;
    the parent's lease of the reserved address belongs to the reservation (VNET 2)."""
    ranges_ = captured()
    resv, parent = ranges_[(2, 0)], ranges_[(1, 0)]
    assert resv.parent == (1, 0) and resv.ipam_mad == ""
    assert resv.reservation_id == PARENT_RESERVATION  # a copy, which a user may change
    assert (resv.first_ip, resv.size) == (str(RESV_IP), "1")
    assert resv.leases == {RESV_IP: 0}
    assert parent.parent is None and parent.ipam_mad == "packet" and parent.leases == {}
    assert (parent.first_ip, parent.size) == ("192.0.2.0", "8")


def test_an_alias_on_a_reservation_is_routed_through_its_parents_packet_range():
    vm = vm_on(2)
    (target,), skipped = decide.targets(vm, vm, captured())
    assert skipped == [] and target.assigned and target.ip == RESV_IP
    assert target.reservation_id == PARENT_RESERVATION
    assert (target.vnet_id, target.ar_id, target.via) == (1, 0, (2, 0))
    assert (target.range_ip, target.range_size) == ("192.0.2.0", "8")  # the block's
    assert target.lease_networks == (2, 1)


def test_the_reservations_own_deploy_id_and_token_are_not_used():
    resv, parent = ET.fromstring(RESV_XML), ET.fromstring(PARENT_XML)
    resv.find("AR_POOL/AR/DEPLOY_ID").text = RESERVATION  # changed by the user
    ET.SubElement(resv.find("AR_POOL/AR"), "PACKET_TOKEN").text = "copied-token"
    ET.SubElement(parent.find("AR_POOL/AR"), "PACKET_TOKEN").text = "parent-token"
    vm = vm_on(2)
    (target,), _ = decide.targets(vm, vm, captured(resv, parent))
    assert target.reservation_id == PARENT_RESERVATION and target.token == "parent-token"


def test_a_reservation_of_a_reservation_is_followed_to_the_packet_range():
    nested = ET.fromstring(RESV_XML)
    nested.find("ID").text = "3"
    nested.find("PARENT_NETWORK_ID").text = "2"
    vm = vm_on(3)
    (target,), _ = decide.targets(vm, vm, captured(nested, RESV_XML, PARENT_XML))
    assert target.reservation_id == PARENT_RESERVATION and target.via == (3, 0)
    assert target.lease_networks == (3, 2, 1)


def test_a_reservation_loop_is_not_followed_forever():
    looped = ET.fromstring(RESV_XML)
    looped.find("PARENT_NETWORK_ID").text = "2"  # its own parent
    vm = vm_on(2)
    with pytest.raises(ProviderError, match="reservation"):
        decide.targets(vm, vm, captured(looped))


def test_a_reservation_whose_parent_range_is_gone():
    vm = vm_on(2)
    with pytest.raises(ProviderError, match="address range 0 of network 1"):
        decide.targets(vm, vm, captured(RESV_XML))
    found, skipped = decide.targets(vm, vm_on(2, state=6, lcm=0), captured(RESV_XML))
    assert found == [] and "network 1" in skipped[0].reason


def test_the_parent_networks_still_to_read():
    assert decide.parents_to_read(captured(RESV_XML)) == [1]
    assert decide.parents_to_read(captured()) == []


# -- the model's other readers (core.oned) -------------------------------------------------------

IPAM_DATA = (b"<IPAM_DRIVER_ACTION_DATA><AR><TYPE>IP4</TYPE><IP> 10.0.0.1 </IP><SIZE>8</SIZE>"
             b"<ipam_mad>packet</ipam_mad><V><K>x</K></V><SIZE>4</SIZE></AR>"
             b"<ADDRESS><IP>10.0.0.2</IP><SIZE>1</SIZE></ADDRESS></IPAM_DRIVER_ACTION_DATA>")


@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
def test_ipam_action_data_is_read_as_the_ipam_driver_reads_it(parse):
    from packet_provider.core.oned import parse_ipam_action_data

    data = parse_ipam_action_data(parse(IPAM_DATA))
    assert data.ar == {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "4", "IPAM_MAD": "packet"}
    assert data.ar_order == ("TYPE", "IP", "SIZE", "IPAM_MAD")
    assert data.address == {"IP": "10.0.0.2", "SIZE": "1"}
    request = pytest.importorskip("packet_provider.ipam.request")
    import base64

    theirs = request.parse_request("allocate_address", 1, base64.b64encode(IPAM_DATA))
    assert (theirs.ar, theirs.ar_order, theirs.address) == (data.ar, data.ar_order,
                                                            data.address)


@pytest.mark.parametrize("xml,message", [(b"<AR/>", "expected IPAM_DRIVER_ACTION_DATA"),
                                         (b"<IPAM_DRIVER_ACTION_DATA/>", "has no AR")])
def test_ipam_action_data_without_its_parts_is_refused(xml, message):
    from packet_provider.core.oned import parse_ipam_action_data

    with pytest.raises(InputError, match=message):
        parse_ipam_action_data(hostxml.parse(xml))
