"""Strict validation of values that come from templates before they reach paths, URLs or
iptables arguments."""

import ipaddress
import re

from packet_provider.core.errors import InputError

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OBJECT_ID = re.compile(r"^[0-9]{1,10}$")


def is_uuid(value: object) -> bool:
    """Whether ``value`` is a UUID string exactly (nothing stripped)."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def uuid(value: object, what: str) -> str:
    """Return ``value`` as a lower-case UUID string, or raise InputError naming ``what``."""
    text = "" if value is None else str(value).strip()
    if not is_uuid(text):
        raise InputError(f"{what} must be a UUID, got {_shown(text)}")
    return text.lower()


def object_id(value: object, what: str) -> int:
    """Return an OpenNebula object id (a non-negative integer)."""
    text = "" if value is None else str(value).strip()
    if not _OBJECT_ID.match(text):
        raise InputError(f"{what} must be a non-negative integer, got {_shown(text)}")
    return int(text)


def ipv4(value: object, what: str) -> ipaddress.IPv4Address:
    """Return a single IPv4 address; networks, IPv6 and anything with extra text are refused."""
    text = "" if value is None else str(value).strip()
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InputError(f"{what} must be an IPv4 address, got {_shown(text)}") from None


def _shown(text: str, limit: int = 60) -> str:
    """Quote a bad value for an error message, cut short so huge inputs stay one line."""
    flat = text.replace("\n", " ").replace("\r", " ")
    if len(flat) > limit:
        flat = flat[:limit] + "..."
    return repr(flat) if flat else "nothing"
