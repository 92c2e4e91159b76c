"""Client of the Packet (Equinix Metal) API subset the three components use.

One ``requests.Session`` per client carries the token header and the connection pool.
Retries of idempotent calls (GET, DELETE) live in the transport (urllib3 ``Retry``: 429 and
5xx with ``Retry-After`` honoured, connection and read errors, bounded). The two POSTs are
not idempotent, so they get a recovery step instead of a blind retry: after an ambiguous
failure (answer lost, timeout, 5xx) the client looks for what the request may have created
before it tries again, so a lost answer never yields two reservations or two assignments.

Errors are typed (:class:`AuthError`, :class:`NotFound`, :class:`Unprocessable`,
:class:`RateLimited`, :class:`ServerError`, :class:`Unavailable`); their messages carry the
HTTP status and the API's error text, never the token.

A client may have a *deadline* (a ``time.monotonic()`` instant, :meth:`PacketClient.set_deadline`):
then no request is sent, no retry made and no wait (backoff or ``Retry-After``) started that
cannot end before it, and every connect and read timeout is cut to the time left; running out
raises :class:`DeadlineExceeded` (or the last API error, when a retry no longer fits).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from packet_provider.core import validate
from packet_provider.core.errors import (  # noqa: F401 - re-exported: packet.NotFound etc.
    AuthError,
    DeadlineExceeded,
    InputError,
    NotFound,
    PacketError,
    RateLimited,
    ServerError,
    Unavailable,
    Unprocessable,
)
from packet_provider.core.log import register_secret

T = TypeVar("T")

MARKER_KEY = "opennebula_request"
MAX_PAGES = 1000
MIN_ATTEMPT_S = 0.25  # a request is not worth sending with less time than this left
IP_TYPES = ("public_ipv4", "global_ipv4")


def _fits(deadline: Optional[float], wait: float = 0.0) -> bool:
    """Whether waiting ``wait`` seconds still leaves time for a request before ``deadline``."""
    return deadline is None or time.monotonic() + wait + MIN_ATTEMPT_S <= deadline


class Reservation(NamedTuple):
    """A block of addresses reserved in a project."""

    id: str
    network: ipaddress.IPv4Network
    type: str
    state: str
    facility: str
    project_id: str
    assignment_ids: Tuple[str, ...]
    customdata: Mapping[str, Any] = MappingProxyType({})
    details: Optional[str] = None

    @property
    def first_address(self) -> ipaddress.IPv4Address:
        return self.network.network_address

    @property
    def size(self) -> int:
        return self.network.num_addresses


class Assignment(NamedTuple):
    """One address of a reservation assigned to a device."""

    id: str
    address: ipaddress.IPv4Address
    cidr: int
    device_id: Optional[str]
    reservation_id: Optional[str]


class _CappedRetry(Retry):
    """urllib3 Retry whose waits (Retry-After and backoff) are capped, so a hostile header
    cannot stall us, and that retries only when the wait and one more attempt fit before the
    deadline (if any). urllib3 makes a new Retry for every attempt (:meth:`new`): our two
    settings are carried over to it."""

    max_retry_after = 30.0
    deadline: Optional[float] = None

    def new(self, **kw: Any) -> _CappedRetry:
        fresh = super().new(**kw)
        fresh.max_retry_after = self.max_retry_after
        fresh.deadline = self.deadline
        return fresh

    def get_retry_after(self, response: Any) -> Optional[float]:
        try:
            value = super().get_retry_after(response)
        except InvalidHeader:  # an unparsable Retry-After: fall back to the backoff
            return None
        return None if value is None else min(value, self.max_retry_after)

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), self.max_retry_after)

    def _next_wait(self, response: Any) -> float:
        """How long :meth:`sleep` will wait before the next attempt (as urllib3 decides)."""
        if self.respect_retry_after_header and response is not None:
            after = self.get_retry_after(response)
            if after:
                return after
        return self.get_backoff_time()

    def increment(self, method: Optional[str] = None, url: Optional[str] = None,
                  response: Any = None, error: Optional[Exception] = None,
                  _pool: Any = None, _stacktrace: Any = None) -> _CappedRetry:
        fresh = super().increment(method, url, response, error, _pool, _stacktrace)
        if not _fits(self.deadline, fresh._next_wait(response)):
            # no retry: the caller gets the last answer (a 429/5xx) or the transport error
            raise MaxRetryError(_pool, url, error or ResponseError("deadline reached"))
        return fresh


class _DeadlineTimeout(Timeout):
    """Connect and read timeouts cut to the time left before a deadline, evaluated at each
    attempt (urllib3 clones the timeout for every attempt, retries included)."""

    def __init__(self, connect: float, read: float, deadline: float) -> None:
        super().__init__(connect=connect, read=read)
        self.deadline = deadline

    def clone(self) -> _DeadlineTimeout:
        return _DeadlineTimeout(self._connect, self._read, self.deadline)  # type: ignore[arg-type]

    def _cut(self, limit: Any) -> float:
        return max(0.001, min(float(limit), self.deadline - time.monotonic()))

    @property
    def connect_timeout(self) -> float:  # type: ignore[override]
        return self._cut(self._connect)

    @property
    def read_timeout(self) -> float:  # type: ignore[override]
        return self._cut(self._read)


def _last_id(href: Any) -> Optional[str]:
    """The id at the end of an ``href`` such as ``/ips/<uuid>``, when it is a UUID."""
    if not isinstance(href, str) or not href:
        return None
    try:
        return validate.uuid(href.rstrip("/").rsplit("/", 1)[-1], "href id")
    except InputError:
        return None


def _href_of(obj: Any) -> Optional[str]:
    return obj.get("href") if isinstance(obj, dict) else None


def _family(data: Dict[str, Any]) -> Optional[int]:
    """4 or 6: the object's ``address_family``, else guessed from the form of its address
    (None when ``address_family`` is there but not a number: left to the parser)."""
    family = data.get("address_family")
    if family is None:
        text = str(data.get("address") or data.get("network") or "")
        return 6 if ":" in text else 4
    return _number(family)


def _prefix_length(data: Dict[str, Any]) -> Optional[int]:
    """The object's ``cidr`` as a number (32 when absent; None when unreadable: left to the
    parser)."""
    return _number(data.get("cidr", 32))


def _number(value: Any) -> Optional[int]:
    """``value`` as an int, or None (a bool or anything unreadable)."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _not_ours(data: Dict[str, Any]) -> bool:
    """An address object that is recognisably not elastic public IPv4: a device's
    provisioning address (``management: true``), a private or an IPv6 one."""
    return (data.get("management") is True or data.get("public") is False
            or _family(data) not in (4, None))


