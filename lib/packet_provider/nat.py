"""alias_sdnat: DNAT from a NIC alias's public IP to its parent NIC's private IP, SNAT back.

Runs on hypervisors: Python 3 standard library only, Python >= 3.8.

The driver owns its rules. In the nat table it keeps three dispatcher chains, each jumped to
once from a built-in chain::

    PREROUTING  -> ALIAS_SDNAT_PRE  -> ALIAS_SDNAT_<vm>_PRE   DNAT alias -> parent
    OUTPUT      -> ALIAS_SDNAT_OUT  -> ALIAS_SDNAT_<vm>_OUT   DNAT alias -> parent (host)
    POSTROUTING -> ALIAS_SDNAT_POST -> ALIAS_SDNAT_<vm>_POST  SNAT parent -> alias

and every rule carries the comment ``alias_sdnat vm=<id>`` (jumps) or
``alias_sdnat vm=<id> alias=<nic id>`` (NAT rules). A VM's rules live only in its own chains,
so removing them never looks at addresses and never touches anybody else's rule.

Each action reads the nat table once (``iptables-save -t nat``), computes the VM's wanted
rules and applies the difference as one ``iptables-restore --noflush -w`` transaction, under
a host-wide lock: the kernel swaps the table (legacy) or commits the batch (nft) as a whole,
so an action killed at any point leaves either the old or the new rule set. Declaring a chain
in a --noflush restore empties it first, which makes every rebuild idempotent.

With several aliases on one parent NIC, connections the VM opens leave with the alias of the
lowest NIC_ID (one SNAT rule per parent); every alias receives.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

from . import hostxml
from .cli import read_stdin, run
from .errors import ConfigError, InputError, ProviderError
from .filelock import flock_within
from .log import elapsed_ms
from .vm import ALIAS_VN_MAD, VM, parse_vm

ACTIONS = ("pre", "post", "clean", "update_sg")
TAG = "alias_sdnat"
DISPATCH = {"PREROUTING": "ALIAS_SDNAT_PRE", "OUTPUT": "ALIAS_SDNAT_OUT",
            "POSTROUTING": "ALIAS_SDNAT_POST"}
SUFFIX = {"PREROUTING": "PRE", "OUTPUT": "OUT", "POSTROUTING": "POST"}
DEFAULT_LOCK = "/var/lock/one-alias_sdnat.lock"
LOCK_SECONDS = 60.0
LOCK_POLL_SECONDS = 0.01
COMMAND_SECONDS = 60.0
FLAVOURS = {"": ("iptables-save", "iptables-restore"),
            "legacy": ("iptables-legacy-save", "iptables-legacy-restore"),
            "nft": ("iptables-nft-save", "iptables-nft-restore")}


@dataclass(frozen=True, order=True)
class Mapping:
    """One alias: public ``alias_ip`` reaches ``parent_ip``; ``nic_id`` is the alias's."""

    nic_id: int
    alias_ip: ipaddress.IPv4Address
    parent_ip: ipaddress.IPv4Address


# -- what the VM wants -------------------------------------------------------------------------


def vm_chain(vm_id: int, builtin: str) -> str:
    return f"ALIAS_SDNAT_{vm_id}_{SUFFIX[builtin]}"


def mappings(vm: VM, attaching_only: bool = False) -> List[Mapping]:
    """The VM's alias_sdnat aliases whose parent NIC is on the VM and has an IP; with
    ``attaching_only``, only those marked ATTACH=YES."""
    out = []
    for alias in vm.aliases:
        if alias.vn_mad != ALIAS_VN_MAD or alias.ip is None:
            continue
        if attaching_only and not alias.attach:
            continue
        parent = vm.parent_of(alias)
        if parent is None or parent.ip is None:
            continue
        out.append(Mapping(alias.nic_id, alias.ip, parent.ip))
    return sorted(out)


def wanted(action: str, vm: VM, current: Sequence[Mapping]) -> Optional[List[Mapping]]:
    """The VM's mappings after ``action``, or None when the action changes nothing.

    post: every alias, or with an alias in ATTACH=YES only that one added to what is there.
    clean: nothing, or with an alias in ATTACH=YES only that one removed."""
    if action not in ("post", "clean"):
        return None
    attaching = {m.nic_id for m in mappings(vm, attaching_only=True)}
    if action == "post":
        if not attaching:
            return mappings(vm)
        keep = [m for m in current if m.nic_id not in attaching]
        return sorted(keep + mappings(vm, attaching_only=True))
    if not any(a.attach for a in vm.aliases):
        return []
    detaching = {a.nic_id for a in vm.aliases if a.attach}
    return [m for m in current if m.nic_id not in detaching]


# -- the table as it is ------------------------------------------------------------------------


