"""Reading the three sides ``packet-provider check`` compares into a :class:`Snapshot`.

- oned (through :class:`packet_provider.oned_client.OnedClient`): ``one.vnpool.info`` finds
  the networks with a packet AR (IPAM_MAD = packet) and the reservation networks made from
  them; ``one.vn.info`` (decrypted) of each gives its leases (the pool leaves them out);
  ``one.vmpool.info`` the state and host of every VM; ``one.hostpool.info`` each host's
  Packet device (``TEMPLATE/PROVISION/DEPLOY_ID``, as the hook reads it). That is three
  calls plus one per such network, whatever the number of VMs.
- Packet: the reservations of every project the config or the ranges name, each with its
  assignments embedded (``?include=assignments``: a few paged calls per project); a range
  without PACKET_PROJECT costs one call for its reservation.
- The IPAM driver's state directory: lease files, the deferred-unassign journal
  (``.unassign/``) and the registers in flight (``.pending/``).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, TextIO, Tuple

from packet_provider import onexml
from packet_provider.config import Config
from packet_provider.core import log, validate
from packet_provider.core.errors import InputError, ProviderError
from packet_provider.core.oned import child_text
from packet_provider.core.onedefs import PACKET_IPAM_MAD
from packet_provider.ipam.leases import LeaseStore, PendingJournal, UnassignJournal
from packet_provider.ops.model import Block, Range, Snapshot, VmState

MAX_DEPTH = 8  # reservations of reservations followed this deep


class Progress:
    """A progress line on stderr, only on a terminal and once a look takes over a second."""

    def __init__(self, stream: Optional[TextIO] = None, delay: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.delay = delay
        self.shown = False

    def step(self, text: str) -> None:
        if not self.enabled or time.monotonic() - self.started < self.delay:
            return
        self.stream.write("\r\033[K" + text[:100])
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _parse(body: str, what: str) -> Any:
    return onexml.parse(body.encode("utf-8"), what)


def _int_or_none(text: str) -> Optional[int]:
    try:
        return validate.object_id(text, "id") if text else None
    except InputError:
        return None


# -- oned ------------------------------------------------------------------------------------


def _networks_to_read(pool: Any) -> List[int]:
    """Ids of the networks with a packet AR and of the reservation networks made from them
    (and from those), from ``one.vnpool.info``."""
    parents: Dict[int, Optional[int]] = {}
    packet: Set[int] = set()
    for vnet in pool.findall("VNET"):
        vnet_id = _int_or_none(child_text(vnet, "ID"))
        if vnet_id is None:
            continue
        parents[vnet_id] = _int_or_none(child_text(vnet, "PARENT_NETWORK_ID"))
        if any(child_text(ar, "IPAM_MAD") == PACKET_IPAM_MAD for ar in vnet.findall("AR_POOL/AR")):
            packet.add(vnet_id)
    wanted = set(packet)
    for _ in range(MAX_DEPTH):
        more = {v for v, p in parents.items() if p in wanted and v not in wanted}
        if not more:
            break
        wanted |= more
    return sorted(wanted)


def _leases(ar: Any) -> Tuple[Set[ipaddress.IPv4Address], Dict[ipaddress.IPv4Address, int]]:
    """Every IPv4 address an AR leases, and those leased to a VM (address -> VM id)."""
    every: Set[ipaddress.IPv4Address] = set()
    by_vm: Dict[ipaddress.IPv4Address, int] = {}
    for lease in ar.findall("LEASES/LEASE"):
        try:
            ip = ipaddress.IPv4Address(child_text(lease, "IP"))
        except ValueError:
            continue
        every.add(ip)
        vm_id = _int_or_none(child_text(lease, "VM"))
        if vm_id is not None:
            by_vm[ip] = vm_id
    return every, by_vm


def _read_ars(oned: Any, progress: Optional[Progress]) -> Dict[Tuple[int, int], Dict[str, Any]]:
    """Every AR of the networks to read, with its leases, token and parent AR."""
    pool = _parse(oned.call("vnpool.info", -2, -1, -1), "oned's answer to one.vnpool.info")
    ids = _networks_to_read(pool)
    ars: Dict[Tuple[int, int], Dict[str, Any]] = {}
    for n, vnet_id in enumerate(ids):
        if progress:
            progress.step(f"check: oned network {vnet_id} ({n + 1}/{len(ids)})")
        try:
            vnet = oned.vnet(vnet_id)
        except ProviderError as err:
            if getattr(err, "code", None) == 0x0400:
                continue  # deleted meanwhile
            raise
        parent_vnet = _int_or_none(child_text(vnet, "PARENT_NETWORK_ID"))
        for ar in vnet.findall("AR_POOL/AR"):
            ar_id = _int_or_none(child_text(ar, "AR_ID"))
            if ar_id is None:
                continue
            every, by_vm = _leases(ar)
            parent_ar = _int_or_none(child_text(ar, "PARENT_NETWORK_AR_ID"))
            token = child_text(ar, "PACKET_TOKEN") or None
            log.register_secret(token)
            ars[(vnet_id, ar_id)] = {
                "element": ar, "every": every, "by_vm": by_vm, "token": token,
                "parent": (parent_vnet, parent_ar) if parent_vnet is not None
                and parent_ar is not None else None}
    return ars


def read_ranges(oned: Any, progress: Optional[Progress] = None,
                ) -> Tuple[List[Range], Dict[Tuple[str, ipaddress.IPv4Address], int]]:
    """The packet ARs oned has, with their leases, and the VM holding each address (by
    reservation and address), reservation networks included."""
    ars = _read_ars(oned, progress)
    ranges: List[Range] = []
    holders: Dict[Tuple[str, ipaddress.IPv4Address], int] = {}
    for (vnet_id, ar_id), info in sorted(ars.items()):
        ar = info["element"]
        if child_text(ar, "IPAM_MAD") != PACKET_IPAM_MAD:
            continue
        rid = _uuid_or_none(child_text(ar, "DEPLOY_ID"))
        project = _uuid_or_none(child_text(ar, "PACKET_PROJECT"))
        ranges.append(Range(vnet_id, ar_id, rid, project, child_text(ar, "IP"),
                            child_text(ar, "SIZE"), frozenset(info["every"]), info["token"]))
        if rid is not None:
            for ip, vm_id in info["by_vm"].items():
                holders[(rid, ip)] = vm_id
    by_key = {(r.vnet_id, r.ar_id): r for r in ranges}
    for info in ars.values():  # reservation networks: their VM leases hold the parent's
        block = _root_range(info, ars, by_key)
        if block is not None and block.reservation_id:
            for ip, vm_id in info["by_vm"].items():
                holders[(block.reservation_id, ip)] = vm_id
    return ranges, holders


def _root_range(info: Dict[str, Any], ars: Dict[Tuple[int, int], Dict[str, Any]],
                by_key: Dict[Tuple[int, int], Range]) -> Optional[Range]:
    seen = 0
    while info.get("parent") is not None and seen < MAX_DEPTH:
        key = info["parent"]
        if key in by_key:
            return by_key[key]
        info = ars.get(key) or {}
        seen += 1
    return None


def _uuid_or_none(text: str) -> Optional[str]:
    return text.lower() if validate.is_uuid(text) else None


def read_vms(oned: Any) -> Dict[int, VmState]:
    """State, LCM state and current host of every VM oned has (DONE ones excepted)."""
    pool = _parse(oned.call("vmpool.info", -2, -1, -1, -1), "oned's answer to one.vmpool.info")
    vms: Dict[int, VmState] = {}
    for vm in pool.findall("VM"):
        vm_id = _int_or_none(child_text(vm, "ID"))
        state = _int_or_none(child_text(vm, "STATE"))
        lcm = _int_or_none(child_text(vm, "LCM_STATE"))
        if vm_id is None or state is None:
            continue
        records = vm.findall("HISTORY_RECORDS/HISTORY")
        host = _int_or_none(child_text(records[-1], "HID")) if records else None
        vms[vm_id] = VmState(vm_id, state, lcm or 0, host)
    return vms


def read_devices(oned: Any) -> Tuple[Dict[int, Optional[str]], Dict[int, str]]:
    """Each host's Packet device (None: not a Packet device) and name."""
    pool = _parse(oned.call("hostpool.info"), "oned's answer to one.hostpool.info")
    devices: Dict[int, Optional[str]] = {}
    names: Dict[int, str] = {}
    for host in pool.findall("HOST"):
        host_id = _int_or_none(child_text(host, "ID"))
        if host_id is None:
            continue
        names[host_id] = child_text(host, "NAME")
        devices[host_id] = _uuid_or_none(child_text(host, "TEMPLATE/PROVISION/DEPLOY_ID"))
    return devices, names


