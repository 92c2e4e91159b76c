"""An emulated oned 5.12: a real XML-RPC server answering the calls pyone 5.12 makes.

Run it::

    ONE_EMULATOR_AUTH=oneadmin:secret python3 -m packet_lab.oned.emulator --port 2633
    # first stdout line: listening on http://127.0.0.1:2633/RPC2

or from Python::

    from packet_lab.oned.emulator import OnedEmulator
    oned = OnedEmulator(auth="oneadmin:opennebula").start()
    host_id = oned.state.add_host("hv1", deploy_id="<packet device uuid>")
    one = pyone.OneServer(oned.url, session="oneadmin:opennebula")
    oned.stop()

Methods (first argument always the session string ``user:password``):

================================  ================================================
one.vm.info(id[, decrypt])        ``<VM>`` (TEMPLATE/NIC, NIC_ALIAS, HISTORY_RECORDS)
one.host.info(id[, decrypt])      ``<HOST>`` (TEMPLATE/PROVISION/DEPLOY_ID)
one.vn.info(id[, decrypt])        ``<VNET>``; AR PACKET_TOKEN encrypted unless decrypt
one.hook.allocate(template)       new hook id (template in oned syntax or XML)
one.hook.info(id[, decrypt])      ``<HOOK>`` with HOOKLOG (STDOUT/STDERR base64)
one.hook.update(id, tmpl, append) hook id
one.hook.delete(id)               hook id
one.hook.retry(id, execution_id)  hook id (needs a hook runner: see Scenario)
one.hookpool.info(filter, s, e)   ``<HOOK_POOL>``
one.vmpool.info / hostpool.info / vnpool.info
one.system.version()              "5.12.13"
one.system.config()               ``<OPENNEBULA_CONFIGURATION>`` (encrypted attrs)
================================  ================================================

Answers have oned's shape: ``[True, body, 0]`` or ``[False, message, code, object_id]``
with code AUTHENTICATION 0x100 (bad session), AUTHORIZATION 0x200, NO_EXISTS 0x400
(unknown id), ACTION 0x800, XML_RPC_API 0x1000 (bad arguments), INTERNAL 0x2000 (e.g. a
template that does not parse). Unknown methods get an XML-RPC fault, like xmlrpc-c.

Failures for tests: ``oned.fault(method="one.vm.info", code=0x2000)``, ``status=503``,
``drop=True`` (no answer), ``drop_after=True`` (acted, answer lost), ``latency=2.0``,
``count=N`` (-1 = always); ``oned.clear_faults()``. ``stop()`` then ``start()`` again serves
on the same port (oned down, then back).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socketserver
import sys
import threading
import time
import xmlrpc.client
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from packet_lab.faults import Fault, Faults
from packet_lab.oned.objects import VERSION, VNET_ENCRYPTED_ATTR, OnedError, OnedState
from packet_lab.serving import BackgroundServer

DEFAULT_AUTH = "oneadmin:opennebula"
# hook_runner(hook_id, execution_id) -> new execution id; set by a scenario driver
HookRunner = Callable[[int, int], int]


MAX_REQUEST_BYTES = 4 * 1024 * 1024
_METHOD = re.compile(rb"<methodName>\s*([^<\s]{1,200})\s*</methodName>")


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if not self.is_rpc_path_valid():
            self.report_404()
            return
        emulator: OnedEmulator = self.server.emulator  # type: ignore[attr-defined]
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            self.send_error(413 if length > 0 else 411)
            return
        data = self.rfile.read(length)
        match = _METHOD.search(data)
        method = match.group(1).decode("utf-8", "replace") if match else "?"
        fault = emulator._take_fault(method)
        if fault is None:
            self.rfile = io.BytesIO(data)
            super().do_POST()
            return
        started = time.monotonic()
        if fault.latency:
            time.sleep(fault.latency)
        if fault.fails or fault.drop_after:
            if fault.drop_after:
                self.server._marshaled_dispatch(data, None, self.path)  # type: ignore[attr-defined]
            if fault.drop or fault.drop_after:
                emulator._log_call(method, (), "fault: connection dropped", started)
                self.close_connection = True
                return
            if fault.status:
                emulator._log_call(method, (), f"fault: HTTP {fault.status}", started)
                self.send_error(fault.status)
                return
            body = xmlrpc.client.dumps(
                ([False, f"[{method}] {fault.message}", fault.code, -1],),
                methodresponse=True).encode()
            emulator._log_call(method, (), f"fault: error 0x{fault.code:x}", started)
            self.send_response(200)
            self.send_header("Content-type", "text/xml")
            self.send_header("Content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.rfile = io.BytesIO(data)
        super().do_POST()


class _Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True


class _Api:
    """Dispatches one.* calls to the state; all checks and error shapes live here."""

    def __init__(self, emulator: OnedEmulator) -> None:
        self.emulator = emulator
        self.methods: Dict[str, Tuple[Sequence[type], int, Callable[..., Any]]] = {
            # name: (argument types after the session, required count, handler)
            "one.vm.info": ((int, bool), 1, self.vm_info),
            "one.host.info": ((int, bool), 1, self.host_info),
            "one.vn.info": ((int, bool), 1, self.vn_info),
            "one.hook.allocate": ((str,), 1, self.hook_allocate),
            "one.hook.info": ((int, bool), 1, self.hook_info),
            "one.hook.update": ((int, str, int), 2, self.hook_update),
            "one.hook.delete": ((int,), 1, self.hook_delete),
            "one.hook.retry": ((int, int), 2, self.hook_retry),
            "one.hookpool.info": ((int, int, int), 0, self.hookpool_info),
            "one.vmpool.info": ((int, int, int, int), 0, self.vmpool_info),
            "one.hostpool.info": ((), 0, self.hostpool_info),
            "one.vnpool.info": ((int, int, int), 0, self.vnpool_info),
            "one.system.version": ((), 0, self.system_version),
            "one.system.config": ((), 0, self.system_config),
        }

    def _dispatch(self, method: str, params: Sequence[Any]) -> List[Any]:
        started = time.monotonic()
        outcome = "ok"
        try:
            if method not in self.methods:
                outcome = "fault"
                raise xmlrpc.client.Fault(-506, f'Method "{method}" not defined')
            try:
                response = self._call(method, list(params))
            except OnedError as exc:
                outcome = f"error 0x{exc.code:x}"
                response = [False, f"[{method}] {exc.message}", exc.code, exc.object_id]
            return response
        finally:
            self.emulator._log_call(method, params, outcome, started)

    def _call(self, method: str, params: List[Any]) -> List[Any]:
        types, required, handler = self.methods[method]
        if not params or not isinstance(params[0], str):
            raise OnedError(OnedError.XML_RPC_API, "the first argument must be the session")
        if not self.emulator.authenticate(params[0]):
            raise OnedError(OnedError.AUTHENTICATION,
                            "User couldn't be authenticated, aborting call.")
        args = params[1:]
        if len(args) < required or len(args) > len(types):
            raise OnedError(OnedError.XML_RPC_API,
                            f"expected {required} to {len(types)} arguments, got {len(args)}")
        for i, (value, kind) in enumerate(zip(args, types)):
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if kind is bool and isinstance(value, int):
                ok = True
            if not ok:
                raise OnedError(OnedError.XML_RPC_API,
                                f"argument {i + 1} must be {kind.__name__}")
        body = handler(*args)
        return [True, body, 0]

    # -- objects --

    def vm_info(self, vm_id: int, decrypt: bool = False) -> str:
        return self.emulator.state.vm_xml(vm_id)

    def host_info(self, host_id: int, decrypt: bool = False) -> str:
        return self.emulator.state.host_xml(host_id, bool(decrypt))

    def vn_info(self, vnet_id: int, decrypt: bool = False) -> str:
        return self.emulator.state.vnet_xml(vnet_id, bool(decrypt))

    def vmpool_info(self, flt: int = -2, start: int = -1, end: int = -1,
                    state: int = -1) -> str:
        _check_filter(flt)
        return self.emulator.state.pool_xml("VM")

    def hostpool_info(self) -> str:
        return self.emulator.state.pool_xml("HOST")

    def vnpool_info(self, flt: int = -2, start: int = -1, end: int = -1) -> str:
        _check_filter(flt)
        return self.emulator.state.pool_xml("VNET")

    # -- hooks --

    def hook_allocate(self, template: str) -> int:
        return self.emulator.state.allocate_hook(template)

    def hook_info(self, hook_id: int, decrypt: bool = False) -> str:
        return self.emulator.state.hook_xml(hook_id)

    def hook_update(self, hook_id: int, template: str, append: int = 0) -> int:
        self.emulator.state.update_hook(hook_id, template, bool(append))
        return hook_id

    def hook_delete(self, hook_id: int) -> int:
        self.emulator.state.delete_hook(hook_id)
        return hook_id

    def hook_retry(self, hook_id: int, execution_id: int) -> int:
        self.emulator.state.execution(hook_id, execution_id)
        runner = self.emulator.hook_runner
        if runner is None:
            raise OnedError(OnedError.ACTION, "no hook execution manager is connected",
                            hook_id)
        runner(hook_id, execution_id)
        return hook_id

    def hookpool_info(self, flt: int = -2, start: int = -1, end: int = -1) -> str:
        _check_filter(flt)
        return self.emulator.state.pool_xml("HOOK")

    # -- system --

    def system_version(self) -> str:
        return VERSION

    def system_config(self) -> str:
        encrypted = "".join(f"<VNET_ENCRYPTED_ATTR>{a}</VNET_ENCRYPTED_ATTR>"
                            for a in VNET_ENCRYPTED_ATTR)
        return (f"<OPENNEBULA_CONFIGURATION><VERSION>{VERSION}</VERSION>"
                "<IPAM_MAD><ARGUMENTS>-t 1 -i dummy,packet</ARGUMENTS>"
                "<EXECUTABLE>one_ipam</EXECUTABLE></IPAM_MAD>"
                f"{encrypted}</OPENNEBULA_CONFIGURATION>")


def _check_filter(flt: int) -> None:
    if flt < -3:
        raise OnedError(OnedError.XML_RPC_API, "Incorrect filter_flag")


class OnedEmulator(BackgroundServer):
    """The XML-RPC server over an :class:`OnedState` (``.state``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, auth: str = DEFAULT_AUTH,
                 state_file: Optional[str] = None, log: Optional[TextIO] = None,
                 state: Optional[OnedState] = None) -> None:
        if ":" not in auth:
            raise ValueError("auth must be user:password")
        self.host = host
        self.port = port
        self.auth = auth
        if state is None:
            self.lock_state_file(state_file)  # before the file is read or written
            try:
                state = OnedState(state_file=state_file)
            except BaseException:
                self._unlock_state_file()
                raise
        self.state = state
        self.log = log
        self.hook_runner: Optional[HookRunner] = None
        self.calls: List[Tuple[str, str]] = []  # (method, outcome), for tests
        self.faults = Faults()
        self.thread_name = "oned-emulator"
        self._log_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/RPC2"

    def authenticate(self, session: str) -> bool:
        return session == self.auth

    def fault(self, method: str = "", code: Optional[int] = None,
              message: str = "injected failure", status: Optional[int] = None,
              drop: bool = False, drop_after: bool = False, latency: float = 0.0,
              count: int = 1) -> Fault:
        """Make the next ``count`` calls of ``method`` (a prefix such as ``one.vm.``) fail;
        see :class:`Fault`. With no failure kind given, ``code`` defaults to INTERNAL
        (unless only a ``latency`` is wanted)."""
        if code is None and not (status or drop or drop_after or latency):
            code = OnedError.INTERNAL
        return self.faults.add(Fault(target=method, code=None if status else code,
                                     message=message, status=status, drop=drop,
                                     drop_after=drop_after, latency=latency, count=count))

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_fault(self, method: str) -> Optional[Fault]:
        return self.faults.take("", method)

    def bind(self) -> OnedEmulator:
        """Open the listening socket (without serving yet)."""
        if self._server is None:
            server = _Server((self.host, self.port), requestHandler=_Handler,
                             logRequests=False, allow_none=False)
            server.emulator = self  # type: ignore[attr-defined]
            server.register_instance(_Api(self))
            self._server = server
            self.port = server.server_address[1]
        return self


    def _log_call(self, method: str, params: Sequence[Any], outcome: str,
                  started: float) -> None:
        args = " ".join(_short(p) for p in list(params)[1:])
        with self._log_lock:
            self.calls.append((method, outcome))
            if self.log is not None:
                ms = (time.monotonic() - started) * 1000
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.log.write(f"{stamp} {method} {args} -> {outcome} {ms:.1f}ms\n".replace(
                    "  ", " "))
                self.log.flush()


