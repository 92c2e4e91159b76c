"""The ``packet`` IPAM driver: the five actions one_ipam runs, over Packet reservations.

Contract with one_ipam (see the integration reference): argv is ``<action> <request id>``
(the action is the executable's name), stdin is the base64 of ``IPAM_DRIVER_ACTION_DATA``
exactly as oned sent it. Success is exit 0 with ``AR = [ ... ]`` (register),
``ADDRESS = [ ... ]`` (get_address) or nothing on stdout; failure is a non-zero exit with the
one-line message in oned's ERROR MESSAGE block (via :func:`packet_provider.core.cli.run`).

- register_address_range reserves SIZE addresses and answers the AR oned keeps (it replaces
  the user's AR: the user's own attributes are carried over). The token is the
  configuration's token of PACKET_PROJECT when there is one (never echoed: the AR's
  PACKET_TOKEN, if any, is dropped, since oned logs every driver reply at its default
  DEBUG_LEVEL), else the AR's PACKET_TOKEN, echoed back so oned stores it (encrypted) and
  later actions have it, with a warning in our log to move it into the configuration.
  Every check happens before the API is called.
- A register killed at any moment never leaves an orphan reservation behind: the request is
  journalled (locked by its process) before it is sent and the entry is removed only after
  the answer is on stdout; the next action of the driver releases the reservation of any
  entry whose process died (see :mod:`packet_provider.ipam.leases` and :func:`recover_abandoned`).
  A request that failed ambiguously (no answer, 5xx, a garbled 2xx) stays journalled too and
  is looked for again (every 30 s, for 5 minutes). The one window left is between removing
  the entry and the process exiting 0: microseconds, after the answer is complete.
  An AR token is kept in the entry (mode 0600, in a 0700 directory) until it is settled, so
  that recovery can authenticate; configured tokens are not written.
- allocate_address / get_address claim the lease file with O_CREAT|O_EXCL, so concurrent
  calls never hand one address out twice; get_address takes the lowest address free both
  locally and at Packet.
- free_address unassigns the address at Packet (if assigned) and removes its lease. When
  Packet is unavailable (unreachable, 5xx, 429, or out of time) the unassignment is journalled
  durably first (:class:`packet_provider.ipam.leases.UnassignJournal`, no token in it) and the free
  succeeds: oned never retries a free, and would keep the lease for ever. Later actions
  complete what is owed (:func:`complete_deferred`), and get_address / allocate_address never
  hand out an address whose unassignment is still owed.
- unregister_address_range unassigns what is left, releases the reservation (already
  released: success with a warning) and removes the range's leases.
- Before acting on the reservation an AR's DEPLOY_ID names (an ordinary attribute: ``onevnet
  updatear`` changes it), every action but register checks that it is the block the range was
  registered with: the AR's IP (which oned never lets users change) is the block's network,
  its SIZE the block's size, and the block is in the AR's PACKET_PROJECT when it names one
  (:func:`check_block`). Otherwise it refuses, having changed nothing.

The user's address range (``onevnet addar``; IP is required by oned but ignored)::

    AR = [ TYPE = "IP4", IP = "10.0.0.1", SIZE = "8", IPAM_MAD = "packet",
           PACKET_PROJECT = "<project uuid>", FACILITY = "ams1",
           PACKET_IP_TYPE = "public_ipv4",        # or global_ipv4 (FACILITY optional)
           PACKET_TOKEN = "<token>" ]             # optional: else tokens.<project> in config

Each action writes one line to ``<log_dir>/ipam-packet.log``: action, request id, reservation,
IP, result, duration. The token is never in argv, logs or messages. ``requests`` (through
:mod:`packet_provider.packet`) is imported only when an API call is about to be made.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from packet_provider import config as config_mod
from packet_provider.core import cli, validate
from packet_provider.core import log as logmod
from packet_provider.core.errors import ConfigError, DeadlineError, InputError, ProviderError
from packet_provider.ipam.leases import LeaseStore, PendingJournal, UnassignEntry, UnassignJournal

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.config import Config
    from packet_provider.packet import PacketClient

REGISTER = "register_address_range"
UNREGISTER = "unregister_address_range"
ALLOCATE = "allocate_address"
GET = "get_address"
FREE = "free_address"
ACTIONS = (REGISTER, UNREGISTER, ALLOCATE, GET, FREE)

LOG_NAME = "ipam-packet"
LOG_FILE = "ipam-packet.log"
IP_TYPES = ("public_ipv4", "global_ipv4")
MAX_SIZE = 256
RECOVERY_GRACE_S = 300.0  # keep looking for a request's reservation this long after it
RECOVERY_RECHECK_S = 30.0  # an entry whose block was not found yet is looked at again after
RECOVERY_MAX = 5  # abandoned entries handled per action, to bound its extra latency
RECOVERY_SHARE = 1 / 3  # of action_deadline, at most, for recovery before the action itself

# AR attributes the driver sets itself or that oned derives: never carried over from the
# user's template.
_OWN_ATTRS = frozenset({
    "AR_ID", "TYPE", "IP", "SIZE", "IPAM_MAD", "DEPLOY_ID", "PACKET_TOKEN", "PACKET_PROJECT",
    "PACKET_IP_TYPE", "FACILITY", "IP_END", "MAC_END", "USED_LEASES", "LEASES", "ALLOCATED",
    "IP6", "IP6_END", "IP6_ULA", "IP6_ULA_END", "IP6_GLOBAL", "IP6_GLOBAL_END",
    "ULA_PREFIX", "GLOBAL_PREFIX", "PREFIX_LENGTH",
})
_ATTR_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


# -- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One action as oned sent it: the AR's leaf attributes and the ADDRESS part."""

    action: str
    req_id: int
    ar: Dict[str, str]
    address: Dict[str, str] = field(default_factory=dict)
    ar_order: Tuple[str, ...] = ()

    def get(self, name: str) -> str:
        return self.ar.get(name, "").strip()


