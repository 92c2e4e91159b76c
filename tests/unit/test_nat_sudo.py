"""alias_sdnat as oneadmin: iptables through ``sudo -n``, the transaction mode when sudo allows
iptables-restore, the stock-sudoers mode (single iptables commands) when it does not, and a
one-line error naming the sudoers rule when sudo refuses even iptables.

The stock-sudoers steps are played on a model of the nat table (fixtures.fake_iptables)
command by command: after every single command each of the VM's chains is either the old
one or the new one, whatever the starting point (empty, built by the other mode, left by a
killed action), and other VMs' and the operator's rules never change. The same model backs
a fake ``sudo`` on PATH for the whole action (tests/e2e and tests/reliability do it with
real sudo and iptables)."""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from fixtures.fake_iptables import BUILTINS, IptablesError, NatTable, spec_text
from fixtures.vmxml import vm_xml
from fixtures.vnmview import CAPTURED, vnm_view
from packet_provider.core import hostxml
from packet_provider.core.errors import ProviderError
from packet_provider.core.oned import parse_vnm_view
from packet_provider.vnm import nat

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_iptables.py"
HOOKS = ("PREROUTING", "OUTPUT", "POSTROUTING")
OPERATOR = {"PREROUTING": ["-d 203.0.113.1/32 -j DNAT --to-destination 10.0.0.1"],
            "POSTROUTING": ["-s 10.0.0.1/32 -j MASQUERADE"]}


def vm_of(vm_id: int, aliases, **kw):
    return parse_vnm_view(hostxml.parse(vnm_view(vm_xml(vm_id, aliases=aliases, **kw))))


def maps_of(vm_id: int, aliases, **kw) -> List[nat.Mapping]:
    return nat.mappings(vm_of(vm_id, aliases, **kw))


def effective(table: NatTable, vm_id: int) -> Dict[str, List[str]]:
    """The VM's NAT rules a packet can reach, by built-in chain."""
    tag = f"vm={vm_id} "
    return {h: [r for _, r in table.effective(h) if tag in r] for h in HOOKS}


def expected(vm_id: int, maps: Sequence[nat.Mapping]) -> Dict[str, List[str]]:
    """The VM's NAT rules (the jumps to the IPs' markers lead to empty chains)."""
    return {h: [spec_text(shlex.split(s)) for s in specs if f"-j {nat.MARKER_PREFIX}" not in s]
            for h, specs in nat.rules_for(vm_id, maps).items()}


def stock(table: NatTable, vm_id: int, maps: Sequence[nat.Mapping],
          limit: Optional[int] = None) -> List[List[str]]:
    """Run the stock-sudoers commands (the first ``limit`` of them: a killed action),
    checking after each that every chain of the VM is the old or the new one and that
    nobody else's rule moved."""
    before = effective(table, vm_id)
    after = expected(vm_id, maps)
    others = {h: [r for _, r in table.effective(h) if f"vm={vm_id} " not in r] for h in HOOKS}
    commands = nat.stock_commands(vm_id, nat.read_view(table.listing(), vm_id), maps)
    for args in commands[:limit]:
        table.run(["-w", "5", "-t", "nat", *args])
        now = effective(table, vm_id)
        for hook in HOOKS:
            assert now[hook] in (before[hook], after[hook]), (args, hook, now[hook])
            assert [r for _, r in table.effective(hook) if f"vm={vm_id} " not in r] \
                == others[hook]
    return commands


def operator_table() -> NatTable:
    return NatTable(OPERATOR)


def test_first_post_builds_everything_and_a_repeat_writes_nothing():
    table = operator_table()
    maps = maps_of(5, [(1, 0, "203.0.113.5"), (2, 0, "203.0.113.6")])
    commands = stock(table, 5, maps)
    assert effective(table, 5) == expected(5, maps)
    assert ["-N", "ALIAS_SDNAT_PRE"] in commands
    assert sum(c[0] == "-I" for c in commands) == 3
    assert stock(table, 5, maps) == []  # already right: not one command
    assert table.chains["PREROUTING"][1:] == OPERATOR["PREROUTING"]