@dataclass
class TableView:
    """What the driver needs to know of the nat table: which chains exist, whether the
    dispatcher jumps are in place, and the mappings of one VM (read from its own chains)."""

    chains: Set[str]
    builtin_jumps: Set[str]  # dispatcher chains jumped to from their built-in chain
    vm_jumps: Set[Tuple[str, str]]  # (dispatcher, chain of this VM) jumps present
    current: List[Mapping]


_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_RULE = re.compile(r"^-A (\S+) (.*)$")
_DEST = re.compile(r"(?:^| )-d (\d+\.\d+\.\d+\.\d+)(?:/32)?(?= |$)")
_TO_DEST = re.compile(r"--to-destination (\d+\.\d+\.\d+\.\d+)(?= |$)")
_JUMP = re.compile(r"(?:^| )-j (\S+)")
_ALIAS_TAG = re.compile(r"alias_sdnat vm=(\d+) alias=(\d+)")


def read_view(save_text: str, vm_id: int) -> TableView:
    chains: Set[str] = set()
    builtin_jumps: Set[str] = set()
    vm_jumps: Set[Tuple[str, str]] = set()
    current: List[Mapping] = []
    mine_pre = vm_chain(vm_id, "PREROUTING")
    dispatchers = set(DISPATCH.values())
    wanted_chains = set(DISPATCH) | dispatchers | {mine_pre}
    my_jump = f"-j ALIAS_SDNAT_{vm_id}_"  # a jump to one of this VM's chains
    for line in save_text.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
            continue
        # Cheap skips (plain string tests) of what cannot matter, so the cost of an action
        # barely grows with other VMs' rules: rules of other chains, other VMs' jumps.
        chain_name = line[3:line.find(" ", 3)]
        if chain_name not in wanted_chains or (chain_name in dispatchers
                                               and my_jump not in line):
            continue
        match = _RULE.match(line)
        if not match:
            continue
        chain, spec = match.groups()
        jump = _JUMP.search(spec)
        target = jump.group(1) if jump else ""
        if chain in DISPATCH and DISPATCH[chain] == target:
            builtin_jumps.add(target)
        elif chain in dispatchers and target.startswith("ALIAS_SDNAT_"):
            vm_jumps.add((chain, target))
        elif chain == mine_pre:
            current.extend(_mapping_of(spec, vm_id))
    return TableView(chains, builtin_jumps, vm_jumps, sorted(set(current)))


def _mapping_of(spec: str, vm_id: int) -> List[Mapping]:
    tag, dest, to = _ALIAS_TAG.search(spec), _DEST.search(spec), _TO_DEST.search(spec)
    if not (tag and dest and to) or int(tag.group(1)) != vm_id:
        return []
    return [Mapping(int(tag.group(2)), ipaddress.IPv4Address(dest.group(1)),
                    ipaddress.IPv4Address(to.group(1)))]


# -- the change --------------------------------------------------------------------------------


def _comment(vm_id: int, nic_id: Optional[int] = None) -> str:
    text = f"{TAG} vm={vm_id}" + (f" alias={nic_id}" if nic_id is not None else "")
    return f'-m comment --comment "{text}"'


def rules_for(vm_id: int, maps: Sequence[Mapping]) -> Dict[str, List[str]]:
    """The rule specs (after ``-A <chain>``) of each of the VM's chains."""
    pre, out, post = (vm_chain(vm_id, b) for b in ("PREROUTING", "OUTPUT", "POSTROUTING"))
    rules: Dict[str, List[str]] = {pre: [], out: [], post: []}
    snat_done: Set[ipaddress.IPv4Address] = set()
    for m in sorted(maps):
        dnat = (f"-d {m.alias_ip}/32 {_comment(vm_id, m.nic_id)} "
                f"-j DNAT --to-destination {m.parent_ip}")
        rules[pre].append(dnat)
        rules[out].append(dnat)
        if m.parent_ip not in snat_done:
            snat_done.add(m.parent_ip)
            rules[post].append(f"-s {m.parent_ip}/32 {_comment(vm_id, m.nic_id)} "
                               f"-j SNAT --to-source {m.alias_ip}")
    return rules


