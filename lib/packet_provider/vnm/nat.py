"""alias_sdnat: DNAT from a NIC alias's public IP to its parent NIC's private IP, SNAT back.

Runs on hypervisors: Python 3 standard library only, Python >= 3.8. It reads the VNM view
of the VM on stdin (:func:`packet_provider.core.oned.parse_vnm_view`); extra arguments after the
deploy id (OpenNebula 6 adds the host) are ignored.

The driver owns its rules. In the nat table it keeps three dispatcher chains, each jumped to
once from a built-in chain::

    PREROUTING  -> ALIAS_SDNAT_PRE  -> ALIAS_SDNAT_<vm>_PRE   DNAT alias -> parent
    OUTPUT      -> ALIAS_SDNAT_OUT  -> ALIAS_SDNAT_<vm>_OUT   DNAT alias -> parent (host)
    POSTROUTING -> ALIAS_SDNAT_POST -> ALIAS_SDNAT_<vm>_POST  SNAT parent -> alias, not
                                                               out through the parent's
                                                               bridge (its private network)

and every rule carries the comment ``alias_sdnat vm=<id>`` (jumps) or
``alias_sdnat vm=<id> alias=<nic id>`` (NAT rules, and before each the jump to its public IP's
marker: see below). A VM's rules live only in its own chains,
so removing them never looks at addresses and never touches anybody else's rule. A VM's
chain has two generations, ``ALIAS_SDNAT_<vm>_PRE`` and ``ALIAS_SDNAT_<vm>_PRE2`` (the second
only in the stock-sudoers mode below); what counts is the one its dispatcher jumps to.

**Privileges.** OpenNebula runs VNM actions on the host as ``oneadmin``: every iptables
command goes through ``sudo -n`` (sudo finds the command on its ``secure_path``), unless the
effective uid is 0, which runs them directly. Two modes, chosen at each action:

- *transaction* (root, or sudo allows ``iptables-restore``: ``install.sh --node`` writes the
  drop-in ``/etc/sudoers.d/opennebula-alias_sdnat``): the action reads the nat table once
  (``iptables-save -t nat``), computes the VM's wanted rules and applies the difference as
  one ``iptables-restore --noflush -w`` transaction: the kernel swaps the table (legacy) or
  commits the batch (nft) as a whole, so an action killed at any point leaves either the old
  or the new rule set. Declaring a chain in a --noflush restore empties it first, which makes
  every rebuild idempotent.
- *stock sudoers* (OpenNebula's ``ONE_NET`` rule allows ``iptables`` but not
  ``iptables-save``/``-restore``): one ``iptables -w -t nat -S`` reads the table, then single
  ``iptables -w -t nat`` commands fill a fresh generation of each of the VM's chains, switch
  the VM's jump in each dispatcher to it with one ``-R`` (rule replace, atomic), and flush and
  delete the old generation. Each chain therefore changes as a whole: a killed action leaves
  every chain of the VM either old or new (never half filled) plus, at worst, an unreferenced
  generation that the next action removes. The three switches (PRE, OUT, POST) are three
  consecutive commands, so only a kill between them can leave the VM's inbound and outbound
  translation from different generations until its next action. An action that changes
  nothing writes nothing.

**Markers and the index.** Every chain of a VM that translates a public IP first jumps to
the IP's *marker*, an empty chain ``ALIAS_SDNAT_C_<IP in hex>`` (a no-op): the kernel deletes
no chain that is jumped to, so a marker exists while any chain holds its IP, in both modes
and at every step of a killed action. The empty chain ``ALIAS_SDNAT_INDEX`` says that every
chain of ours on the host does so; a transaction that reads the table creates it when no
chain of an older driver (rules without marker jumps) is left, and deletes it when one is.
A marker goes with the last chain that jumps to it (in the same transaction, or with single
commands right after the chains); one that a killed single-command action left behind,
jumped to by nobody, only sends the next deploy of its IP the general way, which adopts it.

**Without reading the table** (transaction mode), the two commonest actions are one
transaction that holds only in the usual state and fails as a whole in any other; the
action then reads the table and goes the general way. Their cost does not grow with the
other VMs' rules (``iptables-save`` at 1,000 other aliases costs ~100 ms with iptables-nft):

- *post* without an alias in ATTACH=YES (deploy, migration, resume: :func:`deploy_script`):
  the index exists, the dispatchers are hooked in, the VM has no chain, and creating each of
  its IPs' markers succeeds (no VM holds them: else the general path takes them over);
- *clean* without an alias or NIC in ATTACH=YES (the VM leaves: :func:`leave_script`): its
  jumps, rules, chains and markers are exactly those of its aliases.

An older driver version writing to the table after the index exists (a downgrade) would
break its promise: delete it then (``iptables -t nat -X ALIAS_SDNAT_INDEX``).

Mode detection costs one process when not root: ``sudo -n -l iptables-restore`` (exit 0 when
sudo allows it; a refused ``-l`` is not logged as a violation, unlike a refused command).
Processes per action: root 1 (restore) without reading, else 2 (save, restore) plus, for
a post without ATTACH=YES or a leaving VM's clean, the failed blind try; transaction
through sudo one more (the probe); stock sudoers 2 (probe, -S) plus one per chain, rule,
jump, marker and deletion written.
When sudo refuses even ``iptables`` the action fails with one line naming the sudoers rule
the node needs.

**Lock.** Actions on a host are serialised with a ``flock`` on ``.alias_sdnat.lock`` in the
driver's own directory (``/var/tmp/one/vnm/alias_sdnat/`` on a host, owned by oneadmin), mode
0600: other local users can neither create nor open it (see
:class:`packet_provider.core.filelock.PrivateLock`, which also copes with ``onehost sync``
deleting it while held). ``ALIAS_SDNAT_LOCK`` names another file (tests).

With several aliases on one parent NIC, connections the VM opens leave with the alias of the
lowest NIC_ID (one SNAT rule per parent); every alias receives.

**Ownership.** Only aliases with an EXTERNAL element are translated (:func:`translated`).
A public IP reaches only the VM that holds it now: ``post`` removes another VM's rules for
any of its addresses (that VM's ``clean`` never ran here), and only those
(:func:`takeovers`).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Set, Tuple

from packet_provider.core import hostxml
from packet_provider.core.cli import read_stdin, run
from packet_provider.core.errors import ConfigError, InputError, ProviderError
from packet_provider.core.filelock import PrivateLock
from packet_provider.core.log import elapsed_ms
from packet_provider.core.oned import VM, NicAlias, parse_vnm_view
from packet_provider.core.onedefs import ALIAS_VN_MAD

ACTIONS = ("pre", "post", "clean", "update_sg")
TAG = "alias_sdnat"
DISPATCH = {"PREROUTING": "ALIAS_SDNAT_PRE", "OUTPUT": "ALIAS_SDNAT_OUT",
            "POSTROUTING": "ALIAS_SDNAT_POST"}
SUFFIX = {"PREROUTING": "PRE", "OUTPUT": "OUT", "POSTROUTING": "POST"}
GENERATIONS = ("", "2")  # chain name suffixes; the second is used by the stock-sudoers mode
MARKER_PREFIX = "ALIAS_SDNAT_C_"  # + the public IP in hex: an empty chain, the IP's marker
INDEX = "ALIAS_SDNAT_INDEX"  # empty; present: every chain of ours that translates an IP jumps
#                              to the IP's marker (so a marker exists for every IP held)
LOCK_NAME = ".alias_sdnat.lock"  # in the driver's directory
LOCK_SECONDS = 60.0
LOCK_POLL_SECONDS = 0.01
COMMAND_SECONDS = 60.0
XTABLES_WAIT = ["-w", "5"]
FLAVOURS = {"": ("iptables", "iptables-save", "iptables-restore"),
            "legacy": ("iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"),
            "nft": ("iptables-nft", "iptables-nft-save", "iptables-nft-restore")}
SUDOERS_HINT = ("the node needs OpenNebula's ONE_NET sudoers rule (opennebula-node package) "
                "or install.sh --node")


@dataclass(frozen=True, order=True)
class Mapping:
    """One alias: public ``alias_ip`` reaches ``parent_ip``; ``nic_id`` is the alias's."""

    nic_id: int
    alias_ip: ipaddress.IPv4Address
    parent_ip: ipaddress.IPv4Address
    # the parent NIC's bridge: the SNAT leaves alone what goes out through it (the VM's
    # private network; bridged traffic too, with bridge-nf-call-iptables = 1); "" = unknown
    bridge: str = ""