def test_a_change_fills_the_other_generation_and_switches_with_one_replace():
    table = operator_table()
    stock(table, 5, maps_of(5, [(1, 0, "203.0.113.5")]))
    new = maps_of(5, [(1, 0, "203.0.113.5"), (2, 0, "203.0.113.6")])
    commands = stock(table, 5, new)
    # PRE and OUT change; POST keeps its one SNAT rule (from the lowest alias): untouched
    assert [c[:3] for c in commands if c[0] == "-R"] == [["-R", "ALIAS_SDNAT_PRE", "1"],
                                                         ["-R", "ALIAS_SDNAT_OUT", "1"]]
    assert not any(c[0] == "-I" or "ALIAS_SDNAT_5_POST" in c for c in commands)
    assert "ALIAS_SDNAT_5_PRE2" in table.chains and "ALIAS_SDNAT_5_PRE" not in table.chains
    third = maps_of(5, [(2, 0, "203.0.113.6")])
    stock(table, 5, third)
    assert "ALIAS_SDNAT_5_PRE" in table.chains and "ALIAS_SDNAT_5_PRE2" not in table.chains
    assert effective(table, 5) == expected(5, third)


def test_clean_removes_only_this_vms_chains():
    table = operator_table()
    stock(table, 1, maps_of(1, [(1, 0, "203.0.113.11")]))
    stock(table, 10, maps_of(10, [(1, 0, "203.0.113.10")]))
    stock(table, 1, maps_of(1, [(1, 0, "203.0.113.12")]))  # VM 1 in generation 2
    theirs = effective(table, 10)
    stock(table, 1, [])
    assert effective(table, 1) == {h: [] for h in HOOKS}
    assert not [c for c in table.chains if c.startswith("ALIAS_SDNAT_1_")]
    assert effective(table, 10) == theirs
    assert nat.stock_commands(1, nat.read_view(table.listing(), 1), []) == []


@pytest.mark.parametrize("action", ["post", "change", "clean"])
def test_killed_after_any_command_then_rerun_converges(action):
    old = maps_of(7, [(1, 0, "203.0.113.7"), (2, 0, "203.0.113.8")])
    new = {"post": old, "change": maps_of(7, [(2, 0, "203.0.113.8"), (3, 0, "203.0.113.9")]),
           "clean": []}[action]
    start = [] if action == "post" else old
    full = len(stock(_built(start), 7, new))
    for limit in range(full + 1):
        table = _built(start)
        stock(table, 7, new, limit)  # killed after `limit` commands
        stock(table, 7, new)  # the next action
        assert effective(table, 7) == expected(7, new), limit
        leftovers = [c for c in table.chains if c.startswith("ALIAS_SDNAT_7_")]
        assert len(leftovers) == (3 if new else 0), (limit, leftovers)


def _built(maps: Sequence[nat.Mapping]) -> NatTable:
    table = operator_table()
    stock(table, 8, maps_of(8, [(1, 0, "198.51.100.8")]))  # a bystander
    if maps:
        stock(table, 7, maps)
    return table


