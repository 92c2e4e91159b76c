"""The hook's entry point: input forms, bad input, and the fast path's import budget."""

import base64
import copy
import io
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.common import LIB, PYTHON, REMOTES
from packet_provider.core import oned, onedefs
from packet_provider.core.errors import InputError
from packet_provider.hook import decide
from packet_provider.hook import entry as hook

DATA = Path(__file__).resolve().parents[1] / "data"
VM_XML = (DATA / "vm-with-nic-alias.xml").read_bytes()
HOOK = REMOTES / "hooks" / "alias_ip" / "alias_ip.py"
HEAVY = ("pyone", "requests", "yaml", "lxml", "urllib3", "dataclasses", "logging", "ipaddress")


def vm_without_aliases(internal_alias=False) -> bytes:
    root = ET.fromstring(VM_XML)
    template = root.find("TEMPLATE")
    alias = template.find("NIC_ALIAS")
    template.remove(alias)
    if internal_alias:  # an alias on a plain bridge network, no EXTERNAL: not a candidate
        alias = copy.deepcopy(alias)
        alias.remove(alias.find("EXTERNAL"))
        alias.find("VN_MAD").text = "bridge"
        alias.find("IP").text = "10.1.0.5"
        template.append(alias)
    return ET.tostring(root)


def b64(xml: bytes) -> bytes:
    return base64.b64encode(xml)


def test_stdin_with_onehems_trailing_space_is_read():
    data = hook.read_event([], io.BytesIO(b64(VM_XML) + b" "))
    assert hook.parse_event(data).findtext("ID") == "42"


def test_argv_form_is_read_when_given():
    data = hook.read_event([b64(VM_XML).decode()], io.BytesIO(b"ignored"))
    assert hook.parse_event(data).findtext("ID") == "42"


@pytest.mark.parametrize("stdin", [b"", b"   \n"])
def test_empty_input_is_an_input_error(stdin):
    with pytest.raises(InputError, match="no VM template"):
        hook.read_event([], io.BytesIO(stdin))


def test_two_arguments_are_refused():
    with pytest.raises(InputError, match="at most one argument"):
        hook.read_event(["a", "b"])


def test_a_bad_vm_id_is_refused():
    root = ET.fromstring(VM_XML)
    root.find("ID").text = "42; rm -rf /"
    with pytest.raises(InputError, match="VM ID"):
        hook.parse_event(b64(ET.tostring(root)))


@pytest.mark.parametrize("ip", ["147.75.84.91", ""])
@pytest.mark.parametrize("external", ["YES", "yes", "NO", None])
@pytest.mark.parametrize("vn_mad", ["alias_sdnat", "bridge", None])
def test_fast_path_rule_agrees_with_the_plans_rule(ip, external, vn_mad):
    root = ET.fromstring(VM_XML)
    alias = root.find("TEMPLATE/NIC_ALIAS")
    for name, value in (("IP", ip), ("EXTERNAL", external), ("VN_MAD", vn_mad)):
        element = alias.find(name)
        if value is None:
            alias.remove(element)
        else:
            element.text = value
    assert hook.ALIAS_VN_MAD is onedefs.ALIAS_VN_MAD
    model = oned.parse_vm(root)
    assert hook.has_candidate(root) == bool(decide.candidates(model))
    quick = hook.quick_answer(b64(ET.tostring(root)))
    assert (quick is None) == hook.has_candidate(root)


@pytest.mark.parametrize("internal", [False, True])
def test_fast_path_answers_without_oned(internal):
    out = io.StringIO()
    code = hook.run([], io.BytesIO(b64(vm_without_aliases(internal)) + b" "),
                    env={"ONE_XMLRPC": "http://127.0.0.1:9/RPC2"}, out=out)
    assert code == 0 and "VM 42: no NIC alias with an external IP" in out.getvalue()


PROBE = """
import io, sys
from packet_provider.hook import entry as hook
code = hook.run([], io.BytesIO(sys.stdin.buffer.read()), out=io.StringIO())
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))
print(code, ",".join(heavy) or "-")
"""


