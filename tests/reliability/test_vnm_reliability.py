"""The alias_sdnat VNM driver under concurrency and crashes, on a scratch "hypervisor"
network namespace (root needed): its nat table is what the checks read.

- Concurrency: post for many VMs at once, then clean for some while others post again
  and new ones post: every VM ends with all of its rules or none, nothing twice.
- Crash safety: post and clean killed (the whole process group, SIGKILL) at many moments,
  including deterministically just before each command it would spawn: the VM's rules are
  the old set or the new set, never a mix; a bystander VM is untouched; a rerun converges.

The driver reads the VNM view (what one_vmm_exec sends). It runs as root (one
iptables-restore transaction), and for the concurrency and kill-at-spawn checks also as
oneadmin through real sudo: with the install.sh --node drop-in (transaction) and with the
stock ONE_NET rule only (single iptables commands; there each of the VM's chains, the
inbound DNAT and the outbound SNAT, is checked to be old or new after every kill).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from fixtures import hostuser
from fixtures.common import netns_missing_reason
from fixtures.vnmview import vnm_view
from reliability.relsupport import REMOTES, VM_XML, base_env, count, lost, vnm_actions

VNM_DIR = REMOTES / "vnm" / "alias_sdnat"
REASON = netns_missing_reason()
pytestmark = [
    pytest.mark.skipif(not vnm_actions(), reason="no VNM actions under remotes/vnm/alias_sdnat"),
    pytest.mark.skipif(bool(REASON), reason=REASON or "-"),
]

SPAWN_KILLER = '''
import os, signal, sys
_n = int(os.environ.get("REL_KILL_AT_SPAWN", "0") or 0)
_seen = [0]
def _hook(event, args):
    if _n and event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork"):
        _seen[0] += 1
        if _seen[0] >= _n:
            os.killpg(os.getpgrp(), signal.SIGKILL)
sys.addaudithook(_hook)
'''


def vm_xml(vm_id: int, parent: str, aliases: Sequence[str]) -> bytes:
    """The sample VM as VM ``vm_id`` with NIC0 = ``parent`` and one external alias_sdnat
    alias per address (a whole VM: Hypervisor.run sends its VNM view)."""
    root = ET.fromstring(VM_XML)
    root.find("ID").text = str(vm_id)
    root.find("DEPLOY_ID").text = f"one-{vm_id}"
    template = root.find("TEMPLATE")
    template.find("NIC/IP").text = parent
    template.find("NIC/ALIAS_IDS").text = ",".join(str(i + 1) for i in range(len(aliases)))
    sample = template.find("NIC_ALIAS")
    template.remove(sample)
    for index, ip in enumerate(aliases):
        alias = ET.fromstring(ET.tostring(sample))
        alias.find("IP").text = ip
        alias.find("NIC_ID").text = str(index + 1)
        alias.find("ALIAS_ID").text = str(index)
        alias.find("NAME").text = f"NIC0_ALIAS{index}"
        template.append(alias)
    return ET.tostring(root)


class Hypervisor:
    """A network namespace standing in for a host, and the VNM actions run inside it: as
    root (``mode`` "root"), or as oneadmin from a /var/tmp/one-like ``tree`` through sudo
    ("dropin", "stock": the sudoers in force)."""

    def __init__(self, tmp: Path, mode: str = "root", tree: Optional[Path] = None) -> None:
        self.name = f"rel-hv-{uuid.uuid4().hex[:8]}"
        self.ip = shutil.which("ip") or "/usr/sbin/ip"
        self.tmp, self.mode, self.tree = tmp, mode, tree
        subprocess.run([self.ip, "netns", "add", self.name], check=True)
        self.prefix = [self.ip, "netns", "exec", self.name]
        if mode == "root":
            self.env = base_env()
            self.env["ALIAS_SDNAT_LOCK"] = str(tmp / "alias_sdnat.lock")
        else:  # the lock is the default one, in the tree's driver directory
            self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}

    def close(self) -> None:
        subprocess.run([self.ip, "netns", "delete", self.name], check=False)

    def argv(self, action: str, vm_id: int) -> List[str]:
        args = [f"one-{vm_id}"] if action == "post" else []
        if self.tree is None:
            return [*self.prefix, str(VNM_DIR / action), *args]
        driver = str(self.tree / "vnm" / "alias_sdnat" / action)
        return [*self.prefix, *hostuser.as_user([driver]), *args]

    def run(self, action: str, vm_id: int, xml: bytes, env: Optional[Dict] = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(action, vm_id),
                              input=base64.b64encode(vnm_view(xml)) + b"\n",
                              capture_output=True, env=env or self.env, timeout=60)

    def start(self, action: str, vm_id: int, xml: bytes, env: Optional[Dict] = None
              ) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(action, vm_id), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env or self.env, start_new_session=True)
        proc.stdin.write(base64.b64encode(vnm_view(xml)) + b"\n")
        proc.stdin.close()
        return proc

    def nat(self) -> List[str]:
        out = subprocess.run([*self.prefix, "iptables-save", "-t", "nat"], capture_output=True,
                             text=True, check=True).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def killer_dir(self) -> Path:
        """Where a sitecustomize the driver's user can read goes."""
        return (self.tree or self.tmp) / "killer"




