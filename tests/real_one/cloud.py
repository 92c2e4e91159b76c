"""A real OpenNebula 5.12.13 frontend for the tests, run as a ``oneadmin`` user.

``../shared/opennebula-5.12/build.sh`` compiles OpenNebula once per machine (cached) and lays
a configured, self-contained tree in about a second; this module installs the plugin into
that tree exactly as an operator would (``install.sh``, the oned.conf changes it prints,
``install.sh --hooks``), starts oned, the scheduler and the hook manager as ``oneadmin`` and
drives them through the real Ruby CLI.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET  # noqa: S405 - oned's own answers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from fixtures.common import ROOT

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ONEADMIN = "oneadmin"
T = TypeVar("T")


def shared_dir() -> Path:
    """Where the OpenNebula source and its scripts are (``../shared/opennebula-5.12``)."""
    given = os.environ.get("ONE_SHARED_DIR")
    return Path(given) if given else ROOT.parent / "shared" / "opennebula-5.12"


def missing_reason() -> str:
    """Why a real oned cannot run here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root (apt-get, a oneadmin user, building OpenNebula)"
    if not (shared_dir() / "build.sh").is_file():
        return f"no OpenNebula 5.12 build scripts at {shared_dir()}"
    if shutil.which("apt-get") is None and shutil.which("scons") is None:
        return "no apt-get to install OpenNebula's build dependencies"
    return ""


def ensure_oneadmin() -> pwd.struct_passwd:
    """The ``oneadmin`` system user the frontend runs as (shared with the VNM tests)."""
    from fixtures.hostuser import ensure_user

    return ensure_user(ONEADMIN)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float = 60.0,
             interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    last: Optional[T] = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class CliError(AssertionError):
    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess) -> None:
        super().__init__(f"{' '.join(argv)} exited {proc.returncode}:\n"
                         f"{proc.stdout}\n{proc.stderr}")
        self.proc = proc