def parse_args(action: str, argv: Sequence[str]) -> int:
    """The request id from ``<action> <ID>``."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}: run as one of {', '.join(ACTIONS)}")
    if len(argv) != 1:
        raise InputError(f"usage: {action} <request id> (base64 action data on stdin)")
    return validate.object_id(argv[0], "request id")


def _leaves(element: Any) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    values: Dict[str, str] = {}
    order: List[str] = []
    for child in element:
        if not isinstance(child.tag, str) or len(child):
            continue
        name = child.tag.upper()
        if name not in values:
            order.append(name)
        values[name] = (child.text or "").strip()
    return values, tuple(order)


def parse_request(action: str, req_id: int, data: bytes) -> Request:
    """Decode and parse ``IPAM_DRIVER_ACTION_DATA`` (lxml, no entities, no DOCTYPE)."""
    from packet_provider import onexml

    root = onexml.parse_base64(data, "standard input")
    if root.tag != "IPAM_DRIVER_ACTION_DATA":
        raise InputError(f"expected IPAM_DRIVER_ACTION_DATA on stdin, got {root.tag}")
    ar = root.find("AR")
    if ar is None:
        raise InputError("IPAM_DRIVER_ACTION_DATA has no AR")
    ar_values, order = _leaves(ar)
    address = root.find("ADDRESS")
    addr_values = _leaves(address)[0] if address is not None else {}
    return Request(action, req_id, ar_values, addr_values, order)


@dataclass(frozen=True)
class RegisterSpec:
    """What register_address_range will ask Packet for, all checked before any API call."""

    project: str
    size: int
    ip_type: str
    facility: Optional[str]
    token: str = field(repr=False)
    token_from_ar: bool
    extra: Tuple[Tuple[str, str], ...] = ()


def _size(text: str, what: str = "SIZE") -> int:
    if not text:
        raise InputError(f"{what} is missing")
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise InputError(f"{what} must be a positive integer, got {text[:20]!r}")
    return int(text)


def resolve_token(ar_token: str, project: Optional[str], config: Config) -> Tuple[str, bool]:
    """The API token: the AR's PACKET_TOKEN, else the configured token of the project."""
    if ar_token:
        logmod.register_secret(ar_token)
        return ar_token, True
    token = config.token_for(project)
    if not token:
        where = f"for project {project} " if project else ""
        raise ConfigError(f"no Packet API token {where}: set PACKET_TOKEN in the address "
                          f"range or tokens.<project> in {config.path}")
    return token, False


