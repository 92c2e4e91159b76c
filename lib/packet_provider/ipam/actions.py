"""The five actions of the ``packet`` IPAM driver, over Packet reservations. Each takes the
action's :class:`~packet_provider.ipam.context.Context` and the parsed request and returns an
:class:`Outcome`: what to print, the fields of the action's log line, and what it holds until
oned has the answer (a lease claim, a register's journal entry), to commit once the answer is
out or to undo when it cannot be given.

- register_address_range reserves SIZE addresses and answers the AR oned keeps (it replaces
  the user's AR: the user's own attributes are carried over). The token is the
  configuration's token of PACKET_PROJECT when there is one (never echoed: the AR's
  PACKET_TOKEN, if any, is dropped, since oned logs every driver reply at its default
  DEBUG_LEVEL), else the AR's PACKET_TOKEN, echoed back so oned stores it (encrypted) and
  later actions have it, with a warning in our log to move it into the configuration.
  Every check happens before the API is called. One request.
- A register killed at any moment never leaves an orphan reservation behind: the request is
  journalled (locked by its process) before it is sent and the entry is removed only after
  the answer is on stdout; the next action of the driver releases the reservation of any
  entry whose process died (:mod:`packet_provider.ipam.recovery`). A request that failed
  ambiguously (no answer, 5xx, a garbled 2xx) stays journalled too and is looked for again
  (every 30 s, for 5 minutes). The one window left is between removing the entry and the
  process exiting 0: microseconds, after the answer is complete. An AR token is kept in the
  entry (mode 0600, in a 0700 directory) until it is settled, so that recovery can
  authenticate; configured tokens are not written.
- allocate_address / get_address claim the lease file with O_CREAT|O_EXCL, so concurrent
  calls never hand one address out twice; get_address takes the lowest address free both
  locally and at Packet. Both refuse while the lease directory holds fewer leases of the
  range than oned says are used (USED_LEASES): the directory is not the one the leases were
  written to (a new HA leader, a lost disk) and ``packet-provider reconcile --leases``
  must rebuild it first. Two requests (the block with its assignments, its free addresses).
- free_address unassigns the address at Packet (if assigned) and removes its lease. When
  Packet is unavailable (unreachable, 5xx, 429, or out of time) the unassignment is journalled
  durably first (:class:`packet_provider.ipam.leases.UnassignJournal`, no token in it) and the
  free succeeds: oned never retries a free, and would keep the lease for ever. Later actions
  complete what is owed, and get_address / allocate_address never hand out an address whose
  unassignment is still owed. At most two requests (read the block, unassign).
- unregister_address_range unassigns what is left, releases the reservation (already
  released: success with a warning) and removes the range's leases. Two requests and one
  per address it unassigns.
- Before acting on the reservation an AR's DEPLOY_ID names (an ordinary attribute: ``onevnet
  updatear`` changes it), every action but register checks that it is the block the range was
  registered with (:func:`packet_provider.ipam.block.check_block`). Otherwise it refuses,
  having changed nothing.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from packet_provider.core import cli
from packet_provider.core.errors import InputError, NotFound, PacketError, ProviderError
from packet_provider.ipam.answer import address_template, ar_template
from packet_provider.ipam.block import checked_block, empty_and_release
from packet_provider.ipam.recovery import is_outage, settle_for_handout
from packet_provider.ipam.request import (
    ALLOCATE,
    FREE,
    GET,
    REGISTER,
    UNREGISTER,
    Range,
    Request,
    parse_address,
    parse_range,
    parse_register,
    used_leases,
)

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.ipam.context import Context
    from packet_provider.ipam.leases import PendingEntry
    from packet_provider.packet import PacketClient

RECONCILE_COMMAND = "packet-provider reconcile --leases"


class Outcome:
    """What an action did: its answer for oned (``output``), the fields of its log line
    (``reservation``, ``ip``, ``warnings``) and what it ``holds`` until oned has the answer:
    an object with ``commit()`` (the answer is out: make it final) and ``abandon()`` (it
    will never be given: undo), or None.

    An action that fails raises; the exception carries the outcome so far (:func:`failing`)
    for the log line."""

    __slots__ = ("output", "reservation", "ip", "warnings", "holds")

    def __init__(self, output: str = "", reservation: Optional[str] = None,
                 ip: Optional[str] = None, warnings: Optional[List[str]] = None,
                 holds: Any = None) -> None:
        self.output, self.reservation, self.ip = output, reservation, ip
        self.warnings = list(warnings or ())
        self.holds = holds

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def commit(self) -> None:
        if self.holds is not None:
            self.holds.commit()

    def abandon(self) -> None:
        if self.holds is not None:
            self.holds.abandon()


class failing:  # noqa: N801 - used as a context manager, named like one
    """``with failing(outcome):`` an exception raised inside carries ``outcome`` (attribute
    ``outcome``) so that the log line of the failed action has its fields."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def __enter__(self) -> Outcome:
        return self.outcome

    def __exit__(self, kind: Any, err: Optional[BaseException], _tb: Any) -> None:
        if err is not None and getattr(err, "outcome", None) is None:
            try:
                err.outcome = self.outcome  # type: ignore[attr-defined]
            except AttributeError:
                pass


