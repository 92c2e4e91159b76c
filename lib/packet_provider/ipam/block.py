"""The Packet block behind an address range: is it the range's (DEPLOY_ID is an ordinary
attribute that ``onevnet updatear`` changes), and emptying then releasing it."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from packet_provider.core.errors import InputError, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.ipam.request import Range
    from packet_provider.packet import Assignment, PacketClient


def _same_block(reservation: Any, first: Any, size: Any) -> bool:
    """Whether ``reservation`` starts at ``first`` and holds ``size`` addresses (strings as
    oned has them are fine): :func:`packet_provider.packet.reservation_matches_range`,
    without importing the API client."""
    try:
        network = ipaddress.IPv4Address(str(first).strip())
        count = int(str(size).strip())
    except ValueError:
        return False
    return reservation.first_address == network and reservation.size == count


def block_mismatch(reservation: Any, deploy_id: str, first: Any, size: Any,
                   project: Optional[str]) -> Optional[str]:
    """Why ``reservation`` is not the block of the range (IP ``first``, SIZE ``size``, in
    ``project`` if given) whose DEPLOY_ID names it; None when it is."""
    if not _same_block(reservation, first, size):
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


def checked_block(client: PacketClient, rng: Range) -> Tuple[Any, List[Assignment]]:
    """The reservation DEPLOY_ID names and its elastic /32 assignments (one request), once
    known to be the range's block (:func:`check_block`; NotFound when Packet has none)."""
    reservation, assignments = client.reservation_with_assignments(rng.deploy_id)
    check_block(reservation, rng)
    return reservation, assignments


def empty_and_release(client: PacketClient, reservation_id: str,
                      assignments: Optional[Sequence[Assignment]] = None,
                      ) -> Tuple[List[str], bool]:
    """Unassign what is still assigned from a reservation (Packet refuses to release it
    otherwise), then release it: one request to read its assignments (none when the caller
    has them), one per assignment, one to release. Returns the addresses unassigned and
    whether the reservation was already gone by then."""
    if assignments is None:
        try:
            assignments = client.reservation_with_assignments(reservation_id)[1]
        except NotFound:
            return [], True
    unassigned = []
    for assignment in assignments:
        client.unassign(assignment.id)
        unassigned.append(str(assignment.address))
    try:
        client.release(reservation_id)
    except NotFound:
        return unassigned, True
    return unassigned, False