def parse_register(request: Request, config: Config) -> RegisterSpec:
    """Check the user's AR for register_address_range. Its starting IP is ignored: oned
    requires one, but Packet chooses the block."""
    project_text = request.get("PACKET_PROJECT")
    if not project_text:
        raise InputError("PACKET_PROJECT is missing from the address range")
    project = validate.uuid(project_text, "PACKET_PROJECT")
    size = _size(request.get("SIZE"))
    if size < 1 or size > MAX_SIZE or size & (size - 1):
        raise InputError(f"SIZE must be a power of two from 1 to {MAX_SIZE} (a Packet block), "
                         f"got {size}")
    ip_type = (request.get("PACKET_IP_TYPE") or "public_ipv4").lower()
    if ip_type not in IP_TYPES:
        raise InputError(f"PACKET_IP_TYPE must be one of {', '.join(IP_TYPES)}, "
                         f"got {ip_type[:40]!r}")
    facility = request.get("FACILITY") or None
    if facility is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,19}", facility):
        raise InputError(f"FACILITY must be a Packet facility code such as ams1, "
                         f"got {facility[:40]!r}")
    if facility is None and ip_type == "public_ipv4":
        raise InputError("FACILITY is missing from the address range (public_ipv4 blocks "
                         "belong to a facility, e.g. FACILITY = \"ams1\")")
    ar_token = request.get("PACKET_TOKEN")
    if ar_token:
        logmod.register_secret(ar_token)
    configured = config.token_for(project)
    if configured:  # later actions find it there: the AR's copy would only reach oned.log
        token, from_ar = configured, False
    else:
        token, from_ar = resolve_token(ar_token, project, config)
    extra = _carried_over(request)
    # every value the answer will carry must be quotable before anything is reserved
    for name, value in extra + ((("PACKET_TOKEN", token),) if from_ar else ()):
        quote(name, value)
    return RegisterSpec(project, size, ip_type, facility, token, from_ar, extra)


def _carried_over(request: Request) -> Tuple[Tuple[str, str], ...]:
    """The user's own AR attributes, kept in the AR oned stores (it replaces the user's)."""
    kept = []
    for name in request.ar_order:
        if name in _OWN_ATTRS or not _ATTR_NAME.match(name):
            continue
        kept.append((name, request.ar[name]))
    return tuple(kept)


@dataclass(frozen=True)
class Range:
    """A registered address range: the reservation and the addresses oned sees."""

    deploy_id: str
    first: ipaddress.IPv4Address
    size: int
    project: Optional[str]
    token: str = field(repr=False)

    def __contains__(self, ip: ipaddress.IPv4Address) -> bool:
        return int(self.first) <= int(ip) < int(self.first) + self.size


def parse_range(request: Request, config: Config, need_block: bool = True) -> Range:
    """DEPLOY_ID (a UUID), IP and SIZE of a registered range, and its token."""
    deploy_id = validate.uuid(request.get("DEPLOY_ID"), "DEPLOY_ID")
    first = ipaddress.IPv4Address(0)
    size = 0
    if need_block or request.get("IP"):
        first = validate.ipv4(request.get("IP"), "AR IP")
        size = _size(request.get("SIZE"), "AR SIZE")
        if size < 1 or int(first) + size > 2 ** 32:
            raise InputError(f"AR SIZE {size} does not fit after {first}")
    project_text = request.get("PACKET_PROJECT")
    project = validate.uuid(project_text, "PACKET_PROJECT") if project_text else None
    token, _ = resolve_token(request.get("PACKET_TOKEN"), project, config)
    return Range(deploy_id, first, size, project, token)


def parse_address(request: Request, rng: Range, need_ip: bool) -> Optional[ipaddress.IPv4Address]:
    """ADDRESS/SIZE must be 1; ADDRESS/IP (when needed) an IPv4 address inside the range."""
    size_text = request.address.get("SIZE", "").strip()
    if size_text or request.action != FREE:
        size = _size(size_text, "ADDRESS SIZE")
        if size != 1:
            raise InputError(f"only one address per request is supported (SIZE = 1), got {size}")
    if not need_ip:
        return None
    ip = validate.ipv4(request.address.get("IP"), "ADDRESS IP")
    if ip not in rng:
        last = ipaddress.IPv4Address(int(rng.first) + rng.size - 1)
        raise InputError(f"address {ip} is not in the address range {rng.first}-{last}")
    return ip


# -- templates -----------------------------------------------------------------------------


def quote(name: str, value: str) -> str:
    """A template value in double quotes; values that cannot be quoted safely are refused."""
    if any(c in value for c in '"\\') or any(ord(c) < 32 for c in value):
        raise InputError(f"attribute {name}: quotes, backslashes and control characters "
                         "are not supported in address range values")
    return f'"{value}"'