def is_elastic_assignment(data: Any) -> bool:
    """Whether an address object is an elastic IPv4 /32 assignment, the only kind the
    plugin reads or changes. A device also holds its provisioning addresses (a public and a
    private IPv4 /31 and a public IPv6 /127, all ``management: true``), and may hold other
    blocks: those are skipped, never parsed as ours. An object whose fields are unreadable
    is not skipped: its parse fails."""
    if not isinstance(data, dict):
        return False
    return not _not_ours(data) and _prefix_length(data) in (32, None)


def is_elastic_reservation(data: Any) -> bool:
    """Whether an item of a project's ``ip_addresses`` is a reservation of elastic public
    IPv4 (``public_ipv4``, ``global_ipv4``). The list also holds the project's management
    addresses, which are assignments (``assigned_to``), and its private and IPv6 blocks."""
    if not isinstance(data, dict) or _not_ours(data):
        return False
    if data.get("assigned_to") is not None or data.get("parent_block") is not None:
        return False
    return data.get("type") in (None, *IP_TYPES)


def _project_id(data: Dict[str, Any]) -> str:
    """The project's id: from ``project.href``, ``project.id`` (a project embedded whole) or
    ``project_lite.href``; "" when none says (real answers may carry ``"project": {}``)."""
    project = data.get("project")
    found = _last_id(_href_of(project)) or _last_id(_href_of(data.get("project_lite")))
    if found is None and isinstance(project, dict) and isinstance(project.get("id"), str):
        found = _last_id(project["id"])
    return found or ""


