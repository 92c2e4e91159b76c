"""Bad input to every executable under remotes/, run as a subprocess with the argv and stdin
oned uses (IPAM: ``<action> <request id>``, stdin the bare base64; VNM: ``<action>
[deploy_id]``, stdin base64 + newline; hook: stdin base64 + space, or argv[1]).

Every case must end with a non-zero exit (not 70, the "internal error" code), one line in
oned's ERROR MESSAGE block, no traceback, nothing on stdout, and no side effect: no file in
the state directory, no Packet API call, no oned call, no iptables change, no file created
through a shell, no byte of a local file read through an entity.
"""

from __future__ import annotations

import base64
import concurrent.futures
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from fixtures.common import REMOTES, netns_missing_reason
from reliability.relsupport import (
    VM_XML,
    Case,
    base_env,
    count,
    hook_executables,
    ipam_actions,
    make_shim,
    mutating_calls,
    run,
    shim_calls,
    tree,
    vnm_actions,
    write_config,
)

SECRET_TEXT = "LOCAL-FILE-SECRET-c0ffee"
RESERVATION = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
HOSTILE_IPS = ["1.2.3.4; touch {marker}", "$(touch {marker})", "1.2.3.4/0", "1.2.3.4/32",
               "2001:db8::1", "01.2.3.4", "1.2.3.4 -j ACCEPT", "256.0.0.1", "1.2.3"]
MAX_WORKERS = 4
REMOTES_IPAM = REMOTES / "ipam" / "packet"

Elements = Sequence[Tuple[str, str]]


def xml_doc(root: str, parts: Sequence[Tuple[str, object]]) -> bytes:
    """``<root>`` with children; a value that is a list of pairs becomes a nested element."""
    def render(name: str, value: object) -> str:
        if isinstance(value, (list, tuple)):
            return f"<{name}>" + "".join(render(k, v) for k, v in value) + f"</{name}>"
        return f"<{name}>{value}</{name}>"

    return (f"<{root}>" + "".join(render(k, v) for k, v in parts) + f"</{root}>").encode()


# -- documents -------------------------------------------------------------------------------


def ipam_ar(project: str, token: str, register: bool = False, **over: Optional[str]
            ) -> List[Tuple[str, str]]:
    ar = {"TYPE": "IP4", "IP": "10.255.255.1" if register else "147.75.1.8", "SIZE": "8",
          "IPAM_MAD": "packet", "PACKET_TOKEN": token, "PACKET_PROJECT": project,
          "FACILITY": "ams1"}
    if not register:
        ar["DEPLOY_ID"] = RESERVATION
    ar.update(over)
    return [(k, v) for k, v in ar.items() if v is not None]


def ipam_doc(action: str, project: str, token: str, ar_over: Optional[Dict] = None,
             address: Optional[Dict] = None, no_address: bool = False,
             extra_ar: Elements = ()) -> bytes:
    register = action == "register_address_range"
    ar = ipam_ar(project, token, register, **(ar_over or {})) + list(extra_ar)
    parts: List[Tuple[str, object]] = [("AR", ar)]
    if not register and not no_address:
        addr = {"IP": "147.75.1.9", "SIZE": "1"}
        if action == "get_address":
            addr = {"SIZE": "1"}
        addr.update(address or {})
        parts.append(("ADDRESS", [(k, v) for k, v in addr.items() if v is not None]))
    return xml_doc("IPAM_DRIVER_ACTION_DATA", parts)