@contextmanager
def hypervisor(tmp: Path, mode: str) -> Iterator[Hypervisor]:
    if mode == "root":
        host = Hypervisor(tmp)
        try:
            yield host
        finally:
            host.close()
        return
    with hostuser.driver_setup(mode, tmp) as tree:
        host = Hypervisor(tmp, mode, tree)
        try:
            yield host
        finally:
            host.close()


@pytest.fixture
def hv(tmp_path: Path):
    with hypervisor(tmp_path, "root") as host:
        yield host


@pytest.fixture(params=["root", "dropin", "stock"])
def any_hv(request, tmp_path: Path):
    with hypervisor(tmp_path, request.param) as host:
        yield host


def _options(line: str) -> Dict[str, str]:
    """-d/-s/--to-destination/--to-source of an iptables-save rule, addresses without /32
    or ports."""
    words = line.split()
    found = {}
    for flag in ("-d", "-s", "--to-destination", "--to-source"):
        if flag in words and words.index(flag) + 1 < len(words):
            value = words[words.index(flag) + 1]
            found[flag] = value.split("/")[0].split(":")[0]
    return found


def _reachable(lines: Sequence[str], start: str) -> set:
    """Chains reachable from built-in ``start`` through -j jumps."""
    edges: Dict[str, set] = {}
    for line in lines:
        words = line.split()
        if len(words) > 1 and "-j" in words and words.index("-j") + 1 < len(words):
            edges.setdefault(words[1], set()).add(words[words.index("-j") + 1])
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def rules_of(lines: Sequence[str], parent: str, aliases: Sequence[str],
             need_snat: bool = True) -> str:
    """'all' when every alias has a DNAT rule to the parent reachable from PREROUTING and
    (with need_snat) the parent an SNAT rule to one of them reachable from POSTROUTING;
    'none' when no rule names any of the aliases; else 'partial'."""
    pre, post = _reachable(lines, "PREROUTING"), _reachable(lines, "POSTROUTING")
    parsed = [(line.split()[1], _options(line)) for line in lines]
    touched = any(ip in o.values() for _, o in parsed for ip in aliases)
    dnat = all(any(c in pre and o.get("-d") == ip and o.get("--to-destination") == parent
                   for c, o in parsed) for ip in aliases)
    snat = not need_snat or any(c in post and o.get("-s") == parent
                                and o.get("--to-source") in aliases for c, o in parsed)
    if dnat and snat:
        return "all"
    return "partial" if touched else "none"


def duplicates(lines: Sequence[str]) -> List[str]:
    return sorted({line for line in lines if lines.count(line) > 1})


def addresses(vm_id: int, n: int) -> tuple:
    return f"192.168.{100 + vm_id // 200}.{vm_id % 200 + 2}", [
        f"147.75.{vm_id}.{i + 1}" for i in range(n)]


