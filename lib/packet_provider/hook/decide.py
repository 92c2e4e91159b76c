"""What the alias_ip hook must change: pure decisions, no I/O.

Unit tests call them with plain values; the objects are the model of
:mod:`packet_provider.core.oned` (the hook's fast path imports neither:
:func:`packet_provider.hook.entry.quick_answer` applies :func:`is_candidate` to the event's
XML before any model is built).

The decision takes three inputs read by :mod:`packet_provider.hook.sync`:

- the VM of the state event (what onehem passed) and the VM as oned has it *now*
  (``one.vm.info``; the event is asynchronous, so the current state wins);
- the address ranges of the networks the candidate aliases are on (``one.vn.info`` with
  decrypt, read as raw XML because pyone's typed AR drops IPAM_MAD, DEPLOY_ID, PACKET_TOKEN);
- where each address is assigned in Packet right now.

and yields, per alias address on a ``packet`` range, whether it must be on the Packet device
of the VM's current host (:func:`targets`), then the API writes that get it there
(:func:`changes`). An address leased in oned to another VM is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from packet_provider.core import onedefs, validate
from packet_provider.core.errors import ProviderError
from packet_provider.core.oned import VM, Address, AddressRange, NicAlias
from packet_provider.core.onedefs import (
    ADDRESS_KEEPING_STATES,
    ALIAS_VN_MAD,
    LCM_HOTPLUG_NIC,
    LCM_HOTPLUG_NIC_POWEROFF,
    LCM_MIGRATING,
    PACKET_IPAM_MAD,
    STATE_ACTIVE,
    STATE_DONE,
    STATE_NAMES,
)

if TYPE_CHECKING:  # annotations only: decisions import no API client
    from packet_provider.packet import Assignment

HOTPLUG_NIC_STATES = frozenset({LCM_HOTPLUG_NIC, LCM_HOTPLUG_NIC_POWEROFF})


# -- decisions ----------------------------------------------------------------------------

def is_candidate(alias: NicAlias) -> bool:
    """An alias the hook may have to act on: it has an IP and is external or alias_sdnat."""
    return alias.ip is not None and (alias.external or alias.vn_mad == ALIAS_VN_MAD)


def candidates(vm: VM) -> Tuple[NicAlias, ...]:
    """The aliases of ``vm`` the hook may have to act on (:func:`is_candidate`)."""
    return tuple(a for a in vm.aliases if is_candidate(a))


def hotplug_in_flight(vm: VM) -> bool:
    """True while oned is still attaching or detaching a NIC (alias) of ``vm``.

    oned marks the alias being attached *or* detached with ATTACH=YES during HOTPLUG_NIC,
    so that XML cannot tell which way it goes; once the VM leaves the hot-plug state the
    alias is either there (attached) or gone (detached, or a failed attach rolled back).
    """
    return vm.lcm_state in HOTPLUG_NIC_STATES and vm.state in ADDRESS_KEEPING_STATES


@dataclass(frozen=True)
class Target:
    """One alias address on a packet range, and whether it must be on the host's device."""

    ip: Address
    alias: str
    vnet_id: int
    ar_id: int
    reservation_id: str
    project_id: Optional[str]
    assigned: bool
    reason: str
    token: Optional[str] = field(default=None, repr=False, compare=False)
    # the networks whose leases say, just before an unassign, whether oned gave the address
    # to another VM in the meantime
    lease_networks: Tuple[int, ...] = ()
    range_ip: str = ""  # IP and SIZE of the packet AR: the reservation must be that block
    range_size: str = ""
    # (network, AR) of the alias's lease when it is on a reservation network: vnet_id and
    # ar_id are then the packet range it was reserved from
    via: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class Skip:
    """An alias address the hook leaves alone, and why."""

    ip: Address
    alias: str
    reason: str


def state_name(vm: VM) -> str:
    """``ACTIVE/RUNNING``, ``POWEROFF``, ...: the VM's state as the CLI names it."""
    return onedefs.state_name(vm.state, vm.lcm_state)


def runs_on_its_host(vm: VM) -> bool:
    """Whether the VM runs on the host of its last history record, so that its addresses
    may be moved there. Not during a migration (the last record is already the destination
    while the VM still runs on the source), nor before it boots, nor while it is powered off,
    suspended or unknown: the RUNNING event that follows moves them."""
    return onedefs.runs_on_host(vm.state, vm.lcm_state)