@dataclass
class Cloud:
    """A running real OpenNebula tree at ``location``."""

    location: Path
    ports: Dict[str, int]
    user: pwd.struct_passwd
    install_outputs: List[str] = field(default_factory=list)
    applied_conf: List[str] = field(default_factory=list)
    hooks_first: str = ""
    hooks_second: str = ""
    hosts: List[int] = field(default_factory=list)

    # -- processes as oneadmin -----------------------------------------------------------

    def env(self, **extra: str) -> Dict[str, str]:
        env = {
            "PATH": f"{self.location}/bin:{SYSTEM_PATH}",
            "HOME": self.user.pw_dir,
            "USER": ONEADMIN,
            "LOGNAME": ONEADMIN,
            "LANG": "C.UTF-8",
            "ONE_LOCATION": str(self.location),
            "ONE_AUTH": str(self.location / "etc" / "one_auth"),
            "ONE_XMLRPC": f"http://localhost:{self.ports['ONED_PORT']}/RPC2",
        }
        env.update(extra)
        return env

    def run(self, *argv: str, input: Optional[str] = None, check: bool = True,
            timeout: float = 120.0, env: Optional[Dict[str, str]] = None,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run ``argv`` as oneadmin with the tree's environment."""
        proc = subprocess.run(["runuser", "-u", ONEADMIN, "--", *argv], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), cwd=cwd or str(self.location))
        if check and proc.returncode != 0:
            raise CliError(argv, proc)
        return proc

    def cli(self, *argv: str, **kw: object) -> str:
        return self.run(*argv, **kw).stdout  # type: ignore[arg-type]

    def xml(self, kind: str, object_id: object) -> ET.Element:
        """``one<kind> show -x <id>``, parsed."""
        return ET.fromstring(self.cli(f"one{kind}", "show", "-x", str(object_id)))  # noqa: S314

    def template_file(self, name: str, text: str) -> str:
        path = self.location / "tmp-templates" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        os.chown(path.parent, self.user.pw_uid, self.user.pw_gid)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return str(path)

    def create(self, kind: str, template: str, *extra: str) -> int:
        """``one<kind> create <file>``: the new object's id."""
        out = self.cli(f"one{kind}", "create", self.template_file(f"{kind}.tmpl", template),
                       *extra)
        match = re.search(r"ID:\s*(\d+)", out)
        assert match, out
        return int(match.group(1))

    def deploy_vm(self, template: str, host_id: int) -> int:
        """A VM created on hold and deployed on ``host_id`` (not left to the scheduler)."""
        vm_id = self.create("vm", template, "--hold")
        self.cli("onevm", "deploy", str(vm_id), str(host_id))
        return vm_id

    # -- oned's own view -----------------------------------------------------------------

    def vm_state(self, vm_id: int) -> tuple:
        vm = self.xml("vm", vm_id)
        return int(vm.findtext("STATE")), int(vm.findtext("LCM_STATE"))

    def wait_vm(self, vm_id: int, state: int, lcm: int = 0, timeout: float = 90.0) -> ET.Element:
        def probe() -> Optional[ET.Element]:
            vm = self.xml("vm", vm_id)
            now = (int(vm.findtext("STATE")), int(vm.findtext("LCM_STATE")))
            if now[0] in (7,) or (now[0] == 3 and now[1] in FAILURE_LCM):
                raise AssertionError(f"VM {vm_id} failed: state {now}\n{self.vm_log(vm_id)}")
            return vm if now == (state, lcm) else None

        return wait_for(f"VM {vm_id} in state {state}/{lcm}", probe, timeout)

    def vm_log(self, vm_id: int) -> str:
        path = self.location / "var" / "vms" / str(vm_id) / "vm.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def vm_host(self, vm_id: int) -> int:
        return int(self.xml("vm", vm_id).findall("HISTORY_RECORDS/HISTORY")[-1].findtext("HID"))

    def aliases(self, vm_id: int) -> Dict[int, str]:
        """NIC_ID -> IP of the VM's aliases, as oned has them."""
        vm = self.xml("vm", vm_id)
        return {int(a.findtext("NIC_ID")): a.findtext("IP") or ""
                for a in vm.findall("TEMPLATE/NIC_ALIAS")}

    def ar(self, vnet_id: int, ar_id: int = 0) -> Optional[ET.Element]:
        for ar in self.xml("vnet", vnet_id).findall("AR_POOL/AR"):
            if ar.findtext("AR_ID") == str(ar_id):
                return ar
        return None

    def leased_ips(self, vnet_id: int) -> Dict[str, Optional[int]]:
        """IP -> owning VM id (None when held) of every lease oned records in the vnet."""
        out: Dict[str, Optional[int]] = {}
        for lease in self.xml("vnet", vnet_id).findall("AR_POOL/AR/LEASES/LEASE"):
            vm = lease.findtext("VM")
            out[lease.findtext("IP")] = int(vm) if vm and int(vm) >= 0 else None
        return out

    def hook_records(self) -> List[Dict[str, object]]:
        """Every execution record of every hook: hook, execution id, code, stderr, VM id."""
        out: List[Dict[str, object]] = []
        pool = ET.fromstring(self.cli("onehook", "list", "-x"))  # noqa: S314
        for hook in pool.findall("HOOK"):
            detail = self.xml("hook", hook.findtext("ID"))
            for rec in detail.findall("HOOKLOG/HOOK_EXECUTION_RECORD"):
                args = (rec.findtext("ARGUMENTS") or "").strip()
                vm_id = None
                if args:
                    try:
                        vm_xml = ET.fromstring(base64.b64decode(args))  # noqa: S314
                        vm_id = int(vm_xml.findtext("ID"))
                    except (ValueError, ET.ParseError):
                        vm_id = None
                result = rec.find("EXECUTION_RESULT")
                out.append({
                    "hook": detail.findtext("NAME"),
                    "hook_id": int(hook.findtext("ID")),
                    "execution": int(rec.findtext("EXECUTION_ID")),
                    "code": int(result.findtext("CODE")),
                    "stderr": base64.b64decode(result.findtext("STDERR") or "").decode(
                        "utf-8", "replace"),
                    "retry": rec.findtext("RETRY") == "yes",
                    "vm": vm_id,
                })
        return out

    def oned_log(self) -> str:
        return (self.location / "var" / "oned.log").read_text(errors="replace")

    def oned_log_decoded(self) -> str:
        """oned.log with every base64 word of the driver messages it logged decoded too (a
        secret in a driver reply is there only base64-encoded)."""
        return with_base64_decoded(self.oned_log())

    def driver_errors(self, since: int = 0) -> List[str]:
        """oned.log lines after byte ``since`` that report a driver or hook failure."""
        text = self.oned_log()[since:]
        ours = re.compile(r"\[Z0\]\[(IPM|HKM|VMM|VNM|LCM|DiM)\]")
        bad = re.compile(r"\]\[E\]|Error executing Hook|Command execution failed|FAILURE")
        # one_hm, oned's own hook driver, is seen to crash now and then under load; oned
        # restarts it, and the hook executions themselves are checked by the tests
        upstream = "Hook driver crashed, recovering"
        return [line for line in text.splitlines()
                if ours.search(line) and bad.search(line) and upstream not in line]

    def lease_files(self) -> Dict[str, List[str]]:
        """reservation id -> sorted IPs of the lease files."""
        root = self.location / "var" / "ipam_state" / "packet"
        out: Dict[str, List[str]] = {}
        if root.is_dir():
            for block in sorted(root.iterdir()):
                if block.is_dir() and not block.name.startswith("."):
                    out[block.name] = sorted(p.name for p in block.iterdir()
                                             if not p.name.startswith("."))
        return out

    # -- life --------------------------------------------------------------------------

    def start(self, reset_db: bool = True) -> None:
        env = self.env(RESET_DB="yes" if reset_db else "no")
        self.run("bash", str(self.location / "one-scripts" / "start.sh"), str(self.location),
                 "120", env=env, timeout=180)

    def stop(self) -> None:
        subprocess.run(["bash", str(self.location / "one-scripts" / "stop.sh"),
                        str(self.location)], capture_output=True, timeout=120, check=False)