def _short(value: Any) -> str:
    if isinstance(value, str):
        text = value.replace("\n", " ")
        return repr(text[:40] + ("..." if len(text) > 40 else ""))
    return repr(value)


# -- command line ----------------------------------------------------------------------------

def _read_auth(args: argparse.Namespace, env: Dict[str, str]) -> str:
    if args.auth_file:
        with open(args.auth_file, encoding="utf-8") as handle:
            auth = handle.readline().strip()
    else:
        auth = env.get("ONE_EMULATOR_AUTH", DEFAULT_AUTH).strip()
    if ":" not in auth or auth.startswith(":"):
        raise ValueError("the session must read user:password")
    return auth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m packet_lab.oned.emulator",
        description=(
            "Emulated OpenNebula 5.12 oned: an XML-RPC server answering one.vm.info, "
            "one.host.info, one.vn.info, one.hook.* and one.hookpool.info the way oned "
            "does, for trying the alias_ip hook and the installer without a cloud. "
            "The first line on stdout is 'listening on http://HOST:PORT/RPC2'; every call "
            "is logged as one line on stderr."),
        epilog=(
            "The session (user:password) is read from --auth-file or the environment "
            "variable ONE_EMULATOR_AUTH, never from the command line; the default is "
            f"{DEFAULT_AUTH}. Point clients at it with ONE_XMLRPC=<url> and "
            "ONE_AUTH=<file holding the same user:password>."),
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="file whose first line is the accepted user:password")
    parser.add_argument("--state-file", metavar="FILE",
                        help="JSON file the objects are loaded from and saved to")
    parser.add_argument("--add-host", metavar="NAME[=DEPLOY_ID]", action="append", default=[],
                        help="add a host at start, with the Packet device id as "
                             "TEMPLATE/PROVISION/DEPLOY_ID (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    try:
        auth = _read_auth(args, env)
        emulator = OnedEmulator(args.host, args.port, auth=auth, state_file=args.state_file,
                                log=sys.stderr)
        for spec in args.add_host:
            name, _, deploy_id = spec.partition("=")
            if not name:
                raise ValueError(f"--add-host needs NAME[=DEPLOY_ID], got {spec!r}")
            if emulator.state.host_by_name(name) is None:  # already in the state file
                emulator.state.add_host(name, deploy_id or None)
        emulator.start()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"oned emulator: {exc}\n")
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.stdout.write(f"listening on {emulator.url}\n")
    sys.stdout.flush()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        emulator.state.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