def _not_running_reason(vm: VM) -> str:
    what = "migrating" if vm.lcm_state in LCM_MIGRATING and vm.state == STATE_ACTIVE \
        else "not running"
    return f"VM is {state_name(vm)} ({what}): left where it is until it runs on its host"


def _absent_reason(current: Optional[VM], in_current: bool) -> str:
    if current is None:
        return "VM no longer exists in oned"
    if current.state == STATE_DONE:
        return "VM is DONE"
    if current.state not in ADDRESS_KEEPING_STATES:
        return f"VM is {STATE_NAMES.get(current.state, current.state)}"
    if not in_current:
        return "alias detached"
    return "not wanted"


MAX_RESERVATION_DEPTH = 8


def packet_range(ar: AddressRange, ranges: Mapping[Tuple[int, int], AddressRange],
                 ) -> Tuple[Optional[AddressRange], Tuple[int, ...], Optional[Tuple[int, int]]]:
    """The AR holding the Packet block of an address of ``ar``: ``ar`` itself, or for a
    reservation network the AR it was reserved from (followed up through a reservation of a
    reservation). Returns that AR (None when it is not in ``ranges``), the networks passed
    through (the lease's first: whose leases say who holds the address) and the missing
    (network, AR) if any."""
    chain = [ar.vnet_id]
    seen = {(ar.vnet_id, ar.ar_id)}
    while ar.parent is not None:
        if ar.parent in seen or len(chain) > MAX_RESERVATION_DEPTH:
            raise ProviderError(f"network {chain[0]}: its chain of reservations through "
                                f"networks {', '.join(map(str, chain))} does not end")
        parent = ranges.get(ar.parent)
        if parent is None:
            return None, tuple(chain), ar.parent
        seen.add(ar.parent)
        ar = parent
        chain.append(ar.vnet_id)
    return ar, tuple(chain), None


def parents_to_read(ranges: Mapping[Tuple[int, int], AddressRange]) -> List[int]:
    """The parent networks of reservation ARs in ``ranges`` that are not read yet."""
    read = {vnet_id for vnet_id, _ in ranges}
    return sorted({ar.parent[0] for ar in ranges.values()
                   if ar.parent is not None and ar.parent[0] not in read})


def targets(event: VM, current: Optional[VM],
            ranges: Mapping[Tuple[int, int], AddressRange],
            ) -> Tuple[List[Target], List[Skip]]:
    """Decide, for each candidate alias address of the VM, whether it must be assigned.

    ``event`` is the VM the hook was given, ``current`` the VM as oned has it now (None when
    oned no longer knows it). Addresses present in the current VM while it runs on the host
    of its last history record (:func:`runs_on_its_host`) must be assigned there; while it
    is ACTIVE otherwise (migrating, booting), SUSPENDED or POWEROFF they stay where they are
    (skipped: never moved early, never unassigned); addresses only in the event
    (hot-detached) or of a VM in any other state must be unassigned. ``ranges`` maps
    ``(vnet id, AR id)`` to the AR.
    """
    vm_id = event.id
    now = {a.ip: a for a in candidates(current)} if current is not None else {}
    seen: Dict[Address, NicAlias] = dict(now)
    for alias in candidates(event):
        seen.setdefault(alias.ip, alias)
    keep = current is not None and current.state in ADDRESS_KEEPING_STATES
    found: List[Target] = []
    skipped: List[Skip] = []
    for ip in sorted(seen):
        alias = seen[ip]
        name = alias.name or f"alias {alias.nic_id}"
        if alias.network_id is None or alias.ar_id is None:
            skipped.append(Skip(ip, name, "no NETWORK_ID/AR_ID on the alias"))
            continue
        ar = ranges.get((alias.network_id, alias.ar_id))
        wanted = keep and ip in now
        if ar is None:
            if wanted:
                raise ProviderError(f"VM {vm_id}: {name} {ip}: address range "
                                    f"{alias.ar_id} not found in network {alias.network_id}")
            skipped.append(Skip(ip, name, f"address range {alias.ar_id} of network "
                                          f"{alias.network_id} is gone"))
            continue
        block, networks, missing = packet_range(ar, ranges)
        if block is None or missing is not None:
            parent_vnet, parent_ar = missing or (-1, -1)
            text = (f"network {ar.vnet_id} is a reservation from address range {parent_ar} "
                    f"of network {parent_vnet}, which is gone")
            if wanted:
                raise ProviderError(f"VM {vm_id}: {name} {ip}: {text}")
            skipped.append(Skip(ip, name, text))
            continue
        if block.ipam_mad != PACKET_IPAM_MAD:
            skipped.append(Skip(ip, name, f"IPAM_MAD={block.ipam_mad or '-'}"))
            continue
        holder = ar.leases.get(ip)
        if holder is not None and holder != vm_id:
            skipped.append(Skip(ip, name, f"leased to VM {holder}"))
            continue
        if wanted and current is not None and not runs_on_its_host(current):
            skipped.append(Skip(ip, name, _not_running_reason(current)))
            continue
        if not block.reservation_id:
            raise ProviderError(f"VM {vm_id}: {name} {ip}: address range {block.ar_id} of "
                                f"network {block.vnet_id} has no DEPLOY_ID (reservation)")
        reservation = validate.uuid(block.reservation_id,
                                    f"network {block.vnet_id} AR {block.ar_id} DEPLOY_ID")
        found.append(Target(
            ip=ip, alias=name, vnet_id=block.vnet_id, ar_id=block.ar_id,
            reservation_id=reservation, project_id=block.project_id, assigned=wanted,
            reason="VM is " + state_name(current) if wanted
            else _absent_reason(current, ip in now),
            token=block.token,
            lease_networks=networks,
            range_ip=block.first_ip,
            range_size=block.size,
            via=(ar.vnet_id, ar.ar_id) if block is not ar else None,
        ))
    return found, skipped


