"""Client of the Packet emulator's admin API (``/_emulator/``), standard library only.

    admin = AdminClient("http://127.0.0.1:8080")
    project = admin.add_project()
    device = admin.add_device(project, hostname="hv1")
    admin.add_token(token)                      # sent in the body, never in a URL
    admin.fault(status=429, retry_after=2, count=1, method="POST", path="/projects/")
    admin.fault(drop_after=True)                # next request: acted on, answer lost
    admin.fault(status=503, rate=0.2, seed=1)   # a fifth of requests, until clear_faults()
    admin.requests()                            # [{"method", "path", "status", ...}]
    admin.state()                               # projects, devices, reservations, assignments
    admin.addresses(device)                     # its provisioning addresses (mgmt /31s, /127)
    admin.reset()                               # back to the start-up seed

Fault fields: ``status`` (an answer with that code; ``retry_after`` adds the header: a number
is whole seconds, rounded up; a string is sent verbatim, e.g. an HTTP date or garbage;
``body`` replaces the JSON body), ``latency`` (seconds before the answer; the change is
already made), ``drop`` (close the connection without an answer, before acting),
``drop_after`` (act, then close without an answer: a lost answer). ``count``: for the next N
matching requests (default 1); ``rate``: for that share of matching requests until cleared
(``count`` ignored; ``seed`` makes it repeatable). ``method`` and ``path`` (a prefix of the API
path without query or ``/metal/v1``, e.g. ``/ips/``) narrow the match. Faults apply before
the token is checked, and never to the admin API.

Every device, whether seeded here, on the command line or in the constructor, gets the three
provisioning addresses a real Packet device has (public IPv4 /31, public IPv6 /127, private
IPv4 /31, all ``management: true``); ``state()`` holds them in each device's ``addresses``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Union


class AdminError(Exception):
    """The admin API refused a request."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """Seed, inspect and break a running Packet emulator."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"emulator URL must be http(s)://..., got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url + "/_emulator" + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                text = "; ".join(json.loads(text).get("errors") or [text])
            except (ValueError, AttributeError):
                pass
            raise AdminError(f"emulator admin {method} {path}: {err.code} {text}",
                             err.code) from None
        except OSError as err:
            raise AdminError(f"emulator admin {method} {path}: {err}") from None
        return json.loads(raw) if raw else None

    def add_project(self, uuid: Optional[str] = None, name: Optional[str] = None) -> str:
        return self._call("POST", "/projects", {"id": uuid, "name": name})["id"]

    def add_device(self, project: Optional[str] = None, uuid: Optional[str] = None,
                   hostname: Optional[str] = None, facility: Optional[str] = None) -> str:
        body = {"project": project, "id": uuid, "hostname": hostname, "facility": facility}
        return self._call("POST", "/devices", body)["id"]

    def add_token(self, token: str) -> None:
        self._call("POST", "/tokens", {"token": token})

    def fault(self, status: Optional[int] = None, count: int = 1, rate: Optional[float] = None,
              method: Optional[str] = None, path: Optional[str] = None,
              retry_after: Union[float, str, None] = None, latency: Optional[float] = None,
              drop: bool = False, drop_after: bool = False, body: Any = None,
              seed: Optional[int] = None) -> Dict[str, Any]:
        """Add a fault (see the module docstring); returns it as the emulator holds it."""
        spec: Dict[str, Any] = {"status": status, "method": method, "path": path,
                                "retry_after": retry_after, "latency": latency, "drop": drop,
                                "drop_after": drop_after, "body": body, "seed": seed}
        if rate is None:
            spec["count"] = count
        else:
            spec["rate"] = rate
        return self._call("POST", "/faults", {k: v for k, v in spec.items() if v is not None})

    def faults(self) -> List[Dict[str, Any]]:
        return self._call("GET", "/faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def requests(self) -> List[Dict[str, Any]]:
        """The API requests served, oldest first (admin calls are not logged)."""
        return self._call("GET", "/requests")["requests"]

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def state(self) -> Dict[str, Any]:
        return self._call("GET", "/state")

    def placement(self) -> Dict[str, str]:
        """Where each address is routed: assigned /32 address -> device id."""
        return {a["address"]: a["device_id"] for a in self.state()["assignments"]
                if int(a.get("cidr", 32)) == 32}

    def addresses(self, device: str) -> List[Dict[str, Any]]:
        """The device's provisioning addresses as the emulator keeps them: ``id``, ``kind``
        (``public_ipv4``, ``public_ipv6``, ``private_ipv4``) and ``network`` (with its
        prefix length)."""
        for record in self.state()["devices"]:
            if record["id"] == device.lower():
                return list(record.get("addresses") or [])
        raise AdminError(f"emulator admin: no device {device}", 404)

    def reset(self) -> None:
        self._call("POST", "/reset")
