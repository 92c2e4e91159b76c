"""The alias_ip hook's full path: read oned, decide, make the Packet API writes.

Effects only; every decision is a call into :mod:`packet_provider.hook.decide`.

1. The VM as oned has it now (``one.vm.info``). While oned is still hot-plugging a NIC
   (LCM HOTPLUG_NIC with the alias marked ATTACH) the outcome is unknown, so the hook waits
   for the VM to settle, bounded by the config's ``hook_settle_seconds`` (default 20 s), then fails
   (retry redoes it). A detach is then simply an alias of the event missing from oned's VM.
2. The networks of the candidate aliases (``one.vn.info`` decrypted, raw XML) and, for a
   reservation network (``onevnet reserve``), the network it was reserved from, whose packet
   AR holds the Packet block.
3. When an address must be assigned (the VM runs on the host of its last history record):
   that host (``one.host.info``) and its Packet device (``TEMPLATE/PROVISION/DEPLOY_ID``).
4. Per API token (the packet AR's PACKET_TOKEN, else the config's token of its
   PACKET_PROJECT): where the addresses are assigned now (one read per reservation, with its
   assignments embedded, each reservation checked to be its AR's block before anything of
   its addresses is touched), the changes, and the writes. A move is
   unassign-then-assign, and an address whose unassign failed is not assigned elsewhere.
   Just before each unassign the address's lease is read again from oned: an address oned
   has meanwhile leased to another VM is left alone. Addresses are handled independently:
   one failing does not stop the others, but the run exits non-zero naming the first
   failure.

Runs for one VM are serialised with an exclusive lock on
``<ipam_state_dir>/alias_ip/vm-<id>.lock`` (onehem may run the RUNNING and HOTPLUG_NIC hooks
of a VM at once): the later run reads oned after the earlier one wrote, so a slow run that
read an older state can never undo a newer one. Waiting is bounded by the config's
``hook_lock_seconds`` (default 60 s; then the run fails and a retry redoes it). When the
lock file cannot be created the run goes on unlocked and logs a warning.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    TextIO,
    Tuple,
)

from packet_provider import config as config_mod
from packet_provider.core import log
from packet_provider.core.errors import ProviderError
from packet_provider.core.filelock import flock_within
from packet_provider.core.oned import VM, AddressRange, parse_host, parse_vm, parse_vnet
from packet_provider.hook import decide
from packet_provider.oned_client import NO_EXISTS, OnedClient, OnedError
from packet_provider.packet import (
    Assignment,
    NotFound,
    PacketClient,
    Reservation,
    Unprocessable,
    reservation_matches_range,
)

LOG_FILE = "hook-alias_ip.log"
SETTLE_POLL_SECONDS = 0.25
LOCK_POLL_SECONDS = 0.05


class _VmLog(logging.LoggerAdapter):
    """Prefixes every line (the Packet client's ``api ...`` lines too) with ``vm=<id>``."""

    def process(self, msg: Any, kwargs: Any) -> Tuple[Any, Any]:
        return f"vm={self.extra['vm']} {msg}", kwargs


def lock_path(config: config_mod.Config, vm_id: int) -> str:
    """The lock file that serialises the runs for one VM."""
    return os.path.join(config.ipam_state_dir, "alias_ip", f"vm-{int(vm_id)}.lock")


@contextmanager
def vm_lock(path: str, wait: float, logger: logging.LoggerAdapter) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (bounded wait); unlocked if it cannot be created."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as err:
        logger.warning("no lock (%s: %s); going on unlocked", path, err.strerror)
        yield
        return
    try:
        if not flock_within(fd, wait, LOCK_POLL_SECONDS, lambda: logger.info(
                "waiting for another run of the hook for this VM")):
            raise ProviderError(f"another run of the hook for this VM still holds "
                                f"{path} after {wait:g}s; retry later")
        yield
    finally:
        os.close(fd)  # releases the lock


def current_vm(oned: OnedClient, vm_id: int, settle: float,
               logger: logging.LoggerAdapter) -> Optional[VM]:
    """The VM as oned has it now, once no NIC hot-plug is in flight (None: unknown to oned)."""
    deadline = time.monotonic() + settle
    waited = False
    while True:
        element = oned.vm(vm_id)
        vm = parse_vm(element) if element is not None else None
        if vm is None or not decide.hotplug_in_flight(vm):
            if waited:
                logger.info("hot-plug finished; lcm_state=%s", vm.lcm_state if vm else "-")
            return vm
        if time.monotonic() >= deadline:
            raise ProviderError(f"VM {vm_id} is still hot-plugging a NIC after {settle:g}s; "
                                "retry the hook when it is done")
        if not waited:
            logger.info("waiting for the NIC hot-plug to finish (lcm_state=%s)", vm.lcm_state)
            waited = True
        time.sleep(SETTLE_POLL_SECONDS)


def read_ranges(oned: OnedClient, network_ids: Sequence[int],
                ) -> Dict[Tuple[int, int], AddressRange]:
    """The ARs of the aliases' networks and, for reservation networks, of the networks they
    were reserved from (whose packet AR holds the Packet block), by (network, AR)."""
    ranges: Dict[Tuple[int, int], AddressRange] = {}
    wanted, read = list(network_ids), set()
    for depth in range(decide.MAX_RESERVATION_DEPTH + 1):
        for vnet_id in wanted:
            read.add(vnet_id)
            try:
                element = oned.vnet(vnet_id)
            except OnedError as err:
                if err.code != NO_EXISTS:
                    raise
                if depth == 0:
                    raise ProviderError(f"network {vnet_id} does not exist in oned") from None
                continue  # a reservation's parent that is gone: the plan says what follows
            for ar_id, ar in parse_vnet(element).items():
                log.register_secret(ar.token)
                ranges[(vnet_id, ar_id)] = ar
        wanted = [v for v in decide.parents_to_read(ranges) if v not in read]
        if not wanted:
            break
    return ranges


def host_device(oned: OnedClient, vm: VM) -> str:
    """The Packet device of the VM's current host (its last history record)."""
    record = vm.current_history
    if record is None:
        raise ProviderError(f"VM {vm.id} has no history record: no host to assign to")
    host = parse_host(oned.host(record.hid))
    if host.device_id is None:
        raise ProviderError(f"host {host.id} ({host.name}) has no TEMPLATE/PROVISION/DEPLOY_ID: "
                            "not a Packet device")
    return host.device_id


def token_of(target: decide.Target, config: config_mod.Config) -> str:
    """The API token for ``target``: its AR's PACKET_TOKEN, else its project's (registered
    as a secret)."""
    token = target.token or config.token_for(target.project_id)
    if not token:
        raise ProviderError(f"{target.ip}: no PACKET_TOKEN on address range {target.ar_id} "
                            f"of network {target.vnet_id} and no token configured for its "
                            "project")
    log.register_secret(token)
    return token


def refusal(target: decide.Target, reservation: Reservation) -> Optional[str]:
    """Why the hook must not touch ``target`` through ``reservation`` (None: it may): the
    reservation the AR's DEPLOY_ID names must be the AR's block."""
    if reservation_matches_range(reservation, target.range_ip, target.range_size):
        return None
    return (f"{target.ip}: Packet reservation {reservation.id} ({reservation.network}) is not "
            f"the block of network {target.vnet_id} AR {target.ar_id} (IP "
            f"{target.range_ip or '-'}, SIZE {target.range_size or '-'}): refused, nothing "
            "done for this address; check the AR's DEPLOY_ID")


def locate(client: PacketClient, targets: Sequence[decide.Target],
           ) -> Tuple[Dict[Any, Optional[Assignment]], Dict[Any, str]]:
    """Where each target address is assigned now (None: nowhere), and the addresses refused
    (by IP, with the reason) because their AR's DEPLOY_ID names a reservation that is not
    the AR's block. One request per reservation (``?include=assignments``: the block with
    every assignment of its addresses and their devices), however many addresses the block
    or the device holds; every address is checked before any write."""
    placements: Dict[Any, Optional[Assignment]] = {}
    refused: Dict[Any, str] = {}
    by_reservation: Dict[str, List[decide.Target]] = {}
    for target in targets:
        by_reservation.setdefault(target.reservation_id, []).append(target)
    for reservation_id, group in by_reservation.items():
        try:
            reservation, assignments = client.reservation_with_assignments(reservation_id)
        except NotFound:
            raise ProviderError(f"Packet reservation {reservation_id} (network "
                                f"{group[0].vnet_id} AR {group[0].ar_id}) not found") from None
        current = {a.address: a for a in assignments if a.cidr == 32}
        for target in group:
            reason = refusal(target, reservation)
            if reason is not None:
                refused[target.ip] = reason
                continue
            placements[target.ip] = current.get(target.ip)
    return placements, refused


def assign(client: PacketClient, device: str, ip: Any) -> str:
    """Assign, treating "already assigned" as success when it is on ``device`` (a
    concurrent run of the hook got there first)."""
    try:
        return client.assign(device, ip).id
    except Unprocessable:
        for assignment in client.device_assignments(device):
            if assignment.address == ip and assignment.cidr == 32:
                return assignment.id
        raise


Recheck = Callable[[decide.Change], Optional[str]]


def lease_recheck(oned: OnedClient, vm_id: int, targets: Sequence[decide.Target]) -> Recheck:
    """Before an unassign: re-read the leases of the address's networks (``one.vn.info``,
    not decrypted) and answer why the address must be left alone, if oned now leases it to
    another VM."""
    networks = {t.ip: t.lease_networks for t in targets}

    def recheck(step: decide.Change) -> Optional[str]:
        fresh: List[AddressRange] = []
        for vnet_id in networks.get(step.ip, ()):
            try:
                fresh.extend(parse_vnet(oned.info("vn", vnet_id)).values())
            except OnedError as err:
                if err.code != NO_EXISTS:
                    raise
        holder = decide.leased_elsewhere(vm_id, step.ip, fresh)
        return None if holder is None else f"oned now leases it to VM {holder}"

    return recheck


def apply(client: PacketClient, steps: Sequence[decide.Change], logger: logging.LoggerAdapter,
          recheck: Optional[Recheck] = None) -> Tuple[int, List[str]]:
    """Make the writes; returns (writes made, failures). Steps of one address run in order
    and stop at its first failure. Before each unassign, ``recheck`` may give a reason to
    leave the address alone (with the steps that follow for it): not a failure."""
    failed_ips = set()
    left_ips = set()
    failures: List[str] = []
    made = 0
    for step in steps:
        if step.ip in failed_ips or step.ip in left_ips:
            why = "an earlier step for this address failed" if step.ip in failed_ips \
                else "the address was left alone"
            logger.info(log.fields(ip=step.ip, action=step.kind, outcome="skipped",
                                   why=f'"{why}"'))
            continue
        if step.kind == "keep":
            logger.info(log.fields(ip=step.ip, action="none", device=step.device_id,
                                   why=f'"{step.why}"'))
            continue
        if step.kind == "unassign" and recheck is not None:
            try:
                reason = recheck(step)
            except ProviderError as err:
                failed_ips.add(step.ip)
                failures.append(f"{step.kind} {step.ip}: {err}")
                logger.info(log.fields(ip=step.ip, action=step.kind, outcome="failed",
                                       why='"re-reading the lease failed"') + f" error={err}")
                continue
            if reason is not None:
                left_ips.add(step.ip)
                logger.info(log.fields(ip=step.ip, action=step.kind, outcome="skipped",
                                       assignment=step.assignment_id, why=f'"{reason}"'))
                continue
        with log.timed() as took:
            try:
                if step.kind == "unassign":
                    client.unassign(step.assignment_id)
                    result = step.assignment_id
                else:
                    result = assign(client, step.device_id, step.ip)
                outcome = "ok"
            except ProviderError as err:
                outcome, result = "failed", None
                failed_ips.add(step.ip)
                failures.append(f"{step.kind} {step.ip}: {err}")
        made += 1
        logger.info(log.fields(ip=step.ip, action=step.kind, device=step.device_id,
                               assignment=result, outcome=outcome, why=f'"{step.why}"',
                               duration_ms=took["duration_ms"]))
    return made, failures


def synchronise(event: VM, env: Mapping[str, str], out: TextIO, started: float) -> int:
    """The full path for one event; raises ProviderError on failure."""
    config = config_mod.load(env=env)
    logger = _VmLog(log.setup("alias_ip", config.log_dir, filename=LOG_FILE), {"vm": event.id})
    logger.info(log.fields(event="state", state=event.state, lcm_state=event.lcm_state,
                           candidates=len(decide.candidates(event)), pid=os.getpid()))
    try:
        with vm_lock(lock_path(config, event.id), config.hook_lock_seconds, logger):
            summary = _synchronise(event, env, config, logger)
    except ProviderError as err:
        logger.error(log.fields(outcome="failed", duration_ms=log.elapsed_ms(started))
                     + f" error={err}")
        raise
    logger.info(log.fields(outcome="done", duration_ms=log.elapsed_ms(started)) + " " + summary)
    out.write(f"alias_ip: VM {event.id}: {summary}\n")
    return 0


def _synchronise(event: VM, env: Mapping[str, str], config: config_mod.Config,
                 logger: logging.LoggerAdapter) -> str:
    oned = OnedClient.from_config(config, env)
    with log.timed() as took:
        current = current_vm(oned, event.id, config.hook_settle_seconds, logger)
        ranges = read_ranges(oned, decide.networks_of(event, current))
    logger.info(log.fields(oned="read", state=current.state if current else "gone",
                           lcm_state=current.lcm_state if current else None,
                           networks=len({k[0] for k in ranges}), calls=oned.calls,
                           duration_ms=took["duration_ms"]))
    wanted, skipped = decide.targets(event, current, ranges)
    for skip in skipped:
        logger.info(log.fields(ip=skip.ip, alias=skip.alias, decision="leave",
                               why=f'"{skip.reason}"'))
    device = None
    if any(t.assigned for t in wanted):
        device = host_device(oned, current)
    for target in wanted:
        via = f"{target.via[0]}/{target.via[1]}" if target.via else None
        logger.info(log.fields(ip=target.ip, alias=target.alias, network=target.vnet_id,
                               ar=target.ar_id, via_reservation_network=via,
                               reservation=target.reservation_id,
                               decision="assign" if target.assigned else "unassign",
                               device=device if target.assigned else None,
                               why=f'"{target.reason}"'))
    by_token: Dict[str, List[decide.Target]] = {}
    for target in wanted:
        by_token.setdefault(token_of(target, config), []).append(target)
    writes, failures, kept = 0, [], 0
    for token, group in by_token.items():
        with PacketClient.from_config(config, token, logger=logger) as client:
            try:
                placements, refused = locate(client, group)
                for ip, reason in refused.items():
                    logger.error(log.fields(ip=ip, decision="refuse") + f' why="{reason}"')
                    failures.append(reason)
                steps = decide.changes([t for t in group if t.ip not in refused], device,
                                     placements)
            except ProviderError as err:
                failures.append(str(err))
                continue
            kept += sum(1 for s in steps if s.kind == "keep")
            made, failed = apply(client, steps, logger,
                                 lease_recheck(oned, event.id, group))
            writes += made
            failures.extend(failed)
    summary = (f"{len(wanted)} packet alias address(es), {len(skipped)} left alone, "
               f"{writes} API write(s), {kept} already right")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ProviderError(f"VM {event.id}: {failures[0]}{more}; {summary}")
    return summary
