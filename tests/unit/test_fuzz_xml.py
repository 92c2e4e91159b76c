"""Fuzzing the XML parsing every component shares: hostxml (stdlib, hypervisors), onexml
(lxml, frontend) and oned.parse_vm on top of either.

The property is the same everywhere: whatever the bytes, the result is a parsed value or an
InputError (a ProviderError), never another exception, never an entity resolved, never a
file read. Both parsers must agree on what a VM document means.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from packet_provider import onexml
from packet_provider.core import hostxml, oned
from packet_provider.core.errors import InputError, ProviderError

DATA = Path(__file__).resolve().parents[1] / "data"
VM_XML = (DATA / "vm-with-nic-alias.xml").read_bytes()
SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.xml"))]

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PARSERS = {"hostxml": hostxml.parse, "onexml": onexml.parse}
B64_PARSERS = {"hostxml": hostxml.parse_base64, "onexml": onexml.parse_base64}

HOSTILE_IPS = [
    "1.2.3.4; touch /tmp/x", "1.2.3.4/0", "1.2.3.4/32", "0.0.0.0/0", "::1", "2001:db8::1",
    "::ffff:1.2.3.4", "01.2.3.4", "1.2.3.04", "001.002.003.004", "1.2.3", "1.2.3.4.5",
    "256.1.1.1", "-1.2.3.4", "1.2.3.4\n5.6.7.8", "$(touch /tmp/x)", "`id`", "1.2.3.4 -j ACCEPT",
    "0x01020304", "16909060", "1.2.3.4%eth0", "1.2.3.4:80", "１.２.３.４", "1.2.3.4\x00",
    "../../etc/passwd", "a" * 5000,
]
WRONG_INTS = ["abc", "-1", "1.5", "1e3", "0x10", "9" * 5000, "", " ", "NaN", "١٢", "1_0", "+1"]


def outcome(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; return its value, or the InputError it raised. Any other exception (or a
    ProviderError that is not an InputError) fails the test with the offending input."""
    try:
        return fn()
    except InputError as err:
        assert str(err), "an InputError without a message"
        return err
    except ProviderError as err:  # pragma: no cover - would be a wrong error class
        pytest.fail(f"expected InputError, got {type(err).__name__}: {err}")


def parse_vm_with(parser: Callable[[bytes], Any], data: bytes) -> Any:
    return outcome(lambda: oned.parse_vm(parser(data)))


def same_meaning(a: Any, b: Any) -> bool:
    if isinstance(a, InputError) or isinstance(b, InputError):
        return isinstance(a, InputError) and isinstance(b, InputError)
    return a == b


# -- arbitrary bytes -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_input_error(data: bytes) -> None:
    for parser in PARSERS.values():
        outcome(lambda p=parser: p(data))
        parse_vm_with(parser, data)
    for parser in B64_PARSERS.values():
        outcome(lambda p=parser: p(data))
        outcome(lambda p=parser: p(base64.b64encode(data)))


@FUZZ
@given(st.text(max_size=1024))
def test_arbitrary_text_only_input_error(text: str) -> None:
    for encoding in ("utf-8", "utf-16"):
        data = text.encode(encoding, "surrogatepass")
        for parser in PARSERS.values():
            parse_vm_with(parser, data)


# -- mutated real documents ------------------------------------------------------------------