def test_parallel_post_and_clean_for_different_vms(any_hv: Hypervisor) -> None:
    hv = any_hv
    vms = {vm: addresses(vm, 2) for vm in range(1, 13)}
    xml = {vm: vm_xml(vm, *vms[vm]) for vm in vms}

    def together(jobs) -> List[subprocess.CompletedProcess]:
        barrier = threading.Barrier(len(jobs))
        results: List = [None] * len(jobs)

        def work(i: int) -> None:
            barrier.wait()
            results[i] = jobs[i]()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        count("concurrent_runs", len(jobs))
        return results

    first = together([lambda vm=vm: hv.run("post", vm, xml[vm]) for vm in range(1, 9)])
    for result in first:
        assert result.returncode == 0, result.stderr.decode()
    lines = hv.nat()
    for vm in range(1, 9):
        assert rules_of(lines, *vms[vm]) == "all", (vm, lines)
    jobs = [lambda vm=vm: hv.run("clean", vm, xml[vm]) for vm in range(1, 5)]
    jobs += [lambda vm=vm: hv.run("post", vm, xml[vm]) for vm in range(5, 13)]
    for result in together(jobs):
        assert result.returncode == 0, result.stderr.decode()
    lines = hv.nat()
    state = {vm: rules_of(lines, *vms[vm]) for vm in vms}
    want = {vm: ("none" if vm <= 4 else "all") for vm in vms}
    if state != want or duplicates(lines):
        lost(f"vnm concurrency: rules {state}, duplicates {duplicates(lines)[:3]}")
    assert state == want
    assert not duplicates(lines), duplicates(lines)


def _kill_group(proc: subprocess.Popen, after: float) -> bool:
    """SIGKILL the action's whole process group after ``after`` s; True if it was running."""
    time.sleep(after)
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    proc.stderr.close()
    if alive:
        count("killed_runs")
    return alive


def test_killed_post_and_clean_leave_old_or_new_rules(hv: Hypervisor, tmp_path: Path) -> None:
    bystander = addresses(200, 2)
    assert hv.run("post", 200, vm_xml(200, *bystander)).returncode == 0
    parent, aliases = addresses(7, 24)
    xml = vm_xml(7, parent, aliases)
    started = time.monotonic()
    assert hv.run("post", 7, xml).returncode == 0
    took = time.monotonic() - started
    assert hv.run("clean", 7, xml).returncode == 0
    assert rules_of(hv.nat(), parent, aliases) == "none"
    seen = {"post": set(), "clean": set()}
    live_kills = 0
    for action, before in (("post", "none"), ("clean", "all")):
        for fraction in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
            if before == "all":
                assert hv.run("post", 7, xml).returncode == 0
            else:
                assert hv.run("clean", 7, xml).returncode == 0
            live_kills += _kill_group(hv.start(action, 7, xml), took * fraction)
            lines = hv.nat()
            state = rules_of(lines, parent, aliases)
            seen[action].add(state)
            if state == "partial" or rules_of(lines, *bystander) != "all":
                lost(f"vnm: {action} killed at {fraction:.0%} left {state} rules")
            assert state in ("none", "all"), f"{action} killed at {fraction:.0%}: {lines}"
            assert rules_of(lines, *bystander) == "all"
            assert not duplicates(lines), duplicates(lines)
            rerun = hv.run(action, 7, xml)
            assert rerun.returncode == 0, rerun.stderr.decode()
            assert rules_of(hv.nat(), parent, aliases) == ("all" if action == "post"
                                                           else "none")
    assert live_kills >= 7, f"only {live_kills} of 14 kills hit a running action"


def _spawn_killer(hv: Hypervisor) -> Path:
    """A PYTHONPATH entry whose sitecustomize kills the action before its Nth spawn."""
    hooks = hv.killer_dir()
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SPAWN_KILLER)
    hooks.chmod(0o755)
    (hooks / "sitecustomize.py").chmod(0o644)
    return hooks


