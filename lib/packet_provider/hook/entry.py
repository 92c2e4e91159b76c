"""The ``alias_ip`` state hook: keeps each NIC alias address of a ``packet`` address range
assigned to the Packet device of the host its VM runs on.

Registered three times (share/examples/alias_ip: RUNNING, HOTPLUG_NIC, DONE) with
``ARGUMENTS = "$TEMPLATE"`` and ``ARGUMENTS_STDIN = "yes"``: the VM of the state event
arrives as base64 XML on stdin (a trailing space or newline is fine), or as ``argv[1]`` when
the hook was created without ARGUMENTS_STDIN.

Fast path: most VMs have no NIC alias with an external (or alias_sdnat) IP. For them the hook
prints one line and exits 0 having imported only ``sys``, ``time``, ``binascii``, expat and
this package's light modules (:mod:`packet_provider.core.hostxml`, ``errors``, ``onedefs``):
no pyone, requests, lxml or yaml, no typing, re, ElementTree or logging, no config file read,
no network call. :func:`quick_answer` reads the event with expat alone
(:func:`packet_provider.core.hostxml.skim`, DOCTYPE refused); whatever it cannot settle
(a candidate alias, bad input) goes to the checked path, which parses it into a tree and
reports bad input as one line in oned's error block. This path writes no log line (finding
the log directory needs the YAML config); its one stdout line lands in the hook's execution
record.

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

from packet_provider.core import hostxml
from packet_provider.core.errors import InputError
from packet_provider.core.onedefs import ALIAS_VN_MAD

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the fast path does not import typing
    from typing import Any, BinaryIO, List, Mapping, Optional, Sequence, TextIO

COMPONENT = "alias_ip"
MAX_STDIN_BYTES = 16 * 1024 * 1024  # = core.cli.MAX_STDIN_BYTES (the fast path reads it)
_ALIAS_PATH = ("TEMPLATE", "NIC_ALIAS")
_ALIAS_FIELDS = ("IP", "EXTERNAL", "VN_MAD")


def read_event(args: Sequence[str], stdin: Optional[BinaryIO] = None) -> bytes:
    """The base64 VM text: ``argv[1]`` when given, else standard input."""
    if args:
        if len(args) > 1:
            raise InputError("expected at most one argument: the base64 VM template")
        return args[0].encode("ascii", "replace")
    source = stdin if stdin is not None else sys.stdin.buffer
    data = source.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise InputError(f"standard input is larger than {MAX_STDIN_BYTES} bytes")
    if not data.strip():
        raise InputError("no VM template: expected base64 of the VM XML on standard input "
                         "(ARGUMENTS_STDIN=yes) or as the first argument")
    return data


def parse_event(data: bytes) -> Any:
    """The ``<VM>`` element of the state event, with its ID checked."""
    from packet_provider.core import validate

    root = hostxml.parse_base64(data, "the hook's VM template")
    if root.tag != "VM":
        raise InputError(f"expected a <VM> document, got <{root.tag}>")
    validate.object_id(root.findtext("ID"), "VM ID")
    return root


def is_candidate(ip: str, external: str, vn_mad: str) -> bool:
    """The hook's rule on an alias's IP, EXTERNAL and VN_MAD texts: it may have to act on an
    alias with an IP that is external or on an alias_sdnat network (the rule of
    :func:`packet_provider.hook.decide.is_candidate`, on the XML's texts)."""
    return bool(ip.strip()) and (external.strip().upper() == "YES"
                                 or vn_mad.strip() == ALIAS_VN_MAD)


def has_candidate(root: Any) -> bool:
    """Whether the VM element has a NIC alias the hook may act on (:func:`is_candidate`)."""
    return any(is_candidate(*(alias.findtext(f) or "" for f in _ALIAS_FIELDS))
               for alias in root.findall("/".join(_ALIAS_PATH)))


def _nothing_to_do(vm_id: object) -> str:
    return f"alias_ip: VM {vm_id}: no NIC alias with an external IP, nothing to do\n"


def quick_answer(data: bytes) -> Optional[str]:
    """The fast path: the line to print when the event is a well-formed VM with no candidate
    alias, read with expat alone (no tree, no model, no typing). None when it cannot tell
    (a candidate, or anything unusual): the checked path then decides, and reports bad input
    exactly as it always has."""
    try:
        tag, values, aliases = hostxml.skim(hostxml.decode_base64(data), ("ID",), _ALIAS_PATH,
                                            _ALIAS_FIELDS)
    except InputError:
        return None
    vm_id = values.get("ID", "").strip()
    if tag != "VM" or not (vm_id.isascii() and vm_id.isdigit() and len(vm_id) <= 10):
        return None
    if any(is_candidate(*(a.get(f, "") for f in _ALIAS_FIELDS)) for a in aliases):
        return None
    return _nothing_to_do(int(vm_id))


def run(args: Sequence[str], stdin: Optional[BinaryIO] = None,
        env: Optional[Mapping[str, str]] = None, out: Optional[TextIO] = None) -> int:
    """Handle one state event; return the exit code (errors are raised)."""
    started = time.perf_counter()
    return handle(read_event(args, stdin), env, out or sys.stdout, started)


def handle(data: bytes, env: Optional[Mapping[str, str]], out: TextIO, started: float,
           quick: bool = True) -> int:
    """Handle the base64 event ``data``: the fast path (unless ``quick`` is False: already
    tried), else the checked path: parse, and the full path for a VM with a candidate."""
    line = quick_answer(data) if quick else None
    if line is not None:
        out.write(line)
        return 0
    root = parse_event(data)
    if not has_candidate(root):
        out.write(_nothing_to_do(int(root.findtext("ID").strip())))
        return 0
    import os

    from packet_provider.core.oned import parse_vm
    from packet_provider.hook.sync import synchronise  # pyone, requests, lxml, yaml: full path only

    return synchronise(parse_vm(root), os.environ if env is None else env, out, started)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of remotes/hooks/alias_ip/alias_ip.py (``argv`` without the program).

    An event with nothing to do is answered without importing the error wrapper
    (:func:`packet_provider.core.cli.run`, which brings logging); anything else runs under it."""
    started = time.perf_counter()
    args = sys.argv[1:] if argv is None else argv
    try:
        data: Optional[bytes] = read_event(args)
        failure: Optional[BaseException] = None
    except Exception as err:  # noqa: BLE001 - reported by cli.run below, the one way out
        data, failure = None, err
    if data is not None:
        line = quick_answer(data)
        if line is not None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return

    def body() -> int:
        if failure is not None:
            raise failure
        return handle(data, None, sys.stdout, started, quick=False)

    from packet_provider.core import cli

    cli.run(body, prefix=COMPONENT)
