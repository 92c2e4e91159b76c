"""Typed errors shared by every component.

Every error a user may see derives from :class:`ProviderError`; the command-line wrapper in
:mod:`packet_provider.core.cli` turns it into oned's one-line error block and an exit code.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the hook's fast path imports this module, not typing
    from typing import Optional


class ProviderError(Exception):
    """An error with a message fit for the user: one line, no secrets, no traceback."""

    exit_code = 1


class InputError(ProviderError):
    """The input from oned (argv, stdin, template values) is missing or malformed."""

    exit_code = 2


class ConfigError(ProviderError):
    """The configuration file cannot be read or holds a bad value."""

    exit_code = 3


class StateError(ProviderError):
    """Local state (leases, locks) is inconsistent or cannot be written."""

    exit_code = 4


class DeadlineError(ProviderError):
    """The action ran out of time (the configuration's ``action_deadline``): oned gives up on
    an IPAM request about 90 s after sending it, so the driver stops well before."""


# -- the Packet API's errors (raised by packet_provider.packet, which re-exports them; here so
# that callers can name them without importing requests) -----------------------------------


class PacketError(ProviderError):
    """A call to the Packet API failed."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        from packet_provider.core.log import redact  # logging: only once an error is made

        super().__init__(redact(message))
        self.status = status


class AuthError(PacketError):
    """401 or 403: the token is missing, wrong, or not allowed."""


class NotFound(PacketError):
    """404: no such project, device, reservation or assignment."""


class Unprocessable(PacketError):
    """422: the API refused the request (validation, conflict, approval needed)."""


class RateLimited(PacketError):
    """429, still after the bounded retries."""


class ServerError(PacketError):
    """5xx, still after the bounded retries."""


class Unavailable(PacketError):
    """The API could not be reached or did not answer in time."""


class DeadlineExceeded(Unavailable, DeadlineError):
    """The client's deadline came before an answer (or left no time to send the request)."""