def _run_killed_at_spawn(hv: Hypervisor, hooks: Path, n: int, action: str, vm_id: int,
                         xml: bytes) -> int:
    """Run ``action`` for ``vm_id`` so that its process group dies before spawn ``n``; its
    exit code (0 when it spawned fewer than ``n`` commands)."""
    path = os.pathsep.join(p for p in (str(hooks), hv.env.get("PYTHONPATH", "")) if p)
    env = dict(hv.env, REL_KILL_AT_SPAWN=str(n), PYTHONPATH=path)
    proc = hv.start(action, vm_id, xml, env=env)
    proc.wait(timeout=60)
    proc.stderr.close()
    count("killed_runs")
    return proc.returncode


def test_killed_before_each_command_it_spawns(hv: Hypervisor, tmp_path: Path) -> None:
    """Deterministic kills: the whole group dies just before the Nth command the action
    would spawn, for every N. Each time the rules are the old or the new set."""
    hooks = _spawn_killer(hv)
    parent, aliases = addresses(9, 6)
    xml = vm_xml(9, parent, aliases)
    for action, before in (("post", "none"), ("clean", "all")):
        for n in range(1, 40):
            if before == "all":
                assert hv.run("post", 9, xml).returncode == 0
            code = _run_killed_at_spawn(hv, hooks, n, action, 9, xml)
            state = rules_of(hv.nat(), parent, aliases)
            if state == "partial":
                lost(f"vnm: {action} killed before spawn {n} left partial rules")
            assert state in ("none", "all"), f"{action} killed before spawn {n}"
            finished = code == 0
            done = hv.run(action, 9, xml)
            assert done.returncode == 0, done.stderr.decode()
            if action == "post":  # back to no rules for the next kill
                assert hv.run("clean", 9, xml).returncode == 0
            assert rules_of(hv.nat(), parent, aliases) == "none"
            if finished:  # the action spawned fewer than n commands: every point was tried
                break
        else:
            pytest.fail(f"{action} spawned 40+ commands for 6 aliases")


FAILING_RESTORE = """#!/bin/sh
cat > /dev/null
echo "iptables-restore: line 3 failed (injected)" >&2
exit 1
"""


@pytest.mark.parametrize("action", ["post", "clean"])
def test_iptables_restore_failing_leaves_rules_and_fails_cleanly(hv: Hypervisor, tmp_path,
                                                                 action: str) -> None:
    """The transaction is refused (iptables-restore fails): a one-line error, a non-zero
    exit, and the rules exactly as they were."""
    parent, aliases = addresses(11, 3)
    xml = vm_xml(11, parent, aliases)
    if action == "clean":
        assert hv.run("post", 11, xml).returncode == 0
    before = hv.nat()
    shim = tmp_path / "shim"
    shim.mkdir()
    real_save = shutil.which("iptables-save") or "/usr/sbin/iptables-save"
    for name in ("iptables-restore", "iptables-legacy-restore", "iptables-nft-restore"):
        (shim / name).write_text(FAILING_RESTORE)
        (shim / name).chmod(0o755)
    (shim / "iptables-save").symlink_to(real_save)
    env = dict(hv.env, PATH=f"{shim}{os.pathsep}{hv.env['PATH']}")
    result = hv.run(action, 11, xml, env=env)
    count("vnm_faults")
    stderr = result.stderr.decode()
    lines = stderr.splitlines()
    assert result.returncode not in (0, 70), stderr
    assert "Traceback" not in stderr
    assert lines.count("ERROR MESSAGE --8<------") == 1
    inner = lines[lines.index("ERROR MESSAGE --8<------") + 1:
                  lines.index("ERROR MESSAGE ------>8--")]
    assert len(inner) == 1 and "iptables-restore" in inner[0], inner
    assert hv.nat() == before


def _attaching(xml: bytes, nic_id: int) -> bytes:
    root = ET.fromstring(xml)
    for alias in root.find("TEMPLATE").findall("NIC_ALIAS"):
        if alias.find("NIC_ID").text == str(nic_id):
            ET.SubElement(alias, "ATTACH").text = "YES"
    return ET.tostring(root)


