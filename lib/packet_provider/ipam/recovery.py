"""What earlier actions left to do, done at the start of a later one (never failing it):

- release the block of a register killed before oned had its answer (its journal entry in
  :class:`packet_provider.ipam.leases.PendingJournal` is no longer locked by a live process):
  :func:`recover_abandoned`;
- make the unassignments free_address owes Packet (journalled in
  :class:`packet_provider.ipam.leases.UnassignJournal` during an outage):
  :func:`complete_deferred`, and :func:`settle_for_handout` before an address of that range
  is handed out again.

Both are bounded: at most RECOVERY_MAX entries per action, the recovery deadline (a third of
``action_deadline``), and entries tried in the last RECOVERY_RECHECK_S are left for later.
Reading a block's assignments takes one request, whatever their number.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Set, Tuple

from packet_provider.core import cli, validate
from packet_provider.core import log as logmod
from packet_provider.core.errors import (
    InputError,
    NotFound,
    ProviderError,
    RateLimited,
    ServerError,
    Unavailable,
)
from packet_provider.ipam.block import block_mismatch, empty_and_release
from packet_provider.ipam.request import REGISTER, Request

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.config import Config
    from packet_provider.ipam.context import Context
    from packet_provider.ipam.leases import UnassignEntry
    from packet_provider.ipam.request import Range
    from packet_provider.packet import Assignment, PacketClient

RECOVERY_GRACE_S = 300.0  # keep looking for a request's reservation this long after it
RECOVERY_RECHECK_S = 30.0  # an entry whose block was not found yet is looked at again after
RECOVERY_MAX = 5  # abandoned entries handled per action, to bound its extra latency
RECOVERY_SHARE = 1 / 3  # of action_deadline, at most, for recovery before the action itself


def is_outage(err: BaseException) -> bool:
    """Whether an API failure is Packet being unavailable (unreachable, out of time, 5xx, 429)
    rather than a refusal: what free_address defers instead of failing."""
    return isinstance(err, (Unavailable, ServerError, RateLimited))


# -- unassignments owed by free_address -------------------------------------------------------


def settle_unassignments(ctx: Context, client: PacketClient, deploy_id: str,
                         entries: List[UnassignEntry],
                         block: Optional[Tuple[Any, Sequence[Assignment]]] = None) -> List[str]:
    """Make the owed unassignments ``entries`` (taken from ``deploy_id``): unassign each
    address the block still has assigned, then drop its entry. ``block`` is the reservation
    and its assignments when the caller has read them; else they are read (one request). An
    entry recorded for another block than the one DEPLOY_ID now names is dropped without
    touching anything. Returns notes for the log; on an API error the entries left are kept
    (marked as tried) and the error is raised."""
    notes: List[str] = []
    try:
        if block is None:
            try:
                block = client.reservation_with_assignments(deploy_id)
            except NotFound:  # released: none of its addresses is routed any more
                for entry in entries:
                    ctx.unassigns.done(entry)
                return [f"dropped {len(entries)} owed unassignment(s): block released"]
        reservation, assignments = block
        assigned = {a.address: a for a in assignments if a.cidr == 32}
        for entry in entries:
            if entry.ar_ip is not None and entry.ar_size is not None:
                why = block_mismatch(reservation, deploy_id, entry.ar_ip, entry.ar_size,
                                     entry.project)
                if why:
                    notes.append(f"dropped the owed unassignment of {entry.ip}: {why}")
                    ctx.unassigns.done(entry)
                    continue
            assignment = assigned.get(entry.ip)
            if assignment is not None:
                client.unassign(assignment.id)
                notes.append(f"unassigned {entry.ip} (owed) from device "
                             f"{assignment.device_id}")
            else:
                notes.append(f"owed unassignment of {entry.ip} settled: no longer assigned")
            ctx.unassigns.done(entry)
    finally:
        for entry in entries:
            if entry.fd >= 0:  # not done: kept for a later action
                entry.checked()
                entry.close()
    return notes


def settle_for_handout(ctx: Context, client: PacketClient, rng: Range, reservation: Any,
                       assignments: Sequence[Assignment],
                       ) -> Tuple[Set[ipaddress.IPv4Address], List[str]]:
    """Before an address of ``rng`` is handed out: make the range's owed unassignments now
    (with the block as the action read it: no request but the unassignments). Returns the
    addresses still owed, which must not be handed out, and notes for the log."""
    notes: List[str] = []
    entries = list(ctx.unassigns.take(rng.deploy_id))
    if entries:
        try:
            notes = settle_unassignments(ctx, client, rng.deploy_id, entries,
                                         (reservation, assignments))
        except ProviderError as err:
            notes.append(f"owed unassignments kept: {cli.one_line(str(err))}")
    return ctx.unassigns.pending(rng.deploy_id), notes


class Hint:
    """What the current request says about its range, read leniently (the action itself
    checks it): used to complete owed unassignments whose token is not in the config."""

    __slots__ = ("deploy_id", "project", "token")

    def __init__(self, deploy_id: Optional[str] = None, project: Optional[str] = None,
                 token: Optional[str] = None) -> None:
        self.deploy_id, self.project, self.token = deploy_id, project, token

    def __repr__(self) -> str:  # never the token
        return f"Hint(deploy_id={self.deploy_id!r}, project={self.project!r})"


def request_hint(request: Request, config: Config) -> Hint:
    def uuid_or_none(name: str) -> Optional[str]:
        try:
            return validate.uuid(request.get(name), name)
        except InputError:
            return None

    project = uuid_or_none("PACKET_PROJECT")
    ar_token = request.get("PACKET_TOKEN") or None
    logmod.register_secret(ar_token)
    configured = config.token_for(project)
    # the token the action itself will use (register prefers the configured one)
    token = (configured or ar_token) if request.action == REGISTER else (ar_token or configured)
    return Hint(uuid_or_none("DEPLOY_ID"), project, token)


def _token_for(ctx: Context, hint: Hint, entries: Sequence[UnassignEntry],
               deploy_id: str) -> Optional[str]:
    project = next((e.project for e in entries if e.project), None)
    if hint.token and (hint.deploy_id == deploy_id or (project and hint.project == project)):
        return hint.token
    return ctx.config.token_for(project)


def complete_deferred(ctx: Context, hint: Hint, logger: Any = None,
                      now: Optional[float] = None) -> int:
    """At the start of an action, make the unassignments owed by earlier free_address calls,
    for each block whose token is known (the current request's, for its own range or project;
    else the configuration's for the entry's project). Bounded like :func:`recover_abandoned`:
    RECOVERY_MAX blocks, the recovery deadline, and blocks tried in the last
    RECOVERY_RECHECK_S are left for later (but the current range's). Returns the blocks done."""
    now = time.time() if now is None else now
    done = handled = 0
    for deploy_id in ctx.unassigns.reservations():
        if handled >= RECOVERY_MAX or not ctx.recovery_time_left():
            break
        entries = list(ctx.unassigns.take(deploy_id))
        if not entries:
            continue
        recent = all(e.last_checked is not None and 0 <= now - e.last_checked
                     < RECOVERY_RECHECK_S for e in entries)
        token = _token_for(ctx, hint, entries, deploy_id)
        if token is None or (recent and hint.deploy_id != deploy_id):
            for entry in entries:
                entry.close()
            continue
        handled += 1
        started = time.perf_counter()
        result, notes = "done", []
        try:
            notes = settle_unassignments(ctx, ctx.recovery_client(token), deploy_id, entries)
            done += 1
        except ProviderError as err:
            result = f"kept:error ({cli.one_line(str(err))})"
        finally:
            if logger is not None:
                line = logmod.fields(action="unassign", reservation=deploy_id,
                                     ips=",".join(str(e.ip) for e in entries),
                                     result=result, duration_ms=logmod.elapsed_ms(started))
                if notes:
                    line += ' note="' + "; ".join(notes) + '"'
                logger.warning(line)
    return done


# -- abandoned register requests -----------------------------------------------------------


def recover_abandoned(ctx: Context, logger: Any = None, now: Optional[float] = None) -> int:
    """Release the reservations of register requests whose process died before oned got the
    answer. Failures leave the entry for the next action. Returns how many were released."""
    released = 0
    now = time.time() if now is None else now
    handled = 0
    for entry in ctx.journal.abandoned():
        with entry:  # unlocked on leaving, unless finished
            last = entry.last_checked
            if (handled >= RECOVERY_MAX or not ctx.recovery_time_left()
                    or (last is not None and 0 <= now - last < RECOVERY_RECHECK_S)):
                continue
            handled += 1
            started = time.perf_counter()
            result, reservation = "kept", None
            try:
                token = entry.token or ctx.config.token_for(entry.project)
                if not token or not entry.project:
                    result = "kept:no-token"
                    continue
                logmod.register_secret(token)
                client = ctx.recovery_client(token)
                found = client.find_marked(entry.project, entry.marker)
                if found is not None:
                    reservation = found.id
                    empty_and_release(client, found.id, None if found.assignment_ids else [])
                    released += 1
                    result = "released"
                    entry.finish()
                elif now - entry.created > RECOVERY_GRACE_S:
                    result = "nothing-created"
                    entry.finish()
                else:
                    result = "kept:not-found-yet"
                    entry.checked()
            except ProviderError as err:
                result = f"kept:error ({cli.one_line(str(err))})"
            finally:
                if logger is not None:
                    took = logmod.elapsed_ms(started)
                    logger.warning(logmod.fields(action="recover", marker=entry.marker,
                                                 reservation=reservation,
                                                 result=result, duration_ms=took))
    return released


def recover(ctx: Context, request: Request, logger: Callable[[], Any]) -> List[str]:
    """What earlier actions left to do, before this one (never failing it): release the
    blocks of killed registers, make the unassignments free_address owes. ``logger`` makes
    the driver's logger (only when there is something to do: opening the log may block).
    Returns warnings for the action's log line."""
    warnings = []
    if ctx.journal.busy():
        try:
            recover_abandoned(ctx, logger())
        except ProviderError as err:
            warnings.append(f"recovery: {cli.one_line(str(err))}")
    if ctx.unassigns.busy():
        try:
            complete_deferred(ctx, request_hint(request, ctx.config), logger())
        except ProviderError as err:
            warnings.append(f"owed unassignments: {cli.one_line(str(err))}")
    return warnings
