"""Fuzzing the VNM driver's path from VM XML (the VNM view it really reads, and a whole VM) to
the iptables-restore script or the single iptables commands it feeds the kernel, and the
hook's candidate selection on the same VMs.

Whatever the VM XML holds, the script and the commands are made of a strict grammar (table, chain
declarations, rules whose every word is an address, a number, a chain name, a flag or the
driver's own comment) with nothing from the template but validated IPv4 addresses and
integers: no newline, quote or option can be smuggled into it. Foreign rules in the nat table
(other tools, the old Ruby driver, look-alike comments) never break the table reading.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.vnmview import vnm_view
from packet_provider.core import hostxml
from packet_provider.core import oned as vm
from packet_provider.core.errors import InputError

nat = pytest.importorskip("packet_provider.vnm.nat")
hook_plan = pytest.importorskip("packet_provider.hook.decide")

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WHOLE = (Path(__file__).resolve().parents[1] / "data" / "vm-with-nic-alias.xml").read_bytes()
SAMPLES = {"view": ET.fromstring(vnm_view(WHOLE)), "whole": ET.fromstring(WHOLE)}

CHAIN = r"[A-Z][A-Z0-9_]*"
IP = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
PRIVATE = r"(?: ! -o [A-Za-z0-9_][A-Za-z0-9_.-]{0,14})?"  # the parent's bridge
# (a negative NIC_ID from a broken template gets through vm.py; harmless in a comment)
COMMENT = r'-m comment --comment "alias_sdnat(?: vm=\d+(?: alias=-?\d+)?)?"'
LINE = re.compile(
    rf"^(\*nat|COMMIT|:{CHAIN} - \[0:0\]"
    rf"|-I (PREROUTING|OUTPUT|POSTROUTING) 1 {COMMENT} -j {CHAIN}"
    rf"|-[AD] {CHAIN} {COMMENT} -j {CHAIN}"
    rf"|-X {CHAIN}"
    rf"|-A {CHAIN} -d {IP}/32 {COMMENT} -j DNAT --to-destination {IP}"
    rf"|-A {CHAIN} -s {IP}/32{PRIVATE} {COMMENT} -j SNAT --to-source {IP})$")
# one stock-sudoers command (the arguments after "iptables -w 5 -t nat"), words joined
WORDS_COMMENT = r"-m comment --comment alias_sdnat(?: vm=\d+(?: alias=-?\d+)?)?"
COMMAND = re.compile(
    rf"^(-[NFX] {CHAIN}"
    rf"|-I (PREROUTING|OUTPUT|POSTROUTING) 1 {WORDS_COMMENT} -j {CHAIN}"
    rf"|-A {CHAIN} {WORDS_COMMENT} -j {CHAIN}"
    rf"|-R {CHAIN} \d+ {WORDS_COMMENT} -j {CHAIN}"
    rf"|-D {CHAIN} {WORDS_COMMENT} -j {CHAIN}"
    rf"|-A {CHAIN} -d {IP}/32 {WORDS_COMMENT} -j DNAT --to-destination {IP}"
    rf"|-A {CHAIN} -s {IP}/32{PRIVATE} {WORDS_COMMENT} -j SNAT --to-source {IP})$")

TEXT = st.one_of(
    st.sampled_from(["1.2.3.4", "10.0.0.1", "1.2.3.4\n-A INPUT -j ACCEPT", '1.2.3.4" -j',
                     "1.2.3.4 --to-source 6.6.6.6", "YES", "NO", "alias_sdnat", "dummy",
                     "NIC0", "0", "1", "7", "-1", "../x", "", "one-1\nCOMMIT", "br0",
                     "onebr.12", "br0 -j ACCEPT", "-o", "! br0", "br0\n-A X"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
NAMES = ["ID", "IP", "NIC_ID", "PARENT", "PARENT_ID", "VN_MAD", "EXTERNAL", "ATTACH", "NAME",
         "DEPLOY_ID", "STATE", "LCM_STATE", "BRIDGE"]


@st.composite
def vm_documents(draw) -> bytes:
    """A VNM view (each alias in its own TEMPLATE wrapper) or a whole VM, with extra aliases
    and any leaf values replaced."""
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    root = copy.deepcopy(SAMPLES[kind])
    alias0 = root.find("TEMPLATE/NIC_ALIAS")
    for i in range(draw(st.integers(0, 4))):
        extra = copy.deepcopy(alias0)
        extra.find("NIC_ID").text = str(i + 2)
        extra.find("IP").text = f"147.75.84.{100 + i}"
        if kind == "view":
            ET.SubElement(root, "TEMPLATE").append(extra)
        else:
            root.find("TEMPLATE").append(extra)
    for _ in range(draw(st.integers(0, 6))):
        elements = [e for e in root.iter() if len(e) == 0 and e.tag in NAMES]
        target = draw(st.sampled_from(elements))
        target.text = draw(TEXT)
    return ET.tostring(root)


@FUZZ
@given(vm_documents(), st.sampled_from(["post", "clean"]))
def test_restore_script_keeps_its_grammar(document: bytes, action: str) -> None:
    root = hostxml.parse(document)
    try:
        parsed = vm.parse_vnm_view(root)
    except InputError:
        return
    try:
        hook_plan.candidates(vm.parse_vm(root))  # the hook's fast path: no exception
    except InputError:
        pass  # (a VNM view, or a whole VM whose STATE or history was broken)
    try:  # a BRIDGE that is no interface name is refused where the rules are made
        translated = nat.mappings(parsed)
    except InputError:
        return
    for current in ([], translated):
        maps = nat.wanted(action, parsed, current)
        if maps is None:
            continue
        view = nat.read_view("", parsed.id)
        script = nat.restore_script(parsed.id, view, maps)
        for line in script.splitlines():
            assert LINE.match(line), f"unexpected line in the restore script: {line!r}"
        for args in nat.stock_commands(parsed.id, view, maps):
            assert COMMAND.match(" ".join(args)), f"unexpected stock command: {args!r}"
            assert all(arg and "\n" not in arg for arg in args)
        for m in maps:
            assert isinstance(m.alias_ip, ipaddress.IPv4Address)
            assert isinstance(m.parent_ip, ipaddress.IPv4Address)


FOREIGN = [
    "-A PREROUTING -d 147.75.84.90/32 -j DNAT --to-destination 192.168.150.2",
    "-A POSTROUTING -s 192.168.150.2/32 -j SNAT --to-source 147.75.84.90",
    '-A PREROUTING -m comment --comment "alias_sdnat vm=42 alias=1" -j ACCEPT',
    '-A ALIAS_SDNAT_42_PRE -d 147.75.84.90/32 -m comment --comment "alias_sdnat vm=42 '
    'alias=1" -j DNAT --to-destination 192.168.150.2:8080',
    '-A ALIAS_SDNAT_42_PRE -m comment --comment "alias_sdnat vm=42 alias=x" -j RETURN',
    "-A ALIAS_SDNAT_PRE -j ALIAS_SDNAT_OTHER",
    "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -p tcp -m tcp --dport 80 -j DNAT "
    "--to-destination 172.17.0.2:80",
    "-A KUBE-SEP-X -p tcp -m comment --comment \"ns/svc\" -m tcp -j DNAT --to-destination "
    "10.1.2.3:443",
    ":ALIAS_SDNAT_42_PRE - [0:0]", ":FOREIGN - [0:0]", "-N BROKEN", "garbage line",
]


@FUZZ
@given(st.lists(st.sampled_from(FOREIGN), max_size=12), st.integers(0, 100))
def test_foreign_rules_never_break_table_reading(lines, vm_id: int) -> None:
    text = "*nat\n" + "\n".join(lines) + "\nCOMMIT\n"
    view = nat.read_view(text, vm_id)
    for mapping in view.current:
        assert isinstance(mapping.alias_ip, ipaddress.IPv4Address)
