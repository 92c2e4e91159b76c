"""An emulation of oned's ``one_ipam`` driver process (src/ipamm_mad/one_ipam.rb, 5.12).

Two ways in:

- :func:`run_action` runs one action exactly as one_ipam does: it decodes the message only to
  read ``IPAM_DRIVER_ACTION_DATA/AR/IPAM_MAD``, runs ``<remotes>/ipam/<IPAM_MAD>/<action in
  lower case> <ID>`` with stdin = the base64 text as received (no trailing newline), and turns
  the exit code and output into one_ipam's answer: success -> the whole stdout (``-`` when
  empty); failure -> the text of the first ``ERROR MESSAGE --8<------`` /
  ``ERROR MESSAGE ------>8--`` block on stderr, stripped (``-`` without one). The result
  carries rc, stdout, stderr, ok, info, message, duration and the answer line.
- ``python3 -m packet_lab.oned.one_ipam -i dummy,packet [--remotes DIR] [-t N] [-w S]``
  speaks the driver protocol on stdin/stdout: request lines ``ACTION ID BASE64`` in, answer
  lines ``ACTION SUCCESS|FAILURE ID BASE64(info)`` out, up to N actions at a time (``-t``),
  each bounded by S seconds (``-w``). ``INIT`` is answered ``INIT SUCCESS``; ``FINALIZE`` (or
  end of input) ends the process once running actions are answered.

As in one_ipam, the two failures found before any script runs (no IPAM_MAD in the message; a
driver not listed in ``-i``) answer with plain text, not base64. ``-i`` omitted allows every
directory under ``<remotes>/ipam``. A timed-out action is killed and fails with
``Timeout executing <command>`` as its message (exit 255), as GenericCommand does.

Helpers for whoever plays oned (the scenario driver, tests): :func:`action_data` builds the
``IPAM_DRIVER_ACTION_DATA`` XML from an AR mapping, :func:`parse_template` reads back the
``AR = [ ... ]`` / ``ADDRESS = [ ... ]`` template a driver printed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO, Union
from xml.sax.saxutils import escape

from packet_lab.oned.drivers import ExecResult, PathLike, error_message, execute
from packet_provider.core.cli import ERROR_BEGIN, ERROR_END
from packet_provider.core.onetemplate import parse_template

ACTIONS = ("REGISTER_ADDRESS_RANGE", "UNREGISTER_ADDRESS_RANGE", "ALLOCATE_ADDRESS",
           "GET_ADDRESS", "FREE_ADDRESS")
DEFAULT_TIMEOUT = 60.0
EMPTY_ADDRESS = "<ADDRESS><MAC/><IP/><IP6_GLOBAL/><IP6_ULA/><IP6/><SIZE/></ADDRESS>"
# what oned adds after the stored attributes of an AR (in this order); USED_LEASES is the one
# value it writes without CDATA
COMPUTED_AR_ATTRS = ("MAC_END", "IP_END", "USED_LEASES")
PLAIN_AR_ATTRS = ("USED_LEASES",)


@dataclass
class ActionResult:
    """One action as one_ipam ran it and answered oned."""

    action: str
    req_id: str
    ok: bool
    info: str
    rc: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    argv: List[str] = field(default_factory=list)
    stdin: str = ""
    driver: Optional[str] = None
    duration_ms: float = 0.0
    timed_out: bool = False
    encoded: bool = True  # False for one_ipam's plain-text early failures

    @property
    def result(self) -> str:
        return "SUCCESS" if self.ok else "FAILURE"

    @property
    def line(self) -> str:
        """The answer line one_ipam writes to oned (without the newline)."""
        return f"{self.action} {self.result} {self.req_id} {encode_info(self.info)}" \
            if self.encoded else f"{self.action} {self.result} {self.req_id} {self.info}"


def encode_info(info: str) -> str:
    """base64 of the info text on one line (Ruby's encode64 with newlines removed)."""
    return base64.b64encode(info.encode()).decode()


def action_data(ar: Mapping[str, object], address: Optional[Mapping[str, object]] = None,
                empty_address: bool = False) -> str:
    """``IPAM_DRIVER_ACTION_DATA`` XML as oned builds it from an AR (and an ADDRESS part)."""
    parts = ["<IPAM_DRIVER_ACTION_DATA><AR>"]
    for name, value in ar.items():
        if name in PLAIN_AR_ATTRS:
            parts.append(f"<{name}>{escape(str(value))}</{name}>")
        else:
            parts.append(f"<{name}><![CDATA[{value}]]></{name}>")
    parts.append("</AR>")
    if address is not None:
        parts.append("<ADDRESS>")
        for name, value in address.items():
            parts.append(f"<{name}>{escape(str(value))}</{name}>")
        parts.append("</ADDRESS>")
    elif empty_address:
        parts.append(EMPTY_ADDRESS)
    parts.append("</IPAM_DRIVER_ACTION_DATA>")
    return "".join(parts)


def _as_base64(data: Union[str, bytes]) -> str:
    """The message as one_ipam receives it: XML is encoded (strict, one line), base64 kept."""
    text = data.decode() if isinstance(data, bytes) else data
    if text.lstrip().startswith("<"):
        return base64.b64encode(text.encode()).decode()
    return text


def _driver_of(message_b64: str) -> Optional[str]:
    """IPAM_MAD of the AR, read the way one_ipam reads it; None when it cannot be found."""
    from packet_provider.core.hostxml import parse

    try:
        xml = base64.b64decode(re.sub(r"[^A-Za-z0-9+/=]", "", message_b64) + "==")
    except (binascii.Error, ValueError):
        return None
    try:
        root = parse(xml)
    except Exception:  # noqa: BLE001 - whatever one_ipam's rescue would catch
        return None
    if root.tag != "IPAM_DRIVER_ACTION_DATA":
        return None
    node = root.find("AR/IPAM_MAD")
    name = (node.text or "").strip() if node is not None else ""
    return name or None


def allowed_drivers(remotes_dir: Union[str, os.PathLike], names: Optional[Sequence[str]]
                    ) -> List[str]:
    if names:
        return [n.strip() for n in names if n.strip()]
    base = os.path.join(os.fspath(remotes_dir), "ipam")
    try:
        return sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    except OSError:
        return []


def run_action(remotes_dir: Union[str, os.PathLike], action: str, req_id: Union[int, str],
               data: Union[str, bytes], env: Optional[Mapping[str, str]] = None,
               timeout: Optional[float] = DEFAULT_TIMEOUT,
               drivers: Optional[Sequence[str]] = None) -> ActionResult:
    """Run one IPAM action the way one_ipam does (``data``: the XML or its base64)."""
    action = action.upper()
    if action not in ACTIONS:
        raise ValueError(f"unknown IPAM action {action!r}")
    req = str(req_id)
    message = _as_base64(data)
    driver = _driver_of(message)
    if driver is None:
        return ActionResult(action, req, False, f"Cannot perform {action.lower()}, cannot find "
                            "ipman driver", stdin=message, encoded=False)
    if driver not in allowed_drivers(remotes_dir, drivers):
        return ActionResult(action, req, False, f"IPAM driver '{driver}' not available",
                            stdin=message, driver=driver, encoded=False)
    command = os.path.join(os.fspath(remotes_dir), "ipam", driver, action.lower())
    argv = [command, req]
    run = execute(action.lower(), argv, message, timeout, env)
    rc, out, err = run.rc, run.stdout, run.stderr
    if run.timed_out:  # one_ipam answers with its own message
        err = f"{ERROR_BEGIN}\nTimeout executing {command} {req}\n{ERROR_END}\n"
    ok = rc == 0
    if ok:
        info, text = (out or "-"), ""
    else:
        text = error_message(err)
        info = text
    return ActionResult(action, req, ok, info, rc, out, err, "" if ok else text, argv, message,
                        driver, round(run.duration_ms, 1), run.timed_out)


# -- reading what IPAM drivers print --------------------------------------------------------


def template_vector(text: str, name: str) -> Dict[str, str]:
    """The single vector attribute ``name`` of a template (ValueError if absent or repeated)."""
    found = [v for n, v in parse_template(text) if n == name.upper() and isinstance(v, dict)]
    if len(found) != 1:
        raise ValueError(f"expected one {name} vector, found {len(found)}")
    return found[0]


# -- the driver process --------------------------------------------------------------------


class OneIpam:
    """one_ipam's request loop: lines in, answer lines out, ``threads`` actions at a time."""

    def __init__(self, remotes_dir: str, drivers: Optional[Sequence[str]] = None,
                 threads: int = 1, timeout: Optional[float] = None,
                 out: Optional[TextIO] = None, env: Optional[Mapping[str, str]] = None) -> None:
        self.remotes_dir = remotes_dir
        self.drivers = list(drivers) if drivers else None
        self.timeout = timeout
        self.out = out or sys.stdout
        self.env = env
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self._lock = threading.Lock()

    def send(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def handle(self, line: str) -> bool:
        """Handle one request line; False when the driver must stop."""
        parts = line.strip().split(" ", 2)
        if not parts or not parts[0]:
            return True
        command = parts[0].upper()
        if command == "INIT":
            self.send("INIT SUCCESS")
            return True
        if command == "FINALIZE":
            return False
        if command not in ACTIONS or len(parts) < 2:
            print(f"one_ipam: ignoring unknown request {command[:40]!r}", file=sys.stderr)
            return True
        req_id = parts[1]
        data = parts[2] if len(parts) > 2 else ""
        self.pool.submit(self._run, command, req_id, data)
        return True

    def _run(self, action: str, req_id: str, data: str) -> None:
        try:
            result = run_action(self.remotes_dir, action, req_id, data, env=self.env,
                                timeout=self.timeout, drivers=self.drivers)
            self.send(result.line)
        except Exception as exc:  # noqa: BLE001 - a driver process answers, whatever happens
            self.send(f"{action} FAILURE {req_id} {encode_info(f'one_ipam: {exc}')}")

    def serve(self, lines: TextIO) -> None:
        try:
            for line in lines:
                if not self.handle(line):
                    break
        finally:
            self.pool.shutdown(wait=True)


# -- for whoever plays oned (the scenario driver, tests) ----------------------------------

IPAM_ACTIONS = ("register_address_range", "unregister_address_range", "allocate_address",
                "get_address", "free_address")


def ipam_action_data(ar: Mapping[str, str], address: Optional[Mapping[str, str]] = None
                     ) -> str:
    """``IPAM_DRIVER_ACTION_DATA`` as oned 5.12 builds it: the AR's attributes in name order,
    then the computed MAC_END, IP_END and USED_LEASES; ``address`` or, when None (register,
    unregister), the empty ADDRESS skeleton."""
    trailing = [k for k in COMPUTED_AR_ATTRS if k in ar]
    ordered = OrderedDict(sorted((k, v) for k, v in ar.items() if k not in trailing))
    ordered.update((k, ar[k]) for k in trailing)
    return action_data(ordered, address, empty_address=address is None)


def run_ipam(remotes_dir: PathLike, action: str, req_id: int, ar: Mapping[str, str],
             address: Optional[Mapping[str, str]] = None,
             env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None
             ) -> ExecResult:
    """Run one IPAM action (e.g. ``get_address``) through one_ipam's runner, for the AR
    attributes ``ar`` and an optional ``ADDRESS`` part (:func:`ipam_action_data`).
    ``extra["info"]`` is what one_ipam answers oned, ``extra["message"]`` the error oned
    would show."""
    if action.lower() not in IPAM_ACTIONS:
        raise ValueError(f"unknown IPAM action {action!r}")
    data = ipam_action_data(ar, address)
    kwargs: Dict[str, Any] = {"env": dict(env) if env is not None else None}
    if timeout is not None:
        kwargs["timeout"] = timeout
    result = run_action(os.fspath(remotes_dir), action, req_id, data, **kwargs)
    rc = result.rc if result.rc is not None else -1
    out = ExecResult(f"ipam {action.lower()}", [str(a) for a in result.argv], result.stdin, rc,
                     result.stdout, result.stderr, float(result.duration_ms), result.timed_out)
    out.extra.update(info=result.info, message=result.message or result.info,
                     action_data=data)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m packet_lab.oned.one_ipam",
                                     description="oned's one_ipam driver process, emulated")
    parser.add_argument("-i", "--ipam-types", default=None,
                        help="comma list of allowed IPAM drivers (default: all in remotes)")
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("-w", "--timeout", type=float, default=None)
    parser.add_argument("--remotes", default=None,
                        help="the remotes directory holding ipam/<driver>/<action> (default: "
                             "$ONE_LOCATION/var/remotes, else /var/lib/one/remotes)")
    args = parser.parse_args(argv)
    if args.remotes is None:
        location = os.environ.get("ONE_LOCATION", "").strip()
        args.remotes = os.path.join(location, "var", "remotes") if location \
            else "/var/lib/one/remotes"
    drivers = args.ipam_types.split(",") if args.ipam_types else None
    OneIpam(args.remotes, drivers, args.threads, args.timeout).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