def vector(name: str, attrs: Sequence[Tuple[str, str]]) -> str:
    """``NAME = [ A = "x", B = "y" ]`` on one line, as oned parses it."""
    body = ", ".join(f"{key} = {quote(key, value)}" for key, value in attrs)
    return f"{name} = [ {body} ]\n"


def ar_template(spec: RegisterSpec, reservation_id: str, first: ipaddress.IPv4Address,
                size: int, facility: Optional[str]) -> str:
    attrs: List[Tuple[str, str]] = [
        ("TYPE", "IP4"), ("IP", str(first)), ("SIZE", str(size)), ("IPAM_MAD", "packet"),
        ("DEPLOY_ID", reservation_id), ("PACKET_PROJECT", spec.project),
        ("PACKET_IP_TYPE", spec.ip_type),
    ]
    if facility:
        attrs.append(("FACILITY", facility))
    if spec.token_from_ar:
        attrs.append(("PACKET_TOKEN", spec.token))
    attrs.extend(spec.extra)
    return vector("AR", attrs)


def address_template(ip: ipaddress.IPv4Address) -> str:
    return vector("ADDRESS", [("IP", str(ip)), ("SIZE", "1")])


# -- effects -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an action prints, and what to do once it is printed (or could not be)."""

    output: str = ""
    commit: Optional[Callable[[], None]] = None
    rollback: Optional[Callable[[], None]] = None


@dataclass
class Record:
    """The fields of the action's one log line."""

    action: str
    req: Optional[int] = None
    reservation: Optional[str] = None
    ip: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text)


class Context:
    """Configuration, local state and lazily built API clients for one action.

    ``deadline`` (a ``time.monotonic()`` instant) bounds every API call of the action, its
    retries and waits; ``recovery_deadline`` (earlier) bounds the recovery that precedes it."""

    def __init__(self, config: Config, record: Record,
                 client_factory: Optional[Callable[[Config, str], PacketClient]] = None,
                 deadline: Optional[float] = None,
                 recovery_deadline: Optional[float] = None) -> None:
        self.config = config
        self.record = record
        self.leases = LeaseStore(config.ipam_state_dir)
        self.journal = PendingJournal(config.ipam_state_dir)
        self.unassigns = UnassignJournal(config.ipam_state_dir)
        self._factory = client_factory or _default_client
        self._clients: Dict[str, PacketClient] = {}
        self.deadline = deadline
        self.recovery_deadline = deadline if recovery_deadline is None else recovery_deadline

    def client(self, token: str) -> PacketClient:
        if token not in self._clients:
            client = self._factory(self.config, token)
            client.set_deadline(self.deadline)
            self._clients[token] = client
        return self._clients[token]

    def recovery_client(self, token: str) -> PacketClient:
        """A client that gives up at once: recovery must not slow the action down much."""
        key = "recovery:" + token
        if key not in self._clients:
            quick = dataclasses.replace(self.config, retries=0,
                                        read_timeout=min(self.config.read_timeout, 10.0))
            client = self._factory(quick, token)
            client.set_deadline(self.recovery_deadline)
            self._clients[key] = client
        return self._clients[key]

    def recovery_time_left(self) -> bool:
        return self.recovery_deadline is None or time.monotonic() < self.recovery_deadline

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _default_client(config: Config, token: str) -> PacketClient:
    from packet_provider.packet import (
        PacketClient,  # requests is imported only when the API is needed
    )

    return PacketClient.from_config(config, token)


def register(ctx: Context, request: Request) -> Outcome:
    spec = parse_register(request, ctx.config)
    if spec.token_from_ar:
        ctx.record.warn(f"the API token of project {spec.project} is echoed back in the "
                        f"address range (PACKET_TOKEN), so oned stores it and writes it to "
                        f"oned.log (driver replies, DEBUG_LEVEL 3): move it into tokens of "
                        f"{ctx.config.path} and drop PACKET_TOKEN from new ranges")
    client = ctx.client(spec.token)
    marker = str(uuidlib.uuid4())
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
        # The client has already looked for the marked block after a lost answer; what is
        # still in doubt stays journalled.
        _settle_failed_request(ctx, entry, err)
        raise
    ctx.record.reservation = reservation.id

    def rollback() -> None:
        # Released: nothing left to recover. Not released: the entry stays for recovery.
        if _release_quietly(client, reservation.id):
            ctx.journal.finish(entry)
        else:
            entry.close()

    try:
        if reservation.state not in ("created", ""):
            raise _packet_error(f"reservation {reservation.id} is {reservation.state!r}, "
                                "not created (approval needed?); released it")
        if reservation.size != spec.size:
            raise _packet_error(f"Packet returned a block of {reservation.size} addresses "
                                f"instead of {spec.size}; released it")
        ctx.record.ip = f"{reservation.first_address}/{reservation.network.prefixlen}"
        output = ar_template(spec, reservation.id, reservation.first_address,
                             reservation.size, reservation.facility or spec.facility)
    except BaseException:
        rollback()
        raise
    return Outcome(output, commit=lambda: ctx.journal.finish(entry), rollback=rollback)