def public_vnet(name: str, project: str, size: int, extra: str = "") -> str:
    """Template of a network whose range the packet IPAM driver reserves (token from the
    config); ``extra`` adds AR attributes (``, KEY = "value"``)."""
    return (f'NAME = "{name}"\nVN_MAD = "alias_sdnat"\nBRIDGE = "br0"\nEXTERNAL = "yes"\n'
            f'AR = [ TYPE = "IP4", SIZE = "{size}", IPAM_MAD = "packet", '
            f'PACKET_IP_TYPE = "public_ipv4", FACILITY = "ams1", '
            f'PACKET_PROJECT = "{project}"{extra} ]\n')


def private_vnet(name: str, first_ip: str, size: int, bridge: str = "br0") -> str:
    """Template of a plain private network (dummy VN_MAD, oned's own leases)."""
    return (f'NAME = "{name}"\nVN_MAD = "dummy"\nBRIDGE = "{bridge}"\n'
            f'AR = [ TYPE = "IP4", IP = "{first_ip}", SIZE = "{size}" ]\n')


# LCM states that mean a driver action failed (oned 5.12)
FAILURE_LCM = {36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 61}


def build(location: Path, ports: Dict[str, int]) -> None:
    """Lay a configured OpenNebula tree at ``location`` (compiling once per machine)."""
    env = dict(os.environ, **{k: str(v) for k, v in ports.items()})
    proc = subprocess.run(["bash", str(shared_dir() / "build.sh"), str(location)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"OpenNebula build failed:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    scripts = location / "one-scripts"
    scripts.mkdir()
    for name in ("start.sh", "stop.sh", "configure.sh"):
        shutil.copy2(shared_dir() / name, scripts / name)


def new_location() -> Path:
    """A directory oneadmin can use (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="real-one-", dir="/var/tmp"))
    path.chmod(0o755)
    return path / "one"


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)


def base64_texts(text: str) -> List[str]:
    """The UTF-8 texts of the base64 words in ``text`` (oned shows IPAM failures, and logs
    driver replies, base64-encoded)."""
    out = []
    for word in re.findall(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{8,}={0,2}", text):
        try:
            out.append(base64.b64decode(word, validate=True).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def with_base64_decoded(text: str) -> str:
    """``text`` followed by the decoded texts of its base64 words."""
    return "\n".join([text, *base64_texts(text)])