# -- what the VM wants -------------------------------------------------------------------------


def vm_chain(vm_id: int, builtin: str, generation: str = "") -> str:
    return f"ALIAS_SDNAT_{vm_id}_{SUFFIX[builtin]}{generation}"


def marker(ip: ipaddress.IPv4Address) -> str:
    """The marker chain of a public IP: every chain of ours that translates the IP jumps to
    it (a no-op: it is empty), so the kernel keeps it while any rule holds the IP."""
    return f"{MARKER_PREFIX}{int(ip):08X}"


def markers_of(maps: Sequence[Mapping]) -> List[str]:
    """The marker chains of the mappings' public IPs, sorted."""
    return sorted({marker(m.alias_ip) for m in maps})


def translated(alias: NicAlias) -> bool:
    """Whether the driver translates ``alias``: an alias_sdnat alias with an IPv4 address and
    an EXTERNAL element (any value). oned runs VNM actions on the hot attach and detach of
    exactly such aliases (its test is that the element exists); the rules of any other alias
    would outlive its detach and follow its address to the next owner."""
    return alias.vn_mad == ALIAS_VN_MAD and alias.ip is not None and alias.has_external


def mappings(vm: VM, attaching_only: bool = False) -> List[Mapping]:
    """The VM's translated aliases (:func:`translated`) whose parent NIC is on the VM and has
    an IPv4 address; with ``attaching_only``, only those marked ATTACH=YES."""
    out = []
    for alias in vm.aliases:
        if not translated(alias):
            continue
        if attaching_only and not alias.attach:
            continue
        parent = vm.parent_of(alias)
        if parent is None or parent.ip is None:
            continue
        if parent.bridge and not _BRIDGE.fullmatch(parent.bridge):
            raise InputError(f"NIC {parent.nic_id} BRIDGE {parent.bridge[:40]!r} is not an "
                             "interface name")
        out.append(Mapping(alias.nic_id, alias.ip, parent.ip, parent.bridge))
    return sorted(out)