@FUZZ
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_byte_mutations_of_real_documents(sample: bytes, data: st.DataObject) -> None:
    mutated = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        kind = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        pos = data.draw(st.integers(0, len(mutated)), label="pos")
        if kind == "delete":
            del mutated[pos:pos + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            mutated[pos:pos] = data.draw(st.sampled_from(
                [b"<", b">", b"&", b"&amp;", b"]]>", b"<![CDATA[", b"<!DOCTYPE x>", b"\x00",
                 b"\xff\xfe", b"<X>", b"</VM>", b"<?pi?>", b"<!-- -->", b"&#0;", b"&#x110000;"]))
        elif kind == "replace":
            mutated[pos:pos + 1] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del mutated[pos:]
    blob = bytes(mutated)
    results = [parse_vm_with(p, blob) for p in PARSERS.values()]
    if not any(isinstance(r, InputError) for r in results):
        assert results[0] == results[1]
    outcome(lambda: hostxml.parse_base64(base64.b64encode(blob)))


@FUZZ
@given(st.integers(0, len(VM_XML)))
def test_truncated_vm_xml_refused(cut: int) -> None:
    blob = VM_XML[:cut]
    assume(blob.strip() != VM_XML.strip())
    for parser in PARSERS.values():
        assert isinstance(parse_vm_with(parser, blob), InputError)
        assert isinstance(outcome(lambda p=parser: p(blob)), InputError)


def _elements(root: ET.Element) -> list:
    return [e for e in root.iter() if e is not root]


def _parent_map(root: ET.Element) -> dict:
    return {child: parent for parent in root.iter() for child in parent}


ELEMENT_NAMES = ["ID", "STATE", "LCM_STATE", "DEPLOY_ID", "TEMPLATE", "NIC", "NIC_ALIAS",
                 "NIC_ID", "IP", "PARENT", "PARENT_ID", "AR_ID", "NETWORK_ID", "EXTERNAL",
                 "ATTACH", "HISTORY_RECORDS", "HISTORY", "SEQ", "HID", "ACTION", "VN_MAD"]


@FUZZ
@given(data=st.data())
def test_structural_mutations_of_vm(data: st.DataObject) -> None:
    """Remove, repeat, re-type and re-text elements of the real VM, then check both parsers
    agree and only InputError comes out."""
    root = ET.fromstring(VM_XML)
    for _ in range(data.draw(st.integers(1, 5), label="edits")):
        elements = _elements(root)
        parents = _parent_map(root)
        target = data.draw(st.sampled_from(elements), label="element")
        kind = data.draw(st.sampled_from(["remove", "repeat", "text", "retag", "nest"]))
        parent = parents[target]
        if kind == "remove":
            parent.remove(target)
        elif kind == "repeat":
            parent.append(copy.deepcopy(target))
        elif kind == "text":
            target.text = data.draw(st.one_of(
                st.sampled_from(HOSTILE_IPS + WRONG_INTS),
                st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\x00"), max_size=30)))
        elif kind == "retag":
            target.tag = data.draw(st.sampled_from(ELEMENT_NAMES))
        else:
            target.append(ET.Element(data.draw(st.sampled_from(ELEMENT_NAMES))))
    try:
        blob = ET.tostring(root)
    except ValueError:  # characters XML 1.0 cannot carry
        return
    results = [parse_vm_with(p, blob) for p in PARSERS.values()]
    assert same_meaning(*results), (results, blob[:300])
    for result in results:
        if isinstance(result, oned.VM):
            for item in result.nics + result.aliases:
                assert item.ip is None or isinstance(item.ip, ipaddress.IPv4Address)


@pytest.mark.parametrize("bad", HOSTILE_IPS)
@pytest.mark.parametrize("where", ["NIC", "NIC_ALIAS"])
@pytest.mark.parametrize("parser", list(PARSERS))
def test_hostile_ip_refused(bad: str, where: str, parser: str) -> None:
    root = ET.fromstring(VM_XML)
    root.find(f"TEMPLATE/{where}/IP").text = bad
    try:
        blob = ET.tostring(root)
    except ValueError:
        pytest.skip("not representable in XML")
    if "\x00" in bad:
        # XML cannot carry NUL: the parsers refuse the document itself
        assert isinstance(parse_vm_with(PARSERS[parser], blob), InputError)
        return
    result = parse_vm_with(PARSERS[parser], blob)
    assert isinstance(result, InputError), f"{bad!r} accepted as {result}"
    assert "IP" in str(result)


INT_PATHS = ["ID", "STATE", "TEMPLATE/NIC/NIC_ID", "TEMPLATE/NIC_ALIAS/NIC_ID",
             "TEMPLATE/NIC_ALIAS/PARENT_ID", "TEMPLATE/NIC_ALIAS/AR_ID",
             "HISTORY_RECORDS/HISTORY/SEQ", "HISTORY_RECORDS/HISTORY/HID"]
# int() accepts these; they are not digits as oned writes them (refused since oned.py checks).
LAX_INTS = {"١٢": "Arabic-Indic digits", "1_0": "digit grouping", "+1": "a sign"}


def _with_value(path: str, value: str) -> bytes:
    root = ET.fromstring(VM_XML)
    root.find(path).text = value
    return ET.tostring(root)


@pytest.mark.parametrize("bad", [b for b in WRONG_INTS if b not in LAX_INTS])
@pytest.mark.parametrize("path", INT_PATHS)
def test_wrong_types_refused(bad: str, path: str) -> None:
    blob = _with_value(path, bad)
    for parser in PARSERS.values():
        result = parse_vm_with(parser, blob)
        optional = path.endswith(("PARENT_ID", "AR_ID"))
        if bad.strip() == "" and optional:
            assert isinstance(result, oned.VM)
        elif bad == "-1" and path != "ID":
            continue  # a negative number is still a number (oned writes -1 in places)
        else:
            assert isinstance(result, InputError), f"{path}={bad!r} accepted"


@pytest.mark.parametrize("bad", list(LAX_INTS))
def test_lax_integers_refused(bad: str) -> None:
    for path in INT_PATHS[1:]:
        blob = _with_value(path, bad)
        for parser in PARSERS.values():
            assert isinstance(parse_vm_with(parser, blob), InputError), f"{path}={bad!r}"


@pytest.mark.parametrize("path", ["ID", "STATE", "TEMPLATE/NIC/NIC_ID",
                                  "TEMPLATE/NIC_ALIAS/NIC_ID", "HISTORY_RECORDS/HISTORY/SEQ"])
def test_missing_required_elements_refused(path: str) -> None:
    root = ET.fromstring(VM_XML)
    parent_path, _, name = path.rpartition("/")
    parent = root.find(parent_path) if parent_path else root
    parent.remove(parent.find(name))
    blob = ET.tostring(root)
    for parser in PARSERS.values():
        assert isinstance(parse_vm_with(parser, blob), InputError)


def test_wrong_root_refused() -> None:
    for sample in SAMPLES:
        if sample is VM_XML or sample.lstrip().startswith(b"<VM>"):
            continue
        for parser in PARSERS.values():
            assert isinstance(parse_vm_with(parser, sample), InputError)


# -- DOCTYPE and entity attacks -------------------------------------------------------------


def billion_laughs(levels: int = 10) -> bytes:
    lines = ['<!ENTITY lol0 "lol">']
    for i in range(1, levels):
        lines.append(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">')
    return (f'<?xml version="1.0"?>\n<!DOCTYPE VM [\n{chr(10).join(lines)}\n]>\n'
            f"<VM><ID>1</ID><NAME>&lol{levels - 1};</NAME><STATE>3</STATE></VM>").encode()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("LOCAL-FILE-SECRET-7f3a")
    return path


def doctype_attacks(secret: Path) -> dict:
    uri = secret.as_uri()
    return {
        "billion_laughs": billion_laughs(),
        "quadratic_blowup": (b'<!DOCTYPE VM [<!ENTITY a "' + b"x" * 50000 + b'">]><VM><ID>1</ID>'
                             b"<NAME>" + b"&a;" * 2000 + b"</NAME><STATE>3</STATE></VM>"),
        "external_file_entity": (f'<?xml version="1.0"?><!DOCTYPE VM [<!ENTITY x SYSTEM '
                                 f'"{uri}">]><VM><ID>1</ID><NAME>&x;</NAME><STATE>3</STATE>'
                                 f"</VM>").encode(),
        "external_path_entity": (f'<!DOCTYPE VM [<!ENTITY x SYSTEM "{secret}">]><VM><ID>1</ID>'
                                 f"<NAME>&x;</NAME><STATE>3</STATE></VM>").encode(),
        "parameter_entity": (f'<!DOCTYPE VM [<!ENTITY % p SYSTEM "{uri}"> %p;]>'
                             f"<VM><ID>1</ID><STATE>3</STATE></VM>").encode(),
        "external_dtd": (f'<!DOCTYPE VM SYSTEM "{uri}"><VM><ID>1</ID><STATE>3</STATE></VM>'
                         ).encode(),
        "network_dtd": (b'<!DOCTYPE VM PUBLIC "-//X//EN" "http://127.0.0.1:9/x.dtd">'
                        b"<VM><ID>1</ID><STATE>3</STATE></VM>"),
        "plain_doctype": b"<!DOCTYPE VM><VM><ID>1</ID><STATE>3</STATE></VM>",
        "doctype_after_comment": (b"<!-- hi --><!DOCTYPE VM [<!ENTITY e 'x'>]>"
                                  b"<VM><ID>1</ID><NAME>&e;</NAME><STATE>3</STATE></VM>"),
        "utf16_billion_laughs": billion_laughs().decode().replace(
            '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16"),
        "utf16_external_entity": (f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE VM '
                                  f'[<!ENTITY x SYSTEM "{uri}">]><VM><ID>1</ID><NAME>&x;</NAME>'
                                  f"<STATE>3</STATE></VM>").encode("utf-16"),
        "xinclude": (f'<VM xmlns:xi="http://www.w3.org/2001/XInclude"><ID>1</ID><STATE>3</STATE>'
                     f'<NAME><xi:include href="{uri}" parse="text"/></NAME></VM>').encode(),
        "undeclared_entity": b"<VM><ID>1</ID><NAME>&x;</NAME><STATE>3</STATE></VM>",
    }


ATTACK_NAMES = list(doctype_attacks(Path("/x")))


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize("parser", list(PARSERS))
def test_doctype_and_entity_attacks_refused(name: str, parser: str, secret_file: Path) -> None:
    blob = doctype_attacks(secret_file)[name]
    parse = PARSERS[parser]
    result = outcome(lambda: parse(blob))
    if name == "xinclude":
        # no DOCTYPE: the document is fine, but the include must not be processed
        assert not isinstance(result, InputError)
        text = ET.tostring(result) if parser == "hostxml" else _lxml_bytes(result)
        assert b"LOCAL-FILE-SECRET" not in text
        return
    assert isinstance(result, InputError), f"{name} accepted by {parser}"
    assert "LOCAL-FILE-SECRET" not in str(result)
    b64 = outcome(lambda: B64_PARSERS[parser](base64.b64encode(blob) + b"\n"))
    assert isinstance(b64, InputError)


def _lxml_bytes(element: Any) -> bytes:
    from lxml import etree

    return etree.tostring(element)


@FUZZ
@given(name=st.sampled_from(ATTACK_NAMES), prefix=st.sampled_from(
    [b"", b" ", b"\n", b"\xef\xbb\xbf", b'<?xml version="1.0" encoding="UTF-8"?>\n',
     b"<!-- c -->", b"<?pi x?>"]))
def test_doctype_refused_whatever_precedes_it(name: str, prefix: bytes) -> None:
    blob = prefix + doctype_attacks(Path("/etc/hostname"))[name]
    for parser in PARSERS.values():
        result = outcome(lambda p=parser: p(blob))
        if name == "xinclude":
            continue
        assert isinstance(result, InputError)


# -- base64 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"", b" ", b"\n", b"\x00", b"!!!!", b"PFZNPg", b"PFZNPg==\x00",
    b"data:text/xml;base64,PFZNPg==",
    base64.b64encode(b"not xml at all"), base64.b64encode(b"\xff\xfe\x00"),
    base64.b64encode(b"<VM><ID>1</ID>"), base64.urlsafe_b64encode(b"<VM>\xfb\xff</VM>"),
])
@pytest.mark.parametrize("parser", list(B64_PARSERS))
def test_bad_base64_refused(data: bytes, parser: str) -> None:
    assert isinstance(outcome(lambda: B64_PARSERS[parser](data)), InputError)


@pytest.mark.parametrize("parser", list(B64_PARSERS))
def test_oned_framing_accepted(parser: str) -> None:
    """What oned actually sends: base64 plus a newline (VNM) or a space (hook), or bare."""
    b64 = base64.b64encode(VM_XML)
    for framed in (b64, b64 + b"\n", b64 + b" ", base64.encodebytes(VM_XML)):
        result = oned.parse_vm(B64_PARSERS[parser](framed))
        assert result.id == 42 and str(result.aliases[0].ip) == "147.75.84.90"


# -- huge inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("parser", list(PARSERS))
def test_oversized_input_refused_fast(parser: str) -> None:
    big = b"<VM>" + b" " * (hostxml.MAX_INPUT_BYTES + 1) + b"</VM>"
    assert isinstance(outcome(lambda: PARSERS[parser](big)), InputError)
    b64 = base64.b64encode(big)
    assert isinstance(outcome(lambda: B64_PARSERS[parser](b64)), InputError)


@pytest.mark.parametrize("parser", list(PARSERS))
def test_deep_nesting_no_crash(parser: str) -> None:
    depth = 100_000
    blob = b"<VM>" + b"<X>" * depth + b"</X>" * depth + b"</VM>"
    result = parse_vm_with(PARSERS[parser], blob)
    assert isinstance(result, InputError)  # no ID: refused, never a RecursionError


@pytest.mark.parametrize("parser", list(PARSERS))
def test_many_aliases_parsed(parser: str) -> None:
    alias = (b"<NIC_ALIAS><NIC_ID>%d</NIC_ID><PARENT>NIC0</PARENT><IP>10.%d.%d.1</IP>"
             b"<EXTERNAL>YES</EXTERNAL></NIC_ALIAS>")
    body = b"".join(alias % (i + 1, i // 256, i % 256) for i in range(5_000))
    blob = (b"<VM><ID>1</ID><STATE>3</STATE><TEMPLATE><NIC><NIC_ID>0</NIC_ID><IP>10.0.0.1</IP>"
            b"</NIC>" + body + b"</TEMPLATE></VM>")
    result = parse_vm_with(PARSERS[parser], blob)
    assert isinstance(result, oned.VM) and len(result.aliases) == 5_000


@pytest.mark.parametrize("parser", list(PARSERS))
def test_huge_text_value_refused_in_one_line(parser: str) -> None:
    blob = VM_XML.replace(b"147.75.84.90", b"1" * 1_000_000)
    result = parse_vm_with(PARSERS[parser], blob)
    assert isinstance(result, InputError)
    assert len(str(result)) < 300 and "\n" not in str(result)
