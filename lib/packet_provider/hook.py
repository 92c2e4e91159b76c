"""The ``alias_ip`` state hook: keeps each NIC alias address of a ``packet`` address range
assigned to the Packet device of the host its VM runs on.

Registered three times (share/examples/alias_ip: RUNNING, HOTPLUG_NIC, DONE) with
``ARGUMENTS = "$TEMPLATE"`` and ``ARGUMENTS_STDIN = "yes"``: the VM of the state event
arrives as base64 XML on stdin (a trailing space or newline is fine), or as ``argv[1]`` when
the hook was created without ARGUMENTS_STDIN.

Fast path: most VMs have no NIC alias with an external (or alias_sdnat) IP. For them the hook
prints one line and exits 0 having imported only the standard library and this package's
light modules: no pyone, requests, lxml or yaml, no config file read, no network call. The
event XML is parsed with :mod:`packet_provider.hostxml` (stdlib, DOCTYPE refused: the same
guarantee as the lxml parser, at a fraction of the import cost). This path writes no log
line (finding the log directory needs the YAML config); its one stdout line lands in the
hook's execution record.

Full path (:mod:`packet_provider.hook_apply`): reads the VM's *current* state from oned,
the address ranges of its aliases' networks and its host's Packet device, decides with
:mod:`packet_provider.hook_plan`, and makes only the API writes needed. Every decision and
API call is logged with the VM id and durations to ``hook-alias_ip.log`` in the log
directory. A failure exits non-zero with one line (oned's ERROR MESSAGE block on stderr), so
``onehook retry`` can redo it; replays are idempotent.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO, List, Mapping, Optional, Sequence, TextIO

from . import cli, hostxml
from .errors import InputError
from .hook_plan import candidates
from .vm import VM, parse_vm

COMPONENT = "alias_ip"


def read_event(args: Sequence[str], stdin: Optional[BinaryIO] = None) -> bytes:
    """The base64 VM text: ``argv[1]`` when given, else standard input."""
    if args:
        if len(args) > 1:
            raise InputError("expected at most one argument: the base64 VM template")
        return args[0].encode("ascii", "replace")
    data = cli.read_stdin(stdin)
    if not data.strip():
        raise InputError("no VM template: expected base64 of the VM XML on standard input "
                         "(ARGUMENTS_STDIN=yes) or as the first argument")
    return data


def parse_event(data: bytes) -> VM:
    """The VM of the state event."""
    return parse_vm(hostxml.parse_base64(data, "the hook's VM template"))


def run(args: Sequence[str], stdin: Optional[BinaryIO] = None,
        env: Optional[Mapping[str, str]] = None, out: Optional[TextIO] = None) -> int:
    """Handle one state event; return the exit code (errors are raised)."""
    started = time.perf_counter()
    out = out or sys.stdout
    event = parse_event(read_event(args, stdin))
    if not candidates(event):
        out.write(f"alias_ip: VM {event.id}: no NIC alias with an external IP, nothing to do\n")
        return 0
    import os

    from .hook_apply import synchronise  # pyone, requests, lxml, yaml: full path only

    return synchronise(event, os.environ if env is None else env, out, started)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of remotes/hooks/alias_ip/alias_ip.py (``argv`` without the program)."""
    args = sys.argv[1:] if argv is None else argv
    cli.run(lambda: run(args), prefix=COMPONENT)
