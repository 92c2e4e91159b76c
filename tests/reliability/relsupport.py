"""Shared parts of the reliability suite: the figures it counts, running remotes the way
oned does, and looking for side effects.

The counters are printed at the end of the session by tests/reliability/conftest.py; the
note quotes them.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from fixtures.common import LIB, REMOTES, ROOT, clean_env, error_block

VENV_BIN = ROOT / ".venv" / "bin"
DATA = ROOT / "tests" / "data"
VM_XML = (DATA / "vm-with-nic-alias.xml").read_bytes()

_LOCK = threading.Lock()
COUNTS: Counter = Counter()
# what was lost or duplicated: every entry here is a failure (the suite asserts it is empty),
# listed again in the summary so the note can say "nothing"
LOSSES: List[str] = []


def count(name: str, n: int = 1) -> None:
    with _LOCK:
        COUNTS[name] += n


def lost(what: str) -> None:
    with _LOCK:
        LOSSES.append(what)


# -- discovering and running remotes -----------------------------------------------------------


def executables(kind_dir: str) -> List[Path]:
    """Every executable file (or symlink to one) directly under remotes/<kind_dir>."""
    folder = REMOTES / kind_dir
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            found.append(path)
    return found


def ipam_actions() -> List[Path]:
    """The IPAM action names oned runs (symlinks to the one script, not the script itself)."""
    return [p for p in executables("ipam/packet") if not p.name.endswith(".py")]


def vnm_actions() -> List[Path]:
    return [p for p in executables("vnm/alias_sdnat") if not p.name.endswith(".py")
            or p.name in ("pre", "post", "clean", "update_sg")]


def hook_executables() -> List[Path]:
    return executables("hooks/alias_ip")


@dataclass
class Run:
    argv: List[str]
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def message_lines(self) -> Optional[List[str]]:
        """The lines inside oned's ERROR MESSAGE block, None without a block."""
        return error_block(self.stderr)


def run(argv: Sequence[str], stdin: bytes, env: Mapping[str, str], timeout: float = 30,
        cwd: Optional[Path] = None) -> Run:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, env=dict(env),
                              timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        return Run(list(argv), -9, (exc.stdout or b"").decode("utf-8", "replace"),
                   (exc.stderr or b"").decode("utf-8", "replace"), timed_out=True)
    return Run(list(argv), proc.returncode, proc.stdout.decode("utf-8", "replace"),
               proc.stderr.decode("utf-8", "replace"))


def base_env(extra_path: Iterable[Path] = ()) -> Dict[str, str]:
    env = clean_env(PYTHONPATH=str(LIB), PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.pathsep.join([*map(str, extra_path), str(VENV_BIN),
                                   env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    return env


def write_config(path: Path, api_url: str, state_dir: Path, log_dir: Path,
                 tokens: Optional[Dict[str, str]] = None, one_xmlrpc: str = "",
                 one_auth: str = "", retries: int = 2, read_timeout: float = 2.0,
                 backoff: float = 0.01, max_retry_after: float = 1.0) -> None:
    lines = [f"api_url: {api_url}", f"ipam_state_dir: {state_dir}", f"log_dir: {log_dir}",
             f"retries: {retries}", f"backoff: {backoff}", "connect_timeout: 1",
             f"read_timeout: {read_timeout}", f"max_retry_after: {max_retry_after}"]
    if one_xmlrpc:
        lines.append(f"one_xmlrpc: {one_xmlrpc}")
    if one_auth:
        lines.append(f"one_auth: {one_auth}")
    if tokens:
        lines.append("tokens:")
        lines.extend(f"  {project}: {token}" for project, token in tokens.items())
    path.write_text("\n".join(lines) + "\n")


def reserved_ar(cloud, size: int = 8) -> Dict[str, str]:
    """Reserve a block in ``cloud`` (url, token, project_id: a Packet emulator fixture) and
    return the AR oned would hold for it after register_address_range."""
    from packet_provider.packet import PacketClient

    with PacketClient(cloud.url, cloud.token) as client:
        res = client.reserve(cloud.project_id, size, facility="ams1")
    return {"AR_ID": "0", "TYPE": "IP4", "IP": str(res.first_address), "SIZE": str(size),
            "IPAM_MAD": "packet", "DEPLOY_ID": res.id, "PACKET_TOKEN": cloud.token,
            "PACKET_PROJECT": cloud.project_id, "FACILITY": "ams1"}


def hook_world(oned, packet, tmp_path: Path, one_auth_file, **config_options):
    """The hook test world of tests/integration (hosts, networks, a packet range in oned),
    with the config at ``tmp_path`` written by :func:`write_config` (``config_options``)."""
    import pytest

    integration = pytest.importorskip("integration.hook_support")
    config = tmp_path / "packet_provider.yaml"
    env = {"PYTHONPATH": str(LIB), "PACKET_PROVIDER_CONFIG": str(config),
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    world = integration.make_world(oned, packet, env, tmp_path, one_auth_file)
    write_config(config, packet.url, tmp_path / "state", tmp_path / "log", **config_options)
    return world


# -- side effects ------------------------------------------------------------------------------


def tree(path: Path) -> List[str]:
    """Every file and directory under ``path`` (relative), for before/after comparisons."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


SHIM = """#!/bin/sh
# records how it was called, then behaves like an empty, idle netfilter
printf '%s' "$(basename "$0")" >> "$SHIM_LOG"
for a in "$@"; do printf ' %s' "$a" >> "$SHIM_LOG"; done
printf '\\n' >> "$SHIM_LOG"
case "$(basename "$0")" in
  *-save) printf '*nat\\n:PREROUTING ACCEPT [0:0]\\n:INPUT ACCEPT [0:0]\\n'
          printf ':OUTPUT ACCEPT [0:0]\\n:POSTROUTING ACCEPT [0:0]\\nCOMMIT\\n' ;;
  *-restore) cat > /dev/null ;;
esac
exit 0
"""
SHIMMED = ("iptables", "iptables-save", "iptables-restore", "iptables-legacy",
           "iptables-legacy-save", "iptables-legacy-restore", "iptables-nft",
           "iptables-nft-save", "iptables-nft-restore", "ip6tables", "ip6tables-save",
           "ip6tables-restore", "nft")


def make_shim(folder: Path) -> Path:
    """A directory of stand-ins for iptables & co. that log each call to $SHIM_LOG."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHIMMED:
        path = folder / name
        path.write_text(SHIM)
        path.chmod(0o755)
    return folder


def shim_calls(log: Path) -> List[str]:
    return log.read_text().splitlines() if log.exists() else []


MUTATING = ("-A", "-I", "-D", "-R", "-F", "-N", "-X", "-P", "-E", "-Z", "--append", "--insert",
            "--delete", "--flush", "--new-chain", "--delete-chain", "--replace")


def mutating_calls(calls: Iterable[str]) -> List[str]:
    out = []
    for call in calls:
        words = call.split()
        if not words:
            continue
        if words[0].endswith("-restore") or words[0] == "nft" and "list" not in words:
            out.append(call)
        elif words[0].startswith(("iptables", "ip6tables")) and any(w in MUTATING
                                                                    for w in words):
            out.append(call)
        elif words[0] == "ip" and any(w in ("add", "del", "delete", "set", "replace", "flush")
                                      for w in words):
            out.append(call)
    return out


def b64(xml: bytes) -> bytes:
    return base64.b64encode(xml)


@dataclass
class Case:
    """One bad input for one executable."""

    name: str
    stdin: bytes
    args: List[str] = field(default_factory=list)
    marker: Optional[Path] = None  # a file the input tries to create through a shell