def test_hot_attach_and_detach_killed_keep_the_other_aliases(hv: Hypervisor,
                                                             tmp_path: Path) -> None:
    """A hot-plugged alias (ATTACH=YES): post/clean killed at each point leave the VM's
    other aliases mapped, and the new one wholly there or wholly absent."""
    hooks = _spawn_killer(hv)
    parent, aliases = addresses(12, 4)
    old, new = aliases[:3], aliases[3:]
    assert hv.run("post", 12, vm_xml(12, parent, old)).returncode == 0
    attach = _attaching(vm_xml(12, parent, aliases), 4)
    for action in ("post", "clean"):
        for n in (1, 2, 3):
            _run_killed_at_spawn(hv, hooks, n, action, 12, attach)
            lines = hv.nat()
            state_old = rules_of(lines, parent, old)
            state_new = rules_of(lines, parent, new, need_snat=False)  # SNAT: lowest alias
            if state_old != "all" or state_new == "partial":
                lost(f"vnm: hot {action} killed before spawn {n}: {state_old}/{state_new}")
            assert state_old == "all" and state_new in ("none", "all"), (action, n, lines)
            assert hv.run(action, 12, attach).returncode == 0
        want = "all" if action == "post" else "none"
        assert rules_of(hv.nat(), parent, new, need_snat=False) == want
        assert rules_of(hv.nat(), parent, old) == "all"


# -- as oneadmin with the stock sudoers: single iptables commands ----------------------------


def per_chain(lines: Sequence[str], parent: str, aliases: Sequence[str]) -> Dict[str, str]:
    """For each of the VM's translations, which aliases a packet can reach: the inbound
    DNAT from PREROUTING ("all", "none" or "partial") and the outbound SNAT from
    POSTROUTING ("one" of the aliases, or "none")."""
    pre, post = _reachable(lines, "PREROUTING"), _reachable(lines, "POSTROUTING")
    parsed = [(line.split()[1], _options(line)) for line in lines]
    dnat = [any(c in pre and o.get("-d") == ip and o.get("--to-destination") == parent
                for c, o in parsed) for ip in aliases]
    snat = [c for c, o in parsed if c in post and o.get("-s") == parent
            and o.get("--to-source") in aliases]
    return {"dnat": "all" if all(dnat) else "none" if not any(dnat) else "partial",
            "snat": "one" if len(snat) == 1 else "none" if not snat else "several"}


def _vm_chains(lines: Sequence[str], vm_id: int) -> set:
    return {line.split()[1] for line in lines if line.split()[1].startswith(
        f"ALIAS_SDNAT_{vm_id}_")}


@pytest.mark.parametrize("action", ["post", "change", "clean"])
def test_stock_sudoers_killed_before_each_command_leaves_each_chain_old_or_new(
        tmp_path: Path, action: str) -> None:
    """As oneadmin with OpenNebula's stock sudoers (no iptables-restore), killed before each
    command it spawns: every chain of the VM is the old or the new one (inbound all or none
    of the aliases, outbound SNAT one rule or none), a bystander never changes, and the
    next action converges and leaves no stray chain."""
    with hypervisor(tmp_path, "stock") as hv:
        hooks = _spawn_killer(hv)
        bystander = addresses(200, 2)
        assert hv.run("post", 200, vm_xml(200, *bystander)).returncode == 0
        parent, aliases = addresses(9, 3)
        old = vm_xml(9, parent, aliases)
        moved = [f"147.75.9.{i + 50}" for i in range(3)]
        other = vm_xml(9, parent, moved)
        start, target, run_as = {"post": (None, old, "post"), "change": (old, other, "post"),
                                 "clean": (old, old, "clean")}[action]
        want = "none" if action == "clean" else "all"
        final_aliases = moved if action == "change" else aliases
        for n in range(1, 60):
            if start is not None:
                assert hv.run("post", 9, start).returncode == 0
            code = _run_killed_at_spawn(hv, hooks, n, run_as, 9, target)
            lines = hv.nat()
            states = [per_chain(lines, parent, aliases)]
            if action == "change":  # old or new, never both at once
                states.append(per_chain(lines, parent, moved))
                assert per_chain(lines, parent, aliases + moved)["snat"] != "several"
                assert "none" in (states[0]["dnat"], states[1]["dnat"]), (n, lines)
            for state in states:
                if state["dnat"] == "partial" or state["snat"] == "several":
                    lost(f"vnm stock: {action} killed before spawn {n} left {state}")
                assert state["dnat"] != "partial" and state["snat"] != "several", (n, lines)
            assert rules_of(lines, *bystander) == "all"
            done = hv.run(run_as, 9, target)
            assert done.returncode == 0, done.stderr.decode()
            assert b"stock-sudoers mode" in done.stderr, done.stderr.decode()
            lines = hv.nat()
            assert per_chain(lines, parent, final_aliases)["dnat"] == want, (n, lines)
            assert len(_vm_chains(lines, 9)) == (0 if action == "clean" else 3), lines
            assert hv.run("clean", 9, target).returncode == 0
            assert _vm_chains(hv.nat(), 9) == set()
            if code == 0:  # it spawned fewer than n commands: every point was tried
                break
        else:
            pytest.fail(f"{action} spawned 60+ commands for 3 aliases")