def _packet_error(message: str) -> ProviderError:
    from packet_provider.packet import PacketError

    return PacketError(message)


def _settle_failed_request(ctx: Context, entry: Any, error: BaseException) -> None:
    """After a failed reserve: drop the journal entry when the API surely made nothing (a 4xx
    answer, or a check before sending); otherwise keep it, unlocked, so that the next action
    looks for the marked block (the request may have landed, its answer lost or garbled)."""
    from packet_provider.packet import PacketError

    refused = isinstance(error, InputError) or (
        isinstance(error, PacketError) and error.status is not None
        and 400 <= error.status < 500)
    if not refused:
        entry.close()
        return
    try:
        ctx.journal.finish(entry)
    except ProviderError:
        entry.close()


def _release_quietly(client: PacketClient, reservation_id: str) -> bool:
    try:
        client.release(reservation_id)
    except Exception:  # noqa: BLE001 - best effort; the journal keeps the rest
        return False
    return True


def block_mismatch(reservation: Any, deploy_id: str, first: Any, size: Any,
                   project: Optional[str]) -> Optional[str]:
    """Why ``reservation`` is not the block of the range (IP ``first``, SIZE ``size``, in
    ``project`` if given) whose DEPLOY_ID names it; None when it is."""
    from packet_provider.packet import reservation_matches_range

    if not reservation_matches_range(reservation, first, size):
        return (f"DEPLOY_ID {deploy_id} names the Packet block {reservation.network}, not the "
                f"one this address range was registered with ({size} addresses from "
                f"{first}): was DEPLOY_ID changed (onevnet updatear)?")
    owner = (reservation.project_id or "").lower()
    if project and owner and owner != project.lower():
        return (f"DEPLOY_ID {deploy_id} names a block of Packet project {owner}, not of the "
                f"address range's PACKET_PROJECT {project}: was DEPLOY_ID or PACKET_PROJECT "
                f"changed (onevnet updatear)?")
    return None


def check_block(reservation: Any, rng: Range) -> None:
    """Refuse (InputError) a reservation that is not the block ``rng`` was registered with."""
    why = block_mismatch(reservation, rng.deploy_id, rng.first, rng.size, rng.project)
    if why:
        raise InputError(f"{why} Nothing was changed")


def checked_reservation(client: PacketClient, rng: Range) -> Any:
    """The reservation DEPLOY_ID names, once known to be the range's block (:func:`check_block`;
    NotFound when Packet has none)."""
    reservation = client.get_reservation(rng.deploy_id)
    check_block(reservation, rng)
    return reservation


def unregister(ctx: Context, request: Request) -> Outcome:
    from packet_provider.packet import NotFound

    rng = parse_range(request, ctx.config)
    ctx.record.reservation = rng.deploy_id
    client = ctx.client(rng.token)
    try:
        reservation = checked_reservation(client, rng)
    except NotFound:
        ctx.record.warn("reservation already released")
    else:
        unassigned, gone = _empty_and_release(client, reservation)
        if unassigned:
            ctx.record.warn(f"unassigned leftover {','.join(unassigned)}")
        if gone:
            ctx.record.warn("reservation already released")
    removed = ctx.leases.remove_range(rng.deploy_id)
    if removed:
        ctx.record.warn(f"removed {removed} local lease(s)")
    if ctx.unassigns.remove_range(rng.deploy_id):  # the block is gone: nothing is routed
        ctx.record.warn("dropped its owed unassignments")
    return Outcome()


def _address_request(ctx: Context, request: Request) -> Tuple[Range, ipaddress.IPv4Address]:
    """The range and the given IP of an allocate/free request, noted for the log line."""
    rng = parse_range(request, ctx.config)
    ctx.record.reservation = rng.deploy_id
    ip = parse_address(request, rng, need_ip=True)
    assert ip is not None
    ctx.record.ip = str(ip)
    return rng, ip