def skipped(vm: VM) -> List[str]:
    """Why each alias_sdnat alias with an address gets no NAT, one line each (warnings for
    the VM's log); the action still succeeds."""
    notes = []
    for alias in vm.aliases:
        if alias.vn_mad != ALIAS_VN_MAD or alias.ip is None:
            continue
        name = f"alias {alias.name or '-'} (NIC_ID {alias.nic_id}, {alias.ip})"
        parent = vm.parent_of(alias)
        if not alias.has_external:
            notes.append(f"{name} gets no NAT: it has no EXTERNAL element, and oned runs no "
                         "VNM action when such an alias is detached; attach it with "
                         "EXTERNAL=YES")
        elif parent is None:
            notes.append(f"{name} gets no NAT: its parent NIC {alias.parent or '-'} is not "
                         "on the VM")
        elif parent.ip is None:
            notes.append(f"{name} gets no NAT: its parent NIC {parent.nic_id} has no IPv4 "
                         "address")
        elif not parent.bridge:
            notes.append(f"{name}: its parent NIC {parent.nic_id} has no BRIDGE, so "
                         "connections to the VM's private network also leave from the "
                         "public IP")
    return notes


def wanted(action: str, vm: VM, current: Sequence[Mapping]) -> Optional[List[Mapping]]:
    """The VM's mappings after ``action``, or None when the action changes nothing.

    post: every translated alias, or with an alias in ATTACH=YES that one added to those of
    the table the VM still translates (an alias that is gone, or has no EXTERNAL element,
    loses its rules). clean: with an alias in ATTACH=YES only that one removed; with a NIC
    in ATTACH=YES (a plain NIC hot detach) only the aliases of that NIC removed; else (the
    VM leaves the host) nothing."""
    if action not in ("post", "clean"):
        return None
    attaching = {m.nic_id for m in mappings(vm, attaching_only=True)}
    if action == "post":
        if not attaching:
            return mappings(vm)
        fresh = {m.nic_id: m for m in mappings(vm)}
        keep = [fresh[m.nic_id] for m in current
                if m.nic_id not in attaching and fresh.get(m.nic_id, None) is not None]
        return sorted(set(keep + mappings(vm, attaching_only=True)))
    detaching = {a.nic_id for a in vm.aliases if a.attach}
    if not detaching:
        leaving_nics = {n.nic_id for n in vm.nics if n.attach}
        if not leaving_nics:
            return []
        parents = {a.nic_id: vm.parent_of(a) for a in vm.aliases}
        detaching = {nic_id for nic_id, parent in parents.items()
                     if parent is None or parent.nic_id in leaving_nics}
    return [m for m in current if m.nic_id not in detaching]


# -- the table as it is ------------------------------------------------------------------------


@dataclass
class TableView:
    """What the driver needs to know of the nat table: which chains exist, whether the
    dispatcher jumps are in place, where this VM's jumps are, the rules of this VM's chains
    and its mappings (read from the PRE chain its dispatcher jumps to)."""

    chains: Set[str]
    builtin_jumps: Set[str]  # dispatcher chains jumped to from their built-in chain
    # (dispatcher, chain of this VM) -> rule number of the first such jump in the dispatcher
    vm_jumps: Dict[Tuple[str, str], int]
    current: List[Mapping]
    own_rules: Dict[str, List[str]] = field(default_factory=dict)  # this VM's chain -> specs
    # public IP -> other VMs with a rule for it (DNAT from it, SNAT to it) in their chains
    claims: Dict[ipaddress.IPv4Address, Set[int]] = field(default_factory=dict)
    # marker chain -> the chains that jump to it
    marker_refs: Dict[str, Set[str]] = field(default_factory=dict)
    # chains of ours that translate an IP without jumping to its marker (an older driver's)
    unindexed: Set[str] = field(default_factory=set)

    def jumped(self, vm_id: int, builtin: str) -> List[str]:
        """This VM's chains of ``builtin`` that its dispatcher jumps to, in rule order."""
        dispatcher = DISPATCH[builtin]
        found = [(self.vm_jumps[(dispatcher, c)], c)
                 for c in (vm_chain(vm_id, builtin, g) for g in GENERATIONS)
                 if (dispatcher, c) in self.vm_jumps]
        return [c for _, c in sorted(found)]

    def owns_chains(self, vm_id: int) -> bool:
        return any(vm_chain(vm_id, b, g) in self.chains for b in DISPATCH for g in GENERATIONS)


_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_RULE = re.compile(r"^-A (\S+) (.*)$")
_DEST = re.compile(r"(?:^| )-d (\d+\.\d+\.\d+\.\d+)(?:/32)?(?= |$)")
_TO_DEST = re.compile(r"--to-destination (\d+\.\d+\.\d+\.\d+)(?= |$)")
_JUMP = re.compile(r"(?:^| )-j (\S+)")
_ALIAS_TAG = re.compile(r"alias_sdnat vm=(\d+) alias=(\d+)")
# a Linux interface name (at most 15 bytes, no "/", blank, ":" or leading "-" or "!")
_BRIDGE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_SNAT_BRIDGE = re.compile(r"^-s (\d+\.\d+\.\d+\.\d+)/32 ! -o (\S+) ")
_TO_SOURCE = re.compile(r"--to-source (\d+\.\d+\.\d+\.\d+)(?= |$)")