def parse_reservation(data: Dict[str, Any]) -> Reservation:
    """Build a Reservation from the API's JSON object."""
    try:
        network = ipaddress.IPv4Network(f"{data['network']}/{int(data['cidr'])}")
        reservation_id = validate.uuid(data["id"], "reservation id")
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise PacketError(f"Packet API returned a malformed reservation: {err}") from None
    facility = data.get("facility") or {}
    return Reservation(
        id=reservation_id,
        network=network,
        type=str(data.get("type") or ""),
        state=str(data.get("state") or "created"),
        facility=str(facility.get("code") or "") if isinstance(facility, dict) else "",
        project_id=_project_id(data),
        assignment_ids=tuple(
            i for i in (_last_id(_href_of(a)) for a in data.get("assignments") or ()) if i
        ),
        customdata=data.get("customdata") if isinstance(data.get("customdata"), dict) else {},
        details=data.get("details"),
    )


def reservation_matches_range(reservation: Reservation, first_ip: Any, size: Any) -> bool:
    """Whether ``reservation`` is the block of an address range whose ``IP`` is ``first_ip``
    and ``SIZE`` is ``size`` (as oned has them: strings are fine). oned never lets a user
    change an AR's IP, but DEPLOY_ID, which names the reservation, is an ordinary attribute:
    check it before acting on the reservation it names."""
    try:
        network = ipaddress.IPv4Address(str(first_ip).strip())
        count = int(str(size).strip())
    except ValueError:
        return False
    return reservation.first_address == network and reservation.size == count


def parse_assignment(data: Dict[str, Any]) -> Assignment:
    """Build an Assignment from the API's JSON object (an elastic IPv4 one: see
    :func:`is_elastic_assignment`)."""
    try:
        return Assignment(
            id=validate.uuid(data["id"], "assignment id"),
            address=ipaddress.IPv4Address(str(data["address"])),
            cidr=int(data.get("cidr", 32)),
            device_id=_last_id(_href_of(data.get("assigned_to"))),
            reservation_id=_last_id(_href_of(data.get("parent_block"))),
        )
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise PacketError(f"Packet API returned a malformed assignment: {err}") from None