def test_hot_attach_reads_what_the_dispatcher_jumps_to():
    table = operator_table()
    stock(table, 4, maps_of(4, [(1, 0, "203.0.113.1")]))
    stock(table, 4, maps_of(4, [(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")]))  # gen 2
    three = [(1, 0, "203.0.113.1"), (2, 0, "203.0.113.2"), (3, 0, "203.0.113.3")]
    vm = vm_of(4, three, attach=[3])
    view = nat.read_view(table.listing(), 4)
    assert [m.nic_id for m in view.current] == [1, 2]
    assert [m.nic_id for m in nat.wanted("post", vm, view.current)] == [1, 2, 3]


def test_the_two_modes_take_over_from_each_other():
    table = operator_table()
    maps = maps_of(3, [(1, 0, "203.0.113.3")])
    stock(table, 3, maps)
    stock(table, 3, maps_of(3, [(1, 0, "203.0.113.4")]))  # generation 2 now
    table.restore(nat.restore_script(3, nat.read_view(table.save(), 3), maps))
    assert effective(table, 3) == expected(3, maps)
    assert not [c for c in table.chains if c.endswith("2") and "_3_" in c]
    changed = maps_of(3, [(1, 0, "203.0.113.5")])
    stock(table, 3, changed)
    assert effective(table, 3) == expected(3, changed)
    table.restore(nat.restore_script(3, nat.read_view(table.save(), 3), []))
    assert not [c for c in table.chains if "_3_" in c]
    assert [c for c in table.chains if c not in BUILTINS and "_8_" not in c
            and not c.startswith(nat.MARKER_PREFIX) and c != nat.INDEX] == list(
        nat.DISPATCH.values())


# -- the whole action, with a fake sudo on PATH ------------------------------------------------

SUDO = """#!/bin/sh
# sudo -n [-l] CMD ARGS: allowed when CMD is in $FAKE_SUDO_ALLOW
[ "$1" = -n ] && shift
if [ "$1" = -l ]; then
    shift
    case " $FAKE_SUDO_ALLOW " in *" $1 "*) echo "/usr/sbin/$1"; exit 0 ;; esac
    exit 1
fi
echo "$1" >> "$FAKE_LOG"
case " $FAKE_SUDO_ALLOW " in *" $1 "*) cmd=$1; shift; exec "$FAKE_BIN/$cmd" "$@" ;; esac
echo "sudo: a password is required" >&2
exit 1
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake host: sudo, iptables, iptables-save, iptables-restore on PATH, over a model
    nat table in a JSON file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "nat.json"
    state.write_text(json.dumps(operator_table().chains))
    (bin_dir / "sudo").write_text(SUDO)
    wrappers = {"iptables": "", "iptables-save": "--save", "iptables-restore": "--restore"}
    for name, flag in wrappers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} {state} {flag} "
                                    '"$@"\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_BIN", str(bin_dir))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sudo.log"))
    monkeypatch.setenv("FAKE_SUDO_ALLOW", "")

    class Host:
        lock = str(tmp_path / "alias_sdnat.lock")

        @staticmethod
        def allow(*names: str) -> None:
            monkeypatch.setenv("FAKE_SUDO_ALLOW", " ".join(names))

        @staticmethod
        def table() -> NatTable:
            return NatTable(json.loads(state.read_text()))

        @staticmethod
        def sudo_runs() -> List[str]:
            log = tmp_path / "sudo.log"
            return log.read_text().split() if log.exists() else []

    return Host


CAPTURED_VM = parse_vnm_view(hostxml.parse(CAPTURED.read_bytes()))


def test_with_the_plugin_sudoers_one_transaction(host):
    host.allow("iptables", "iptables-save", "iptables-restore")
    runner = nat.Iptables("", euid=999)
    outcome = nat.apply("post", CAPTURED_VM, runner, host.lock)
    assert (outcome.mode, outcome.before, outcome.after) == ("transaction", 0, 2)
    # the first post on the host: the blind one fails (no dispatcher yet), then as before
    assert runner.spawned == 4
    assert host.sudo_runs() == ["iptables-restore", "iptables-save", "iptables-restore"]
    assert effective(host.table(), 0) == expected(0, nat.mappings(CAPTURED_VM))


def test_with_the_stock_sudoers_single_iptables_commands(host):
    host.allow("iptables")
    runner = nat.Iptables("", euid=999)
    outcome = nat.apply("post", CAPTURED_VM, runner, host.lock)
    assert (outcome.mode, outcome.after) == ("stock-sudoers", 2)
    assert set(host.sudo_runs()) == {"iptables"}  # no refused iptables-save in sudo's log
    assert effective(host.table(), 0) == expected(0, nat.mappings(CAPTURED_VM))
    assert host.table().chains["POSTROUTING"][1:] == OPERATOR["POSTROUTING"]
    again = nat.Iptables("", euid=999)
    nat.apply("post", CAPTURED_VM, again, host.lock)
    assert again.spawned == 2  # probe and -S: nothing to change
    nat.apply("clean", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    assert effective(host.table(), 0) == {h: [] for h in HOOKS}


def test_sudo_refusing_iptables_names_the_rule_the_node_needs(host):
    with pytest.raises(ProviderError) as caught:
        nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    message = str(caught.value)
    assert message.startswith("sudo refused iptables for ")
    assert "ONE_NET sudoers rule" in message and "install.sh --node" in message


def test_a_restore_the_probe_allowed_but_sudo_refused_is_an_error_not_a_retry(host):
    host.allow("iptables-restore")  # a hand-made sudoers without iptables-save
    with pytest.raises(ProviderError, match="sudo refused iptables-save for "):
        nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)


def test_without_sudo_a_one_line_error(host, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ProviderError, match="sudo not found"):
        nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)


def test_as_root_no_sudo_at_all(host):
    runner = nat.Iptables("", euid=0)
    assert nat.apply("post", CAPTURED_VM, runner, host.lock).mode == "transaction"
    assert runner.spawned == 3 and host.sudo_runs() == []


# -- clean of a VM leaving the host: one transaction without reading the table ----------------

LEAVING = [(1, 0, "203.0.113.7"), (2, 0, "203.0.113.8")]


def _starts() -> Dict[str, NatTable]:
    """VM 7's chains in every state the two modes leave them in (a bystander, VM 8, too)."""
    maps = maps_of(7, LEAVING)
    usual = _built([])
    usual.restore(nat.restore_script(7, nat.read_view(usual.save(), 7), maps))
    second = _built(maps)
    stock(second, 7, maps_of(7, [(1, 0, "203.0.113.7")]))  # generation 2 now
    states = {"none": _built([]), "usual": usual, "stock": _built(maps), "second": second,
              "other rules": _built(maps_of(7, [(1, 0, "203.0.113.9")]))}
    full = len(nat.stock_commands(7, nat.read_view(_built(maps).listing(), 7),
                                  maps_of(7, LEAVING[:1])))
    for limit in range(full):  # a stock-sudoers change killed after `limit` commands
        table = _built(maps)
        stock(table, 7, maps_of(7, LEAVING[:1]), limit)
        states[f"killed after {limit}"] = table
    return states


@pytest.mark.parametrize("state", list(_starts()))
def test_the_blind_clean_removes_everything_or_changes_nothing(state):
    table = _starts()[state]
    before = copy.deepcopy(table.chains)
    bystander = effective(table, 8)
    try:
        table.restore(nat.leave_script(7, maps_of(7, LEAVING)))
    except IptablesError:
        assert table.chains == before  # the general path takes it from here
        return
    assert not [c for c in table.chains if c.startswith("ALIAS_SDNAT_7_")]
    assert effective(table, 8) == bystander
    markers = {nat.marker(m.alias_ip) for m in maps_of(7, LEAVING)}
    assert {c for c in before if c not in table.chains} == {
        c for c in before if c.startswith("ALIAS_SDNAT_7_") or c in markers}


def test_the_blind_clean_applies_to_the_usual_state_only():
    maps = maps_of(7, LEAVING)
    applied = {}
    for name, table in _starts().items():
        view = nat.read_view(table.save(), 7)
        usual = (all(view.jumped(7, b) == [nat.vm_chain(7, b)] for b in HOOKS)
                 and not [c for c in table.chains if c.startswith("ALIAS_SDNAT_7_")
                          and c.endswith("2")]
                 and {c: [spec_text(shlex.split(r)) for r in rules]
                      for c, rules in view.own_rules.items()}
                 == {nat.vm_chain(7, b): [spec_text(shlex.split(r)) for r in rules]
                     for b, rules in nat.rules_for(7, maps).items()})
        try:
            table.restore(nat.leave_script(7, maps))
            applied[name] = True
        except IptablesError:
            applied[name] = False
        assert applied[name] == usual, name
    assert applied["usual"] and applied["stock"] and not applied["second"]


def test_clean_of_a_leaving_vm_reads_nothing_and_touches_nobody_else(host):
    host.allow("iptables", "iptables-save", "iptables-restore")
    other = vm_of(9, [(1, 0, "198.51.100.9")])
    nat.apply("post", other, nat.Iptables("", euid=999), host.lock)
    nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    theirs = effective(host.table(), 9)
    runs_before = len(host.sudo_runs())
    runner = nat.Iptables("", euid=999)
    outcome = nat.apply("clean", CAPTURED_VM, runner, host.lock)
    assert (outcome.mode, outcome.before, outcome.after) == ("transaction", 2, 0)
    assert host.sudo_runs()[runs_before:] == ["iptables-restore"] and runner.spawned == 2
    assert not [c for c in host.table().chains if c.startswith("ALIAS_SDNAT_0_")]
    assert effective(host.table(), 9) == theirs


def test_clean_of_a_vm_in_another_state_reads_the_table(host):
    host.allow("iptables")
    nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)  # stock mode
    changed = vm_of(0, [(1, 0, "203.0.113.77")])
    nat.apply("post", changed, nat.Iptables("", euid=999), host.lock)  # generation 2
    host.allow("iptables", "iptables-save", "iptables-restore")
    runs_before = len(host.sudo_runs())
    outcome = nat.apply("clean", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    assert (outcome.before, outcome.after) == (1, 0)
    assert host.sudo_runs()[runs_before:] == ["iptables-restore", "iptables-save",
                                              "iptables-restore"]
    assert not [c for c in host.table().chains if c.startswith("ALIAS_SDNAT_0_")]


def test_a_sudo_refusing_the_blind_clean_is_an_error_not_a_fallback(host, monkeypatch):
    host.allow("iptables", "iptables-save", "iptables-restore")
    nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    monkeypatch.setenv("FAKE_SUDO_ALLOW", "iptables iptables-save")
    runner = nat.Iptables("", euid=999)
    runner.transactions = lambda: True  # the probe said yes, sudo then refused
    with pytest.raises(ProviderError, match="sudo refused iptables-restore for "):
        nat.apply("clean", CAPTURED_VM, runner, host.lock)


# -- post of a VM deployed on the host: one transaction without reading the table -------------

def _old_driver_rules(table: NatTable, vm_id: int, maps: Sequence[nat.Mapping]) -> None:
    """VM ``vm_id``'s chains as the driver before the markers wrote them."""
    lines = ["*nat"] + [f":{d} - [0:0]" for d in nat.DISPATCH.values() if d not in table.chains]
    for builtin, dispatcher in nat.DISPATCH.items():
        jump = f'-A {builtin} -m comment --comment "alias_sdnat" -j {dispatcher}'
        if spec_text(shlex.split(jump)[2:]) not in table.chains[builtin]:
            lines.append(jump)
    for builtin, specs in nat.rules_for(vm_id, maps).items():
        chain = nat.vm_chain(vm_id, builtin)
        lines.append(f":{chain} - [0:0]")
        lines += [f"-A {chain} {s}" for s in specs if f"-j {nat.MARKER_PREFIX}" not in s]
        lines.append(f'-A {nat.DISPATCH[builtin]} -m comment --comment "alias_sdnat vm={vm_id}" '
                     f"-j {chain}")
    table.restore("\n".join(lines + ["COMMIT", ""]))


def _indexed_host() -> NatTable:
    table = _built([])
    table.restore(nat.restore_script(8, nat.read_view(table.save(), 8),
                                     maps_of(8, [(1, 0, "198.51.100.8")])))
    assert nat.INDEX in table.chains
    return table


def _deploy_starts() -> Dict[str, NatTable]:
    maps = maps_of(7, LEAVING)
    states = {name: table for name, table in _starts().items() if name != "usual"}
    states["indexed, VM 7 absent"] = _indexed_host()
    states["indexed, VM 7 present"] = _indexed_host()
    states["indexed, VM 7 present"].restore(nat.restore_script(
        7, nat.read_view(states["indexed, VM 7 present"].save(), 7), maps))
    theirs = maps_of(9, [(1, 0, "203.0.113.8")])  # one of VM 7's addresses
    for holder in ("transaction", "stock"):
        table = _indexed_host()
        if holder == "transaction":
            table.restore(nat.restore_script(9, nat.read_view(table.save(), 9), theirs))
        else:
            stock(table, 9, theirs)
        states[f"indexed, VM 9 holds an address ({holder})"] = table
    table = _built([])  # the bystander by the stock mode: no index
    _old_driver_rules(table, 9, theirs)
    states["an older driver's VM 9 holds an address, no index"] = table
    unhooked = _indexed_host()
    unhooked.chains["PREROUTING"] = [r for r in unhooked.chains["PREROUTING"]
                                     if "ALIAS_SDNAT_PRE" not in r]  # a firewall reload
    states["indexed, PREROUTING flushed"] = unhooked
    return states


@pytest.mark.parametrize("state", list(_deploy_starts()))
def test_the_blind_post_writes_the_vm_or_changes_nothing(state):
    table = _deploy_starts()[state]
    maps = maps_of(7, LEAVING)
    before = copy.deepcopy(table.chains)
    view = nat.read_view(table.save(), 7)
    fresh = (nat.INDEX in table.chains and not view.owns_chains(7)
             and not any(m.alias_ip in view.claims for m in maps)
             and all(nat.marker(m.alias_ip) not in table.chains for m in maps)
             and len(view.builtin_jumps) == 3)
    try:
        table.restore(nat.deploy_script(7, maps))
    except IptablesError:
        assert table.chains == before and not fresh, state
        return
    assert fresh, state
    general = copy.deepcopy(before)
    reference = NatTable(general)
    reference.restore(nat.restore_script(7, view, maps))
    assert {h: effective(table, 7)[h] for h in HOOKS} == expected(7, maps)
    assert table.chains == reference.chains  # what reading the table would have written


def test_only_the_usual_deploy_applies():
    applied = []
    for name, table in _deploy_starts().items():
        try:
            table.restore(nat.deploy_script(7, maps_of(7, LEAVING)))
        except IptablesError:
            continue
        applied.append(name)
    assert applied == ["indexed, VM 7 absent"]


def test_the_index_waits_for_every_chain_of_an_older_driver():
    table = _built([])
    _old_driver_rules(table, 9, maps_of(9, [(1, 0, "203.0.113.9")]))
    _old_driver_rules(table, 10, maps_of(10, [(1, 0, "203.0.113.10")]))
    table.restore(nat.restore_script(7, nat.read_view(table.save(), 7), maps_of(7, LEAVING)))
    assert nat.INDEX not in table.chains  # VMs 9 and 10 hold addresses without markers
    table.restore(nat.restore_script(9, nat.read_view(table.save(), 9),
                                     maps_of(9, [(1, 0, "203.0.113.9")])))
    assert nat.INDEX not in table.chains  # VM 10 still does
    table.restore(nat.restore_script(10, nat.read_view(table.save(), 10), []))
    assert nat.INDEX in table.chains
    view = nat.read_view(table.save(), 7)
    assert not view.unindexed
    _old_driver_rules(table, 11, maps_of(11, [(1, 0, "203.0.113.11")]))  # an older driver again
    table.restore(nat.restore_script(7, nat.read_view(table.save(), 7), []))
    assert nat.INDEX not in table.chains


def test_markers_go_with_the_last_chain_that_jumps_to_them():
    table = _indexed_host()
    shared = maps_of(9, [(1, 0, "203.0.113.9")])
    stock(table, 9, shared)
    stock(table, 9, maps_of(9, [(1, 0, "203.0.113.19")]))
    assert nat.marker(shared[0].alias_ip) not in table.chains
    table.restore(nat.restore_script(9, nat.read_view(table.save(), 9), []))
    assert not [c for c in table.chains if c.startswith(nat.MARKER_PREFIX)
                and c != nat.marker(maps_of(8, [(1, 0, "198.51.100.8")])[0].alias_ip)]


def test_a_deploy_on_an_indexed_host_reads_nothing(host):
    host.allow("iptables", "iptables-save", "iptables-restore")
    nat.apply("post", vm_of(9, [(1, 0, "198.51.100.9")]), nat.Iptables("", euid=999),
              host.lock)
    runs_before = len(host.sudo_runs())
    runner = nat.Iptables("", euid=999)
    outcome = nat.apply("post", CAPTURED_VM, runner, host.lock)
    assert (outcome.before, outcome.after) == (0, 2)
    assert host.sudo_runs()[runs_before:] == ["iptables-restore"] and runner.spawned == 2
    assert effective(host.table(), 0) == expected(0, nat.mappings(CAPTURED_VM))


def test_a_deploy_of_an_address_another_vm_holds_reads_and_takes_it_over(host):
    host.allow("iptables", "iptables-save", "iptables-restore")
    ip = str(nat.mappings(CAPTURED_VM)[0].alias_ip)
    nat.apply("post", vm_of(9, [(1, 0, ip)]), nat.Iptables("", euid=999), host.lock)
    runs_before = len(host.sudo_runs())
    outcome = nat.apply("post", CAPTURED_VM, nat.Iptables("", euid=999), host.lock)
    assert host.sudo_runs()[runs_before:] == ["iptables-restore", "iptables-save",
                                              "iptables-restore"]
    assert outcome.notes and "from vm=9" in outcome.notes[0]
    assert not [r for h in HOOKS for r in effective(host.table(), 9)[h] if ip in r]
    assert effective(host.table(), 0) == expected(0, nat.mappings(CAPTURED_VM))