# -- taking an address over from a VM whose clean never ran ----------------------------------


def _dnat_targets(lines: Sequence[str], ip: str) -> List[str]:
    """The parents a packet for ``ip`` may be sent to, by reachable DNAT rules in order."""
    pre = _reachable(lines, "PREROUTING")
    return [o["--to-destination"] for c, o in
            ((line.split()[1], _options(line)) for line in lines)
            if c in pre and o.get("-d") == ip and "--to-destination" in o]


@pytest.mark.parametrize("mode", ["root", "stock"])
def test_takeover_killed_before_each_command(tmp_path: Path, mode: str) -> None:
    """VM 5's post takes 147.75.3.1 over from VM 3 (whose clean never ran), killed before
    each command it spawns: the address goes to VM 3's parent, to nobody (stock sudoers:
    between the two VMs' changes) or to VM 5's, never to both; VM 3's other alias and a
    bystander never change; the rerun gives the address to VM 5."""
    with hypervisor(tmp_path, mode) as hv:
        hooks = _spawn_killer(hv)
        bystander = addresses(200, 2)
        assert hv.run("post", 200, vm_xml(200, *bystander)).returncode == 0
        old_parent, old_aliases = addresses(3, 2)
        taken, kept = old_aliases
        new_parent = addresses(5, 1)[0]
        old, new = vm_xml(3, old_parent, old_aliases), vm_xml(5, new_parent, [taken])
        for n in range(1, 60):
            assert hv.run("clean", 5, new).returncode == 0
            assert hv.run("post", 3, old).returncode == 0
            assert _dnat_targets(hv.nat(), taken) == [old_parent]
            code = _run_killed_at_spawn(hv, hooks, n, "post", 5, new)
            lines = hv.nat()
            targets = _dnat_targets(lines, taken)
            if len(targets) > 1 or rules_of(lines, old_parent, [kept], need_snat=False) != "all":
                lost(f"vnm takeover ({mode}) killed before spawn {n}: {targets}")
            assert targets in ([old_parent], [], [new_parent]), (n, lines)
            assert targets or mode == "stock", (n, lines)
            assert rules_of(lines, old_parent, [kept], need_snat=False) == "all", (n, lines)
            assert per_chain(lines, old_parent, old_aliases)["snat"] != "several", (n, lines)
            assert rules_of(lines, *bystander) == "all"
            done = hv.run("post", 5, new)
            assert done.returncode == 0, done.stderr.decode()
            lines = hv.nat()
            assert _dnat_targets(lines, taken) == [new_parent], (n, lines)
            assert rules_of(lines, new_parent, [taken]) == "all"
            assert rules_of(lines, old_parent, [kept]) == "all"  # its SNAT moved to .2
            if code == 0:  # it spawned fewer than n commands: every point was tried
                break
        else:
            pytest.fail("the takeover spawned 60+ commands")