def restore_script(vm_id: int, view: TableView, maps: Sequence[Mapping]) -> str:
    """One nat-table transaction taking the VM's chains from ``view`` to ``maps``."""
    lines = ["*nat"]
    body: List[str] = []
    if maps:
        for builtin, dispatcher in DISPATCH.items():
            if dispatcher not in view.chains:
                lines.append(f":{dispatcher} - [0:0]")
            if dispatcher not in view.builtin_jumps:
                body.append(f"-I {builtin} 1 {_comment_plain()} -j {dispatcher}")
        for chain, specs in rules_for(vm_id, maps).items():
            lines.append(f":{chain} - [0:0]")  # declared: created, or emptied
            body.extend(f"-A {chain} {spec}" for spec in specs)
        for builtin, dispatcher in DISPATCH.items():
            chain = vm_chain(vm_id, builtin)
            if (dispatcher, chain) not in view.vm_jumps:
                body.append(f"-A {dispatcher} {_comment(vm_id)} -j {chain}")
    else:
        for builtin, dispatcher in DISPATCH.items():
            chain = vm_chain(vm_id, builtin)
            if (dispatcher, chain) in view.vm_jumps:
                body.append(f"-D {dispatcher} {_comment(vm_id)} -j {chain}")
            if chain in view.chains:
                lines.append(f":{chain} - [0:0]")
                body.append(f"-X {chain}")
    return "\n".join(lines + body + ["COMMIT", ""])


def _comment_plain() -> str:
    return f'-m comment --comment "{TAG}"'


# -- effects -----------------------------------------------------------------------------------


class Iptables:
    """iptables-save / iptables-restore of the chosen flavour, never through a shell."""

    def __init__(self, flavour: str = "") -> None:
        if flavour not in FLAVOURS:
            raise ConfigError(f"ALIAS_SDNAT_IPTABLES must be legacy or nft, got {flavour!r}")
        self.save_cmd, self.restore_cmd = FLAVOURS[flavour]
        self.spawned = 0

    def _binary(self, name: str) -> str:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path is None:
            raise ProviderError(f"{name} not found: install iptables on this host "
                                "(apt-get install iptables)")
        return path

    def _run(self, argv: List[str], stdin: Optional[str] = None) -> str:
        self.spawned += 1
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=COMMAND_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{os.path.basename(argv[0])} did not finish in "
                                f"{COMMAND_SECONDS:.0f}s") from None
        if proc.returncode != 0:
            why = " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"
            raise ProviderError(f"{os.path.basename(argv[0])} failed: {why}")
        return proc.stdout

    def save(self) -> str:
        return self._run([self._binary(self.save_cmd), "-t", "nat"])

    def restore(self, script: str) -> None:
        self._run([self._binary(self.restore_cmd), "--noflush", "-w", "5"], script)


class HostLock:
    """One action at a time on this host (across all VMs)."""

    def __init__(self, path: str, timeout: float = LOCK_SECONDS) -> None:
        self.path, self.timeout = path, timeout
        self.fd = -1

    def __enter__(self) -> HostLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ProviderError(f"cannot open the lock file {self.path}: "
                                f"{exc.strerror}") from None
        if not flock_within(self.fd, self.timeout, LOCK_POLL_SECONDS):
            os.close(self.fd)
            raise ProviderError(f"another alias_sdnat action held {self.path} for "
                                f"{self.timeout:.0f}s")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock


def parse_input(data: bytes) -> VM:
    return parse_vm(hostxml.parse_base64(data))


def apply(action: str, vm: VM, iptables: Iptables, lock_path: str) -> Tuple[int, int]:
    """Bring the VM's chains to what ``action`` wants; returns (mappings before, after).
    pre and update_sg have nothing to do: the rules need the VM's deploy (post), and the
    aliases have no security groups of their own."""
    if action not in ("post", "clean"):
        return 0, 0
    with HostLock(lock_path):
        view = read_view(iptables.save(), vm.id)
        target = wanted(action, vm, view.current)
        if target is None:
            return len(view.current), len(view.current)
        has_chains = any(vm_chain(vm.id, b) in view.chains for b in DISPATCH)
        if not target and not has_chains:
            return 0, 0  # nothing of ours for this VM: nothing to do
        iptables.restore(restore_script(vm.id, view, target))
        return len(view.current), len(target)


def main(action: str, argv: Sequence[str]) -> None:
    """Entry point of remotes/vnm/alias_sdnat/<action>."""

    def body() -> int:
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
        if len(argv) > 1:
            raise InputError(f"{action} takes at most one argument (the deploy id)")
        if argv and not _DEPLOY_ID.fullmatch(argv[0]):
            raise InputError(f"the deploy id {argv[0][:60]!r} is not a hypervisor domain name")
        vm = parse_input(read_stdin())
        started = time.perf_counter()
        iptables = Iptables(os.environ.get("ALIAS_SDNAT_IPTABLES", ""))
        before, after = apply(action, vm, iptables,
                              os.environ.get("ALIAS_SDNAT_LOCK") or DEFAULT_LOCK)
        took = elapsed_ms(started)
        sys.stderr.write(f"alias_sdnat {action} vm={vm.id}: aliases {before} -> {after}, "
                         f"{iptables.spawned} iptables run(s), {took:.0f} ms\n")
        return 0

    run(body, prefix=f"alias_sdnat {action}")