class ReservedBlock:
    """A block register_address_range reserved, held until oned has the AR: committing
    finishes its journal entry; abandoning releases the block (and finishes the entry; when
    the release fails the entry stays, for recovery)."""

    def __init__(self, entry: PendingEntry, client: PacketClient, reservation_id: str) -> None:
        self.entry, self.client, self.reservation_id = entry, client, reservation_id

    def commit(self) -> None:
        self.entry.finish()

    def abandon(self) -> None:
        if _release_quietly(self.client, self.reservation_id):
            self.entry.finish()
        else:
            self.entry.close()


def register(ctx: Context, request: Request) -> Outcome:
    out = Outcome()
    with failing(out):
        spec = parse_register(request, ctx.config)
        if spec.token_from_ar:
            out.warn(f"the API token of project {spec.project} is echoed back in the "
                     f"address range (PACKET_TOKEN), so oned stores it and writes it to "
                     f"oned.log (driver replies, DEBUG_LEVEL 3): move it into tokens of "
                     f"{ctx.config.path} and drop PACKET_TOKEN from new ranges")
        client = ctx.client(spec.token)
        import uuid  # only register makes a marker

        marker = str(uuid.uuid4())
        entry = ctx.journal.begin(marker, {
            "project": spec.project, "req": request.req_id, "api_url": ctx.config.api_url,
            "token": spec.token if spec.token_from_ar else None,
        })
        try:
            reservation = client.reserve(spec.project, spec.size, spec.ip_type, spec.facility,
                                         details=f"OpenNebula address range, request "
                                                 f"{request.req_id} ({marker})",
                                         marker=marker)
        except BaseException as err:
            # The client has already looked for the marked block after a lost answer; what
            # is still in doubt stays journalled.
            _settle_failed_request(entry, err)
            raise
        out.reservation = reservation.id
        held = ReservedBlock(entry, client, reservation.id)
        try:
            if reservation.state not in ("created", ""):
                raise PacketError(f"reservation {reservation.id} is {reservation.state!r}, "
                                  "not created (approval needed?); released it")
            if reservation.size != spec.size:
                raise PacketError(f"Packet returned a block of {reservation.size} addresses "
                                  f"instead of {spec.size}; released it")
            out.ip = f"{reservation.first_address}/{reservation.network.prefixlen}"
            out.output = ar_template(spec, reservation.id, reservation.first_address,
                                     reservation.size, reservation.facility or spec.facility)
        except BaseException:
            held.abandon()
            raise
        out.holds = held
        return out


def _settle_failed_request(entry: PendingEntry, error: BaseException) -> None:
    """After a failed reserve: drop the journal entry when the API surely made nothing (a 4xx
    answer, or a check before sending); otherwise keep it, unlocked, so that the next action
    looks for the marked block (the request may have landed, its answer lost or garbled)."""
    refused = isinstance(error, InputError) or (
        isinstance(error, PacketError) and error.status is not None
        and 400 <= error.status < 500)
    if not refused:
        entry.close()
        return
    try:
        entry.finish()
    except ProviderError:
        entry.close()


def _release_quietly(client: PacketClient, reservation_id: str) -> bool:
    try:
        client.release(reservation_id)
    except Exception:  # noqa: BLE001 - best effort; the journal keeps the rest
        return False
    return True


def unregister(ctx: Context, request: Request) -> Outcome:
    out = Outcome()
    with failing(out):
        rng = parse_range(request, ctx.config)
        out.reservation = rng.deploy_id
        client = ctx.client(rng.token)
        try:
            _reservation, assignments = checked_block(client, rng)
        except NotFound:
            out.warn("reservation already released")
        else:
            unassigned, gone = empty_and_release(client, rng.deploy_id, assignments)
            if unassigned:
                out.warn(f"unassigned leftover {','.join(unassigned)}")
            if gone:
                out.warn("reservation already released")
        removed = ctx.leases.remove_range(rng.deploy_id)
        if removed:
            out.warn(f"removed {removed} local lease(s)")
        if ctx.unassigns.remove_range(rng.deploy_id):  # the block is gone: nothing is routed
            out.warn("dropped its owed unassignments")
        return out


def check_leases_known(ctx: Context, request: Request, rng: Range) -> None:
    """Refuse to hand out an address while the lease directory holds fewer leases of the
    range than oned says it has leased (USED_LEASES): it is not the directory those leases
    were written to (a new HA leader, a restored disk), and an address oned has leased could
    be handed out again."""
    used = used_leases(request)
    if used is None or used == 0:
        return
    known = len(ctx.leases.leased(rng.deploy_id))
    if known < used:
        raise ProviderError(
            f"the lease directory {ctx.leases.range_dir(rng.deploy_id)} holds {known} "
            f"lease(s) of this address range but oned has {used} in use (a new leader or a "
            f"lost state directory?): no address is handed out until `{RECONCILE_COMMAND}` "
            "has rebuilt them")


