"""Run hooks, VNM actions and IPAM actions exactly the way OpenNebula 5.12 runs them.

- :func:`run_hook`: like onehem. COMMAND not starting with ``/`` is relative to the hooks
  directory; the argument string is every expanded argument followed by one space
  (``$TEMPLATE`` = base64 of the ``<VM>`` XML without newlines, ``$ID`` = the VM id). With
  ARGUMENTS_STDIN that string is the hook's stdin; otherwise the arguments are appended to
  the command line. TIMEOUT (seconds) kills the hook's process group: code 255 and
  ``timed_out``.
- :func:`run_vnm`: like the VMM driver. ``<remotes>/vnm/<VN_MAD>/<action> [deploy_id]`` with
  stdin = base64 of the VM's VNM view (the cut-down ``<VM>`` of :func:`vnm_view`) followed by
  a newline, optionally behind a ``host_prefix``
  (``["ip", "netns", "exec", "hv1"]`` plays "on that hypervisor over ssh").
- IPAM actions run through :func:`packet_lab.oned.one_ipam.run_ipam`, which uses
  :func:`execute` as one_ipam's GenericCommand.

Every runner returns an :class:`ExecResult` (argv, stdin, rc, stdout, stderr,
duration_ms); :attr:`ExecResult.error_message` is what oned would show the user: the text
between the ``ERROR MESSAGE --8<------`` and ``ERROR MESSAGE ------>8--`` lines of stderr, or
``-`` without that block.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET  # noqa: S405 - the emulator's own documents
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from packet_provider.core.cli import ERROR_BEGIN, ERROR_END

# oned's CommandManager reads the first block between these lines (get_error_message)
_ERROR_BLOCK = re.compile(r"^" + re.escape(ERROR_BEGIN) + r"\n(.*?)" + re.escape(ERROR_END)
                          + r"$", re.M | re.S)
TIMEOUT_CODE = 255
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ExecResult:
    """One executable run: what ran, with what, and how it ended."""

    name: str
    argv: List[str]
    stdin: str
    rc: int
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def error_message(self) -> str:
        return error_message(self.stderr)


def error_message(stderr: str) -> str:
    """The message oned shows for a failed driver action: the first ERROR MESSAGE block,
    stripped; ``-`` without one (CommandManager's rule, for VMM and IPAM drivers alike)."""
    found = _ERROR_BLOCK.search(stderr or "")
    text = found.group(1).strip() if found else ""
    return text or "-"


def encode_xml(xml: Union[str, bytes]) -> str:
    """Base64 without newlines (Ruby's strict_encode64)."""
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    return base64.b64encode(data).decode("ascii")


def execute(name: str, argv: Sequence[str], stdin: str, timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[PathLike] = None) -> ExecResult:
    """Run ``argv`` (never through a shell) feeding ``stdin``; kill its whole process group
    when ``timeout`` expires."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(env) if env is not None else None,
                                cwd=cwd, start_new_session=True)
    except OSError as exc:
        return ExecResult(name, list(argv), stdin, 127, "", f"{argv[0]}: {exc.strerror}\n",
                          (time.monotonic() - started) * 1000)
    timed_out = False
    try:
        out, err = proc.communicate(stdin.encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    rc = TIMEOUT_CODE if timed_out else proc.returncode
    stderr = err.decode("utf-8", "replace")
    if timed_out:
        stderr += f"Timeout executing {argv[0]} after {timeout}s\n"
    return ExecResult(name, list(argv), stdin, rc, out.decode("utf-8", "replace"), stderr,
                      (time.monotonic() - started) * 1000, timed_out)


# -- hooks -------------------------------------------------------------------------------------

def hook_command(hooks_dir: PathLike, command: str) -> str:
    """COMMAND as onehem resolves it: absolute, or relative to the hooks directory."""
    return command if command.startswith("/") else os.path.join(os.fspath(hooks_dir), command)


def hook_arguments(arguments: str, vm_xml: Union[str, bytes], vm_id: Optional[int] = None
                   ) -> str:
    """onehem's argument string: each argument expanded, followed by one space."""
    out = ""
    for arg in arguments.split():
        value = arg
        if arg == "$TEMPLATE":
            value = encode_xml(vm_xml)
        elif arg == "$ID" and vm_id is not None:
            value = str(vm_id)
        out += value + " "
    return out


def run_hook_string(command_path: str, argument_string: str, arguments_stdin: bool = True,
                    timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None,
                    host_prefix: Sequence[str] = (), name: str = "hook") -> ExecResult:
    """Run a hook with an already built argument string (what ``onehook retry`` does)."""
    if arguments_stdin:
        argv = [*host_prefix, command_path]
        stdin = argument_string
    else:
        argv = [*host_prefix, command_path, *argument_string.split()]
        stdin = ""
    return execute(name, argv, stdin, timeout=timeout, env=env)


def run_hook(hooks_dir: PathLike, command: str, arguments: str, vm_xml: Union[str, bytes],
             arguments_stdin: bool = True, timeout: Optional[float] = None,
             env: Optional[Mapping[str, str]] = None, host_prefix: Sequence[str] = (),
             vm_id: Optional[int] = None, name: str = "hook") -> ExecResult:
    """Run a state hook for ``vm_xml`` the way onehem does (REMOTE=NO, or REMOTE=YES behind a
    ``host_prefix``). ``extra["arguments"]`` keeps the argument string for a retry."""
    argument_string = hook_arguments(arguments, vm_xml, vm_id)
    result = run_hook_string(hook_command(hooks_dir, command), argument_string,
                             arguments_stdin, timeout, env, host_prefix, name)
    result.extra["arguments"] = argument_string
    return result


def is_yes(value: object) -> bool:
    return str(value).strip().lower() in ("yes", "true", "1")


# -- VNM ---------------------------------------------------------------------------------------

def vnm_path(remotes_dir: PathLike, vn_mad: str, action: str) -> Path:
    if not _NAME.match(vn_mad) or not _NAME.match(action):
        raise ValueError(f"bad VNM driver or action name: {vn_mad!r}/{action!r}")
    return Path(remotes_dir) / "vnm" / vn_mad / action


def run_vnm(remotes_dir: PathLike, vn_mad: str, action: str, vm_xml: Union[str, bytes],
            deploy_id: Optional[str] = None, host_prefix: Sequence[str] = (),
            env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None
            ) -> ExecResult:
    """Run ``<remotes>/vnm/<vn_mad>/<action> [deploy_id]`` like one_vmm_exec: stdin is the
    base64 of the VM's VNM view (:func:`vnm_view`) and a newline (the here-document)."""
    argv = [*host_prefix, str(vnm_path(remotes_dir, vn_mad, action))]
    if deploy_id is not None:
        argv.append(deploy_id)
    return execute(f"vnm {vn_mad}/{action}", argv, encode_xml(vnm_view(vm_xml)) + "\n",
                   timeout=timeout, env=env)


# -- the VNM view ------------------------------------------------------------------------


def _wrapped(parents: List[str], element: ET.Element) -> ET.Element:
    inner = copy.deepcopy(element)
    for tag in reversed(parents):
        outer = ET.Element(tag)
        outer.append(inner)
        inner = outer
    return inner


def _compact(element: ET.Element) -> None:
    """Drop the indentation of a hand-written document (oned emits none)."""
    for node in element.iter():
        if len(node) and node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None


def vnm_view(vm_xml: Union[str, bytes]) -> bytes:
    """What one_vmm_exec gives VNM actions for a whole VM document (``get_vnm_drivers``):
    ID, DEPLOY_ID, CONTEXT, USER_TEMPLATE, each SECURITY_GROUP_RULE, the current history
    record's HOSTNAME, DS_ID and VM_MAD, then every NIC and NIC_ALIAS that has a VN_MAD,
    each in freshly created parent elements of its own; compact, no declaration."""
    vm = ET.fromstring(vm_xml)  # noqa: S314 - the emulator's own VM document
    view = ET.Element("VM")
    for tag in ("ID", "DEPLOY_ID"):
        found = vm.find(tag)
        if found is not None:
            view.append(copy.deepcopy(found))
    for context in vm.findall("TEMPLATE/CONTEXT"):
        view.append(_wrapped(["TEMPLATE"], context))
    for user in vm.findall("USER_TEMPLATE"):
        view.append(copy.deepcopy(user))
    for rule in vm.findall("TEMPLATE/SECURITY_GROUP_RULE"):
        view.append(_wrapped(["TEMPLATE"], rule))
    records = vm.findall("HISTORY_RECORDS/HISTORY")
    if records:
        for tag in ("HOSTNAME", "DS_ID", "VM_MAD"):
            found = records[-1].find(tag)
            if found is not None:
                view.append(_wrapped(["HISTORY_RECORDS", "HISTORY"], found))
    for path in ("TEMPLATE/NIC", "TEMPLATE/NIC_ALIAS"):
        for nic in vm.findall(path):
            if nic.find("VN_MAD") is not None:
                view.append(_wrapped(["TEMPLATE"], nic))
    _compact(view)
    return ET.tostring(view)


# -- IPAM --------------------------------------------------------------------------------------
