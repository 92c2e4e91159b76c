"""``packet-provider reconcile``: make what check found true, in the safe direction only.

Each fix re-reads what it depends on just before it writes, under the lock the component
that owns it takes, so reconcile can run beside the hook and the IPAM driver:

- routing an address to its running VM's device: the hook's per-VM lock
  (``<ipam_state_dir>/alias_ip/vm-<id>.lock``, the same ``flock``), then the VM, its host
  and the range's leases are read again from oned and the address's placement from Packet;
- unassigning an address nobody holds: the network's leases read again just before (as the
  hook does before each unassign), under the lock of the VM that last held it if any;
- a missing lease file: claimed like the IPAM driver claims one (linked into place, so it
  never replaces a file an action wrote meanwhile), then committed;
- a lease file oned does not know: removed only when no action holds it (the lease store's
  ``flock``), it is older than ``grace`` seconds (an action may have claimed it and not yet
  answered oned) and oned still has no such lease when read again;
- a deferred unassignment: taken from the journal like the driver takes it (locked), the
  address unassigned if Packet still routes it (and no VM that keeps it holds it), the entry
  dropped;
- an orphan reservation: only with ``release_orphans``, and only one the IPAM driver made
  (its request marker): its addresses unassigned, then released.

A range whose reservation is gone is left to the operator. Every step is one line of the
report; a second run finds nothing to do.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from packet_provider.config import Config
from packet_provider.core import onedefs
from packet_provider.core.errors import ProviderError
from packet_provider.core.filelock import flock_within
from packet_provider.core.oned import child_text
from packet_provider.ipam.leases import LeaseStore, UnassignJournal
from packet_provider.ops import gather
from packet_provider.ops import model as m
from packet_provider.ops.model import Finding, Snapshot

LEASE_GRACE_S = 120.0  # an action claims a lease, then answers oned within action_deadline
VM_LOCK_WAIT_S = 60.0


@dataclass
class Report:
    """What reconcile did: one line per step, by outcome."""

    fixed: List[str] = field(default_factory=list)
    left: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        return ([f"fixed: {t}" for t in self.fixed] + [f"left: {t}" for t in self.left]
                + [f"failed: {t}" for t in self.failed])


class Reconciler:
    """Applies the fixes for a list of findings (see the module's docstring)."""

    def __init__(self, config: Config, oned: Any, client_for: Callable[[str], Any],
                 snap: Snapshot, dry_run: bool = False, release_orphans: bool = False,
                 grace: float = LEASE_GRACE_S, logger: Optional[logging.Logger] = None,
                 ) -> None:
        self.config, self.oned, self.client_for, self.snap = config, oned, client_for, snap
        self.dry_run, self.release_orphans, self.grace = dry_run, release_orphans, grace
        self.logger = logger or logging.getLogger("packet-provider")
        self.report = Report()
        self.leases = LeaseStore(config.ipam_state_dir)
        self.unassigns = UnassignJournal(config.ipam_state_dir)
        self._ranges = {r.reservation_id: r for r in snap.ranges if r.reservation_id}
        self._fresh: Dict[Any, set] = {}  # (network, AR) -> addresses oned leases now

    # -- helpers --------------------------------------------------------------------------

    def _done(self, text: str) -> None:
        self.report.fixed.append(("would: " if self.dry_run else "") + text)
        self.logger.info("reconcile %s%s", "dry-run " if self.dry_run else "", text)

    def _left(self, text: str) -> None:
        self.report.left.append(text)
        self.logger.info("reconcile left %s", text)

    def _failed(self, text: str) -> None:
        self.report.failed.append(text)
        self.logger.warning("reconcile failed %s", text)

    def _token(self, rid: str, project: Optional[str] = None) -> Optional[str]:
        rng = self._ranges.get(rid)
        block = self.snap.blocks.get(rid)
        for candidate in (project, rng.project_id if rng else None,
                          block.project_id if block else None):
            token = self.config.token_for(candidate)
            if token:
                return token
        return rng.token if rng else None

    def _client(self, rid: str, project: Optional[str] = None) -> Any:
        token = self._token(rid, project)
        if not token:
            raise ProviderError(f"no token for reservation {rid}")
        return self.client_for(token)

    def _lease_holder(self, vnet_id: int, ip: ipaddress.IPv4Address,
                      ar_id: Optional[int] = None) -> Optional[int]:
        """Who oned leases ``ip`` to now, read again: a VM id, -1 for a reservation network
        no VM of which uses it, None for nobody (the network's reservation networks too)."""
        from packet_provider.oned_client import NO_EXISTS, OnedError

        try:
            vnet = self.oned.vnet(vnet_id)
        except OnedError as err:
            if err.code == NO_EXISTS:
                return None
            raise
        leased = False
        for ar in vnet.findall("AR_POOL/AR"):
            if ar_id is not None and child_text(ar, "AR_ID") != str(ar_id):
                continue
            for lease in ar.findall("LEASES/LEASE"):
                if child_text(lease, "IP") == str(ip):
                    leased = True
                    vm = child_text(lease, "VM")
                    if vm.isdigit():
                        return int(vm)
        if not leased:
            return None
        pool = gather._parse(self.oned.call("vnpool.info", -2, -1, -1), "one.vnpool.info")
        for child in pool.findall("VNET"):
            if child_text(child, "PARENT_NETWORK_ID") != str(vnet_id):
                continue
            for lease in self.oned.vnet(int(child_text(child, "ID"))).findall(
                    "AR_POOL/AR/LEASES/LEASE"):
                vm = child_text(lease, "VM")
                if child_text(lease, "IP") == str(ip) and vm.isdigit():
                    return int(vm)
        return -1

    def _vm_lock(self, vm_id: int) -> Any:
        return vm_lock(self.config, vm_id, VM_LOCK_WAIT_S)

    def _placement(self, client: Any, rid: str, ip: ipaddress.IPv4Address) -> Any:
        _reservation, assignments = client.reservation_with_assignments(rid)
        for assignment in assignments:
            if assignment.address == ip and assignment.cidr == 32:
                return assignment
        return None

    # -- fixes ----------------------------------------------------------------------------

    def run(self, findings: List[Finding]) -> Report:
        order = [m.DEFERRED_UNASSIGN, m.MISSING_LEASE_FILE, m.STALE_LEASE_FILE,
                 m.ROUTED_UNHELD, m.WRONG_DEVICE, m.UNROUTED, m.ORPHAN_RESERVATION,
                 m.MISSING_RESERVATION]
        handlers = {
            m.DEFERRED_UNASSIGN: self.deferred, m.MISSING_LEASE_FILE: self.missing_file,
            m.STALE_LEASE_FILE: self.stale_file, m.ROUTED_UNHELD: self.unheld,
            m.WRONG_DEVICE: self.route, m.UNROUTED: self.route,
            m.ORPHAN_RESERVATION: self.orphan, m.MISSING_RESERVATION: self.missing_block,
        }
        for kind in order:
            for finding in (f for f in findings if f.kind == kind):
                try:
                    handlers[kind](finding)
                except ProviderError as err:
                    self._failed(f"{finding.kind}: {finding.text}: {err}")
        return self.report

    def _still_leased(self, f: Finding) -> bool:
        """Whether oned still leases ``f.ip`` from its range: its network read again once
        per run (a free_address may have removed the file just before oned drops the
        lease: the file must not come back)."""
        if f.vnet_id is None:
            return True
        key = (f.vnet_id, f.ar_id)
        if key not in self._fresh:
            from packet_provider.oned_client import NO_EXISTS, OnedError

            leased: set = set()
            try:
                vnet = self.oned.vnet(f.vnet_id)
            except OnedError as err:
                if err.code != NO_EXISTS:
                    raise
            else:
                for ar in vnet.findall("AR_POOL/AR"):
                    if f.ar_id is None or child_text(ar, "AR_ID") == str(f.ar_id):
                        leased.update(child_text(lease, "IP")
                                      for lease in ar.findall("LEASES/LEASE"))
            self._fresh[key] = leased
        return str(f.ip) in self._fresh[key]

    def missing_file(self, f: Finding) -> None:
        if not self._still_leased(f):
            return self._left(f"{f.ip}: oned no longer leases it; no lease file written")
        if self.dry_run:
            return self._done(f"write the lease file of {f.ip} in {f.reservation_id}")
        claim = self.leases.claim(f.reservation_id, f.ip, "packet-provider reconcile")
        if claim is None:
            return self._done(f"lease file of {f.ip} in {f.reservation_id}: written "
                              "meanwhile")
        claim.commit()
        self._done(f"wrote the lease file of {f.ip} in {f.reservation_id} (oned leases it)")

    def stale_file(self, f: Finding) -> None:
        path = self.leases.path(f.reservation_id, f.ip)
        try:
            age = time.time() - os.stat(path, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return self._done(f"lease file {path}: removed meanwhile")
        except OSError as err:
            raise ProviderError(f"cannot read {path}: {err.strerror}") from None
        if age < self.grace:
            return self._left(f"lease file {path} was written {age:.0f}s ago (an action may "
                              f"still be answering oned); left for {self.grace:.0f}s")
        if f.vnet_id is not None and self._lease_holder(f.vnet_id, f.ip, f.ar_id) is not None:
            return self._left(f"lease file {path}: oned leases {f.ip} now")
        if self.dry_run:
            return self._done(f"remove the lease file {path} (oned has no such lease)")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self._done(f"lease file {path}: removed meanwhile")
        except OSError as err:
            raise ProviderError(f"cannot open {path}: {err.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return self._left(f"lease file {path}: an IPAM action holds it")
            named, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise ProviderError(f"cannot remove {path}: {err.strerror}") from None
        finally:
            os.close(fd)
        self._done(f"removed the lease file {path} (oned has no such lease)")

    def unheld(self, f: Finding) -> None:
        holder = self._lease_holder(f.vnet_id, f.ip) if f.vnet_id is not None else None
        if holder is not None and holder >= 0:
            vm = self.oned.vm(holder)
            state = int(child_text(vm, "STATE") or -1) if vm is not None else -1
            if state in onedefs.ADDRESS_KEEPING_STATES:
                return self._left(f"{f.ip}: VM {holder} holds it now")
        if self.dry_run:
            return self._done(f"unassign {f.ip} (assignment {f.assignment_id}): no VM "
                              "holds it")
        client = self._client(f.reservation_id)
        if holder is not None and holder >= 0:
            with self._vm_lock(holder):
                self._unassign_unheld(client, f)
        else:
            self._unassign_unheld(client, f)

    def _unassign_unheld(self, client: Any, f: Finding) -> None:
        found = self._placement(client, f.reservation_id, f.ip)
        if found is None:
            return self._done(f"{f.ip}: unassigned meanwhile")
        client.unassign(found.id)
        self._done(f"unassigned {f.ip} from device {found.device_id} (no VM holds it)")

    def route(self, f: Finding) -> None:
        vm_id, device = f.vm_id, f.device_id
        if vm_id is None or device is None:
            return self._left(f"{f.ip}: no VM or device to route to")
        if self.dry_run:
            return self._done(f"route {f.ip} to device {device} (VM {vm_id})")
        with self._vm_lock(vm_id):
            element = self.oned.vm(vm_id)
            if element is None:
                return self._left(f"{f.ip}: VM {vm_id} is gone")
            current = m.VmState(vm_id, int(child_text(element, "STATE") or -1),
                                int(child_text(element, "LCM_STATE") or 0),
                                _last_host(element))
            if not current.runs_on_host or current.host_id is None:
                return self._left(f"{f.ip}: VM {vm_id} no longer runs on its host")
            host = self.oned.host(current.host_id)
            now_device = gather._uuid_or_none(child_text(host, "TEMPLATE/PROVISION/DEPLOY_ID"))
            if now_device != device:
                return self._left(f"{f.ip}: VM {vm_id} moved meanwhile")
            if f.vnet_id is not None and self._lease_holder(f.vnet_id, f.ip) != vm_id:
                return self._left(f"{f.ip}: VM {vm_id} no longer holds it")
            self._move(f, vm_id, device)

    def _move(self, f: Finding, vm_id: int, device: str) -> None:
        client = self._client(f.reservation_id)
        found = self._placement(client, f.reservation_id, f.ip)
        if found is not None and found.device_id == device:
            return self._done(f"{f.ip}: routed to device {device} meanwhile")
        if found is not None:
            client.unassign(found.id)
        client.assign(device, f.ip)
        was = f" (was on device {found.device_id})" if found is not None else ""
        self._done(f"routed {f.ip} to device {device} of VM {vm_id}'s host{was}")

    def deferred(self, f: Finding) -> None:
        rid, ip = f.reservation_id, f.ip
        holder = None
        rng = self._ranges.get(rid)
        if rng is not None:
            holder = self._lease_holder(rng.vnet_id, ip, rng.ar_id)
        if holder is not None and holder >= 0:
            return self._left(f"{ip}: owed unassignment kept, VM {holder} holds it now")
        if self.dry_run:
            what = "unassign it and " if f.assignment_id else ""
            return self._done(f"{ip}: {what}drop its owed unassignment in {rid}")
        taken = False
        for entry in self.unassigns.take(rid):
            if entry.ip != ip:
                entry.close()
                continue
            taken = True
            try:
                self._settle(entry)
            finally:
                entry.close()
        if not taken and ip in self.unassigns.pending(rid):
            self._left(f"{ip}: an IPAM action is completing its owed unassignment")

    def _settle(self, entry: Any) -> None:
        from packet_provider.packet import NotFound, reservation_matches_range

        client = self._client(entry.deploy_id, entry.project)
        try:
            reservation, assignments = client.reservation_with_assignments(entry.deploy_id)
        except NotFound:
            self.unassigns.done(entry)
            return self._done(f"{entry.ip}: owed unassignment dropped, reservation "
                              f"{entry.deploy_id} released")
        if entry.ar_ip and entry.ar_size and not reservation_matches_range(
                reservation, entry.ar_ip, entry.ar_size):
            self.unassigns.done(entry)
            return self._done(f"{entry.ip}: owed unassignment dropped, reservation "
                              f"{entry.deploy_id} is not the block it was recorded for")
        for assignment in assignments:
            if assignment.address == entry.ip and assignment.cidr == 32:
                client.unassign(assignment.id)
                self.unassigns.done(entry)
                return self._done(f"unassigned {entry.ip} (owed) from device "
                                  f"{assignment.device_id}")
        self.unassigns.done(entry)
        self._done(f"{entry.ip}: owed unassignment settled, no longer routed")

    def orphan(self, f: Finding) -> None:
        rid = f.reservation_id
        if not self.release_orphans:
            return self._left(f"reservation {rid}: no range refers to it; release it with "
                              "--release-orphans")
        fresh, _holders = gather.read_ranges(self.oned)
        if any(r.reservation_id == rid for r in fresh):
            return self._left(f"reservation {rid}: a range refers to it now")
        if self.dry_run:
            return self._done(f"release reservation {rid}")
        client = self._client(rid)
        _reservation, assignments = client.reservation_with_assignments(rid)
        for assignment in assignments:
            client.unassign(assignment.id)
        client.release(rid)
        self._done(f"released reservation {rid} ({len(assignments)} address(es) unassigned "
                   "first)")

    def missing_block(self, f: Finding) -> None:
        self._left(f"{f.text}: fix the range by hand (onevnet rmar, or updatear DEPLOY_ID)")


def vm_lock_path(config: Config, vm_id: int) -> str:
    """The alias_ip hook's per-VM lock file (packet_provider.hook.sync.lock_path)."""
    return os.path.join(config.ipam_state_dir, "alias_ip", f"vm-{int(vm_id)}.lock")


@contextmanager
def vm_lock(config: Config, vm_id: int, wait: float) -> Iterator[None]:
    """Hold the hook's exclusive lock of ``vm_id`` (bounded wait), as a run of the hook for
    that VM would: the hook then reads oned after reconcile wrote, and the other way round."""
    path = vm_lock_path(config, vm_id)
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as err:
        raise ProviderError(f"cannot open the hook's lock {path}: {err.strerror}") from None
    try:
        if not flock_within(fd, wait, 0.05):
            raise ProviderError(f"a run of the alias_ip hook for VM {vm_id} still holds "
                                f"{path} after {wait:g}s")
        yield
    finally:
        os.close(fd)


def _last_host(vm: Any) -> Optional[int]:
    records = vm.findall("HISTORY_RECORDS/HISTORY")
    return gather._int_or_none(child_text(records[-1], "HID")) if records else None


def reconcile(config: Config, oned: Any, client_for: Callable[[str], Any], snap: Snapshot,
              findings: List[Finding], **options: Any) -> Report:
    """Fix ``findings`` (read into ``snap``); see :class:`Reconciler` for ``options``."""
    return Reconciler(config, oned, client_for, snap, **options).run(findings)


def plan_counts(findings: List[Finding]) -> Dict[str, int]:
    return m.counts(findings)
