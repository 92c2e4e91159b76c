"""The ``alias_ip`` state hook: keeps each NIC alias address of a ``packet`` address range
assigned to the Packet device of the host its VM runs on.

Registered three times (share/examples/alias_ip: RUNNING, HOTPLUG_NIC, DONE) with
``ARGUMENTS = "$TEMPLATE"`` and ``ARGUMENTS_STDIN = "yes"``: the VM of the state event
arrives as base64 XML on stdin (a trailing space or newline is fine), or as ``argv[1]`` when
the hook was created without ARGUMENTS_STDIN.

Fast path: most VMs have no NIC alias with an external (or alias_sdnat) IP. For them the hook
prints one line and exits 0 having imported only the standard library and this package's
light modules: no pyone, requests, lxml or yaml (nor dataclasses: the VM model is built only
on the full path), no config file read, no network call. The event XML is parsed with
:mod:`packet_provider.core.hostxml` (stdlib, DOCTYPE refused: the same guarantee as the lxml
parser, at a fraction of the import cost). This path writes no log line (finding the log
directory needs the YAML config); its one stdout line lands in the hook's execution record.

Full path (:mod:`packet_provider.hook.sync`): reads the VM's *current* state from oned,
the address ranges of its aliases' networks and its host's Packet device, decides with
:mod:`packet_provider.hook.decide`, and makes only the API writes needed. Every decision and
API call is logged with the VM id and durations to ``hook-alias_ip.log`` in the log
directory. A failure exits non-zero with one line (oned's ERROR MESSAGE block on stderr), so
``onehook retry`` can redo it; replays are idempotent.
"""

from __future__ import annotations

import sys
import time
from typing import Any, BinaryIO, List, Mapping, Optional, Sequence, TextIO

from packet_provider.core import cli, hostxml, validate
from packet_provider.core.errors import InputError

COMPONENT = "alias_ip"
ALIAS_VN_MAD = "alias_sdnat"  # = packet_provider.core.vm.ALIAS_VN_MAD (checked by a unit test)


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


def parse_event(data: bytes) -> Any:
    """The ``<VM>`` element of the state event, with its ID checked."""
    root = hostxml.parse_base64(data, "the hook's VM template")
    if root.tag != "VM":
        raise InputError(f"expected a <VM> document, got <{root.tag}>")
    validate.object_id(root.findtext("ID"), "VM ID")
    return root


def _yes(value: Optional[str]) -> bool:
    return (value or "").strip().upper() == "YES"


def has_candidate(root: Any) -> bool:
    """Whether the VM has a NIC alias the hook may act on: one with an IP that is external
    or on an alias_sdnat network (the rule of :func:`packet_provider.hook.decide.is_candidate`,
    read straight from the XML so the fast path needs no VM model)."""
    for alias in root.findall("TEMPLATE/NIC_ALIAS"):
        if not (alias.findtext("IP") or "").strip():
            continue
        if _yes(alias.findtext("EXTERNAL")) or \
                (alias.findtext("VN_MAD") or "").strip() == ALIAS_VN_MAD:
            return True
    return False


def run(args: Sequence[str], stdin: Optional[BinaryIO] = None,
        env: Optional[Mapping[str, str]] = None, out: Optional[TextIO] = None) -> int:
    """Handle one state event; return the exit code (errors are raised)."""
    started = time.perf_counter()
    out = out or sys.stdout
    root = parse_event(read_event(args, stdin))
    if not has_candidate(root):
        vm_id = validate.object_id(root.findtext("ID"), "VM ID")
        out.write(f"alias_ip: VM {vm_id}: no NIC alias with an external IP, nothing to do\n")
        return 0
    import os

    from packet_provider.core.vm import parse_vm
    from packet_provider.hook.sync import synchronise  # pyone, requests, lxml, yaml: full path only

    return synchronise(parse_vm(root), os.environ if env is None else env, out, started)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of remotes/hooks/alias_ip/alias_ip.py (``argv`` without the program)."""
    args = sys.argv[1:] if argv is None else argv
    cli.run(lambda: run(args), prefix=COMPONENT)
