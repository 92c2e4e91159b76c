"""What oned asks of the driver: ``<action> <request id>`` and ``IPAM_DRIVER_ACTION_DATA``
(its AR and ADDRESS parts), parsed and checked before anything is changed.

The user's address range (``onevnet addar``; IP is required by oned but ignored)::

    AR = [ TYPE = "IP4", IP = "10.0.0.1", SIZE = "8", IPAM_MAD = "packet",
           PACKET_PROJECT = "<project uuid>", FACILITY = "ams1",
           PACKET_IP_TYPE = "public_ipv4",        # or global_ipv4 (FACILITY optional)
           PACKET_TOKEN = "<token>" ]             # optional: else tokens.<project> in config

The XML is read with the standard library (:mod:`packet_provider.core.hostxml`: any DOCTYPE
refused before the tree is built).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from packet_provider.core import hostxml, onetemplate, validate
from packet_provider.core import log as logmod
from packet_provider.core.errors import ConfigError, InputError
from packet_provider.core.oned import parse_ipam_action_data

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.config import Config

REGISTER = "register_address_range"
UNREGISTER = "unregister_address_range"
ALLOCATE = "allocate_address"
GET = "get_address"
FREE = "free_address"
ACTIONS = (REGISTER, UNREGISTER, ALLOCATE, GET, FREE)

IP_TYPES = ("public_ipv4", "global_ipv4")
MAX_SIZE = 256

# AR attributes the driver sets itself or that oned derives: never carried over from the
# user's template.
_OWN_ATTRS = frozenset({
    "AR_ID", "TYPE", "IP", "SIZE", "IPAM_MAD", "DEPLOY_ID", "PACKET_TOKEN", "PACKET_PROJECT",
    "PACKET_IP_TYPE", "FACILITY", "IP_END", "MAC_END", "USED_LEASES", "LEASES", "ALLOCATED",
    "IP6", "IP6_END", "IP6_ULA", "IP6_ULA_END", "IP6_GLOBAL", "IP6_GLOBAL_END",
    "ULA_PREFIX", "GLOBAL_PREFIX", "PREFIX_LENGTH",
})
_ATTR_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class Request:
    """One action as oned sent it: the AR's leaf attributes (and their order) and the
    ADDRESS part."""

    __slots__ = ("action", "req_id", "ar", "address", "ar_order")

    def __init__(self, action: str, req_id: int, ar: Dict[str, str],
                 address: Optional[Dict[str, str]] = None,
                 ar_order: Tuple[str, ...] = ()) -> None:
        self.action, self.req_id, self.ar = action, req_id, ar
        self.address = address if address is not None else {}
        self.ar_order = ar_order

    def get(self, name: str) -> str:
        return self.ar.get(name, "").strip()


def parse_args(action: str, argv: Sequence[str]) -> int:
    """The request id from ``<action> <ID>``."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}: run as one of {', '.join(ACTIONS)}")
    if len(argv) != 1:
        raise InputError(f"usage: {action} <request id> (base64 action data on stdin)")
    return validate.object_id(argv[0], "request id")


def parse_request(action: str, req_id: int, data: bytes) -> Request:
    """Decode and parse ``IPAM_DRIVER_ACTION_DATA`` (no entities, no DOCTYPE)."""
    parsed = parse_ipam_action_data(hostxml.parse_base64(data, "standard input"))
    return Request(action, req_id, parsed.ar, parsed.address, parsed.ar_order)


class RegisterSpec:
    """What register_address_range will ask Packet for, all checked before any API call."""

    __slots__ = ("project", "size", "ip_type", "facility", "token", "token_from_ar", "extra")

    def __init__(self, project: str, size: int, ip_type: str, facility: Optional[str],
                 token: str, token_from_ar: bool,
                 extra: Tuple[Tuple[str, str], ...] = ()) -> None:
        self.project, self.size, self.ip_type, self.facility = project, size, ip_type, facility
        self.token, self.token_from_ar, self.extra = token, token_from_ar, extra

    def __repr__(self) -> str:  # never the token
        return (f"RegisterSpec(project={self.project!r}, size={self.size}, "
                f"ip_type={self.ip_type!r}, facility={self.facility!r})")


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
        onetemplate.quote(name, value)
    return RegisterSpec(project, size, ip_type, facility, token, from_ar, extra)


def _carried_over(request: Request) -> Tuple[Tuple[str, str], ...]:
    """The user's own AR attributes, kept in the AR oned stores (it replaces the user's)."""
    kept = []
    for name in request.ar_order:
        if name in _OWN_ATTRS or not _ATTR_NAME.match(name):
            continue
        kept.append((name, request.ar[name]))
    return tuple(kept)


class Range:
    """A registered address range: the reservation (DEPLOY_ID) and the addresses oned sees."""

    __slots__ = ("deploy_id", "first", "size", "project", "token")

    def __init__(self, deploy_id: str, first: ipaddress.IPv4Address, size: int,
                 project: Optional[str], token: str) -> None:
        self.deploy_id, self.first, self.size = deploy_id, first, size
        self.project, self.token = project, token

    def __contains__(self, ip: ipaddress.IPv4Address) -> bool:
        return int(self.first) <= int(ip) < int(self.first) + self.size

    def __repr__(self) -> str:  # never the token
        return f"Range({self.deploy_id}, {self.first}, {self.size}, project={self.project})"


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


def used_leases(request: Request) -> Optional[int]:
    """USED_LEASES of the AR: how many of its addresses oned has leased before this action
    (oned sends it with get_address and allocate_address); None when absent."""
    text = request.get("USED_LEASES")
    if not text:
        return None
    return _size(text, "AR USED_LEASES")


def log_fields(request: Optional[Request]) -> Tuple[Optional[str], Optional[str]]:
    """The reservation and IP the request names, when they are well formed (for the log
    line of an action that failed before it knew better)."""
    if request is None:
        return None, None
    deploy_id = request.get("DEPLOY_ID")
    ip = request.address.get("IP", "").strip()
    return (deploy_id if validate.is_uuid(deploy_id) else None,
            ip if re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", ip) else None)
