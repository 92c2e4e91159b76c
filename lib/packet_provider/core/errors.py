"""Typed errors shared by every component.

Every error a user may see derives from :class:`ProviderError`; the command-line wrapper in
:mod:`packet_provider.core.cli` turns it into oned's one-line error block and an exit code.
"""


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