def read_view(table_text: str, vm_id: int) -> TableView:
    """Read ``iptables-save -t nat`` or ``iptables -t nat -S`` output."""
    chains: Set[str] = set()
    builtin_jumps: Set[str] = set()
    vm_jumps: Dict[Tuple[str, str], int] = {}
    own: Dict[str, List[str]] = {}
    dispatchers = set(DISPATCH.values())
    mine = {vm_chain(vm_id, b, g) for b in DISPATCH for g in GENERATIONS}
    wanted_chains = set(DISPATCH) | dispatchers | mine
    my_jump = f"-j ALIAS_SDNAT_{vm_id}_"  # a jump to one of this VM's chains
    position = dict.fromkeys(dispatchers, 0)
    claims: Dict[ipaddress.IPv4Address, Set[int]] = {}
    index = _Index()
    for line in table_text.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
            continue
        if line.startswith(("-N ", "-P ")):
            chains.add(line[3:].split(" ", 1)[0])
            continue
        # Cheap skips (plain string tests) of what cannot matter, so the cost of an action
        # barely grows with other VMs' rules: rules of other chains, other VMs' jumps. Other
        # VMs' NAT rules only note which public IPs they hold (for post's takeovers).
        chain_name = line[3:line.find(" ", 3)]
        if chain_name not in wanted_chains:
            if chain_name.startswith("ALIAS_SDNAT_"):  # another VM's chain
                index.note(chain_name, line, claims)
            continue
        if chain_name in dispatchers:
            position[chain_name] += 1
            if my_jump not in line:
                continue
        match = _RULE.match(line)
        if not match:
            continue
        chain, spec = match.groups()
        jump = _JUMP.search(spec)
        target = jump.group(1) if jump else ""
        if chain in DISPATCH and DISPATCH[chain] == target:
            builtin_jumps.add(target)
        elif chain in dispatchers and target in mine:
            vm_jumps.setdefault((chain, target), position[chain])
        elif chain in mine:
            own.setdefault(chain, []).append(spec)
            index.note(chain, line, {})
    view = TableView(chains, builtin_jumps, vm_jumps, [], own, claims, index.refs,
                     index.unindexed())
    pre = view.jumped(vm_id, "PREROUTING")
    if pre:
        bridges = _snat_bridges(own, view.jumped(vm_id, "POSTROUTING"))
        current = [replace(m, bridge=bridges.get(m.parent_ip, ""))
                   for spec in own.get(pre[0], []) for m in _mapping_of(spec, vm_id)]
        view.current = sorted(set(current))
    return view


def _snat_bridges(own: Dict[str, List[str]], post: List[str]
                  ) -> Dict[ipaddress.IPv4Address, str]:
    """Parent IP -> the bridge its SNAT rule leaves alone (``! -o``), from the POST chain
    the dispatcher jumps to."""
    found: Dict[ipaddress.IPv4Address, str] = {}
    for spec in own.get(post[0], []) if post else []:
        match = _SNAT_BRIDGE.match(spec)
        if match and _BRIDGE.fullmatch(match.group(2)):
            try:
                found.setdefault(ipaddress.IPv4Address(match.group(1)), match.group(2))
            except ValueError:
                continue
    return found


def _public_ips(spec: str) -> Set[ipaddress.IPv4Address]:
    """The public IPs a rule of ours translates: DNAT from ``-d``, SNAT to ``--to-source``."""
    found = set()
    for match in (_DEST.search(spec) if "-j DNAT" in spec else None, _TO_SOURCE.search(spec)):
        if match:
            try:
                found.add(ipaddress.IPv4Address(match.group(1)))
            except ValueError:
                continue
    return found


class _Index:
    """What the rules of our VM chains say of the markers: which chains jump to each, and
    which translate an IP without jumping to its marker."""

    def __init__(self) -> None:
        self.refs: Dict[str, Set[str]] = {}
        self.translating: Dict[str, Set[str]] = {}  # chain -> markers its rules need

    def note(self, chain: str, line: str,
             claims: Dict[ipaddress.IPv4Address, Set[int]]) -> None:
        """Note a rule of a VM chain; for another VM's, which public IPs it claims."""
        at = line.find(f"-j {MARKER_PREFIX}")
        if at >= 0:
            self.refs.setdefault(line[at + 3:].split(" ", 1)[0], set()).add(chain)
            return
        tag = _ALIAS_TAG.search(line)
        if tag:
            for address in _public_ips(line):
                claims.setdefault(address, set()).add(int(tag.group(1)))
                self.translating.setdefault(chain, set()).add(marker(address))

    def unindexed(self) -> Set[str]:
        return {chain for chain, needed in self.translating.items()
                if any(chain not in self.refs.get(m, ()) for m in needed)}


def _mapping_of(spec: str, vm_id: int) -> List[Mapping]:
    tag, dest, to = _ALIAS_TAG.search(spec), _DEST.search(spec), _TO_DEST.search(spec)
    if not (tag and dest and to) or int(tag.group(1)) != vm_id:
        return []
    return [Mapping(int(tag.group(2)), ipaddress.IPv4Address(dest.group(1)),
                    ipaddress.IPv4Address(to.group(1)))]