def allocate(ctx: Context, request: Request) -> Outcome:
    rng, ip = _address_request(ctx, request)
    if ctx.leases.is_leased(rng.deploy_id, ip):
        raise InputError(f"address {ip} is already leased")
    client = ctx.client(rng.token)
    reservation = checked_reservation(client, rng)
    if (ip in ctx.unassigns.pending(rng.deploy_id)
            and ip in settle_for_handout(ctx, client, rng, reservation)):
        raise ProviderError(f"address {ip} may still be routed to the device it was freed "
                            "from: its unassignment at Packet is owed and could not be made "
                            "now; try again later")
    available = client.available(rng.deploy_id)
    if ip not in available:
        raise InputError(f"address {ip} is not free at Packet (assigned to a device, or not "
                         f"in reservation {rng.deploy_id})")
    claim = ctx.leases.claim(rng.deploy_id, ip, f"{ALLOCATE} req={request.req_id}")
    if claim is None:
        raise InputError(f"address {ip} is already leased")
    return Outcome(commit=claim.commit, rollback=claim.abandon)


def pick_candidates(available: Sequence[ipaddress.IPv4Address], rng: Range,
                    leased: Any) -> List[ipaddress.IPv4Address]:
    """Addresses to try, lowest first: free at Packet, inside the range, not leased."""
    return sorted(ip for ip in set(available) if ip in rng and ip not in leased)


def get_address(ctx: Context, request: Request) -> Outcome:
    rng = parse_range(request, ctx.config)
    ctx.record.reservation = rng.deploy_id
    parse_address(request, rng, need_ip=False)
    client = ctx.client(rng.token)
    reservation = checked_reservation(client, rng)
    available = client.available(rng.deploy_id)
    # A lease file left pending by a killed action does not count (checked only for leased
    # addresses free at Packet, the only ones that could be picked).
    leased = {ip for ip in ctx.leases.leased(rng.deploy_id).intersection(available)
              if ctx.leases.is_leased(rng.deploy_id, ip)}
    candidates = pick_candidates(available, rng, leased)
    owed = ctx.unassigns.pending(rng.deploy_id)
    if owed.intersection(candidates):
        owed = settle_for_handout(ctx, client, rng, reservation)
    for ip in candidates:
        if ip in owed:
            continue  # its unassignment from an old device is still owed
        claim = ctx.leases.claim(rng.deploy_id, ip, f"{GET} req={request.req_id}")
        if claim is not None:
            ctx.record.ip = str(ip)
            return Outcome(address_template(ip), commit=claim.commit, rollback=claim.abandon)
    raise InputError(f"no free address in reservation {rng.deploy_id}")


def free_address(ctx: Context, request: Request) -> Outcome:
    from packet_provider.packet import NotFound

    rng, ip = _address_request(ctx, request)
    client = ctx.client(rng.token)
    try:
        try:  # the block and its assignments in one request
            reservation, assignments = client.reservation_with_assignments(rng.deploy_id)
        except NotFound:
            ctx.record.warn("reservation not found at Packet")
            assignments = []
        else:
            check_block(reservation, rng)
        for assignment in assignments:
            if assignment.address == ip and assignment.cidr == 32:
                client.unassign(assignment.id)
                ctx.record.warn(f"unassigned from device {assignment.device_id}")
    except ProviderError as err:
        if not is_outage(err):
            raise  # refused (a 4xx, a foreign block): nothing changed, the lease stays
        # recorded durably before the lease goes: from here on the unassignment is owed
        ctx.unassigns.record(rng.deploy_id, ip, {
            "project": rng.project, "ar_ip": str(rng.first), "ar_size": rng.size,
            "req": request.req_id, "action": FREE})
        ctx.record.warn(f"unassignment deferred to a later action, Packet unavailable: "
                        f"{cli.one_line(str(err))}")
    else:
        ctx.unassigns.discard(rng.deploy_id, ip)  # an older owed unassignment is made too
    if not ctx.leases.release(rng.deploy_id, ip):
        ctx.record.warn("was not leased")
    return Outcome()


HANDLERS: Dict[str, Callable[[Context, Request], Outcome]] = {
    REGISTER: register, UNREGISTER: unregister, ALLOCATE: allocate, GET: get_address,
    FREE: free_address,
}


# -- unassignments owed by free_address -------------------------------------------------------


