"""What the driver prints for oned: the ``AR = [ ... ]`` register_address_range answers (oned
replaces the user's AR with it) and the ``ADDRESS = [ ... ]`` get_address answers, written
by :mod:`packet_provider.core.onetemplate` (values it cannot quote safely are refused)."""

from __future__ import annotations

import ipaddress
from typing import List, Optional, Tuple

from packet_provider.core.onetemplate import vector
from packet_provider.ipam.request import RegisterSpec


def ar_template(spec: RegisterSpec, reservation_id: str, first: ipaddress.IPv4Address,
                size: int, facility: Optional[str]) -> str:
    """The AR oned keeps for a block Packet reserved: the driver's attributes, the token when
    it came from the AR (nowhere else to keep it), then the user's own attributes."""
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
    """The get_address answer: one address."""
    return vector("ADDRESS", [("IP", str(ip)), ("SIZE", "1")])