# -- the state directory ---------------------------------------------------------------------


def read_lease_files(config: Config) -> Dict[str, Set[ipaddress.IPv4Address]]:
    """The lease files of every reservation directory in the state directory."""
    store = LeaseStore(config.ipam_state_dir)
    try:
        names = os.listdir(store.root)
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ProviderError(f"cannot read the lease directory {store.root}: "
                            f"{err.strerror}") from None
    found: Dict[str, Set[ipaddress.IPv4Address]] = {}
    for name in names:
        if validate.is_uuid(name) and name == name.lower():
            found[name] = set(store.leased(name))
    return found


def read_deferred(config: Config) -> Dict[str, Set[ipaddress.IPv4Address]]:
    journal = UnassignJournal(config.ipam_state_dir)
    found = {}
    for rid in journal.reservations():
        owed = journal.pending(rid)
        if owed:
            found[rid.lower()] = set(owed)
    return found


def read_pending_markers(config: Config) -> Set[str]:
    names = PendingJournal(config.ipam_state_dir).names()
    return {n[:-len(".json")].lower() for n in names}


# -- Packet ----------------------------------------------------------------------------------


def tokens_by_project(config: Config, ranges: Iterable[Range]) -> Dict[str, str]:
    """A token for every project the config or the ranges name (the config's first)."""
    found = dict(config.tokens)
    for rng in ranges:
        if rng.project_id and rng.token and rng.project_id not in found:
            found[rng.project_id] = rng.token
    return found


