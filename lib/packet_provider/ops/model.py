"""What ``packet-provider check`` compares, and the comparison itself: pure, no I/O.

A :class:`Snapshot` holds what was read from the three places that must agree (oned, Packet,
the IPAM driver's state directory); :func:`differences` lists every disagreement as a
:class:`Finding`, one per address, file, reservation or range, grouped by :data:`KINDS`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple

from packet_provider.core import onedefs

if TYPE_CHECKING:  # annotations only: the comparison imports no API client
    from packet_provider.packet import Assignment

Address = ipaddress.IPv4Address

WRONG_DEVICE = "wrong-device"
UNROUTED = "unrouted"
ROUTED_UNHELD = "routed-unheld"
STALE_LEASE_FILE = "stale-lease-file"
MISSING_LEASE_FILE = "missing-lease-file"
ORPHAN_RESERVATION = "orphan-reservation"
MISSING_RESERVATION = "missing-reservation"
DEFERRED_UNASSIGN = "deferred-unassign"

# every kind, in report order, with what it means
KINDS: Tuple[Tuple[str, str], ...] = (
    (WRONG_DEVICE, "address routed to another device than its running VM's host"),
    (UNROUTED, "address of a running VM routed to no device"),
    (ROUTED_UNHELD, "address routed while no VM holds it"),
    (MISSING_LEASE_FILE, "oned lease without a lease file"),
    (STALE_LEASE_FILE, "lease file oned does not know"),
    (ORPHAN_RESERVATION, "Packet reservation no address range refers to"),
    (MISSING_RESERVATION, "address range whose Packet reservation is gone"),
    (DEFERRED_UNASSIGN, "deferred unassignment still pending"),
)
KIND_ORDER = {kind: n for n, (kind, _) in enumerate(KINDS)}


@dataclass(frozen=True)
class Range:
    """A packet-managed address range in oned (IPAM_MAD = packet)."""

    vnet_id: int
    ar_id: int
    reservation_id: Optional[str]  # DEPLOY_ID, validated
    project_id: Optional[str]
    first_ip: str = ""
    size: str = ""
    # every address oned leases from this AR: VM holders here, reservation networks (a
    # LEASE with VNET) too; and the VM leases of reservation networks made from it
    leases: FrozenSet[Address] = frozenset()
    token: Optional[str] = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class VmState:
    """A VM as oned's pool has it: state and the host of its last history record."""

    id: int
    state: int
    lcm_state: int
    host_id: Optional[int] = None

    @property
    def runs_on_host(self) -> bool:
        return onedefs.runs_on_host(self.state, self.lcm_state)

    @property
    def keeps_addresses(self) -> bool:
        return self.state in onedefs.ADDRESS_KEEPING_STATES


@dataclass(frozen=True)
class Block:
    """A Packet reservation with its /32 assignments."""

    id: str
    project_id: str
    network: str
    ours: bool  # made by the IPAM driver (its request marker in customdata)
    assignments: Mapping[Address, Assignment] = field(default_factory=dict)  # the /32s
    marker: Optional[str] = None


@dataclass
class Snapshot:
    """Everything check read. ``holders`` maps an address to the VM leasing it (per
    reservation); ``devices`` a host id to its Packet device (None: not a Packet device)."""

    ranges: List[Range] = field(default_factory=list)
    holders: Dict[Tuple[str, Address], int] = field(default_factory=dict)
    vms: Dict[int, VmState] = field(default_factory=dict)
    devices: Dict[int, Optional[str]] = field(default_factory=dict)
    host_names: Dict[int, str] = field(default_factory=dict)
    blocks: Dict[str, Block] = field(default_factory=dict)
    # reservations looked up that Packet does not know (the ranges naming them)
    gone: Set[str] = field(default_factory=set)
    projects: Set[str] = field(default_factory=set)  # projects whose reservations were listed
    lease_files: Dict[str, Set[Address]] = field(default_factory=dict)
    deferred: Dict[str, Set[Address]] = field(default_factory=dict)
    pending_markers: Set[str] = field(default_factory=set)  # registers in flight


