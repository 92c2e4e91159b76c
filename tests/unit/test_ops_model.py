"""The pure comparison behind packet-provider check (packet_provider.ops.model), on plain
snapshots."""

from __future__ import annotations

import ipaddress
import uuid

from packet_provider.ops import model as m
from packet_provider.packet import Assignment

RID = str(uuid.uuid4())
DEV_A, DEV_B = str(uuid.uuid4()), str(uuid.uuid4())
IP = [ipaddress.IPv4Address("203.0.113.8") + n for n in range(8)]


def snap(**kw) -> m.Snapshot:
    """One packet range over RID (VM 1 on host 0 / DEV_A holds IP[0], leased and filed and
    routed there): everything agrees unless ``kw`` changes it."""
    s = m.Snapshot(
        ranges=[m.Range(5, 0, RID, "p", "203.0.113.8", "8", frozenset({IP[0]}))],
        holders={(RID, IP[0]): 1},
        vms={1: m.VmState(1, 3, 3, 0)},
        devices={0: DEV_A, 1: DEV_B},
        blocks={RID: m.Block(RID, "p", "203.0.113.8/29", True,
                             {IP[0]: Assignment("a0", IP[0], 32, DEV_A, RID)})},
        lease_files={RID: {IP[0]}},
    )
    for key, value in kw.items():
        setattr(s, key, value)
    return s


def kinds(s: m.Snapshot, **kw) -> list:
    return [(f.kind, str(f.ip) if f.ip else f.reservation_id) for f in m.differences(s, **kw)]


def test_agreeing_snapshot_has_no_difference():
    assert m.differences(snap()) == []


def test_routed_to_another_device_than_the_running_vms_host():
    s = snap(vms={1: m.VmState(1, 3, 3, 1)})
    [finding] = m.differences(s)
    assert finding.kind == m.WRONG_DEVICE and finding.device_id == DEV_B
    assert finding.assignment_id == "a0" and finding.vm_id == 1


def test_running_vm_address_routed_nowhere():
    s = snap()
    s.blocks[RID] = m.Block(RID, "p", "203.0.113.8/29", True, {})
    assert kinds(s) == [(m.UNROUTED, str(IP[0]))]


def test_vm_not_running_on_its_host_is_left_where_it_is():
    for state, lcm in ((3, 4), (8, 0), (5, 0), (3, 1)):  # migrating, poweroff, suspended, boot
        s = snap(vms={1: m.VmState(1, state, lcm, 1)})
        assert m.differences(s) == [], (state, lcm)


def test_host_without_device_is_no_drift_of_ours():
    s = snap(devices={0: None})
    s.blocks[RID] = m.Block(RID, "p", "203.0.113.8/29", True, {})
    assert m.differences(s) == []


def test_routed_while_nobody_holds_it_or_its_vm_stopped():
    s = snap(holders={}, ranges=[m.Range(5, 0, RID, "p", "203.0.113.8", "8", frozenset())],
             lease_files={})
    assert kinds(s) == [(m.ROUTED_UNHELD, str(IP[0]))]
    stopped = snap(vms={1: m.VmState(1, 4, 0, 0)})
    assert kinds(stopped) == [(m.ROUTED_UNHELD, str(IP[0]))]
    gone = snap(vms={})
    assert kinds(gone) == [(m.ROUTED_UNHELD, str(IP[0]))]


def test_lease_files_against_oned_leases():
    s = snap(lease_files={RID: {IP[1]}})
    assert kinds(s) == [(m.MISSING_LEASE_FILE, str(IP[0])), (m.STALE_LEASE_FILE, str(IP[1]))]
    other = str(uuid.uuid4())
    s = snap(lease_files={RID: {IP[0]}, other: {IP[3]}})
    [finding] = m.differences(s)
    assert finding.kind == m.STALE_LEASE_FILE and finding.reservation_id == other
    assert "no address range" in finding.text


def test_leases_only_compares_lease_files_alone():
    s = snap(lease_files={}, vms={1: m.VmState(1, 3, 3, 1)})
    assert kinds(s, leases_only=True) == [(m.MISSING_LEASE_FILE, str(IP[0]))]


def test_orphan_reservation_only_when_ours_and_not_in_flight():
    orphan = str(uuid.uuid4())
    s = snap()
    s.blocks[orphan] = m.Block(orphan, "p", "198.51.100.0/30", True, {}, marker="mk")
    assert kinds(s) == [(m.ORPHAN_RESERVATION, orphan)]
    s.pending_markers = {"mk"}
    assert m.differences(s) == []  # a register in flight
    s.blocks[orphan] = m.Block(orphan, "p", "198.51.100.0/30", False, {})
    assert m.differences(s) == []  # not made by the driver: not ours to judge


def test_range_whose_reservation_is_gone():
    s = snap(blocks={}, gone={RID})
    assert kinds(s) == [(m.MISSING_RESERVATION, RID)]


def test_deferred_unassignment_pending():
    s = snap(deferred={RID: {IP[2]}})
    s.blocks[RID] = m.Block(RID, "p", "203.0.113.8/29", True,
                            {IP[0]: Assignment("a0", IP[0], 32, DEV_A, RID)})
    [finding] = m.differences(s)
    assert finding.kind == m.DEFERRED_UNASSIGN and finding.ip == IP[2]
    assert "no longer routed" in finding.text


def test_findings_are_grouped_in_kind_order_and_counted():
    s = snap(vms={1: m.VmState(1, 3, 3, 1)}, lease_files={}, deferred={RID: {IP[2]}})
    found = m.differences(s)
    order = [m.KIND_ORDER[f.kind] for f in found]
    assert order == sorted(order) and len(found) == 3
    counts = m.counts(found)
    assert counts[m.WRONG_DEVICE] == 1 and counts[m.UNROUTED] == 0
    assert set(counts) == {k for k, _ in m.KINDS}
    assert found[0].to_json()["ip"] == str(IP[0])
