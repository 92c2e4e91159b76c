"""A Packet API emulator: a real, threaded HTTP server (standard library only).

It serves the API subset in ``packet-api.md`` with its semantics, so the plugin can be tried
and tested without Packet::

    from packet_lab.packet.emulator import PacketEmulator
    emu = PacketEmulator(tokens=["secret"], projects=[project], devices=[f"{dev}@{project}"])
    emu.start()          # emu.url -> "http://127.0.0.1:<port>"
    ...
    emu.stop()

or ``python3 -m packet_lab.packet --help`` for the command line.

API (header ``X-Auth-Token``; JSON bodies; errors ``{"errors": ["..."]}``)::

    POST   /projects/{id}/ips        request a reservation (type, quantity, facility|metro,
                                     details, tags, customdata) -> 201
    GET    /projects/{id}/ips        the project's reservations, then its devices' management
                                     addresses (paged; ?types=, ?include=)
    GET    /ips/{id}                 a reservation, an assignment or a management address
    GET    /ips/{id}/available       free addresses of a reservation (?cidr=32 by default)
    DELETE /ips/{id}                 release a reservation (422 while it has assignments)
                                     or unassign an assignment -> 204 (422: a management
                                     address)
    POST   /devices/{id}/ips         assign {"address": "a.b.c.d/32"} -> 201
    GET    /devices/{id}/ips         a device's addresses (whole, no ``meta``)
    GET    /devices/{id}             the device, with ``ip_addresses``
    GET    /projects, /projects/{id}, /projects/{id}/devices

Semantics: reservations are power-of-two blocks (public_ipv4: 1..256 addresses, a facility or
metro required; global_ipv4: 1 address) carved without overlap, across all projects, from
192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 198.18.0.0/15; an address (or an aligned
sub-block) of a reservation is on at most one device at a time, and only on a device of the
reservation's project (422 otherwise); unknown ids are 404; lists are paged with ``page`` and
``per_page`` and ``meta.next.href``. Paths may carry the ``/metal/v1`` prefix of the later API.

Every device has, like a real one, three provisioning addresses listed first in its
``ip_addresses`` (before its elastic /32s): a public IPv4 /31 (from 198.19.254.0/23, which no
reservation is carved from), a public IPv6 /127 (2001:db8:8000::/48) and a private IPv4 /31
(10.80.0.0/16), all ``management: true``. They belong to no reservation, are never
``available``, cannot be assigned to another device nor removed (422). Answers are shaped
like the real ones in ``tests/data/packet-api/``.

The admin API under ``/_emulator/`` (no token; see :mod:`packet_lab.packet.admin` for
its client) seeds projects, devices and tokens, injects faults, returns the request log and
the state, and resets. Faults match the next ``count`` requests (or a ``rate`` of them),
optionally only one method and a path prefix, and can: answer a ``status`` (with
``Retry-After``), add ``latency`` before the answer (the change is already made), ``drop``
the connection before acting, or ``drop_after`` acting (a lost answer). Reset goes back to
the projects, devices and tokens present at start-up (arguments and state file), with no
reservations, assignments, faults or logged requests.

Tokens are kept only as SHA-256 digests, in memory and in the state file, and are never
logged. With ``state_file`` every change is written atomically to that JSON file and a
restart resumes from it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import threading
import time
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterable, List, Optional, TextIO, Tuple, Union
from urllib.parse import parse_qs, urlencode, urlsplit

from packet_lab.faults import Fault, Faults
from packet_lab.serving import BackgroundServer, write_state_file
from packet_provider.core.validate import is_uuid

POOLS = tuple(ipaddress.IPv4Network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15"))
# Where each device's provisioning addresses come from (never part of a reservation): the
# public IPv4 /31s are kept out of the elastic pools above, the private /31s are in
# 10.0.0.0/8 and the IPv6 /127s in the documentation prefix, as on a real device.
MANAGEMENT_POOL = ipaddress.IPv4Network("198.19.254.0/23")
PRIVATE_POOL = ipaddress.IPv4Network("10.80.0.0/16")
IPV6_POOL = ipaddress.IPv6Network("2001:db8:8000::/48")
# kind (the reservation type it is matched as by ?types=) -> (pool, prefix length, public)
PROVISIONING = {
    "public_ipv4": (MANAGEMENT_POOL, 31, True),
    "public_ipv6": (IPV6_POOL, 127, True),
    "private_ipv4": (PRIVATE_POOL, 31, False),
}
IP_TYPES = ("public_ipv4", "global_ipv4", "private_ipv4", "public_ipv6", "private_ipv6",
            "global_ipv6")
SERVED_TYPES = ("public_ipv4", "global_ipv4")
MAX_QUANTITY = 256
MAX_PER_PAGE = 1000
MAX_BODY = 1 << 20
MAX_LOG = 10000
MAX_LOGGED_BODY = 8192
STATE_VERSION = 1
API_PREFIX = "/metal/v1"
FACILITY_NAMES = {
    "ams1": "Amsterdam, NL", "ewr1": "Parsippany, NJ", "sjc1": "Sunnyvale, CA",
    "dfw2": "Dallas, TX", "nrt1": "Tokyo, JP", "fra2": "Frankfurt, DE", "sin3": "Singapore",
    "am": "Amsterdam", "ny": "New York", "sv": "Silicon Valley", "da": "Dallas",
}
_CODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

Json = Dict[str, Any]
BAD_JSON = object()  # a request body that does not parse


class ApiError(Exception):
    """An error answer: HTTP status and messages for ``{"errors": [...]}``."""

    def __init__(self, status: int, *messages: str, headers: Optional[Dict[str, str]] = None
                 ) -> None:
        super().__init__(f"{status} {'; '.join(messages)}")
        self.status = status
        self.messages = list(messages)
        self.headers = headers or {}


def token_digest(token: str) -> str:
    """The SHA-256 hex digest a token is kept as."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_device_spec(spec: Union[str, Tuple[str, Optional[str]]]) -> Tuple[str, Optional[str]]:
    """``"UUID"`` or ``"UUID@PROJECT"`` (or a tuple) -> (device, project or None)."""
    if isinstance(spec, tuple):
        device, project = spec
    else:
        device, _, project = str(spec).partition("@")
        project = project or None
    if not is_uuid(device) or (project is not None and not is_uuid(project)):
        raise ValueError(f"device must be UUID or UUID@PROJECT_UUID, got {spec!r}")
    return device.lower(), project.lower() if project else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _new_id() -> str:
    return str(uuidlib.uuid4())