def _block(reservation: Any, assignments: Iterable[Any]) -> Block:
    from packet_provider.packet import MARKER_KEY

    marker = reservation.customdata.get(MARKER_KEY) if reservation.customdata else None
    placed = {a.address: a for a in assignments if a.cidr == 32}
    return Block(reservation.id, reservation.project_id, str(reservation.network),
                 marker is not None, placed, str(marker).lower() if marker else None)


def read_packet(config: Config, ranges: List[Range], snap: Snapshot,
                client_for: Callable[[str], Any], progress: Optional[Progress] = None) -> None:
    """Fill ``snap.blocks``, ``snap.projects`` and ``snap.gone`` from Packet."""
    from packet_provider.packet import NotFound

    tokens = tokens_by_project(config, ranges)
    for n, (project, token) in enumerate(sorted(tokens.items())):
        if progress:
            progress.step(f"check: Packet project {project} ({n + 1}/{len(tokens)})")
        client = client_for(token)
        for reservation, assignments in client.project_reservations_with_assignments(project):
            snap.blocks[reservation.id] = _block(reservation, assignments)
        snap.projects.add(project)
    for rng in ranges:
        rid = rng.reservation_id
        if rid is None or rid in snap.blocks:
            continue
        if rng.project_id in snap.projects:
            snap.gone.add(rid)
            continue
        token = rng.token or config.token_for(rng.project_id)
        if not token:
            raise ProviderError(f"network {rng.vnet_id} AR {rng.ar_id}: no PACKET_TOKEN and "
                                "no token configured for its project: cannot read its "
                                "reservation")
        try:
            reservation, assignments = client_for(token).reservation_with_assignments(rid)
        except NotFound:
            snap.gone.add(rid)
            continue
        snap.blocks[rid] = _block(reservation, assignments)


def snapshot(config: Config, oned: Any, client_for: Optional[Callable[[str], Any]],
             progress: Optional[Progress] = None, leases_only: bool = False) -> Snapshot:
    """Read everything; ``leases_only``: oned's ranges and the lease files only (no Packet,
    no VMs, no hosts)."""
    snap = Snapshot()
    snap.ranges, snap.holders = read_ranges(oned, progress)
    if progress:
        progress.step("check: lease directory")
    snap.lease_files = read_lease_files(config)
    if leases_only:
        return snap
    if progress:
        progress.step("check: oned VMs and hosts")
    snap.vms = read_vms(oned)
    snap.devices, snap.host_names = read_devices(oned)
    snap.deferred = read_deferred(config)
    snap.pending_markers = read_pending_markers(config)
    if client_for is not None:
        read_packet(config, snap.ranges, snap, client_for, progress)
    return snap