def leased_elsewhere(vm_id: int, ip: Address, fresh: Iterable[AddressRange]) -> Optional[int]:
    """The VM other than ``vm_id`` that oned leases ``ip`` to in the address ranges just
    re-read (``fresh``), or None when the address is free or still this VM's.

    Between the hook's read of oned and its write to Packet, oned may free the address (a
    terminate, a detach) and lease it to another VM whose own hook already routed it: an
    unassign (or the first half of a move) is then made only when this says None."""
    for ar in fresh:
        holder = ar.leases.get(ip)
        if holder is not None and holder != vm_id:
            return holder
    return None


def networks_of(event: VM, current: Optional[VM]) -> List[int]:
    """The ids of the networks the candidate aliases of either VM are on."""
    ids = {a.network_id for vm in (event, current) if vm is not None for a in candidates(vm)}
    return sorted(i for i in ids if i is not None)


@dataclass(frozen=True)
class Change:
    """One step: ``kind`` is ``keep`` (no write), ``assign`` or ``unassign``."""

    kind: str
    ip: Address
    device_id: Optional[str] = None
    assignment_id: Optional[str] = None
    why: str = ""


def changes(wanted: Sequence[Target], device_id: Optional[str],
            placements: Mapping[Address, Optional[Assignment]]) -> List[Change]:
    """The API writes that put every target where it belongs; ``placements`` has each
    target's assignment in Packet now (None: routed nowhere).

    A move is an unassign followed by an assign, in that order, so a failure half-way leaves
    the address unassigned (retry assigns it), never on two devices.
    """
    steps: List[Change] = []
    for target in wanted:
        now = placements.get(target.ip)
        if target.assigned:
            if not device_id:
                raise ProviderError(f"{target.ip}: no Packet device for the VM's host")
            if now is not None and now.device_id == device_id:
                steps.append(Change("keep", target.ip, device_id, now.id,
                                    "already on the host's device"))
                continue
            if now is not None:
                steps.append(Change("unassign", target.ip, now.device_id, now.id,
                                    f"moving to device {device_id}"))
            steps.append(Change("assign", target.ip, device_id, None, target.reason))
        elif now is not None:
            steps.append(Change("unassign", target.ip, now.device_id, now.id,
                                target.reason))
        else:
            steps.append(Change("keep", target.ip, None, None, "already unassigned"))
    return steps


def writes(steps: Iterable[Change]) -> int:
    """How many of ``steps`` are API writes."""
    return sum(1 for step in steps if step.kind != "keep")