def is_outage(err: BaseException) -> bool:
    """Whether an API failure is Packet being unavailable (unreachable, out of time, 5xx, 429)
    rather than a refusal: what free_address defers instead of failing."""
    from packet_provider.packet import RateLimited, ServerError, Unavailable

    return isinstance(err, (Unavailable, ServerError, RateLimited))


def settle_unassignments(ctx: Context, client: PacketClient, deploy_id: str,
                         entries: List[UnassignEntry], reservation: Any = None) -> List[str]:
    """Make the owed unassignments ``entries`` (taken from ``deploy_id``): unassign each
    address the block still has assigned, then drop its entry. An entry recorded for another
    block than the one DEPLOY_ID now names is dropped without touching anything. Returns
    notes for the log; on an API error the entries left are kept (marked as tried) and the
    error is raised."""
    from packet_provider.packet import NotFound

    notes: List[str] = []
    try:
        if reservation is None:
            try:
                reservation = client.get_reservation(deploy_id)
            except NotFound:  # released: none of its addresses is routed any more
                for entry in entries:
                    ctx.unassigns.done(entry)
                return [f"dropped {len(entries)} owed unassignment(s): block released"]
        assigned = {a.address: a for a in client.assignments_of(reservation) if a.cidr == 32}
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


def settle_for_handout(ctx: Context, client: PacketClient, rng: Range,
                       reservation: Any) -> Set[ipaddress.IPv4Address]:
    """Before an address of ``rng`` is handed out: make the range's owed unassignments now.
    Returns the addresses still owed, which must not be handed out."""
    entries = list(ctx.unassigns.take(rng.deploy_id))
    if entries:
        try:
            for note in settle_unassignments(ctx, client, rng.deploy_id, entries,
                                             reservation):
                ctx.record.warn(note)
        except ProviderError as err:
            ctx.record.warn(f"owed unassignments kept: {cli.one_line(str(err))}")
    return ctx.unassigns.pending(rng.deploy_id)


@dataclass(frozen=True)
class Hint:
    """What the current request says about its range, read leniently (the action itself
    checks it): used to complete owed unassignments whose token is not in the config."""

    deploy_id: Optional[str] = None
    project: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)


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


def _token_for(ctx: Context, hint: Hint, deploy_id: str,
               entries: Sequence[UnassignEntry]) -> Optional[str]:
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
        token = _token_for(ctx, hint, deploy_id, entries)
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


# -- recovery of abandoned register requests -------------------------------------------------


def recover_abandoned(ctx: Context, logger: Any = None, now: Optional[float] = None) -> int:
    """Release the reservations of register requests whose process died before oned got the
    answer. Failures leave the entry for the next action. Returns how many were released."""
    released = 0
    now = time.time() if now is None else now
    handled = 0
    for entry in ctx.journal.abandoned():
        last = entry.last_checked
        if (handled >= RECOVERY_MAX or not ctx.recovery_time_left()
                or (last is not None and 0 <= now - last < RECOVERY_RECHECK_S)):
            entry.close()
            continue
        handled += 1
        started = time.perf_counter()
        result, reservation = "kept", None
        try:
            token = entry.token or ctx.config.token_for(entry.project)
            if not token or not entry.project:
                result = "kept:no-token"
                entry.close()
                continue
            logmod.register_secret(token)
            client = ctx.recovery_client(token)
            found = client.find_marked(entry.project, entry.marker)
            if found is not None:
                reservation = found.id
                _empty_and_release(client, found)
                released += 1
                result = "released"
                ctx.journal.finish(entry)
            elif now - entry.created > RECOVERY_GRACE_S:
                result = "nothing-created"
                ctx.journal.finish(entry)
            else:
                result = "kept:not-found-yet"
                entry.checked()
                entry.close()
        except ProviderError as err:
            result = f"kept:error ({cli.one_line(str(err))})"
            entry.close()
        finally:
            if logger is not None:
                took = logmod.elapsed_ms(started)
                logger.warning(logmod.fields(action="recover", marker=entry.marker,
                                             reservation=reservation,
                                             result=result, duration_ms=took))
    return released


def _empty_and_release(client: PacketClient, reservation: Any) -> Tuple[List[str], bool]:
    """Unassign what is still assigned from a reservation (Packet refuses to release it
    otherwise), then release it. Returns the addresses unassigned and whether the
    reservation was already gone by then."""
    from packet_provider.packet import NotFound

    unassigned = []
    for assignment in client.assignments_of(reservation):
        client.unassign(assignment.id)
        unassigned.append(str(assignment.address))
    try:
        client.release(reservation.id)
    except NotFound:
        return unassigned, True
    return unassigned, False