@dataclass
class Takeover:
    """Another VM's rules for public IPs this VM now holds (that VM's ``clean`` never ran
    here: a dead host, ``onevm recover --delete``): its chains go to ``maps``, its other
    aliases kept."""

    vm_id: int
    view: TableView
    maps: List[Mapping]
    taken: List[ipaddress.IPv4Address]

    def note(self) -> str:
        ips = ", ".join(str(ip) for ip in self.taken)
        return (f"took over {ips} from vm={self.vm_id}: that VM's rules for "
                f"{'it' if len(self.taken) == 1 else 'them'} removed")


def takeovers(table_text: str, vm_id: int, view: TableView,
              maps: Sequence[Mapping]) -> List[Takeover]:
    """What other VMs translate of the public IPs in ``maps`` (DNAT or SNAT), in the chains
    their dispatchers jump to. Their mappings are read from their PRE chain; a VM whose
    action was cut short between chains (stock sudoers) may still have the IP in another."""
    ips = {m.alias_ip for m in maps}
    found = []
    for other in sorted({o for ip in ips for o in view.claims.get(ip, ()) if o != vm_id}):
        theirs = read_view(table_text, other)
        reachable = {ip for builtin in DISPATCH for chain in theirs.jumped(other, builtin)[:1]
                     for spec in theirs.own_rules.get(chain, []) for ip in _public_ips(spec)}
        taken = sorted(reachable & ips)
        if taken:
            found.append(Takeover(other, theirs,
                                  [m for m in theirs.current if m.alias_ip not in ips], taken))
    return found


# -- the change --------------------------------------------------------------------------------


def _comment(vm_id: int, nic_id: Optional[int] = None) -> str:
    text = f"{TAG} vm={vm_id}" + (f" alias={nic_id}" if nic_id is not None else "")
    return f'-m comment --comment "{text}"'


def _comment_plain() -> str:
    return f'-m comment --comment "{TAG}"'


def rules_for(vm_id: int, maps: Sequence[Mapping]) -> Dict[str, List[str]]:
    """The rule specs (after ``-A <chain>``) of each of the VM's chains, by built-in chain."""
    rules: Dict[str, List[str]] = {b: [] for b in DISPATCH}
    snat_done: Set[ipaddress.IPv4Address] = set()
    for m in sorted(maps):
        mark = f"{_comment(vm_id, m.nic_id)} -j {marker(m.alias_ip)}"
        dnat = (f"-d {m.alias_ip}/32 {_comment(vm_id, m.nic_id)} "
                f"-j DNAT --to-destination {m.parent_ip}")
        rules["PREROUTING"] += [mark, dnat]
        rules["OUTPUT"] += [mark, dnat]
        if m.parent_ip not in snat_done:
            snat_done.add(m.parent_ip)
            private = f"! -o {m.bridge} " if m.bridge else ""
            rules["POSTROUTING"] += [mark, f"-s {m.parent_ip}/32 {private}"
                                           f"{_comment(vm_id, m.nic_id)} "
                                           f"-j SNAT --to-source {m.alias_ip}"]
    return rules


def restore_script(vm_id: int, view: TableView, maps: Sequence[Mapping],
                   others: Sequence[Takeover] = ()) -> str:
    """One nat-table transaction taking the VM's chains from ``view`` to ``maps`` (and first
    those of ``others`` to theirs): the first generation of each chain holds the rules; a
    second generation (left by the stock-sudoers mode) is unhooked and deleted in the same
    transaction."""
    parts = [*[(o.vm_id, o.view, o.maps) for o in others], (vm_id, view, maps)]
    changed = _changed_chains(view, [part[0] for part in parts])
    wanted_markers, unused = _markers_after(view, parts, changed)
    lines = ["*nat", *(f":{m} - [0:0]" for m in wanted_markers)]  # created (they are empty)
    body: List[str] = []
    for change in parts:
        declared, changes = _restore_part(*change)
        lines.extend(d for d in declared if d not in lines)
        body.extend(c for c in changes if not (c.startswith("-I ") and c in body))
    body.extend(f"-X {m}" for m in unused)
    if not view.unindexed - changed:  # every chain of ours jumps to its IPs' markers now
        lines.append(f":{INDEX} - [0:0]")
    elif INDEX in view.chains:
        body.append(f"-X {INDEX}")
    return "\n".join(lines + body + ["COMMIT", ""])


def _changed_chains(view: TableView, vm_ids: Sequence[int]) -> Set[str]:
    prefixes = tuple(f"ALIAS_SDNAT_{v}_" for v in vm_ids)
    return {c for c in view.chains if c.startswith(prefixes)}


def _markers_after(view: TableView, parts: Sequence[Tuple[int, TableView, Sequence[Mapping]]],
                   changed: Set[str]) -> Tuple[List[str], List[str]]:
    """The markers the VMs of ``parts`` jump to after the change, and the markers only their
    old chains (``changed``) jumped to (deleted after them)."""
    wanted_markers = markers_of([m for _, _, maps in parts for m in maps])
    unused = sorted(m for m, refs in view.marker_refs.items()
                    if refs & changed and not refs - changed and m not in wanted_markers
                    and m in view.chains)
    return wanted_markers, unused


