"""Entry point of the ``packet`` IPAM driver (``remotes/ipam/packet/<action>``).

Contract with one_ipam (see the integration reference): argv is ``<action> <request id>``
(the action is the executable's name), stdin is the base64 of ``IPAM_DRIVER_ACTION_DATA``
exactly as oned sent it. Success is exit 0 with ``AR = [ ... ]`` (register),
``ADDRESS = [ ... ]`` (get_address) or nothing on stdout; failure is a non-zero exit with the
one-line message in oned's ERROR MESSAGE block (via :func:`packet_provider.core.cli.run`).

Each action writes one line to ``<log_dir>/ipam-packet.log``: action, request id, reservation,
IP, result, duration. The token is never in argv, logs or messages. ``requests`` is imported
only when an API call is about to be made: an input error costs no more than the parsing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from packet_provider import config as config_mod
from packet_provider.core import cli
from packet_provider.core import log as logmod
from packet_provider.core.errors import DeadlineError, ProviderError
from packet_provider.ipam.actions import HANDLERS, Outcome
from packet_provider.ipam.context import ClientFactory, Context
from packet_provider.ipam.recovery import RECOVERY_SHARE, recover
from packet_provider.ipam.request import Request, log_fields, parse_args, parse_request

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.config import Config

LOG_NAME = "ipam-packet"
LOG_FILE = "ipam-packet.log"


def _log_line(action: str, req: Optional[int], outcome: Optional[Outcome],
              request: Optional[Request], warnings: List[str], result: str,
              duration_ms: float, message: str = "") -> str:
    reservation, ip = log_fields(request)
    if outcome is not None:
        reservation, ip = outcome.reservation, outcome.ip
        warnings = warnings + outcome.warnings
    text = logmod.fields(action=action, req=req, reservation=reservation, ip=ip,
                         result=result, duration_ms=duration_ms)
    if warnings:
        text += ' warning="' + "; ".join(warnings) + '"'
    if message:
        text += f' error="{cli.one_line(message)}"'
    return text


def run_action(action: str, argv: Sequence[str], stdin: IO[bytes], stdout: IO[str],
               env: Optional[Dict[str, str]] = None,
               client_factory: Optional[ClientFactory] = None) -> int:
    """Run one action; raise ProviderError on failure (cli.run turns it into oned's block).

    The action, the recovery before it included, ends within the configuration's
    ``action_deadline`` (oned drops an IPAM request about 90 s after sending it): every API
    call, retry and wait is bounded by it, and an answer that is ready only after it is
    undone (a register's block released or journalled for release, a lease claim
    abandoned) rather than given. What the action holds is committed only once its answer
    is out and logged: a process killed before that has not answered oned."""
    started = time.perf_counter()
    clock = time.monotonic()
    config: Optional[Config] = None
    ctx: Optional[Context] = None
    req: Optional[int] = None
    request: Optional[Request] = None
    outcome: Optional[Outcome] = None
    warnings: List[str] = []
    result, message = "error", ""
    try:
        try:
            config = config_mod.load(env=os.environ if env is None else env)
            req = parse_args(action, argv)
            request = parse_request(action, req, cli.read_stdin(stdin))
            ctx = Context(config, client_factory, deadline=clock + config.action_deadline,
                          recovery_deadline=clock + config.action_deadline * RECOVERY_SHARE)
            warnings = recover(ctx, request, lambda: _logger(config))
            outcome = HANDLERS[action](ctx, request)
            if outcome.holds is not None and time.monotonic() > clock + config.action_deadline:
                raise DeadlineError(f"the answer was ready only after the action's deadline "
                                    f"({config.action_deadline:g}s, action_deadline in "
                                    f"{config.path}): undone, as oned may no longer wait "
                                    "for it")
            stdout.write(outcome.output)
            stdout.flush()
            result = "ok"
        except BaseException as err:
            message = str(err) if isinstance(err, ProviderError) else type(err).__name__
            outcome = _undo(outcome) if outcome is not None else getattr(err, "outcome", None)
            raise
        finally:
            if ctx is not None:
                ctx.close_clients()
            took = logmod.elapsed_ms(started)
            if config is not None:
                line = _log_line(action, req, outcome, request, warnings, result, took,
                                 message)
                failed = result != "ok" or warnings or (outcome and outcome.warnings)
                (_logger(config).warning if failed else _logger(config).info)(line)
        # Only now, with the answer out and logged, is a register's journal entry removed or
        # an address's lease made final.
        try:
            outcome.commit()
        except ProviderError as err:
            _logger(config).error(_log_line(action, req, outcome, request, warnings, "error",
                                            took, f"after answering: {err}"))
            raise
        return 0
    finally:
        if ctx is not None:
            ctx.state.close()  # unlocks anything still held, as a dead process would


def _undo(outcome: Outcome) -> Outcome:
    """Undo what an outcome holds (its answer will not be given)."""
    if outcome.holds is not None:
        try:
            outcome.abandon()
        except Exception as undo:  # noqa: BLE001 - the journal keeps what is left
            outcome.warn(f"could not undo: {type(undo).__name__}")
    return outcome


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