def _place(code: Optional[str]) -> Optional[Json]:
    if not code:
        return None
    return {"id": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"packet-emulator:{code}")),
            "code": code, "name": FACILITY_NAMES.get(code, code.upper())}


def carve(prefixlen: int, taken: Iterable[Any], pools: Iterable[Any] = POOLS) -> Optional[Any]:
    """The first aligned block of ``prefixlen`` in ``pools`` overlapping nothing ``taken``
    (IPv4 or IPv6 networks; a pool only meets the taken networks of its own family)."""
    taken = list(taken)
    for pool in pools:
        if pool.prefixlen > prefixlen:
            continue
        size = 1 << (pool.max_prefixlen - prefixlen)
        spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in taken
                       if n.version == pool.version)
        start, end = int(pool.network_address), int(pool.broadcast_address)
        candidate = start
        while candidate + size - 1 <= end:
            last = candidate + size - 1
            clash = next((s for s in spans if s[0] <= last and s[1] >= candidate), None)
            if clash is None:
                return type(pool)((candidate, prefixlen))
            candidate = -(-(clash[1] + 1) // size) * size
    return None


# -- state ----------------------------------------------------------------------------------


class Model:
    """Projects, devices, token digests, reservations and assignments, behind one lock.

    Records are plain JSON-able dicts (the state file format). Every public method takes the
    lock, raises :class:`ApiError` for refused requests, and saves after a change.
    """

    def __init__(self, state_file: Optional[str] = None) -> None:
        self.lock = threading.RLock()
        self.state_file = state_file
        self.projects: Dict[str, Json] = {}
        self.devices: Dict[str, Json] = {}
        self.token_digests: set = set()
        self.reservations: Dict[str, Json] = {}
        self.assignments: Dict[str, Json] = {}
        self.seed: Json = {"projects": [], "devices": [], "token_digests": []}

    # -- seeding --------------------------------------------------------------------------

    def add_project(self, project_id: Optional[str] = None, name: Optional[str] = None,
                    save: bool = True) -> Json:
        pid = (project_id or _new_id()).lower()
        if not is_uuid(pid):
            raise ApiError(422, f"project id must be a UUID, got {project_id!r}")
        with self.lock:
            project = self.projects.get(pid)
            if project is None:
                project = {"id": pid, "name": name or f"project-{pid[:8]}",
                           "created_at": _now()}
                self.projects[pid] = project
                if save:
                    self.save()
            return project

    def add_device(self, project_id: Optional[str] = None, device_id: Optional[str] = None,
                   hostname: Optional[str] = None, facility: Optional[str] = None,
                   save: bool = True) -> Json:
        did = (device_id or _new_id()).lower()
        if not is_uuid(did):
            raise ApiError(422, f"device id must be a UUID, got {device_id!r}")
        with self.lock:
            if project_id is None:
                project_id = next(iter(self.projects), None) or self.add_project(save=False)["id"]
            project_id = project_id.lower()
            if project_id not in self.projects:
                self.add_project(project_id, save=False)
            device = self.devices.get(did)
            if device is not None:
                if device["project_id"] != project_id:
                    raise ApiError(422, f"device {did} already belongs to project "
                                        f"{device['project_id']}")
                return device
            device = {"id": did, "project_id": project_id,
                      "hostname": hostname or f"device-{did[:8]}",
                      "facility": facility or "ams1", "created_at": _now()}
            self.provision(device)
            self.devices[did] = device
            if save:
                self.save()
            return device

    def provision(self, device: Json) -> None:
        """Give a device what a real one has from its provisioning on: a public IPv4 /31,
        a public IPv6 /127 and a private IPv4 /31, all ``management: true``, each its own
        ``/ips/{id}`` (kept as ``addresses`` in the device's record)."""
        kinds = {a["kind"] for a in device.get("addresses") or ()}
        for kind, (pool, prefixlen, _) in PROVISIONING.items():
            if kind in kinds:
                continue
            taken = [ipaddress.ip_network(a["network"]) for d in self.devices.values()
                     for a in d.get("addresses") or () if a["kind"] == kind]
            taken += [ipaddress.ip_network(a["network"]) for a in device.get("addresses") or ()]
            network = carve(prefixlen, taken, [pool])
            if network is None:
                raise ApiError(422, f"no {kind} management address left for device "
                                    f"{device['id']}")
            device.setdefault("addresses", []).append(
                {"id": _new_id(), "kind": kind, "network": str(network)})

    def add_token(self, token: str, save: bool = True) -> None:
        if not isinstance(token, str) or not token.strip() or len(token) > 4096:
            raise ApiError(422, "token must be a non-empty string")
        with self.lock:
            self.token_digests.add(token_digest(token.strip()))
            if save:
                self.save()

    def remember_seed(self) -> None:
        """What :meth:`reset` returns to: the projects, devices and tokens present now."""
        with self.lock:
            self.seed = json.loads(json.dumps({
                "projects": list(self.projects.values()),
                "devices": list(self.devices.values()),
                "token_digests": sorted(self.token_digests)}))

    def reset(self) -> None:
        """Back to the start-up seed: no reservations, no assignments."""
        with self.lock:
            seed = json.loads(json.dumps(self.seed))
            self.projects = {p["id"]: p for p in seed["projects"]}
            self.devices = {d["id"]: d for d in seed["devices"]}
            self.token_digests = set(seed["token_digests"])
            self.reservations = {}
            self.assignments = {}
            self.save()

    def authorized(self, token: Optional[str]) -> bool:
        if not token:
            return False
        with self.lock:
            return token_digest(token.strip()) in self.token_digests

    # -- persistence ----------------------------------------------------------------------

    def to_json(self) -> Json:
        with self.lock:
            return {"version": STATE_VERSION,
                    "projects": list(self.projects.values()),
                    "devices": list(self.devices.values()),
                    "token_digests": sorted(self.token_digests),
                    "reservations": list(self.reservations.values()),
                    "assignments": list(self.assignments.values())}

    def load(self) -> bool:
        """Read the state file if there is one; False when it does not exist yet."""
        if not self.state_file or not os.path.exists(self.state_file):
            return False
        with open(self.state_file, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except ValueError as err:
                raise ValueError(f"state file {self.state_file} is not JSON: {err}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"state file {self.state_file}: unknown format "
                             f"(want version {STATE_VERSION})")
        try:
            with self.lock:
                self.projects = {p["id"]: p for p in data["projects"]}
                self.devices = {d["id"]: d for d in data["devices"]}
                for device in self.devices.values():  # a state file from before addresses
                    self.provision(device)
                self.token_digests = set(data["token_digests"])
                self.reservations = {r["id"]: r for r in data["reservations"]}
                self.assignments = {a["id"]: a for a in data["assignments"]}
        except (KeyError, TypeError) as err:
            raise ValueError(f"state file {self.state_file}: missing {err}") from None
        return True

    def save(self) -> None:
        """Write the state file atomically (temporary file, fsync, rename)."""
        if not self.state_file:
            return
        with self.lock:
            write_state_file(self.state_file, json.dumps(self.to_json(), indent=1,
                                                         sort_keys=True))

    # -- lookups --------------------------------------------------------------------------

    def project(self, project_id: str) -> Json:
        project = self.projects.get(project_id.lower()) if is_uuid(project_id) else None
        if project is None:
            raise ApiError(404, "Not found")
        return project

    def device(self, device_id: str) -> Json:
        device = self.devices.get(device_id.lower()) if is_uuid(device_id) else None
        if device is None:
            raise ApiError(404, "Not found")
        return device

    def ip(self, ip_id: str) -> Tuple[str, Json]:
        """("reservation" | "assignment" | "provisioning", record) for an ``/ips/{id}`` id;
        a provisioning address's record is ``{"device": ..., "address": ...}``."""
        key = ip_id.lower() if is_uuid(ip_id) else ""
        if key in self.reservations:
            return "reservation", self.reservations[key]
        if key in self.assignments:
            return "assignment", self.assignments[key]
        for device in self.devices.values() if key else ():
            for address in device.get("addresses") or ():
                if address["id"] == key:
                    return "provisioning", {"device": device, "address": address}
        raise ApiError(404, "Not found")

    def assignments_of_reservation(self, reservation_id: str) -> List[Json]:
        return [a for a in self.assignments.values() if a["reservation_id"] == reservation_id]

    # -- operations -----------------------------------------------------------------------

    def reserve(self, project_id: str, body: Json) -> Json:
        with self.lock:
            self.project(project_id)
            ip_type, prefixlen, facility, metro = _check_reservation_request(body)
            taken = [ipaddress.IPv4Network(r["network"]) for r in self.reservations.values()]
            network = carve(prefixlen, taken + [MANAGEMENT_POOL])
            if network is None:
                raise ApiError(422, f"no address space left for a /{prefixlen} block")
            record = {"id": _new_id(), "project_id": project_id.lower(), "type": ip_type,
                      "network": str(network), "facility": facility, "metro": metro,
                      "details": body.get("details"), "tags": list(body.get("tags") or []),
                      "customdata": dict(body.get("customdata") or {}),
                      "state": "created", "created_at": _now()}
            self.reservations[record["id"]] = record
            self.save()
            return record

    def delete_ip(self, ip_id: str) -> None:
        with self.lock:
            kind, record = self.ip(ip_id)
            if kind == "provisioning":
                raise ApiError(422, f"{record['address']['network']} is a management address "
                                    f"of device {record['device']['id']}; it cannot be removed")
            if kind == "reservation":
                held = self.assignments_of_reservation(record["id"])
                if held:
                    raise ApiError(422, f"reservation {record['id']} still has {len(held)} "
                                        "assignment(s); unassign them first")
                del self.reservations[record["id"]]
            else:
                del self.assignments[record["id"]]
            self.save()

    def available(self, reservation_id: str, cidr: int) -> List[str]:
        with self.lock:
            kind, record = self.ip(reservation_id)
            if kind != "reservation":
                raise ApiError(422, f"{reservation_id} is an assignment, not a reservation")
            network = ipaddress.IPv4Network(record["network"])
            if not network.prefixlen <= cidr <= 32:
                raise ApiError(422, f"cidr must be between {network.prefixlen} and 32")
            used = [ipaddress.IPv4Network(f"{a['address']}/{a['cidr']}")
                    for a in self.assignments_of_reservation(record["id"])]
            return [str(sub) for sub in network.subnets(new_prefix=cidr)
                    if not any(sub.overlaps(u) for u in used)]

    def assign(self, device_id: str, body: Json) -> Json:
        with self.lock:
            device = self.device(device_id)
            wanted = _check_assignment_request(body)
            owner = next((r for r in self.reservations.values()
                          if wanted.subnet_of(ipaddress.IPv4Network(r["network"]))), None)
            if owner is None:
                raise ApiError(422, f"address {wanted} is not in any reservation")
            if owner["project_id"] != device["project_id"]:
                raise ApiError(422, f"address {wanted} is not in a reservation of the "
                                    f"device's project {device['project_id']}")
            for other in self.assignments.values():
                if wanted.overlaps(ipaddress.IPv4Network(f"{other['address']}/{other['cidr']}")):
                    raise ApiError(422, f"address {wanted} is already assigned to device "
                                        f"{other['device_id']}")
            record = {"id": _new_id(), "reservation_id": owner["id"], "device_id": device["id"],
                      "address": str(wanted.network_address), "cidr": wanted.prefixlen,
                      "created_at": _now()}
            self.assignments[record["id"]] = record
            self.save()
            return record


def _check_reservation_request(body: Json) -> Tuple[str, int, Optional[str], Optional[str]]:
    """Validate a reservation request body -> (type, prefix length, facility, metro)."""
    errors: List[str] = []
    ip_type = body.get("type")
    if ip_type not in IP_TYPES:
        errors.append(f"type must be one of {', '.join(IP_TYPES)}")
    elif ip_type not in SERVED_TYPES:
        errors.append(f"type {ip_type} is not served by the emulator "
                      f"(only {', '.join(SERVED_TYPES)})")
    prefixlen = _check_quantity(body.get("quantity"), ip_type, errors)
    places = []
    for key in ("facility", "metro"):
        value = body.get(key)
        if value is not None and not (isinstance(value, str) and _CODE_RE.match(value)):
            errors.append(f"{key} must be a short lower-case code such as 'ams1'")
            value = None
        places.append(value)
    facility, metro = places
    if ip_type == "public_ipv4" and not facility and not metro:
        errors.append("facility or metro is required for public_ipv4")
    _check_labels(body, errors)
    if errors:
        raise ApiError(422, *errors)
    return str(ip_type), prefixlen, facility, metro


def _check_quantity(quantity: Any, ip_type: Any, errors: List[str]) -> int:
    """The prefix length for ``quantity`` addresses (errors appended to ``errors``)."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        errors.append("quantity must be an integer")
    elif quantity < 1 or quantity & (quantity - 1):
        errors.append(f"quantity must be a power of two, got {quantity}")
    elif quantity > MAX_QUANTITY:
        errors.append(f"quantity {quantity} needs approval (at most {MAX_QUANTITY} "
                      "addresses without it)")
    elif ip_type == "global_ipv4" and quantity != 1:
        errors.append("global_ipv4 reservations hold exactly 1 address")
    else:
        return 32 - (quantity.bit_length() - 1)
    return 32


def _check_labels(body: Json, errors: List[str]) -> None:
    if body.get("details") is not None and not isinstance(body.get("details"), str):
        errors.append("details must be a string")
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list)
                                 and all(isinstance(t, str) for t in tags)):
        errors.append("tags must be a list of strings")
    if body.get("customdata") is not None and not isinstance(body.get("customdata"), dict):
        errors.append("customdata must be an object")


def _check_assignment_request(body: Json) -> ipaddress.IPv4Network:
    address = body.get("address")
    if not isinstance(address, str):
        raise ApiError(422, "address is required, e.g. \"192.0.2.9/32\"")
    try:
        interface = ipaddress.IPv4Interface(address.strip())
    except ValueError:
        raise ApiError(422, f"address must be an IPv4 address or block, got {address!r}"
                       ) from None
    if interface.ip != interface.network.network_address:
        raise ApiError(422, f"address {address} is not aligned to its "
                            f"/{interface.network.prefixlen}")
    return interface.network


# -- rendering (records -> API objects) -----------------------------------------------------
#
# Shapes follow answers of the real API (packet-python's fixtures, tests/data/packet-api/):
# an address object of a device carries ``assigned_to`` and ``interface``; a provisioning
# address has no ``parent_block`` and ``global_ip: null``; for a /31 or /127 the ``address``
# is network + 1 and the ``gateway`` the network.


def _common(network: Any, address: Any, ip_id: str, project_id: str, created_at: str) -> Json:
    short = network.prefixlen >= network.max_prefixlen - 1
    gateway = network.network_address if short else network.network_address + 1
    return {"id": ip_id, "address_family": network.version, "public": True,
            "global_ip": False, "management": False, "manageable": True, "enabled": True,
            "network": str(network.network_address), "address": str(address),
            "gateway": str(gateway), "netmask": str(network.netmask), "cidr": network.prefixlen,
            "created_at": created_at, "href": f"/ips/{ip_id}",
            "project": {"href": f"/projects/{project_id}"},
            "project_lite": {"href": f"/projects/{project_id}"}}


def _on_device(device_id: str) -> Json:
    """``assigned_to`` and ``interface`` (the device's bond port) of a device's address."""
    port = uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"packet-emulator:port:{device_id}")
    return {"assigned_to": {"href": f"/devices/{device_id}"},
            "interface": {"href": f"/ports/{port}"}}


def render_reservation(model: Model, record: Json, embed: bool = False) -> Json:
    network = ipaddress.IPv4Network(record["network"])
    address = network.network_address + 1 if network.prefixlen <= 30 else network.network_address
    out = _common(network, address, record["id"], record["project_id"], record["created_at"])
    held = model.assignments_of_reservation(record["id"])
    out.update({
        "type": record["type"], "global_ip": record["type"].startswith("global"),
        "state": record.get("state", "created"), "addon": True, "bill": False,
        "details": record.get("details"), "tags": list(record.get("tags") or []),
        "customdata": dict(record.get("customdata") or {}),
        "facility": _place(record.get("facility")), "metro": _place(record.get("metro")),
        "available": f"/ips/{record['id']}/available",
        "assignments": [render_assignment(model, a) if embed else {"href": f"/ips/{a['id']}"}
                        for a in held],
    })
    return out


def render_assignment(model: Model, record: Json) -> Json:
    network = ipaddress.IPv4Network(f"{record['address']}/{record['cidr']}")
    parent = model.reservations.get(record["reservation_id"]) or {}
    block = ipaddress.IPv4Network(parent.get("network", str(network)))
    out = _common(network, network.network_address, record["id"], parent.get("project_id", ""),
                  record["created_at"])
    out.update({
        "global_ip": str(parent.get("type", "")).startswith("global"),
        "tags": [], "customdata": {}, "details": None,
        "facility": _place(parent.get("facility")), "metro": _place(parent.get("metro")),
        **_on_device(record["device_id"]),
        "parent_block": {"network": str(block.network_address), "netmask": str(block.netmask),
                         "cidr": block.prefixlen, "href": f"/ips/{record['reservation_id']}"},
    })
    return out


def render_provisioning(device: Json, address: Json) -> Json:
    """One of a device's provisioning addresses, as a real device lists it."""
    network = ipaddress.ip_network(address["network"])
    out = _common(network, network.network_address + 1, address["id"], device["project_id"],
                  device["created_at"])
    out.update({
        "public": PROVISIONING[address["kind"]][2], "management": True, "global_ip": None,
        "tags": [], "customdata": {}, "details": None,
        "facility": _place(device.get("facility")), **_on_device(device["id"]),
    })
    return out


def device_addresses(model: Model, record: Json) -> List[Json]:
    """A device's ``ip_addresses``: its provisioning addresses, then its elastic ones."""
    return ([render_provisioning(record, a) for a in record.get("addresses") or ()]
            + [render_assignment(model, a) for a in model.assignments.values()
               if a["device_id"] == record["id"]])


def render_device(model: Model, record: Json) -> Json:
    return {"id": record["id"], "short_id": record["id"][:8], "hostname": record["hostname"],
            "state": "active", "tags": [], "created_at": record["created_at"],
            "updated_at": record["created_at"], "href": f"/devices/{record['id']}",
            "project": {"href": f"/projects/{record['project_id']}"},
            "project_lite": {"href": f"/projects/{record['project_id']}"},
            "facility": _place(record.get("facility")),
            "ip_addresses": device_addresses(model, record)}


def render_project(record: Json) -> Json:
    pid = record["id"]
    return {"id": pid, "name": record["name"], "created_at": record["created_at"],
            "href": f"/projects/{pid}", "devices": {"href": f"/projects/{pid}/devices"},
            "ips": {"href": f"/projects/{pid}/ips"}}


# -- faults and the request log -------------------------------------------------------------

FAULT_KEYS = ("status", "count", "rate", "method", "path", "retry_after", "latency", "drop",
              "drop_after", "body", "seed")


def parse_fault(spec: Json) -> Fault:
    """A fault from the admin API's JSON (see the module docstring); 400 when malformed."""
    unknown = set(spec) - set(FAULT_KEYS)
    if unknown:
        raise ApiError(400, f"unknown fault field(s): {', '.join(sorted(unknown))}")
    status = _opt_int(spec, "status", 200, 599)
    rate = _opt_float(spec, "rate", 0.0, 1.0)
    count = None if rate is not None else _opt_int(spec, "count", 0, 10 ** 9)
    if rate is None and count is None:
        count = 1
    method = spec.get("method")
    if method is not None:
        if not isinstance(method, str) or not method.isalpha():
            raise ApiError(400, "method must be an HTTP method name")
        method = method.upper()
    path = spec.get("path")
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise ApiError(400, "path must be a path prefix starting with /")
    retry_after = _retry_after(spec.get("retry_after"))
    latency = _opt_float(spec, "latency", 0.0, 300.0) or 0.0
    drop, drop_after = bool(spec.get("drop")), bool(spec.get("drop_after"))
    if sum((status is not None, drop, drop_after)) > 1:
        raise ApiError(400, "give at most one of status, drop, drop_after")
    if status is None and not (drop or drop_after or latency):
        raise ApiError(400, "a fault needs status, latency, drop or drop_after")
    if retry_after is not None and status is None:
        raise ApiError(400, "retry_after goes with a status (e.g. 429)")
    return Fault(method=method or "", target=path or "", status=status, drop=drop,
                 drop_after=drop_after, latency=latency, count=count, rate=rate,
                 seed=spec.get("seed"), retry_after=retry_after, body=spec.get("body"))


def _retry_after(value: Any) -> Optional[str]:
    """A Retry-After header value: a number is whole seconds (rounded up), a string is sent
    as it is (an HTTP date, or garbage to see how a client copes)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value or len(value) > 100 or not value.isprintable():
            raise ApiError(400, "retry_after must be seconds or a short printable string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value <= 10 ** 7):
        raise ApiError(400, "retry_after must be seconds or a short printable string")
    return str(math.ceil(value))


def _opt_int(spec: Json, key: str, low: int, high: int) -> Optional[int]:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer from {low} to {high}")
    return value


def _opt_float(spec: Json, key: str, low: float, high: float) -> Optional[float]:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


class RequestLog:
    def __init__(self, limit: int = MAX_LOG) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.entries: List[Json] = []
        self.seq = 0

    def open(self, method: str, path: str, body: Any) -> Json:
        with self.lock:
            self.seq += 1
            entry = {"seq": self.seq, "time": _now(), "method": method, "path": path,
                     "status": None, "outcome": "pending", "fault": None, "duration_ms": None,
                     "body": body}
            self.entries.append(entry)
            del self.entries[:-self.limit]
            return entry

    def close(self, entry: Json, status: Optional[int], outcome: str, fault: Optional[str],
              duration_ms: float) -> None:
        with self.lock:
            entry.update(status=status, outcome=outcome, fault=fault,
                         duration_ms=round(duration_ms, 3))

    def to_json(self) -> List[Json]:
        with self.lock:
            return [dict(e) for e in self.entries]

    def clear(self) -> None:
        with self.lock:
            self.entries = []


# -- HTTP -------------------------------------------------------------------------------------

Route = Tuple[str, "re.Pattern[str]", str]
_ROUTES: List[Route] = [
    ("GET", re.compile(r"^/projects$"), "list_projects"),
    ("GET", re.compile(r"^/projects/([^/]+)$"), "get_project"),
    ("GET", re.compile(r"^/projects/([^/]+)/devices$"), "list_devices"),
    ("GET", re.compile(r"^/projects/([^/]+)/ips$"), "list_reservations"),
    ("POST", re.compile(r"^/projects/([^/]+)/ips$"), "reserve"),
    ("GET", re.compile(r"^/ips/([^/]+)$"), "get_ip"),
    ("DELETE", re.compile(r"^/ips/([^/]+)$"), "delete_ip"),
    ("GET", re.compile(r"^/ips/([^/]+)/available$"), "available"),
    ("GET", re.compile(r"^/devices/([^/]+)$"), "get_device"),
    ("GET", re.compile(r"^/devices/([^/]+)/ips$"), "list_device_ips"),
    ("POST", re.compile(r"^/devices/([^/]+)/ips$"), "assign"),
]
_ADMIN_ROUTES: List[Route] = [
    ("GET", re.compile(r"^/_emulator/?$"), "admin_index"),
    ("GET", re.compile(r"^/_emulator/state$"), "admin_state"),
    ("POST", re.compile(r"^/_emulator/projects$"), "admin_add_project"),
    ("POST", re.compile(r"^/_emulator/devices$"), "admin_add_device"),
    ("POST", re.compile(r"^/_emulator/tokens$"), "admin_add_token"),
    ("GET", re.compile(r"^/_emulator/faults$"), "admin_faults"),
    ("POST", re.compile(r"^/_emulator/faults$"), "admin_add_fault"),
    ("DELETE", re.compile(r"^/_emulator/faults$"), "admin_clear_faults"),
    ("GET", re.compile(r"^/_emulator/requests$"), "admin_requests"),
    ("DELETE", re.compile(r"^/_emulator/requests$"), "admin_clear_requests"),
    ("POST", re.compile(r"^/_emulator/reset$"), "admin_reset"),
]

ADMIN_INDEX = {
    "GET /_emulator/state": "projects, devices (with their management addresses), "
                            "reservations, assignments, faults",
    "POST /_emulator/projects": '{"id"?, "name"?} -> the project',
    "POST /_emulator/devices": '{"project"?, "id"?, "hostname"?, "facility"?} -> the device',
    "POST /_emulator/tokens": '{"token"} -> 204 (kept as a SHA-256 digest)',
    "GET|POST|DELETE /_emulator/faults": "list, add (" + ", ".join(FAULT_KEYS) + "), clear",
    "GET|DELETE /_emulator/requests": "the request log (API requests only), clear it",
    "POST /_emulator/reset": "back to the start-up projects, devices and tokens",
}

Answer = Tuple[int, Any, Dict[str, str]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PacketEmulator/1.0"
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    body_too_big_to_log = False
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes: without this, Nagle and delayed ACKs
        # add ~40 ms to every keep-alive round trip
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence http.server's own lines; we write one line per request ourselves."""

    def _handle(self, method: str) -> None:
        emu = self.server.emulator
        start = time.perf_counter()
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith(API_PREFIX + "/"):
            path = path[len(API_PREFIX):]
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            body = self._read_body()
        except ApiError as err:
            self._send_error(err)
            emu.access(method, self.path, err.status, start, None, self.client_address[0])
            return
        if path == "/_emulator" or path.startswith("/_emulator/"):
            answer = emu.dispatch(_ADMIN_ROUTES, method, path, query, body)
            self._send(*answer)
            emu.access(method, self.path, answer[0], start, None, self.client_address[0])
            return
        entry = emu.log.open(method, _printable(self.path, 2000),
                             body if body is not BAD_JSON and not self.body_too_big_to_log
                             else "(not JSON or too big to log)")
        fault = emu.faults.take(method, path)
        status: Optional[int] = None
        outcome = "answered"
        try:
            if fault is not None and (fault.drop or fault.status is not None):
                self._sleep(fault.latency)
                if fault.drop:
                    outcome = "dropped"
                    self._drop()
                    return
                status = fault.status
                self._send(*self._fault_answer(fault))
                return
            if not emu.model.authorized(self.headers.get("X-Auth-Token")):
                answer: Answer = (401, {"errors": ["Invalid authentication token"]}, {})
            else:
                answer = emu.dispatch(_ROUTES, method, path, query, body)
            status = answer[0]
            if fault is not None:
                self._sleep(fault.latency)
                if fault.drop_after:
                    outcome = "dropped_after"
                    self._drop()
                    return
            self._send(*answer)
        finally:
            emu.log.close(entry, status, outcome, fault.kind() if fault else None,
                          (time.perf_counter() - start) * 1000)
            emu.access(method, self.path, status if outcome == "answered" else outcome,
                       start, fault.kind() if fault else None, self.client_address[0])

    @staticmethod
    def _sleep(seconds: float) -> None:
        if seconds:
            time.sleep(seconds)

    def _fault_answer(self, fault: Fault) -> Answer:
        status = int(fault.status or 500)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        body = fault.body
        if body is None:
            body = {"errors": [f"injected fault: {status}"]} if status >= 400 else {}
        return status, body, headers

    def _read_body(self) -> Any:
        self.body_too_big_to_log = False
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send a Content-Length (chunked bodies are not supported)")
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return None
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        if len(raw) > MAX_LOGGED_BODY:
            self.body_too_big_to_log = True
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return BAD_JSON

    def _drop(self) -> None:
        """Close the connection without a single byte of answer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_error(self, err: ApiError) -> None:
        self._send(err.status, {"errors": err.messages}, err.headers)

    def _send(self, status: int, payload: Any, headers: Dict[str, str]) -> None:
        data = b"" if status == 204 or payload is None else (
            json.dumps(payload).encode("utf-8") if not isinstance(payload, (bytes, str))
            else payload.encode("utf-8") if isinstance(payload, str) else payload)
        try:
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    emulator: PacketEmulator

    def server_bind(self) -> None:
        self.open_connections: set = set()
        self.connections_lock = threading.Lock()
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up on keep-alive clients so nothing is served after stop()."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class PacketEmulator(BackgroundServer):
    """The Packet API emulator; see the module docstring.

    ``devices`` are ``"UUID"``, ``"UUID@PROJECT"`` or ``(uuid, project)``; a device without a
    project goes to the first project (one is made when there is none). ``access_log`` is a
    text stream for one line per request (the CLI passes stderr); None keeps quiet.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tokens: Iterable[str] = (),
                 projects: Iterable[str] = (), devices: Iterable[Any] = (),
                 state_file: Optional[str] = None, per_page: int = 10,
                 access_log: Optional[TextIO] = None) -> None:
        if not 1 <= int(per_page) <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be from 1 to {MAX_PER_PAGE}")
        self.host = host
        self.port = port
        self.per_page = int(per_page)
        self.access_log = access_log
        self._log_lock = threading.Lock()
        self.model = Model(state_file)
        self.faults = Faults()
        self.log = RequestLog()
        self.lock_state_file(state_file)  # before the file is read or written
        try:
            self.resumed = self.model.load()
            for project in projects:
                if not is_uuid(project):
                    raise ValueError(f"project must be a UUID, got {project!r}")
                self.model.add_project(project, save=False)
            for spec in devices:
                device, project = parse_device_spec(spec)
                self.model.add_device(project, device, save=False)
            for token in tokens:
                if token and token.strip():
                    self.model.add_token(token, save=False)
            self.model.remember_seed()
            self.model.save()
        except BaseException:
            self._unlock_state_file()
            raise
        self.thread_name = "packet-emulator"

    # -- life cycle -----------------------------------------------------------------------

    def bind(self) -> PacketEmulator:
        """Open the listening socket (without serving yet)."""
        if self._server is None:
            server = _Server((self.host, self.port), _Handler)
            server.emulator = self
            self._server = server
            self.port = server.server_address[1]
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or an exception."""
        self.bind()
        assert self._server is not None
        self._server.serve_forever()


    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    # -- helpers used by the handler ------------------------------------------------------

    def access(self, method: str, target: str, status: Any, start: float,
               fault: Optional[str], client: str) -> None:
        """One line per request on the access log (never a header, so never a token)."""
        if self.access_log is None:
            return
        took = (time.perf_counter() - start) * 1000
        line = (f"{_now()} {client} {method} {_printable(target)} {status if status else '-'} "
                f"{took:.1f}ms" + (f" fault={fault}" if fault else ""))
        with self._log_lock:
            try:
                self.access_log.write(line + "\n")
                self.access_log.flush()
            except (OSError, ValueError):
                pass

    def dispatch(self, routes: List[Route], method: str, path: str,
                 query: Dict[str, List[str]], body: Any) -> Answer:
        allowed = []
        for route_method, pattern, name in routes:
            match = pattern.match(path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                if body is BAD_JSON:
                    raise ApiError(422, "the body is not valid JSON")
                if method == "POST":
                    body = {} if body is None else body
                    if not isinstance(body, dict):
                        raise ApiError(422, "the body must be a JSON object")
                handler: Callable[..., Answer] = getattr(self, "_" + name)
                return handler(*match.groups(), query=query, body=body)
            except ApiError as err:
                return err.status, {"errors": err.messages}, err.headers
        if allowed:
            return 405, {"errors": [f"{method} not allowed here"]}, {
                "Allow": ", ".join(sorted(set(allowed)))}
        return 404, {"errors": ["Not found"]}, {}

    def _page(self, items: List[Json], key: str, path: str,
              query: Dict[str, List[str]]) -> Answer:
        page = _query_int(query, "page", 1, 1, 10 ** 6)
        per_page = _query_int(query, "per_page", self.per_page, 1, MAX_PER_PAGE)
        total = len(items)
        last_page = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        keep = {k: v[-1] for k, v in query.items() if k not in ("page", "per_page")}

        def href(number: int) -> Json:
            params = dict(keep, page=number, per_page=per_page)
            return {"href": f"{path}?{urlencode(params)}"}

        meta = {"first": href(1), "previous": href(page - 1) if page > 1 else None,
                "self": href(page), "next": href(page + 1) if page < last_page else None,
                "last": href(last_page), "current_page": page, "last_page": last_page,
                "total": total}
        return 200, {key: chunk, "meta": meta}, {}

    # -- API ------------------------------------------------------------------------------

    def _list_projects(self, *, query: Any, body: Any) -> Answer:
        with self.model.lock:
            items = [render_project(p) for p in self.model.projects.values()]
        return self._page(items, "projects", "/projects", query)

    def _get_project(self, project_id: str, *, query: Any, body: Any) -> Answer:
        with self.model.lock:
            return 200, render_project(self.model.project(project_id)), {}

    def _list_devices(self, project_id: str, *, query: Any, body: Any) -> Answer:
        with self.model.lock:
            pid = self.model.project(project_id)["id"]
            items = [render_device(self.model, d) for d in self.model.devices.values()
                     if d["project_id"] == pid]
        return self._page(items, "devices", f"/projects/{pid}/devices", query)

    def _list_reservations(self, project_id: str, *, query: Any, body: Any) -> Answer:
        types = {t for v in query.get("types", []) + query.get("type", [])
                 for t in v.split(",") if t}
        embed = "assignments" in ",".join(query.get("include", []))
        with self.model.lock:
            pid = self.model.project(project_id)["id"]
            items = [render_reservation(self.model, r, embed)
                     for r in self.model.reservations.values()
                     if r["project_id"] == pid and (not types or r["type"] in types)]
            # then, as in the real answer, the management addresses of the project's devices
            items += [render_provisioning(d, a) for d in self.model.devices.values()
                      if d["project_id"] == pid for a in d.get("addresses") or ()
                      if not types or a["kind"] in types]
        return self._page(items, "ip_addresses", f"/projects/{pid}/ips", query)

    def _reserve(self, project_id: str, *, query: Any, body: Json) -> Answer:
        with self.model.lock:
            record = self.model.reserve(project_id, body)
            return 201, render_reservation(self.model, record), {}

    def _get_ip(self, ip_id: str, *, query: Any, body: Any) -> Answer:
        embed = "assignments" in ",".join(query.get("include", []))
        with self.model.lock:
            kind, record = self.model.ip(ip_id)
            if kind == "reservation":
                return 200, render_reservation(self.model, record, embed), {}
            if kind == "provisioning":
                return 200, render_provisioning(record["device"], record["address"]), {}
            return 200, render_assignment(self.model, record), {}

    def _delete_ip(self, ip_id: str, *, query: Any, body: Any) -> Answer:
        self.model.delete_ip(ip_id)
        return 204, None, {}

    def _available(self, ip_id: str, *, query: Any, body: Any) -> Answer:
        cidr = _query_int(query, "cidr", 32, 0, 32)
        return 200, {"available": self.model.available(ip_id, cidr)}, {}

    def _get_device(self, device_id: str, *, query: Any, body: Any) -> Answer:
        with self.model.lock:
            return 200, render_device(self.model, self.model.device(device_id)), {}

    def _list_device_ips(self, device_id: str, *, query: Any, body: Any) -> Answer:
        """The whole list, not paged and without ``meta``, like the real answer."""
        with self.model.lock:
            return 200, {"ip_addresses": device_addresses(
                self.model, self.model.device(device_id))}, {}

    def _assign(self, device_id: str, *, query: Any, body: Json) -> Answer:
        with self.model.lock:
            record = self.model.assign(device_id, body)
            return 201, render_assignment(self.model, record), {}

    # -- admin API ------------------------------------------------------------------------

    def state(self) -> Json:
        """Everything the emulator holds, token digests left out."""
        with self.model.lock:
            data = self.model.to_json()
            held: Dict[str, List[str]] = {}
            for a in self.model.assignments.values():
                held.setdefault(a["reservation_id"], []).append(a["id"])
            reservations = [dict(r, cidr=ipaddress.IPv4Network(r["network"]).prefixlen,
                                 assignment_ids=held.get(r["id"], []))
                            for r in data["reservations"]]
            return {"projects": data["projects"], "devices": data["devices"],
                    "reservations": reservations, "assignments": data["assignments"],
                    "tokens": len(data["token_digests"]), "faults": self.faults.snapshot(),
                    "state_file": self.model.state_file, "per_page": self.per_page}

    def reset(self) -> None:
        self.model.reset()
        self.faults.clear()
        self.log.clear()

    def _admin_index(self, *, query: Any, body: Any) -> Answer:
        return 200, {"admin": ADMIN_INDEX}, {}

    def _admin_state(self, *, query: Any, body: Any) -> Answer:
        return 200, self.state(), {}

    def _admin_add_project(self, *, query: Any, body: Json) -> Answer:
        project = self.model.add_project(body.get("id"), body.get("name"))
        return 201, project, {}

    def _admin_add_device(self, *, query: Any, body: Json) -> Answer:
        project = body.get("project")
        if project is not None and not is_uuid(project):
            raise ApiError(422, "project must be a UUID")
        device = self.model.add_device(project, body.get("id"), body.get("hostname"),
                                       body.get("facility"))
        return 201, device, {}

    def _admin_add_token(self, *, query: Any, body: Json) -> Answer:
        self.model.add_token(body.get("token"))  # type: ignore[arg-type]
        return 204, None, {}

    def _admin_faults(self, *, query: Any, body: Any) -> Answer:
        return 200, {"faults": self.faults.snapshot()}, {}

    def _admin_add_fault(self, *, query: Any, body: Json) -> Answer:
        return 201, self.faults.add(parse_fault(body)).describe(), {}

    def _admin_clear_faults(self, *, query: Any, body: Any) -> Answer:
        self.faults.clear()
        return 204, None, {}

    def _admin_requests(self, *, query: Any, body: Any) -> Answer:
        return 200, {"requests": self.log.to_json()}, {}

    def _admin_clear_requests(self, *, query: Any, body: Any) -> Answer:
        self.log.clear()
        return 204, None, {}

    def _admin_reset(self, *, query: Any, body: Any) -> Answer:
        self.reset()
        return 204, None, {}


def _query_int(query: Dict[str, List[str]], key: str, default: int, low: int,
               high: int) -> int:
    values = query.get(key)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise ApiError(422, f"{key} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(422, f"{key} must be from {low} to {high}")
    return value


_SECRET_PARAM = re.compile(r"((?:token|auth|key|secret|password)[^=&]*=)[^&]*", re.I)


def _printable(text: str, limit: int = 300) -> str:
    """A request target fit for a log line: one word, printable, secret-looking query
    parameters blanked (the API never takes tokens in URLs, but a confused caller might)."""
    cleaned = "".join(c if c.isprintable() and c != " " else "?" for c in text)
    return _SECRET_PARAM.sub(r"\1***", cleaned)[:limit]