def _restore_part(vm_id: int, view: TableView, maps: Sequence[Mapping]
                  ) -> Tuple[List[str], List[str]]:
    """The chain declarations and the changes of one VM's part of a restore script."""
    lines: List[str] = []
    body: List[str] = []
    if maps:
        for builtin, dispatcher in DISPATCH.items():
            if dispatcher not in view.chains:
                lines.append(f":{dispatcher} - [0:0]")
            if dispatcher not in view.builtin_jumps:
                body.append(f"-I {builtin} 1 {_comment_plain()} -j {dispatcher}")
        for builtin, specs in rules_for(vm_id, maps).items():
            chain = vm_chain(vm_id, builtin)
            lines.append(f":{chain} - [0:0]")  # declared: created, or emptied
            body.extend(f"-A {chain} {spec}" for spec in specs)
        for builtin, dispatcher in DISPATCH.items():
            chain = vm_chain(vm_id, builtin)
            if (dispatcher, chain) not in view.vm_jumps:
                body.append(f"-A {dispatcher} {_comment(vm_id)} -j {chain}")
    stale = GENERATIONS[1:] if maps else GENERATIONS
    for builtin, dispatcher in DISPATCH.items():
        for generation in stale:
            chain = vm_chain(vm_id, builtin, generation)
            if (dispatcher, chain) in view.vm_jumps:
                body.append(f"-D {dispatcher} {_comment(vm_id)} -j {chain}")
            if chain in view.chains:
                lines.append(f":{chain} - [0:0]")
                body.append(f"-X {chain}")
    return lines, body


def leave_script(vm_id: int, maps: Sequence[Mapping]) -> str:
    """A nat-table transaction that removes the VM's chains without reading the table, valid
    only in their usual state: each dispatcher jumps once to the first generation, which holds
    exactly ``rules_for(maps)``, and no second generation exists. Every other state makes a
    line fail (``-D`` of a missing rule, ``-X`` of a chain still referenced or not empty,
    ``-N`` of an existing chain), and a failed transaction changes nothing: the caller then
    reads the table and takes the general path."""
    lines = ["*nat"]
    for builtin, specs in rules_for(vm_id, maps).items():
        chain, stale = (vm_chain(vm_id, builtin, g) for g in GENERATIONS)
        lines.append(f"-D {DISPATCH[builtin]} {_comment(vm_id)} -j {chain}")
        lines.extend(f"-D {chain} {spec}" for spec in specs)
        lines.extend([f"-X {chain}", f"-N {stale}", f"-X {stale}"])
    # its markers: deleted, or (another VM still jumps to one) the transaction fails
    lines += [f"-X {m}" for m in markers_of(maps)]
    return "\n".join(lines + ["COMMIT", ""])


def deploy_script(vm_id: int, maps: Sequence[Mapping]) -> str:
    """A nat-table transaction that writes the VM's chains without reading the table, valid
    only when the dispatchers are hooked in, the index is complete (:data:`INDEX`), the VM
    has no chain and no VM holds any of its public IPs (their markers do not exist). Any
    other state makes a line fail and the transaction change nothing: the caller then reads
    the table (takeovers, dispatchers, an older driver's rules) and takes the general path."""
    lines = ["*nat", f"-F {INDEX}"]
    lines += [f"-C {builtin} {_comment_plain()} -j {dispatcher}"
              for builtin, dispatcher in DISPATCH.items()]
    lines += [f"-N {m}" for m in markers_of(maps)]
    for builtin, specs in rules_for(vm_id, maps).items():
        chain, stale = (vm_chain(vm_id, builtin, g) for g in GENERATIONS)
        lines += [f"-N {chain}", f"-N {stale}", f"-X {stale}"]
        lines += [f"-A {chain} {spec}" for spec in specs]
        lines.append(f"-A {DISPATCH[builtin]} {_comment(vm_id)} -j {chain}")
    return "\n".join(lines + ["COMMIT", ""])


def leaving(action: str, vm: VM) -> bool:
    """Whether ``action`` removes all of the VM's rules: clean with no alias or NIC in
    ATTACH=YES (the VM leaves the host)."""
    return (action == "clean" and not any(a.attach for a in vm.aliases)
            and not any(n.attach for n in vm.nics))


def deploying(action: str, vm: VM) -> bool:
    """Whether ``action`` is a post that wants every translated alias (no alias in
    ATTACH=YES): on a VM without chains, the deploy script's case."""
    return action == "post" and not any(a.attach for a in vm.aliases)


def stock_commands(vm_id: int, view: TableView, maps: Sequence[Mapping]) -> List[List[str]]:
    """The single ``iptables -t nat`` commands (arguments after ``-t nat``) that take the
    VM's chains from ``view`` to ``maps`` when iptables-restore is not allowed: fill a fresh
    generation of each chain that changes, switch the dispatcher's jump to it with one
    ``-R``, then flush and delete the old one. Empty when nothing changes."""
    steps: Dict[str, List[List[str]]] = {"setup": [], "fill": [], "switch": [], "cleanup": []}
    wanted_rules = rules_for(vm_id, maps)
    wanted_markers, unused = _markers_after(view, [(vm_id, view, maps)],
                                            _changed_chains(view, [vm_id]))
    for builtin, dispatcher in DISPATCH.items():
        if maps:
            if dispatcher not in view.chains:
                steps["setup"].append(["-N", dispatcher])
            if dispatcher not in view.builtin_jumps:
                steps["setup"].append(["-I", builtin, "1", *shlex.split(_comment_plain()),
                                       "-j", dispatcher])
        _stock_chain(vm_id, builtin, view, wanted_rules[builtin] if maps else None, steps)
    if not any(steps.values()):
        return []
    steps["setup"] += [["-N", m] for m in wanted_markers if m not in view.chains]
    steps["cleanup"] += [["-X", m] for m in unused]  # once no chain jumps to them
    return steps["setup"] + steps["fill"] + steps["switch"] + steps["cleanup"]