@dataclass(frozen=True)
class Finding:
    """One difference. ``ip``/``reservation_id`` say what it is about; ``vm_id``,
    ``device_id`` (where it should be) and ``assignment_id`` (where it is) what to do."""

    kind: str
    text: str
    reservation_id: Optional[str] = None
    ip: Optional[Address] = None
    vm_id: Optional[int] = None
    device_id: Optional[str] = None
    assignment_id: Optional[str] = None
    vnet_id: Optional[int] = None
    ar_id: Optional[int] = None

    def sort_key(self) -> Tuple[int, str, int, str]:
        return (KIND_ORDER.get(self.kind, 99), self.reservation_id or "",
                int(self.ip) if self.ip is not None else -1, self.text)

    def to_json(self) -> Dict[str, object]:
        data: Dict[str, object] = {"kind": self.kind, "text": self.text}
        for name in ("reservation_id", "vm_id", "device_id", "assignment_id", "vnet_id",
                     "ar_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.ip is not None:
            data["ip"] = str(self.ip)
        return data


def _where(rng: Range) -> str:
    return f"network {rng.vnet_id} AR {rng.ar_id}"


def _routing(snap: Snapshot, rng: Range, out: List[Finding]) -> None:
    rid = rng.reservation_id
    block = snap.blocks.get(rid or "")
    if rid is None or block is None:
        return
    addresses = set(block.assignments) | {ip for (r, ip) in snap.holders if r == rid}
    for ip in sorted(addresses):
        placed = block.assignments.get(ip)
        vm_id = snap.holders.get((rid, ip))
        vm = snap.vms.get(vm_id) if vm_id is not None else None
        common = dict(reservation_id=rid, ip=ip, vm_id=vm_id, vnet_id=rng.vnet_id,
                      ar_id=rng.ar_id, assignment_id=placed.id if placed else None)
        if vm is not None and vm.runs_on_host:
            device = snap.devices.get(vm.host_id) if vm.host_id is not None else None
            if device is None:
                continue  # its host is no Packet device: the hook fails loudly there
            host = f"host {vm.host_id}"
            if vm.host_id in snap.host_names:
                host += f" ({snap.host_names[vm.host_id]})"
            if placed is None:
                out.append(Finding(UNROUTED, f"{ip} ({_where(rng)}): VM {vm_id} runs on "
                                             f"{host}, device {device}, but the address is "
                                             "routed to no device", device_id=device,
                                   **common))
            elif placed.device_id != device:
                out.append(Finding(WRONG_DEVICE, f"{ip} ({_where(rng)}): routed to device "
                                                 f"{placed.device_id or '-'}, but VM {vm_id} "
                                                 f"runs on {host}, device {device}",
                                   device_id=device, **common))
        elif placed is not None and (vm is None or not vm.keeps_addresses):
            why = "no VM holds it" if vm_id is None else (
                f"VM {vm_id} is gone" if vm is None else f"VM {vm_id} is in state {vm.state}")
            out.append(Finding(ROUTED_UNHELD, f"{ip} ({_where(rng)}): routed to device "
                                              f"{placed.device_id or '-'} while {why}",
                               **common))


def _lease_files(snap: Snapshot, out: List[Finding]) -> None:
    by_reservation: Dict[str, Range] = {}
    for rng in snap.ranges:
        if rng.reservation_id:
            by_reservation.setdefault(rng.reservation_id, rng)
    known: Dict[str, Set[Address]] = {}
    for rng in snap.ranges:
        if rng.reservation_id:
            known.setdefault(rng.reservation_id, set()).update(rng.leases)
    for rid in sorted(set(known) | set(snap.lease_files)):
        files = snap.lease_files.get(rid, set())
        leases = known.get(rid, set())
        rng = by_reservation.get(rid)
        where = _where(rng) if rng else "no address range names this reservation"
        ids = dict(vnet_id=rng.vnet_id, ar_id=rng.ar_id) if rng else {}
        for ip in sorted(leases - files):
            out.append(Finding(MISSING_LEASE_FILE, f"{ip} ({where}): leased in oned, no lease "
                                                   f"file in {rid}", reservation_id=rid,
                               ip=ip, **ids))
        for ip in sorted(files - leases):
            out.append(Finding(STALE_LEASE_FILE, f"{ip} ({where}): lease file in {rid}, oned "
                                                 "has no such lease", reservation_id=rid,
                               ip=ip, **ids))


def _reservations(snap: Snapshot, out: List[Finding]) -> None:
    named = {rng.reservation_id for rng in snap.ranges if rng.reservation_id}
    for block in sorted(snap.blocks.values(), key=lambda b: b.id):
        if block.id in named or not block.ours:
            continue
        if block.marker is not None and block.marker in snap.pending_markers:
            continue  # a register in flight: its range is about to name it
        held = len(block.assignments)
        out.append(Finding(ORPHAN_RESERVATION, f"reservation {block.id} ({block.network}, "
                                               f"project {block.project_id}): no address "
                                               f"range refers to it ({held} address(es) "
                                               "routed)", reservation_id=block.id))
    for rng in snap.ranges:
        if rng.reservation_id and rng.reservation_id in snap.gone:
            out.append(Finding(MISSING_RESERVATION, f"{_where(rng)}: its reservation "
                                                    f"{rng.reservation_id} is gone at Packet",
                               reservation_id=rng.reservation_id, vnet_id=rng.vnet_id,
                               ar_id=rng.ar_id))
        elif not rng.reservation_id:
            out.append(Finding(MISSING_RESERVATION, f"{_where(rng)}: no DEPLOY_ID (no Packet "
                                                    "reservation)", vnet_id=rng.vnet_id,
                               ar_id=rng.ar_id))


def _deferred(snap: Snapshot, out: List[Finding]) -> None:
    for rid in sorted(snap.deferred):
        block = snap.blocks.get(rid)
        for ip in sorted(snap.deferred[rid]):
            placed = block.assignments.get(ip) if block is not None else None
            now = (f"still routed to device {placed.device_id or '-'}" if placed
                   else "no longer routed" if block is not None else "reservation not read")
            out.append(Finding(DEFERRED_UNASSIGN, f"{ip} (reservation {rid}): unassignment "
                                                  f"owed since a free_address; {now}",
                               reservation_id=rid, ip=ip,
                               assignment_id=placed.id if placed else None))


def differences(snap: Snapshot, leases_only: bool = False) -> List[Finding]:
    """Every difference in ``snap``, sorted by kind; ``leases_only``: the lease files only."""
    out: List[Finding] = []
    _lease_files(snap, out)
    if not leases_only:
        for rng in snap.ranges:
            _routing(snap, rng, out)
        _reservations(snap, out)
        _deferred(snap, out)
    return sorted(set(out), key=Finding.sort_key)


def counts(findings: List[Finding]) -> Dict[str, int]:
    """How many findings of each kind (every kind listed)."""
    found = {kind: 0 for kind, _ in KINDS}
    for finding in findings:
        found[finding.kind] = found.get(finding.kind, 0) + 1
    return found