# -- entry point ---------------------------------------------------------------------------


def _log_line(record: Record, result: str, duration_ms: float, message: str = "") -> str:
    text = logmod.fields(action=record.action, req=record.req,
                         reservation=record.reservation, ip=record.ip, result=result,
                         duration_ms=duration_ms)
    if record.warnings:
        text += ' warning="' + "; ".join(record.warnings) + '"'
    if message:
        text += f' error="{cli.one_line(message)}"'
    return text


def _recover(ctx: Context, request: Request) -> None:
    """What earlier actions left to do, before this one (never failing it): release the
    blocks of killed registers, make the unassignments free_address owes."""
    if ctx.journal.busy():
        try:
            recover_abandoned(ctx, _logger(ctx.config))
        except ProviderError as err:
            ctx.record.warn(f"recovery: {cli.one_line(str(err))}")
    if ctx.unassigns.busy():
        try:
            complete_deferred(ctx, request_hint(request, ctx.config), _logger(ctx.config))
        except ProviderError as err:
            ctx.record.warn(f"owed unassignments: {cli.one_line(str(err))}")


def run_action(action: str, argv: Sequence[str], stdin: IO[bytes], stdout: IO[str],
               env: Optional[Dict[str, str]] = None,
               client_factory: Optional[Callable[[Config, str], PacketClient]] = None
               ) -> int:
    """Run one action; raise ProviderError on failure (cli.run turns it into oned's block).

    The action, the recovery before it included, ends within the configuration's
    ``action_deadline`` (oned drops an IPAM request about 90 s after sending it): every API
    call, retry and wait is bounded by it, and an answer that is ready only after it is
    undone (a register's block released or journalled for release, a lease claim
    abandoned) rather than given."""
    started = time.perf_counter()
    clock = time.monotonic()
    record = Record(action)
    config = None
    ctx = None
    outcome = None
    result, message = "error", ""
    try:
        config = config_mod.load(env=os.environ if env is None else env)
        record.req = parse_args(action, argv)
        data = cli.read_stdin(stdin)
        request = parse_request(action, record.req, data)
        ctx = Context(config, record, client_factory,
                      deadline=clock + config.action_deadline,
                      recovery_deadline=clock + config.action_deadline * RECOVERY_SHARE)
        _recover(ctx, request)
        outcome = HANDLERS[action](ctx, request)
        if outcome.rollback is not None and time.monotonic() > clock + config.action_deadline:
            raise DeadlineError(f"the answer was ready only after the action's deadline "
                                f"({config.action_deadline:g}s, action_deadline in "
                                f"{config.path}): undone, as oned may no longer wait for it")
        stdout.write(outcome.output)
        stdout.flush()
        result = "ok"
    except BaseException as err:
        message = str(err) if isinstance(err, ProviderError) else type(err).__name__
        if outcome is not None and outcome.rollback is not None:
            try:
                outcome.rollback()
            except Exception as undo:  # noqa: BLE001 - the journal keeps what is left
                record.warn(f"could not undo: {type(undo).__name__}")
        raise
    finally:
        if ctx is not None:
            ctx.close()
        took = logmod.elapsed_ms(started)
        if config is not None:
            logger = _logger(config)
            line = _log_line(record, result, took, message)
            (logger.warning if record.warnings or result != "ok" else logger.info)(line)
    # Only now, with the answer out and logged, is a register's journal entry removed or an
    # address's lease made final: a process killed before this point has not answered oned.
    if outcome is not None and outcome.commit is not None:
        try:
            outcome.commit()
        except ProviderError as err:
            _logger(config).error(_log_line(record, "error", took, f"after answering: {err}"))
            raise
    return 0


_LOGGERS: Dict[str, Any] = {}


def _logger(config: Config) -> Any:
    """The driver's logger, set up once per process (and log directory)."""
    if config.log_dir not in _LOGGERS:
        _LOGGERS.clear()
        _LOGGERS[config.log_dir] = logmod.setup(LOG_NAME, config.log_dir, LOG_FILE)
    return _LOGGERS[config.log_dir]


def main(action: str, argv: Sequence[str]) -> None:
    """Entry point of remotes/ipam/packet/<action>."""
    cli.run(lambda: run_action(action, argv, sys.stdin.buffer, sys.stdout),
            prefix=f"packet {action}")