def _stock_chain(vm_id: int, builtin: str, view: TableView, specs: Optional[List[str]],
                 steps: Dict[str, List[List[str]]]) -> None:
    """The steps for the VM's chain of ``builtin``: ``specs`` wanted in it, or None for no
    chain at all."""
    dispatcher = DISPATCH[builtin]
    jump = shlex.split(_comment(vm_id))
    jumped = view.jumped(vm_id, builtin)
    current = jumped[0] if jumped else None
    target: Optional[str] = None
    if specs is not None:
        if current is not None and view.own_rules.get(current, []) == specs:
            target = current  # already right: leave it alone
        else:
            base, alternate = (vm_chain(vm_id, builtin, g) for g in GENERATIONS)
            target = alternate if current == base else base
            steps["fill"].append(["-F" if target in view.chains else "-N", target])
            steps["fill"].extend(["-A", target, *shlex.split(spec)] for spec in specs)
            if current is None:
                steps["switch"].append(["-A", dispatcher, *jump, "-j", target])
            else:  # one rule replaced in place: the switch is atomic
                number = str(view.vm_jumps[(dispatcher, current)])
                steps["switch"].append(["-R", dispatcher, number, *jump, "-j", target])
    for generation in GENERATIONS:
        chain = vm_chain(vm_id, builtin, generation)
        if chain == target:
            continue
        replaced = chain == current and target is not None  # its jump now leads to target
        if (dispatcher, chain) in view.vm_jumps and not replaced:
            steps["cleanup"].append(["-D", dispatcher, *jump, "-j", chain])
        if chain in view.chains:
            steps["cleanup"].extend([["-F", chain], ["-X", chain]])


# -- effects -----------------------------------------------------------------------------------


class Iptables:
    """The iptables commands of one flavour, never through a shell: run directly when the
    effective uid is 0, else through ``sudo -n`` (which finds them on its secure_path)."""

    def __init__(self, flavour: str = "", euid: Optional[int] = None) -> None:
        if flavour not in FLAVOURS:
            raise ConfigError(f"ALIAS_SDNAT_IPTABLES must be legacy or nft, got {flavour!r}")
        self.cmd, self.save_cmd, self.restore_cmd = FLAVOURS[flavour]
        self.euid = os.geteuid() if euid is None else euid
        self.sudo = self.euid != 0
        self.spawned = 0

    def _binary(self, name: str) -> str:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path is None:
            raise ProviderError(f"{name} not found: install iptables on this host "
                                "(apt-get install iptables)")
        return path

    def _user(self) -> str:
        try:
            return pwd.getpwuid(self.euid).pw_name
        except KeyError:
            return f"uid {self.euid}"

    def _spawn(self, argv: List[str], stdin: Optional[str] = None
               ) -> subprocess.CompletedProcess:
        self.spawned += 1
        env = dict(os.environ, LC_ALL="C")  # sudo's refusals in words we recognise
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env,
                                  timeout=COMMAND_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{os.path.basename(argv[0])} did not finish in "
                                f"{COMMAND_SECONDS:.0f}s") from None
        except FileNotFoundError:
            if argv[0] == "sudo":
                raise ProviderError("sudo not found: the driver runs iptables through sudo when "
                                    f"not root; {SUDOERS_HINT}") from None
            raise ProviderError(f"{os.path.basename(argv[0])} not found: install iptables "
                                "on this host (apt-get install iptables)") from None

    def _run(self, name: str, args: List[str], stdin: Optional[str] = None) -> str:
        proc = self._spawn(self._argv(name, args), stdin)
        if proc.returncode != 0:
            raise self._refusal(name, proc) or ProviderError(f"{name} failed: {_why(proc)}")
        return proc.stdout

    def _argv(self, name: str, args: List[str]) -> List[str]:
        return ["sudo", "-n", name, *args] if self.sudo else [self._binary(name), *args]

    def _refusal(self, name: str, proc: subprocess.CompletedProcess
                 ) -> Optional[ProviderError]:
        """The error for a failure that is sudo's, not the command's, or None."""
        why = _why(proc)
        if self.sudo and why.startswith("sudo:") and "command not found" in why:
            return ProviderError(f"{name} not found: install iptables on this host "
                                 "(apt-get install iptables)")
        if self.sudo and (why.startswith("sudo:") or "is not allowed to execute" in why):
            return ProviderError(f"sudo refused {name} for {self._user()}: {SUDOERS_HINT}")
        return None

    def transactions(self) -> bool:
        """Whether iptables-save/-restore may run: as root, or when sudo allows
        iptables-restore (``sudo -n -l``: one process, and sudo logs no refusal)."""
        if not self.sudo:
            return True
        return self._spawn(["sudo", "-n", "-l", self.restore_cmd]).returncode == 0

    def try_restore(self, script: str) -> bool:
        """Apply ``script`` as one transaction; False when iptables-restore rejected it (then
        nothing changed). A refusal by sudo still raises."""
        proc = self._spawn(self._argv(self.restore_cmd, ["--noflush", *XTABLES_WAIT]), script)
        if proc.returncode != 0:
            refused = self._refusal(self.restore_cmd, proc)
            if refused is not None:
                raise refused
        return proc.returncode == 0

    def save(self) -> str:
        return self._run(self.save_cmd, ["-t", "nat"])

    def restore(self, script: str) -> None:
        self._run(self.restore_cmd, ["--noflush", *XTABLES_WAIT], script)

    def list_rules(self) -> str:
        return self._run(self.cmd, [*XTABLES_WAIT, "-t", "nat", "-S"])

    def change(self, args: List[str]) -> None:
        self._run(self.cmd, [*XTABLES_WAIT, "-t", "nat", *args])