def _address_request(ctx: Context, request: Request, out: Outcome,
                     ) -> Tuple[Range, ipaddress.IPv4Address]:
    """The range and the given IP of an allocate/free request, noted for the log line."""
    rng = parse_range(request, ctx.config)
    out.reservation = rng.deploy_id
    ip = parse_address(request, rng, need_ip=True)
    assert ip is not None
    out.ip = str(ip)
    return rng, ip


def allocate(ctx: Context, request: Request) -> Outcome:
    out = Outcome()
    with failing(out):
        rng, ip = _address_request(ctx, request, out)
        check_leases_known(ctx, request, rng)
        if ctx.leases.is_leased(rng.deploy_id, ip):
            raise InputError(f"address {ip} is already leased")
        client = ctx.client(rng.token)
        reservation, assignments = checked_block(client, rng)
        if ip in ctx.unassigns.pending(rng.deploy_id):
            owed, notes = settle_for_handout(ctx, client, rng, reservation, assignments)
            out.warnings.extend(notes)
            if ip in owed:
                raise ProviderError(f"address {ip} may still be routed to the device it was "
                                    "freed from: its unassignment at Packet is owed and could "
                                    "not be made now; try again later")
        available = client.available(rng.deploy_id)
        if ip not in available:
            raise InputError(f"address {ip} is not free at Packet (assigned to a device, or "
                             f"not in reservation {rng.deploy_id})")
        claim = ctx.leases.claim(rng.deploy_id, ip, f"{ALLOCATE} req={request.req_id}")
        if claim is None:
            raise InputError(f"address {ip} is already leased")
        out.holds = claim
        return out


def pick_candidates(available: Sequence[ipaddress.IPv4Address], rng: Range,
                    leased: Any) -> List[ipaddress.IPv4Address]:
    """Addresses to try, lowest first: free at Packet, inside the range, not leased."""
    return sorted(ip for ip in set(available) if ip in rng and ip not in leased)


def get_address(ctx: Context, request: Request) -> Outcome:
    out = Outcome()
    with failing(out):
        rng = parse_range(request, ctx.config)
        out.reservation = rng.deploy_id
        parse_address(request, rng, need_ip=False)
        check_leases_known(ctx, request, rng)
        client = ctx.client(rng.token)
        reservation, assignments = checked_block(client, rng)
        available = client.available(rng.deploy_id)
        # A lease file left pending by a killed action does not count (checked only for
        # leased addresses free at Packet, the only ones that could be picked).
        leased = {ip for ip in ctx.leases.leased(rng.deploy_id).intersection(available)
                  if ctx.leases.is_leased(rng.deploy_id, ip)}
        candidates = pick_candidates(available, rng, leased)
        owed = ctx.unassigns.pending(rng.deploy_id)
        if owed.intersection(candidates):
            owed, notes = settle_for_handout(ctx, client, rng, reservation, assignments)
            out.warnings.extend(notes)
        for ip in candidates:
            if ip in owed:
                continue  # its unassignment from an old device is still owed
            claim = ctx.leases.claim(rng.deploy_id, ip, f"{GET} req={request.req_id}")
            if claim is not None:
                out.ip = str(ip)
                out.output = address_template(ip)
                out.holds = claim
                return out
        raise InputError(f"no free address in reservation {rng.deploy_id}")


def free_address(ctx: Context, request: Request) -> Outcome:
    out = Outcome()
    with failing(out):
        rng, ip = _address_request(ctx, request, out)
        client = ctx.client(rng.token)
        try:
            try:  # the block and its assignments in one request
                _reservation, assignments = checked_block(client, rng)
            except NotFound:
                out.warn("reservation not found at Packet")
                assignments = []
            for assignment in assignments:
                if assignment.address == ip and assignment.cidr == 32:
                    client.unassign(assignment.id)
                    out.warn(f"unassigned from device {assignment.device_id}")
        except ProviderError as err:
            if not is_outage(err):
                raise  # refused (a 4xx, a foreign block): nothing changed, the lease stays
            # recorded durably before the lease goes: from here on the unassignment is owed
            ctx.unassigns.record(rng.deploy_id, ip, {
                "project": rng.project, "ar_ip": str(rng.first), "ar_size": rng.size,
                "req": request.req_id, "action": FREE})
            out.warn(f"unassignment deferred to a later action, Packet unavailable: "
                     f"{cli.one_line(str(err))}")
        else:
            ctx.unassigns.discard(rng.deploy_id, ip)  # an older owed unassignment is made too
        if not ctx.leases.release(rng.deploy_id, ip):
            out.warn("was not leased")
        return out


HANDLERS: Dict[str, Callable[[Context, Request], Outcome]] = {
    REGISTER: register, UNREGISTER: unregister, ALLOCATE: allocate, GET: get_address,
    FREE: free_address,
}
