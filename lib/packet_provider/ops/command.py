"""The ``packet-provider`` operator command: ``check`` and ``reconcile``.

Exit codes: 0 everything agrees (check) or every difference was fixed (reconcile); 1 some
difference is left; 2 the command could not look (oned or Packet unreachable, no permission,
a bad config or argument), with one line on stderr and no traceback.

Credentials come from the same configuration file as the hook and the IPAM driver
(:mod:`packet_provider.config`: ``one_xmlrpc``, ``one_auth``, ``tokens``); no token is ever
printed, logged or passed on a command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, TextIO

from packet_provider.core.cli import one_line
from packet_provider.core.errors import ProviderError

PROG = "packet-provider"
EXIT_OK, EXIT_DIFFERS, EXIT_CANNOT_LOOK = 0, 1, 2

DESCRIPTION = """\
Operator command of the OpenNebula packet IPAM driver and alias_ip hook.

  check      read oned, Packet and the lease directory; report every difference, one
             line each, grouped by kind (read-only)
  reconcile  fix what check finds, in the safe direction only; a second run does nothing
  reconcile --leases
             rebuild the lease directory from oned alone (fast; no Packet call): the
             command for OpenNebula HA's RAFT_LEADER_HOOK

Exit status: 0 all agree (or all fixed), 1 something differs (or was left),
2 could not look (unreachable, no permission, bad configuration).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override] # one line, exit 2
        raise ProviderError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $PACKET_PROVIDER_CONFIG, "
                             "$ONE_LOCATION/etc/packet_provider.yaml, "
                             "/etc/one/packet_provider.yaml)")
    parser = _Parser(prog=PROG, description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{check,reconcile}", parser_class=_Parser)
    check = sub.add_parser("check", parents=[common],
                           help="report every difference (read-only)",
                           description="Report every difference between oned, Packet and "
                                       "the lease directory, one line each, by kind.")
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    rec = sub.add_parser("reconcile", parents=[common],
                         help="fix what check finds (safe direction only)",
                         description="Fix what check finds: route each running VM's alias "
                                     "to its host's device, unassign what nobody holds, "
                                     "rebuild lease files from oned, finish deferred "
                                     "unassignments. Never releases a reservation unless "
                                     "--release-orphans.")
    rec.add_argument("--dry-run", action="store_true", help="show what it would do")
    rec.add_argument("--leases", action="store_true",
                     help="only rebuild the lease directory from oned (RAFT_LEADER_HOOK)")
    rec.add_argument("--release-orphans", action="store_true",
                     help="also release reservations the driver made that no range names")
    rec.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                     help="leave lease files younger than this (default 120)")
    rec.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