def _why(proc: subprocess.CompletedProcess) -> str:
    return " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"


def default_lock_path() -> str:
    """``.alias_sdnat.lock`` beside the running action (``/var/tmp/one/vnm/alias_sdnat/`` on
    a host: a directory of oneadmin's, that no other user can write)."""
    return os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), LOCK_NAME)


def parse_input(data: bytes) -> VM:
    return parse_vnm_view(hostxml.parse_base64(data))


@dataclass
class Outcome:
    before: int
    after: int
    mode: str = "-"
    notes: List[str] = field(default_factory=list)  # lines for the VM's log


def _without_reading(action: str, vm: VM, iptables: Iptables, lock: PrivateLock
                     ) -> Optional[Tuple[int, int]]:
    """A VM leaving the host, or deployed on it, in the usual state: one transaction that
    holds only in that state, without reading the table (whose size grows with the other
    VMs' rules). The aliases before and after, or None when it did not apply."""
    maps = mappings(vm)
    if not maps or not lock.confirm():
        return None
    if leaving(action, vm) and iptables.try_restore(leave_script(vm.id, maps)):
        return len(maps), 0
    if deploying(action, vm) and iptables.try_restore(deploy_script(vm.id, maps)):
        return 0, len(maps)
    return None


def apply(action: str, vm: VM, iptables: Iptables, lock_path: str) -> Outcome:
    """Bring the VM's chains to what ``action`` wants. pre and update_sg have nothing to
    do: the rules need the VM's deploy (post), and the aliases have no security groups of
    their own. post takes its public IPs over from any other VM whose rules still hold
    them (in the same transaction, or, with single commands, before writing its own)."""
    if action not in ("post", "clean"):
        return Outcome(0, 0)
    notes: List[str] = []
    with PrivateLock(lock_path, LOCK_SECONDS, LOCK_POLL_SECONDS) as lock:
        transactions = iptables.transactions()
        mode = "transaction" if transactions else "stock-sudoers"
        if transactions:
            blind = _without_reading(action, vm, iptables, lock)
            if blind is not None:
                return Outcome(*blind, mode, notes)
        while True:
            text = iptables.save() if transactions else iptables.list_rules()
            view = read_view(text, vm.id)
            target = wanted(action, vm, view.current)
            if target is None:
                return Outcome(len(view.current), len(view.current), mode, notes)
            others = takeovers(text, vm.id, view, target) if action == "post" else []
            if not target and not others and not view.owns_chains(vm.id):
                return Outcome(0, 0, mode, notes)  # nothing of ours for this VM: nothing to do
            if not lock.confirm():  # lost: somebody may have changed the table since
                continue
            if transactions:
                iptables.restore(restore_script(vm.id, view, target, others))
                notes.extend(o.note() for o in others)
                break
            if not others:
                for args in stock_commands(vm.id, view, target):
                    iptables.change(args)
                break
            for other in others:  # then read again: the dispatchers' rule numbers moved
                for args in stock_commands(other.vm_id, other.view, other.maps):
                    iptables.change(args)
                notes.append(other.note())
        return Outcome(len(view.current), len(target), mode, notes)


def main(action: str, argv: Sequence[str]) -> None:
    """Entry point of remotes/vnm/alias_sdnat/<action>: ``post <deploy id> [ignored...]``."""

    def body() -> int:
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
        if argv and argv[0] and not _DEPLOY_ID.fullmatch(argv[0]):
            raise InputError(f"the deploy id {argv[0][:60]!r} is not a hypervisor domain name")
        vm = parse_input(read_stdin())
        started = time.perf_counter()
        iptables = Iptables(os.environ.get("ALIAS_SDNAT_IPTABLES", ""))
        outcome = apply(action, vm, iptables,
                        os.environ.get("ALIAS_SDNAT_LOCK") or default_lock_path())
        took = elapsed_ms(started)
        for note in outcome.notes:
            sys.stderr.write(f"alias_sdnat {action} vm={vm.id}: {note}\n")
        if action == "post":
            for note in skipped(vm):
                sys.stderr.write(f"alias_sdnat {action} vm={vm.id}: warning: {note}\n")
        mode = f"{outcome.mode} mode, " if outcome.mode != "-" else ""
        sys.stderr.write(f"alias_sdnat {action} vm={vm.id}: aliases {outcome.before} -> "
                         f"{outcome.after}, {mode}{iptables.spawned} iptables run(s), "
                         f"{took:.0f} ms\n")
        return 0

    run(body, prefix=f"alias_sdnat {action}")