def _api_message(response: requests.Response) -> str:
    """The API's error text from ``{"errors": [...]}`` or ``{"error": "..."}``."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] if text else response.reason or ""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors)
        if body.get("error"):
            return str(body["error"])
    return response.reason or ""


_ERRORS_BY_STATUS = {401: AuthError, 403: AuthError, 404: NotFound, 422: Unprocessable,
                     429: RateLimited}


class PacketClient:
    """The handful of Packet API calls the IPAM driver and the hook make."""

    def __init__(self, api_url: str, token: str, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_retry_after: float = 30.0,
                 logger: Optional[logging.Logger] = None,
                 deadline: Optional[float] = None) -> None:
        if not token:
            raise InputError("no Packet API token")
        register_secret(token)
        self.api_url = api_url.rstrip("/")
        self._base_path = urlsplit(self.api_url).path.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.logger = logger
        self.calls = 0
        self.session = requests.Session()
        self.session.headers.update({"X-Auth-Token": token, "Accept": "application/json",
                                     "Content-Type": "application/json",
                                     "User-Agent": "opennebula-packet-provider"})
        retry = _CappedRetry(
            total=retries, connect=retries, read=retries, status=retries, other=0,
            allowed_methods=frozenset({"GET", "DELETE", "HEAD"}),
            status_forcelist=(429, 500, 502, 503, 504), backoff_factor=backoff,
            respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
        )
        retry.max_retry_after = max_retry_after
        self._retry = retry
        self.deadline: Optional[float] = None
        self.set_deadline(deadline)
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=8)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def set_deadline(self, deadline: Optional[float]) -> None:
        """Bound every later call, its retries and its waits by ``deadline`` (a
        ``time.monotonic()`` instant; None: no bound but the timeouts and retry counts)."""
        self.deadline = deadline
        self._retry.deadline = deadline

    @classmethod
    def from_config(cls, config: Any, token: str,
                    logger: Optional[logging.Logger] = None,
                    deadline: Optional[float] = None) -> PacketClient:
        """A client with the URL, timeouts and retry policy of a loaded Config."""
        return cls(config.api_url, token, config.connect_timeout, config.read_timeout,
                   config.retries, config.backoff, config.max_retry_after, logger, deadline)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PacketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        """An absolute URL for an API path or for an ``href`` the API returned."""
        if path.startswith(("http://", "https://")):
            return path
        if self._base_path and path.startswith(self._base_path + "/"):
            path = path[len(self._base_path):]
        return self.api_url + path

    def _send(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              params: Optional[Dict[str, Any]] = None) -> requests.Response:
        """One call, with the transport's retries; connection trouble becomes Unavailable."""
        if not _fits(self.deadline):
            raise DeadlineExceeded(f"Packet API: {method} {path}: not sent, the action's "
                                   "deadline (action_deadline) is reached")
        self.calls += 1
        start = time.perf_counter()
        status: Any = "-"
        timeout: Any = self.timeout
        if self.deadline is not None:
            timeout = _DeadlineTimeout(self.timeout[0], self.timeout[1], self.deadline)
        try:
            response = self.session.request(method, self._url(path), json=body, params=params,
                                            timeout=timeout, allow_redirects=False)
            status = response.status_code
            return response
        except requests.RequestException as err:
            timed_out = isinstance(err, requests.Timeout)
            status = "timeout" if timed_out else "unreachable"
            if not _fits(self.deadline):
                raise DeadlineExceeded(f"Packet API: {method} {path}: no answer before the "
                                       "action's deadline (action_deadline)") from None
            if timed_out:
                raise Unavailable(f"Packet API: {method} {path}: no answer within "
                                  f"{self.timeout[1]:g}s") from None
            raise Unavailable(f"Packet API: {method} {path}: unreachable "
                              f"({_reason(err)})") from None
        finally:
            if self.logger is not None:
                took = (time.perf_counter() - start) * 1000
                self.logger.info("api %s %s status=%s duration_ms=%.1f", method, path, status,
                                 took)

    def _check(self, method: str, path: str, response: requests.Response) -> Any:
        """Return the JSON body of a successful answer, or raise the typed error."""
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return None
            try:
                data = response.json()
            except ValueError:
                raise PacketError(f"Packet API: {method} {path}: answer is not JSON",
                                  status) from None
            if not isinstance(data, dict):  # every answer of this API subset is an object
                raise PacketError(f"Packet API: {method} {path}: answer is not a JSON object",
                                  status)
            return data
        error = _ERRORS_BY_STATUS.get(status)
        if error is None:
            error = ServerError if status >= 500 else PacketError
        raise error(f"Packet API: {method} {path}: {status} {_api_message(response)}".strip(),
                    status)

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              params: Optional[Dict[str, Any]] = None) -> Any:
        return self._check(method, path, self._send(method, path, body, params))

    def _list(self, path: str, key: str) -> List[Dict[str, Any]]:
        """All items of a paginated list, following ``meta.next.href``."""
        items: List[Dict[str, Any]] = []
        seen = set()
        next_path: Optional[str] = path
        params: Optional[Dict[str, Any]] = {"per_page": 50}
        while next_path and len(seen) < MAX_PAGES:
            seen.add(next_path)
            page = self._call("GET", next_path, params=params) or {}
            items.extend(x for x in page.get(key) or () if isinstance(x, dict))
            nxt = _href_of((page.get("meta") or {}).get("next"))
            next_path, params = (nxt, None) if nxt and nxt not in seen else (None, None)
        return items

    def _post_safely(self, path: str, body: Dict[str, Any],
                     recover: Callable[[], Optional[T]], parse: Callable[[Any], T]) -> T:
        """POST ``body`` at most once per attempt; after an ambiguous failure, look for what
        it may have created (``recover``) before trying again."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send("POST", path, body)
            except Unavailable:
                found = recover()
                if found is not None:
                    return found
                if last or not self._pause(attempt):
                    raise
                continue
            status = response.status_code
            if status == 429 and not last and self._pause(attempt,
                                                          response.headers.get("Retry-After")):
                continue
            if status >= 500:
                found = recover()
                if found is not None:
                    return found
                if not last and self._pause(attempt, response.headers.get("Retry-After")):
                    continue
            return parse(self._check("POST", path, response))
        raise Unavailable(f"Packet API: POST {path}: no answer after {attempts} attempts")

    def _pause(self, attempt: int, retry_after: Optional[str] = None) -> bool:
        """Wait before the next attempt; False (no wait) when it would not fit before the
        deadline."""
        wait = self.backoff * (2 ** attempt)
        if retry_after:
            try:
                wait = max(0.0, float(retry_after))
            except ValueError:
                pass
        wait = min(wait, self.max_retry_after)
        if not _fits(self.deadline, wait):
            return False
        time.sleep(wait)
        return True

    # -- reservations ---------------------------------------------------------------------

    def reserve(self, project_id: str, quantity: int, ip_type: str = "public_ipv4",
                facility: Optional[str] = None, details: Optional[str] = None,
                marker: Optional[str] = None, fail_on_approval_required: bool = True,
                ) -> Reservation:
        """Request a block of ``quantity`` addresses. The request carries a unique marker in
        ``customdata``; if its answer is lost, the marked block is found instead of a second
        one being requested."""
        project_id = validate.uuid(project_id, "Packet project")
        if ip_type not in IP_TYPES:
            raise InputError(f"unsupported Packet IP type {ip_type!r}")
        if not marker:
            import uuid  # only a reservation needs one: the other actions skip its import

            marker = str(uuid.uuid4())
        body: Dict[str, Any] = {
            "type": ip_type, "quantity": int(quantity),
            "details": details or f"OpenNebula address range ({marker})",
            "tags": ["opennebula"], "customdata": {MARKER_KEY: marker},
            "fail_on_approval_required": fail_on_approval_required,
        }
        if facility:
            body["facility"] = facility
        path = f"/projects/{project_id}/ips"
        return self._post_safely(path, body, lambda: self.find_marked(project_id, marker),
                                 parse_reservation)

    def find_marked(self, project_id: str, marker: str) -> Optional[Reservation]:
        """The reservation a request with ``marker`` created, if any."""
        for item in self._list(f"/projects/{validate.uuid(project_id, 'project')}/ips",
                               "ip_addresses"):
            data = item.get("customdata")
            if isinstance(data, dict) and data.get(MARKER_KEY) == marker:
                return parse_reservation(item)
        return None

    def list_reservations(self, project_id: str) -> List[Reservation]:
        """The project's reservations of elastic public IPv4 (its management addresses,
        private and IPv6 blocks left out)."""
        path = f"/projects/{validate.uuid(project_id, 'Packet project')}/ips"
        return [parse_reservation(item) for item in self._list(path, "ip_addresses")
                if is_elastic_reservation(item)]

    def get_reservation(self, reservation_id: str) -> Reservation:
        rid = validate.uuid(reservation_id, "reservation id")
        return parse_reservation(self._call("GET", f"/ips/{rid}") or {})

    def release(self, reservation_id: str) -> None:
        """Release a reservation (refused by the API while it has assignments)."""
        self._call("DELETE", f"/ips/{validate.uuid(reservation_id, 'reservation id')}")

    def available(self, reservation_id: str) -> List[ipaddress.IPv4Address]:
        """The addresses of a reservation not assigned to any device, ascending."""
        rid = validate.uuid(reservation_id, "reservation id")
        body = self._call("GET", f"/ips/{rid}/available", params={"cidr": 32}) or {}
        found = []
        for entry in body.get("available") or ():
            try:
                found.append(ipaddress.IPv4Interface(str(entry)).ip)
            except ValueError:
                raise PacketError(f"Packet API returned a malformed address {entry!r}") from None
        return sorted(found)

    # -- assignments ----------------------------------------------------------------------

    def _read_ip(self, ip_id: str) -> Dict[str, Any]:
        aid = validate.uuid(ip_id, "assignment id")
        return self._call("GET", f"/ips/{aid}") or {}

    def get_assignment(self, assignment_id: str) -> Assignment:
        """An elastic IPv4 /32 assignment by id (anything else is an error)."""
        data = self._read_ip(assignment_id)
        if isinstance(data, dict) and _not_ours(data):
            raise PacketError(f"Packet API: /ips/{assignment_id} is not an elastic public "
                              "IPv4 address")
        return parse_assignment(data)

    def _elastic_assignments(self, entries: Any) -> List[Assignment]:
        """The elastic /32 assignments among a reservation's ``assignments`` entries (any
        other, e.g. of a sub-block, is left out): embedded objects as they are, an entry
        given as a bare href read on its own (one unassigned meanwhile is skipped)."""
        found = []
        for entry in entries or ():
            data = entry
            if isinstance(entry, dict) and "address" not in entry:
                assignment_id = _last_id(_href_of(entry))
                if assignment_id is None:
                    continue
                try:
                    data = self._read_ip(assignment_id)
                except NotFound:
                    continue  # unassigned since the reservation was read
            if is_elastic_assignment(data):
                found.append(parse_assignment(data))
        return found

    def reservation_with_assignments(self, reservation_id: str,
                                     ) -> Tuple[Reservation, List[Assignment]]:
        """A reservation and the current elastic /32 assignments of its addresses in one
        request: ``?include=assignments`` embeds each assignment whole, where a plain read
        lists hrefs to read one by one. An entry still given as a bare href is read on its
        own."""
        rid = validate.uuid(reservation_id, "reservation id")
        data = self._call("GET", f"/ips/{rid}", params={"include": "assignments"}) or {}
        return parse_reservation(data), self._elastic_assignments(data.get("assignments"))

    def find_assignment(self, reservation_id: str,
                        address: ipaddress.IPv4Address) -> Optional[Assignment]:
        """The assignment of ``address`` (a /32 of the reservation), if it is assigned (one
        request, whatever the number of assignments)."""
        for assignment in self.reservation_with_assignments(reservation_id)[1]:
            if assignment.address == address and assignment.cidr == 32:
                return assignment
        return None

    def device_assignments(self, device_id: str) -> List[Assignment]:
        """The device's elastic IPv4 /32 assignments; its provisioning addresses and any
        other block are skipped."""
        did = validate.uuid(device_id, "device id")
        return [parse_assignment(item) for item in self._list(f"/devices/{did}/ips",
                                                              "ip_addresses")
                if is_elastic_assignment(item)]

    def assign(self, device_id: str, address: ipaddress.IPv4Address) -> Assignment:
        """Assign one address to a device. A lost answer is recovered by finding the address
        on the device instead of assigning it again."""
        did = validate.uuid(device_id, "device id")
        address = validate.ipv4(address, "address")

        def recover() -> Optional[Assignment]:
            for assignment in self.device_assignments(did):
                if assignment.address == address and assignment.cidr == 32:
                    return assignment
            return None

        return self._post_safely(f"/devices/{did}/ips", {"address": f"{address}/32"},
                                 recover, parse_assignment)

    def unassign(self, assignment_id: str, missing_ok: bool = True) -> None:
        """Remove an assignment; an assignment already gone is success when ``missing_ok``."""
        aid = validate.uuid(assignment_id, "assignment id")
        try:
            self._call("DELETE", f"/ips/{aid}")
        except NotFound:
            if not missing_ok:
                raise

    def project_reservations_with_assignments(self, project_id: str,
                                              ) -> List[Tuple[Reservation, List[Assignment]]]:
        """Every elastic IPv4 reservation of a project with its current /32 assignments,
        from the paged list with ``?include=assignments`` (a few calls per project, however
        many reservations). An assignment still given as a bare href is read on its own."""
        path = f"/projects/{validate.uuid(project_id, 'Packet project')}/ips"
        found: List[Tuple[Reservation, List[Assignment]]] = []
        seen = set()
        next_path: Optional[str] = path
        params: Optional[Dict[str, Any]] = {"include": "assignments", "per_page": 50}
        while next_path and len(seen) < MAX_PAGES:
            seen.add(next_path)
            page = self._call("GET", next_path, params=params) or {}
            for item in page.get("ip_addresses") or ():
                if not is_elastic_reservation(item):
                    continue
                found.append((parse_reservation(item),
                              self._elastic_assignments(item.get("assignments"))))
            nxt = _href_of((page.get("meta") or {}).get("next"))
            next_path = nxt if nxt and nxt not in seen else None
            params = None if next_path and "include=" in next_path else \
                {"include": "assignments"}
        return found


def _reason(err: Exception) -> str:
    """A short, token-free reason for a transport error."""
    text = str(err)
    for marker in ("Connection refused", "Connection reset", "RemoteDisconnected",
                   "Max retries exceeded", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower() if marker != "RemoteDisconnected" else "connection closed"
    return type(err).__name__