class Session:
    """The config, the oned client and one Packet client per token, with call counts."""

    def __init__(self, config_path: Optional[str], env: Mapping[str, str]) -> None:
        from packet_provider import config as config_mod
        from packet_provider.oned_client import OnedClient

        self.config = config_mod.load(config_path, env=env)
        self.oned = OnedClient.from_config(self.config, env)
        self._clients: Dict[str, Any] = {}
        self.logger = _logger(self.config)

    def client_for(self, token: str) -> Any:
        from packet_provider.packet import PacketClient

        if token not in self._clients:
            self._clients[token] = PacketClient.from_config(self.config, token)
        return self._clients[token]

    @property
    def packet_calls(self) -> int:
        return sum(c.calls for c in self._clients.values())

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _logger(config: Any) -> logging.Logger:
    """``packet-provider.log`` in the log directory when it is writable; silent otherwise
    (the command's own output is the report)."""
    from packet_provider.core.log import RedactingFilter

    logger = logging.getLogger("packet_provider.ops")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    try:
        os.makedirs(config.log_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(config.log_dir, "packet-provider.log"),
                                      encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
    formatter = logging.Formatter("%(asctime)s packet-provider %(levelname)s %(message)s",
                                  "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    return logger


def _print_findings(findings: List[Any], out: TextIO) -> None:
    from packet_provider.ops.model import KINDS

    for kind, meaning in KINDS:
        mine = [f for f in findings if f.kind == kind]
        if mine:
            out.write(f"{kind} ({len(mine)}): {meaning}\n")
            for finding in mine:
                out.write(f"  {kind}: {one_line(finding.text)}\n")


def check(session: Session, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from packet_provider.ops import gather, model

    started = time.monotonic()
    progress = gather.Progress(err)
    try:
        snap = gather.snapshot(session.config, session.oned, session.client_for, progress)
    finally:
        progress.done()
    findings = model.differences(snap)
    took = time.monotonic() - started
    summary = {"ranges": len(snap.ranges), "reservations": len(snap.blocks),
               "leased": sum(len(r.leases) for r in snap.ranges),
               "oned_calls": session.oned.calls, "packet_calls": session.packet_calls,
               "seconds": round(took, 3)}
    if args.json:
        json.dump({"ok": not findings, "counts": model.counts(findings),
                   "findings": [f.to_json() for f in findings], **summary}, out, indent=1)
        out.write("\n")
    else:
        _print_findings(findings, out)
        what = (f"{summary['ranges']} range(s), {summary['leased']} lease(s), "
                f"{summary['reservations']} reservation(s)")
        out.write(f"{len(findings)} difference(s) in {what}\n" if findings
                  else f"all agree: {what}\n")
    session.logger.info("check differences=%d oned_calls=%d packet_calls=%d seconds=%.3f",
                        len(findings), summary["oned_calls"], summary["packet_calls"], took)
    return EXIT_DIFFERS if findings else EXIT_OK


def reconcile(session: Session, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from packet_provider.ops import gather, model
    from packet_provider.ops.reconcile import LEASE_GRACE_S, Reconciler

    progress = gather.Progress(err)
    try:
        snap = gather.snapshot(session.config, session.oned,
                               None if args.leases else session.client_for, progress,
                               leases_only=args.leases)
    finally:
        progress.done()
    findings = model.differences(snap, leases_only=args.leases)
    grace = args.grace if args.grace is not None else LEASE_GRACE_S
    if grace < 0:
        raise ProviderError("--grace must not be negative")
    report = Reconciler(session.config, session.oned, session.client_for, snap,
                        dry_run=args.dry_run, release_orphans=args.release_orphans,
                        grace=grace, logger=session.logger).run(findings)
    if args.json:
        json.dump({"found": model.counts(findings), "fixed": report.fixed, "left": report.left,
                   "failed": report.failed, "dry_run": args.dry_run,
                   "oned_calls": session.oned.calls, "packet_calls": session.packet_calls},
                  out, indent=1)
        out.write("\n")
    else:
        for line in report.lines():
            out.write(one_line(line) + "\n")
        if not findings:
            out.write("nothing to do: all agree\n")
        else:
            out.write(f"{len(findings)} difference(s): {len(report.fixed)} "
                      f"{'to fix' if args.dry_run else 'fixed'}, {len(report.left)} left, "
                      f"{len(report.failed)} failed\n")
    if report.left or report.failed:
        return EXIT_DIFFERS
    return EXIT_DIFFERS if args.dry_run and report.fixed else EXIT_OK


def run(argv: List[str], env: Optional[Mapping[str, str]] = None,
        out: Optional[TextIO] = None, err: Optional[TextIO] = None,
        session_factory: Optional[Callable[[Optional[str], Mapping[str, str]], Session]] = None,
        ) -> int:
    """Run the command; return its exit code. Every failure to look is one line on ``err``."""
    out = out or sys.stdout
    err = err or sys.stderr
    env = os.environ if env is None else env
    session = None
    try:
        with contextlib.redirect_stdout(out):  # --help
            args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help(out)
            return EXIT_CANNOT_LOOK
        session = (session_factory or Session)(args.config, env)
        if args.command == "check":
            return check(session, args, out, err)
        return reconcile(session, args, out, err)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except ProviderError as exc:
        err.write(f"{PROG}: {one_line(str(exc))}\n")
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        err.write(f"{PROG}: internal error: {type(exc).__name__}: {one_line(str(exc))}\n")
    finally:
        if session is not None:
            session.close()
    return EXIT_CANNOT_LOOK


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the installed ``packet-provider`` executable."""
    code = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.exit(code)