def test_fast_path_imports_no_pyone_requests_yaml_or_lxml(tmp_path):
    env = {"PYTHONPATH": str(LIB), "PACKET_PROVIDER_CONFIG": str(tmp_path / "none.yaml"),
           "ONE_XMLRPC": "http://127.0.0.1:9/RPC2", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([PYTHON, "-c", PROBE, *HEAVY], input=b64(vm_without_aliases()) + b" ",
                          capture_output=True, env=env, timeout=30)
    assert done.stdout.decode().split() == ["0", "-"], done.stderr.decode()


def test_full_path_does_import_them(tmp_path):
    """The probe above can fail: a VM with a candidate alias takes the heavy path."""
    env = {"PYTHONPATH": str(LIB), "PACKET_PROVIDER_CONFIG": str(tmp_path / "none.yaml"),
           "ONE_XMLRPC": "http://127.0.0.1:9/RPC2", "ONE_AUTH": str(tmp_path / "missing"),
           "ONE_LOCATION": str(tmp_path), "PATH": "/usr/bin:/bin"}  # logs, locks in tmp
    probe = PROBE.replace("code = hook.run", "try:\n    code = hook.run").replace(
        "out=io.StringIO())", "out=io.StringIO())\nexcept Exception:\n    code = 1")
    done = subprocess.run([PYTHON, "-c", probe, *HEAVY], input=b64(VM_XML) + b" ",
                          capture_output=True, env=env, timeout=30)
    code, heavy = done.stdout.decode().split()
    assert code == "1" and {"pyone", "requests"} <= set(heavy.split(","))
    assert "oned credentials" in (tmp_path / "var" / "hook-alias_ip.log").read_text()


@pytest.mark.parametrize("stdin,code,message", [
    (b"", 2, "no VM template"),
    (b"!!!not base64!!!", 2, "not valid base64"),
    (base64.b64encode(b"<VM><ID>1</ID>"), 2, "not well-formed XML"),
    (base64.b64encode(b'<!DOCTYPE VM [<!ENTITY x "y">]><VM/>'), 2, "DOCTYPE"),
    (base64.b64encode(b"<HOST><ID>1</ID></HOST>"), 2, "expected a <VM> document"),
])
def test_bad_input_is_one_line_in_oneds_error_block(stdin, code, message, tmp_path):
    env = {"PYTHONPATH": str(LIB), "PATH": "/usr/bin:/bin",
           "PACKET_PROVIDER_CONFIG": str(tmp_path / "none.yaml")}
    done = subprocess.run([PYTHON, str(HOOK)], input=stdin, capture_output=True, env=env,
                          timeout=30)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == code
    assert lines[0] == "ERROR MESSAGE --8<------" and lines[2] == "ERROR MESSAGE ------>8--"
    assert len(lines) == 3 and message in lines[1] and lines[1].startswith("alias_ip: ")
    assert "Traceback" not in done.stderr.decode()


def test_the_executable_takes_the_fast_path_from_argv(tmp_path):
    env = {"PYTHONPATH": "", "PATH": "/usr/bin:/bin",
           "PACKET_PROVIDER_CONFIG": str(tmp_path / "none.yaml")}
    done = subprocess.run([PYTHON, str(HOOK), b64(vm_without_aliases()).decode()],
                          capture_output=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert b"nothing to do" in done.stdout


TRICKY = [
    b"<VM><ID>7</ID><TEMPLATE><NIC_ALIAS><IP>1.2.3.4</IP><EXTERNAL>Y<!-- c -->ES</EXTERNAL>"
    b"</NIC_ALIAS></TEMPLATE></VM>",  # a comment inside a text: ElementTree joins the parts
    b"<VM><ID>7</ID><TEMPLATE><NIC_ALIAS><IP><![CDATA[1.2.3.4]]></IP><VN_MAD> alias_sdnat "
    b"</VN_MAD></NIC_ALIAS></TEMPLATE></VM>",
    b"<VM><ID>7</ID><TEMPLATE><NIC_ALIAS><IP><X>1.2.3.4</X></IP><EXTERNAL>YES</EXTERNAL>"
    b"</NIC_ALIAS></TEMPLATE></VM>",  # the IP's own text is empty: not a candidate
    b"<VM><ID>7</ID><TEMPLATE><NIC_ALIAS><IP/><IP>1.2.3.4</IP><EXTERNAL>YES</EXTERNAL>"
    b"</NIC_ALIAS></TEMPLATE></VM>",  # the first IP counts, as findtext reads it
    b"<VM><ID>7</ID><OTHER><NIC_ALIAS><IP>1.2.3.4</IP><EXTERNAL>YES</EXTERNAL></NIC_ALIAS>"
    b"</OTHER><TEMPLATE/></VM>",  # not under TEMPLATE: not an alias
    b"<VM><ID> 7 </ID><TEMPLATE/><TEMPLATE><NIC_ALIAS><IP>1.2.3.4</IP><EXTERNAL>YES"
    b"</EXTERNAL></NIC_ALIAS></TEMPLATE></VM>",  # a second TEMPLATE wrapper
    b"<VM><ID>7<X/>8</ID><TEMPLATE/></VM>",
    b"<VM><ID>\xd9\xa7</ID><TEMPLATE/></VM>",  # an Arabic-Indic seven: not an oned id
    b"<VM><ID>12345678901</ID></VM>",
    b"<VM><TEMPLATE/></VM>",
    b"<VM xmlns='x'><ID>7</ID></VM>",
]


@pytest.mark.parametrize("xml", TRICKY)
def test_the_fast_path_answers_as_the_checked_path_does(xml):
    """quick_answer (expat alone) either says nothing or says what the checked path says."""
    _agrees(xml)


FRAGMENTS = ["<ID>7</ID>", "<ID> 8 </ID>", "<ID>x</ID>", "<TEMPLATE>", "</TEMPLATE>",
             "<NIC_ALIAS>", "</NIC_ALIAS>", "<IP>1.2.3.4</IP>", "<IP/>", "<IP> </IP>",
             "<EXTERNAL>YES</EXTERNAL>", "<EXTERNAL>no</EXTERNAL>", "<VN_MAD>alias_sdnat</VN_MAD>",
             "<VN_MAD>bridge</VN_MAD>", "<!-- c -->", "<![CDATA[YES]]>", "<X>", "</X>", "YES",
             "&amp;", "<?pi x?>"]


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14), st.sampled_from(["VM", "HOST"]))
@settings(max_examples=300, deadline=None)
def test_the_fast_path_never_contradicts_the_checked_path(parts, root):
    _agrees(f"<{root}>{''.join(parts)}</{root}>".encode())


def _agrees(xml: bytes) -> None:
    quick = hook.quick_answer(b64(xml))
    try:
        root = hook.parse_event(b64(xml))
    except InputError:
        assert quick is None
        return
    if hook.has_candidate(root):
        assert quick is None
    elif quick is not None:
        assert quick == f"alias_ip: VM {int(root.findtext('ID'))}: no NIC alias with an " \
                        "external IP, nothing to do\n"