def vm_with(**changes: Optional[str]) -> bytes:
    """The sample VM with elements changed (path=value) or removed (path=None); paths use
    '__' for '/'."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(VM_XML)
    for key, value in changes.items():
        path = key.replace("__", "/")
        parent_path, _, name = path.rpartition("/")
        parent = root.find(parent_path) if parent_path else root
        element = parent.find(name)
        if value is None:
            parent.remove(element)
        else:
            element.text = value
    return ET.tostring(root)


def doctype_docs(good: bytes, root: str, secret: Path) -> Dict[str, bytes]:
    """The DOCTYPE attacks, each wrapped around a real document of the right kind."""
    body = good.decode()
    inner = body[body.index(">") + 1:]  # after <ROOT>
    uri = secret.as_uri()
    laughs = ['<!ENTITY l0 "lol">'] + [f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">'
                                        for i in range(1, 10)]
    return {
        "billion_laughs": (f"<!DOCTYPE {root} [{''.join(laughs)}]><{root}><X>&l9;</X>{inner}"
                           ).encode(),
        "external_entity_file": (f'<!DOCTYPE {root} [<!ENTITY x SYSTEM "{uri}">]><{root}>'
                                 f"<X>&x;</X>{inner}").encode(),
        "external_entity_path": (f'<!DOCTYPE {root} [<!ENTITY x SYSTEM "{secret}">]><{root}>'
                                 f"<X>&x;</X>{inner}").encode(),
        "parameter_entity": (f'<!DOCTYPE {root} [<!ENTITY % p SYSTEM "{uri}"> %p;]>{body}'
                             ).encode(),
        "external_dtd": f'<!DOCTYPE {root} SYSTEM "{uri}">{body}'.encode(),
        "internal_entity": (f'<!DOCTYPE {root} [<!ENTITY e "x">]><{root}><X>&e;</X>{inner}'
                            ).encode(),
        "utf16_doctype": (f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE {root} '
                          f'[<!ENTITY x SYSTEM "{uri}">]><{root}><X>&x;</X>{inner}'
                          ).encode("utf-16"),
    }


def document_cases(good: bytes, root: str, secret: Path, frame: Callable[[bytes], bytes]
                   ) -> List[Case]:
    """Bad documents every executable must refuse; ``frame`` adds oned's framing."""
    cases = [
        Case("empty_stdin", b""),
        Case("not_base64", b"this is not base64 at all!\n"),
        Case("base64_of_text", frame(base64.b64encode(b"hello, I am not XML"))),
        Case("raw_xml_not_base64", frame(good)),
        Case("truncated_half", frame(base64.b64encode(good[:len(good) // 2]))),
        Case("truncated_base64", frame(base64.b64encode(good)[:-7])),
        Case("wrong_root", frame(base64.b64encode(b"<SOMETHING><ID>1</ID></SOMETHING>"))),
        Case("nul_byte", frame(base64.b64encode(good.replace(b"<", b"\x00<", 3)))),
        Case("invalid_utf8", frame(base64.b64encode(good.replace(b">", b">\xff\xfe", 1)))),
        Case("huge_stdin_20MB", b"QUFB" * (5 * 1024 * 1024)),
        Case("huge_xml_9MB", frame(base64.b64encode(
            good.replace(f"<{root}>".encode(), f"<{root}><PAD>".encode() + b"x" * (9 << 20)
                         + b"</PAD>", 1)))),
    ]
    for name, doc in doctype_docs(good, root, secret).items():
        cases.append(Case(name, frame(base64.b64encode(doc))))
    return cases


# -- the runner ------------------------------------------------------------------------------


@dataclass
class Target:
    """One executable and what to feed it."""

    path: Path
    kind: str  # ipam | vnm | hook
    action: str
    argv_prefix: Sequence[str] = ()

    def argv(self, case: Case) -> List[str]:
        return [*self.argv_prefix, str(self.path), *case.args]


def check_run(target: Target, case: Case, result, env_dir: Path, secret: Path) -> List[str]:
    """Every way this run broke the contract (empty: it kept it)."""
    why = []
    if result.timed_out:
        why.append("timed out")
    if result.rc == 0:
        why.append("exit 0 (accepted)")
    elif result.rc == 70:
        why.append("exit 70 (internal error)")
    if "Traceback" in result.stderr:
        why.append("traceback on stderr")
    lines = result.message_lines
    if lines is None:
        why.append(f"no ERROR MESSAGE block: {result.stderr[-300:]!r}")
    elif len(lines) != 1 or not lines[0].strip():
        why.append(f"block is not one line: {lines!r}")
    elif "internal error" in lines[0]:
        why.append(f"internal error: {lines[0]}")
    if result.stdout.strip():
        why.append(f"stdout not empty: {result.stdout[:200]!r}")
    everything = result.stdout + result.stderr
    for log in (env_dir / "log").rglob("*"):
        if log.is_file():
            everything += log.read_text(errors="replace")
    if SECRET_TEXT in everything:
        why.append("the local file's content came out (entity resolved)")
    state = tree(env_dir / "state")
    if state:
        why.append(f"state directory changed: {state[:5]}")
    if case.marker is not None and case.marker.exists():
        why.append(f"{case.marker} created through a shell")
    calls = mutating_calls(shim_calls(env_dir / "shim.log"))
    if calls:
        why.append(f"iptables changed: {calls[:3]}")
    return why


def run_cases(target: Target, cases: Sequence[Case], make_env: Callable[[Path], Dict],
              base: Path, secret: Path) -> Dict[str, List[str]]:
    """Run every case (a few at a time) in its own config/state/log tree."""
    def one(index_case: Tuple[int, Case]) -> Tuple[str, List[str]]:
        index, case = index_case
        env_dir = base / f"{target.action}-{index}"
        env_dir.mkdir(parents=True)
        env = make_env(env_dir)
        stdin = case.stdin
        result = run(target.argv(case), stdin, env, timeout=30)
        return case.name, check_run(target, case, result, env_dir, secret)

    with concurrent.futures.ThreadPoolExecutor(MAX_WORKERS) as pool:
        outcomes = list(pool.map(one, enumerate(cases)))
    count("bad_inputs", len(cases))
    return {name: why for name, why in outcomes if why}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "local-secret.txt"
    path.write_text(SECRET_TEXT + "\n")
    return path


def frontend_env(api_url: str, oned_url: str = "", auth_file: Optional[Path] = None,
                 tokens: Optional[Dict[str, str]] = None) -> Callable[[Path], Dict]:
    def make(env_dir: Path) -> Dict:
        shim = make_shim(env_dir / "bin")
        env = base_env([shim])
        config = env_dir / "packet_provider.yaml"
        write_config(config, api_url, env_dir / "state", env_dir / "log", tokens=tokens,
                     one_xmlrpc=oned_url)
        env["PACKET_PROVIDER_CONFIG"] = str(config)
        env["SHIM_LOG"] = str(env_dir / "shim.log")
        env["ALIAS_IP_SETTLE_SECONDS"] = "0"
        (env_dir / "state").mkdir(exist_ok=True)
        env["ALIAS_SDNAT_LOCK"] = str(env_dir / "state" / "alias_sdnat.lock")  # a side effect
        if oned_url:
            env["ONE_XMLRPC"] = oned_url
        if auth_file is not None:
            env["ONE_AUTH"] = str(auth_file)
        return env

    return make


def api_calls(packet) -> List[str]:
    return [f"{r['method']} {r['path']}" for r in packet.requests()
            if not r["path"].startswith("/_emulator")]


def attribute_calls(target: Target, cases: Sequence[Case], make_env: Callable[[Path], Dict],
                    base: Path, calls_now: Callable[[], List[str]],
                    clear: Callable[[], None]) -> List[str]:
    """Which cases made the calls seen: run them again one by one (only after a failure)."""
    guilty = []
    for index, case in enumerate(cases):
        env_dir = base / f"again-{index}"
        env_dir.mkdir(parents=True)
        clear()
        run(target.argv(case), case.stdin, make_env(env_dir), timeout=30)
        calls = calls_now()
        if calls:
            guilty.append(f"{case.name} -> {calls[:3]}")
    return guilty


# -- IPAM ------------------------------------------------------------------------------------


def ipam_cases(action: str, project: str, token: str, secret: Path, tmp: Path) -> List[Case]:
    good = ipam_doc(action, project, token)
    cases = document_cases(good, "IPAM_DRIVER_ACTION_DATA", secret, lambda b: b)
    for case in cases:
        case.args = ["7"]
    register = action == "register_address_range"

    def add(name: str, doc: bytes, args: Sequence[str] = ("7",), marker=None) -> None:
        cases.append(Case(name, base64.b64encode(doc), list(args), marker))

    # argv
    for name, args in [("no_request_id", []), ("request_id_path", ["../7"]),
                       ("request_id_shell", ["7;touch x"]), ("two_arguments", ["7", "8"]),
                       ("negative_request_id", ["-7"])]:
        add(name, good, args)
    # missing and repeated elements
    add("no_AR", xml_doc("IPAM_DRIVER_ACTION_DATA", [("ADDRESS", [("SIZE", "1")])]))
    add("empty_AR", xml_doc("IPAM_DRIVER_ACTION_DATA", [("AR", [])]))
    add("AR_without_SIZE", ipam_doc(action, project, token, {"SIZE": None}))
    add("SIZE_not_a_number", ipam_doc(action, project, token, {"SIZE": "eight"}))
    add("SIZE_negative", ipam_doc(action, project, token, {"SIZE": "-8"}))
    if register:
        add("no_PACKET_PROJECT", ipam_doc(action, project, token, {"PACKET_PROJECT": None}))
        add("PACKET_PROJECT_path", ipam_doc(action, project, token,
                                            {"PACKET_PROJECT": "../../" + project}))
        add("SIZE_not_power_of_two", ipam_doc(action, project, token, {"SIZE": "6"}))
        add("SIZE_too_big", ipam_doc(action, project, token, {"SIZE": "1048576"}))
        add("FACILITY_shell", ipam_doc(action, project, token,
                                       {"FACILITY": "ams1; touch x"}))
        add("PACKET_IP_TYPE_unknown", ipam_doc(action, project, token,
                                               {"PACKET_IP_TYPE": "public_ipv6"}))
        add("value_with_quote", ipam_doc(action, project, token, {},
                                         extra_ar=[("LABEL", 'x" ] AR = [ IP = "6.6.6.6')]))
        add("value_with_newline", ipam_doc(action, project, token, {},
                                           extra_ar=[("LABEL", "x&#10;IPAM_MAD = dummy")]))
        return cases
    for i, bad in enumerate(["../../../tmp/x", f"{RESERVATION}/../../x", f"{RESERVATION}/..",
                             ""]):
        add(f"DEPLOY_ID_bad_{i}", ipam_doc(action, project, token, {"DEPLOY_ID": bad}))
    add("DEPLOY_ID_missing", ipam_doc(action, project, token, {"DEPLOY_ID": None}))
    add("PACKET_PROJECT_path", ipam_doc(action, project, token,
                                        {"PACKET_PROJECT": "../" + project}))
    if action == "unregister_address_range":
        return cases
    for i, bad in enumerate(HOSTILE_IPS[:3]):
        marker = tmp / f"marker-ar-{action}-{i}"
        add(f"AR_IP_hostile_{i}", ipam_doc(action, project, token,
                                           {"IP": bad.format(marker=marker)}), marker=marker)
    add("ADDRESS_SIZE_2", ipam_doc(action, project, token, address={"SIZE": "2"}))
    add("ADDRESS_SIZE_text", ipam_doc(action, project, token, address={"SIZE": "one"}))
    if action == "get_address":
        add("no_ADDRESS_SIZE", ipam_doc(action, project, token, address={"SIZE": None}))
        return cases
    for i, bad in enumerate(HOSTILE_IPS):
        marker = tmp / f"marker-addr-{action}-{i}"
        add(f"ADDRESS_IP_hostile_{i}", ipam_doc(action, project, token,
                                                address={"IP": bad.format(marker=marker)}),
            marker=marker)
    add("ADDRESS_IP_outside_range", ipam_doc(action, project, token,
                                             address={"IP": "147.75.1.16"}))
    add("ADDRESS_IP_missing", ipam_doc(action, project, token, address={"IP": None}))
    add("no_ADDRESS", ipam_doc(action, project, token, no_address=True))
    return cases


IPAM = ipam_actions()


@pytest.mark.skipif(not IPAM, reason="no IPAM actions under remotes/ipam/packet")
@pytest.mark.parametrize("path", IPAM, ids=[p.name for p in IPAM])
def test_ipam_bad_input(path: Path, packet, secret: Path, tmp_path: Path) -> None:
    action = path.name
    cases = ipam_cases(action, packet.project_id, packet.token, secret, tmp_path)
    count("bad_input_executables")
    packet.clear_requests()
    failures = run_cases(Target(path, "ipam", action), cases,
                         frontend_env(packet.url), tmp_path / "runs", secret)
    assert not failures, "\n".join(f"{n}: {'; '.join(w)}" for n, w in failures.items())
    if api_calls(packet):
        guilty = attribute_calls(Target(path, "ipam", action), cases, frontend_env(packet.url),
                                 tmp_path / "again", lambda: api_calls(packet),
                                 packet.clear_requests)
        pytest.fail(f"Packet API called for bad input: {guilty}")
    assert not packet.state()["reservations"]


@pytest.mark.skipif(not IPAM, reason="no IPAM actions under remotes/ipam/packet")
def test_ipam_controls_reach_the_api(packet, tmp_path: Path) -> None:
    """The checks above can fail: the same documents, unbroken, do reach the Packet API."""
    make = frontend_env(packet.url)
    for path in IPAM:
        packet.clear_requests()
        env_dir = tmp_path / path.name
        env_dir.mkdir()
        doc = ipam_doc(path.name, packet.project_id, packet.token)
        result = run([str(path), "7"], base64.b64encode(doc), make(env_dir))
        assert "Traceback" not in result.stderr
        assert api_calls(packet), f"{path.name}: a good document made no API call"
        if path.name == "register_address_range":
            assert result.rc == 0, result.stderr
            assert len(packet.state()["reservations"]) == 1


# -- hook ------------------------------------------------------------------------------------


def hostile_ip_cases(frame: Callable[[bytes], bytes], marker_stem: Path,
                     nic_case: str) -> List[Case]:
    """A VM whose alias IP, then whose parent NIC IP, is each of HOSTILE_IPS (a shell
    injection would create ``<marker_stem>-<i>``)."""
    cases = []
    for i, bad in enumerate(HOSTILE_IPS):
        marker = Path(f"{marker_stem}-{i}")
        for name, path in (("alias_IP", "TEMPLATE__NIC_ALIAS__IP"),
                           (nic_case, "TEMPLATE__NIC__IP")):
            cases.append(Case(f"{name}_hostile_{i}", frame(base64.b64encode(vm_with(
                **{path: bad.format(marker=marker)}))), marker=marker))
    return cases


def hook_cases(secret: Path, tmp: Path) -> List[Case]:
    def stdin_frame(b: bytes) -> bytes:
        return b + b" "

    cases = document_cases(VM_XML, "VM", secret, stdin_frame)
    cases += hostile_ip_cases(stdin_frame, tmp / "marker-hook", "nic_IP")
    more = {
        "no_ID": vm_with(ID=None), "ID_path": vm_with(ID="../42"), "ID_text": vm_with(ID="x"),
        "STATE_text": vm_with(STATE="RUNNING"), "no_STATE": vm_with(STATE=None),
        "alias_without_NIC_ID": vm_with(TEMPLATE__NIC_ALIAS__NIC_ID=None),
        "alias_NIC_ID_text": vm_with(TEMPLATE__NIC_ALIAS__NIC_ID="one"),
        "alias_AR_ID_text": vm_with(TEMPLATE__NIC_ALIAS__AR_ID="zero"),
        "alias_NETWORK_ID_path": vm_with(TEMPLATE__NIC_ALIAS__NETWORK_ID="../2"),
        "history_HID_text": vm_with(HISTORY_RECORDS__HISTORY__HID="three"),
        "history_without_SEQ": vm_with(HISTORY_RECORDS__HISTORY__SEQ=None),
    }
    for name, doc in more.items():
        cases.append(Case(name, stdin_frame(base64.b64encode(doc))))
    good = base64.b64encode(VM_XML).decode()
    cases.append(Case("argv_two_arguments", b"", [good, good]))
    cases.append(Case("argv_not_base64", b"", ["not-base64!"]))
    cases.append(Case("argv_doctype", b"", [base64.b64encode(
        doctype_docs(VM_XML, "VM", secret)["external_entity_file"]).decode()]))
    return cases


HOOKS = hook_executables()


@pytest.mark.skipif(not HOOKS, reason="no hook under remotes/hooks/alias_ip")
@pytest.mark.parametrize("path", HOOKS, ids=[p.name for p in HOOKS])
def test_hook_bad_input(path: Path, packet, oned, one_auth_file: Path, secret: Path,
                        tmp_path: Path) -> None:
    cases = hook_cases(secret, tmp_path)
    count("bad_input_executables")
    packet.clear_requests()
    oned.calls.clear()
    failures = run_cases(Target(path, "hook", "hook"), cases,
                         frontend_env(packet.url, oned.url, one_auth_file),
                         tmp_path / "runs", secret)
    assert not failures, "\n".join(f"{n}: {'; '.join(w)}" for n, w in failures.items())
    assert not api_calls(packet), api_calls(packet)[:5]
    assert not oned.calls, f"oned called for bad input: {oned.calls[:5]}"


@pytest.mark.skipif(not HOOKS, reason="no hook under remotes/hooks/alias_ip")
def test_hook_control_reaches_oned(packet, oned, one_auth_file: Path, tmp_path: Path) -> None:
    """A good event with an external alias does call oned: the check above can fail."""
    oned.calls.clear()
    env_dir = tmp_path / "control"
    env_dir.mkdir()
    env = frontend_env(packet.url, oned.url, one_auth_file)(env_dir)
    result = run([str(HOOKS[0])], base64.b64encode(VM_XML) + b" ", env)
    assert "Traceback" not in result.stderr
    assert oned.calls, "a good event made no oned call"


# -- VNM -------------------------------------------------------------------------------------


def vnm_cases(action: str, secret: Path, tmp: Path) -> List[Case]:
    def frame(b: bytes) -> bytes:
        return b + b"\n"

    args = ["one-42"] if action == "post" else []
    cases = document_cases(VM_XML, "VM", secret, frame)
    cases += hostile_ip_cases(frame, tmp / f"marker-vnm-{action}", "parent_IP")
    more = {
        "no_ID": vm_with(ID=None), "ID_path": vm_with(ID="../42"),
        "alias_without_NIC_ID": vm_with(TEMPLATE__NIC_ALIAS__NIC_ID=None),
        "alias_PARENT_ID_text": vm_with(TEMPLATE__NIC_ALIAS__PARENT_ID="zero"),
        "nic_NIC_ID_text": vm_with(TEMPLATE__NIC__NIC_ID="zero"),
    }
    for name, doc in more.items():
        cases.append(Case(name, frame(base64.b64encode(doc))))
    for case in cases:
        case.args = list(args)
    return cases


HOSTILE_DEPLOY_IDS = ["../../../tmp/x", "one-42/../../x", "one-42; touch {m}", "$(touch {m})",
                      "-j ACCEPT"]


VNM = vnm_actions()


def _iptables_save(prefix: Sequence[str]) -> str:
    out = subprocess.run([*prefix, "iptables-save"], capture_output=True, text=True,
                         check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


@pytest.fixture
def vnm_netns():
    """A scratch network namespace: the VNM actions run in it, so any real iptables change
    would show in its tables."""
    reason = netns_missing_reason()
    if reason:
        yield None
        return
    name = f"rel-bad-{uuid.uuid4().hex[:8]}"
    ip = shutil.which("ip")
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        yield [ip, "netns", "exec", name]
    finally:
        subprocess.run([ip, "netns", "delete", name], check=False)


@pytest.mark.skipif(not VNM, reason="no VNM actions under remotes/vnm/alias_sdnat yet")
@pytest.mark.parametrize("path", VNM, ids=[p.name for p in VNM])
def test_vnm_bad_input(path: Path, secret: Path, tmp_path: Path, vnm_netns) -> None:
    action = path.name
    cases = vnm_cases(action, secret, tmp_path)
    count("bad_input_executables")
    prefix = vnm_netns or []
    before = _iptables_save(prefix) if prefix else ""
    failures = run_cases(Target(path, "vnm", action, prefix), cases,
                         frontend_env("http://127.0.0.1:9"), tmp_path / "runs", secret)
    assert not failures, "\n".join(f"{n}: {'; '.join(w)}" for n, w in failures.items())
    if prefix:
        assert _iptables_save(prefix) == before, "iptables changed in the namespace"


@pytest.mark.skipif(not any(p.name == "post" for p in VNM), reason="no VNM post action")
@pytest.mark.parametrize("index", range(len(HOSTILE_DEPLOY_IDS)))
def test_vnm_post_refuses_hostile_deploy_id(index: int, secret: Path, tmp_path: Path,
                                            vnm_netns) -> None:
    marker = tmp_path / "marker-deploy"
    case = Case(f"deploy_id_bad_{index}", base64.b64encode(VM_XML) + b"\n",
                [HOSTILE_DEPLOY_IDS[index].format(m=marker)], marker)
    post = next(p for p in VNM if p.name == "post")
    failures = run_cases(Target(post, "vnm", "post", vnm_netns or []), [case],
                         frontend_env("http://127.0.0.1:9"), tmp_path / "runs", secret)
    assert not failures, failures


@pytest.mark.skipif(not any(p.name == "post" for p in VNM), reason="no VNM post action")
def test_vnm_control_changes_iptables(tmp_path: Path, vnm_netns) -> None:
    """A good post does reach iptables (through the shim): the checks above can fail."""
    post = next(p for p in VNM if p.name == "post")
    env_dir = tmp_path / "control"
    env_dir.mkdir()
    env = frontend_env("http://127.0.0.1:9")(env_dir)
    result = run([*(vnm_netns or []), str(post), "one-42"], base64.b64encode(VM_XML) + b"\n",
                 env)
    assert result.rc == 0, result.stderr
    assert mutating_calls(shim_calls(env_dir / "shim.log")), shim_calls(env_dir / "shim.log")


def test_scripts_behind_the_action_links_refuse_to_guess(packet, tmp_path: Path) -> None:
    """The real scripts (the action names are links to them) run under their own name: they
    must refuse cleanly, whatever the input, with no API call and no rule change."""
    from reliability.relsupport import executables

    scripts = [p for kind in ("ipam/packet", "vnm/alias_sdnat") for p in executables(kind)
               if p.name.endswith(".py")]
    good_ipam = base64.b64encode(ipam_doc("get_address", packet.project_id, packet.token))
    packet.clear_requests()
    for script in scripts:
        for stdin in (b"", good_ipam, base64.b64encode(VM_XML) + b"\n"):
            env_dir = tmp_path / f"{script.name}-{len(stdin)}"
            env_dir.mkdir()
            result = run([str(script), "7"], stdin, frontend_env(packet.url)(env_dir))
            count("bad_inputs")
            assert result.rc not in (0, 70) and "Traceback" not in result.stderr, \
                result.stderr
            assert result.message_lines and len(result.message_lines) == 1
            assert not mutating_calls(shim_calls(env_dir / "shim.log"))
    assert scripts and not api_calls(packet)
