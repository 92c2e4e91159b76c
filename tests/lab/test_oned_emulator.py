"""The oned emulator over real XML-RPC: pyone 5.12 parses what it serves, errors are oned's."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import xml.etree.ElementTree as ET
import xmlrpc.client
from pathlib import Path

import pyone
import pytest

from fixtures.common import LIB, PYTHON, ROOT
from packet_provider.core import hostxml
from packet_provider.core.oned import parse_vm

TOKEN = "s3cr3t-packet-token-0123456789"
DEVICE = "54ffd20d-d972-4c8d-8628-9da18e67ae17"
RESERVATION = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"


def _as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.fixture
def world(oned):
    """A packet-provisioned host, a private and a public (packet AR) network, and a running
    VM with one NIC and two external aliases, one being hot-attached."""
    state = oned.state
    host = state.add_host("147.75.84.10", deploy_id=DEVICE,
                          provision={"PACKET_TOKEN": TOKEN, "FACILITY": "ams1"})
    private = state.add_vnet("private", vn_mad="dummy")
    state.add_ar(private, {"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "10"})
    public = state.add_vnet("public", vn_mad="alias_sdnat")
    state.add_ar(public, {"TYPE": "IP4", "IP": "147.75.84.88", "SIZE": "8",
                          "IPAM_MAD": "packet", "DEPLOY_ID": RESERVATION,
                          "PACKET_TOKEN": TOKEN, "PACKET_PROJECT": "438659f0"})
    vm = state.add_vm("web-1")
    lease = state.take_lease(private, 0, vm.id)
    state.add_nic(vm.id, private, 0, lease)
    first = state.take_lease(public, 0, vm.id, ip="147.75.84.90")
    state.add_alias(vm.id, 0, public, 0, first)
    second = state.take_lease(public, 0, vm.id)
    state.add_alias(vm.id, 0, public, 0, second, attach=True)
    vm.set_state(3, 3)
    vm.deploy_id = f"one-{vm.id}"
    state.add_history(vm.id, host)
    return {"host": host, "private": private, "public": public, "vm": vm.id}


def test_pyone_parses_vm_with_nics_aliases_and_history(oned, world):
    vm = oned.client().vm.info(world["vm"])
    assert (vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE, vm.DEPLOY_ID) == (
        world["vm"], "web-1", 3, 3, f"one-{world['vm']}")
    nic = vm.TEMPLATE["NIC"]
    assert nic["NIC_ID"] == "0" and nic["NAME"] == "NIC0" and nic["IP"] == "192.168.150.2"
    assert nic["ALIAS_IDS"] == "1,2" and nic["VN_MAD"] == "dummy" and nic["BRIDGE"] == "br0"
    aliases = _as_list(vm.TEMPLATE["NIC_ALIAS"])
    assert [a["NAME"] for a in aliases] == ["NIC0_ALIAS1", "NIC0_ALIAS2"]  # by NIC_ID, as oned
    first, second = aliases
    assert first["IP"] == "147.75.84.90" and first["MAC"] == "02:00:93:4b:54:5a"
    assert (first["NIC_ID"], first["ALIAS_ID"], first["PARENT"], first["PARENT_ID"]) == (
        "1", "0", "NIC0", "0")
    assert (first["EXTERNAL"], first["NETWORK_ID"], first["AR_ID"], first["VN_MAD"]) == (
        "YES", str(world["public"]), "0", "alias_sdnat")
    assert "ATTACH" not in first and second["ATTACH"] == "YES"
    assert second["IP"] == "147.75.84.88"
    history = vm.HISTORY_RECORDS.HISTORY
    assert len(history) == 1
    assert (history[-1].HID, history[-1].HOSTNAME, history[-1].ACTION, history[-1].SEQ) == (
        world["host"], "147.75.84.10", 0, 0)


def test_components_model_reads_the_served_vm(oned, world):
    raw = xmlrpc.client.ServerProxy(oned.url).one.vm.info(oned.auth, world["vm"])
    assert raw[0] is True and raw[2] == 0 and raw[1].startswith("<VM>")
    vm = parse_vm(hostxml.parse(raw[1].encode()))
    assert [str(a.ip) for a in vm.aliases] == ["147.75.84.90", "147.75.84.88"]
    assert vm.parent_of(vm.aliases[0]).name == "NIC0"
    assert [a.attach for a in vm.aliases] == [False, True]
    assert vm.current_history.hid == world["host"]


def test_top_level_order_follows_oned_examples(oned, world):
    data = ROOT / "tests" / "data"
    proxy = xmlrpc.client.ServerProxy(oned.url).one
    served = {
        "vm-with-nic-alias.xml": proxy.vm.info(oned.auth, world["vm"])[1],
        "host-packet.xml": proxy.host.info(oned.auth, world["host"])[1],
        "vnet-packet-ar.xml": proxy.vn.info(oned.auth, world["public"], True)[1],
    }
    for name, xml in served.items():
        example = ET.parse(data / name).getroot()
        ours = ET.fromstring(xml)
        assert [c.tag for c in ours] == [c.tag for c in example], name
    vm = ET.fromstring(served["vm-with-nic-alias.xml"])
    example_history = ET.parse(data / "vm-with-nic-alias.xml").getroot().find(
        "HISTORY_RECORDS/HISTORY")
    assert [c.tag for c in vm.find("HISTORY_RECORDS/HISTORY")] == [
        c.tag for c in example_history]


def test_pyone_parses_host_provision_deploy_id(oned, world):
    one = oned.client()
    host = one.host.info(world["host"])
    assert host.ID == world["host"] and host.NAME == "147.75.84.10"
    assert host.TEMPLATE["PROVISION"]["DEPLOY_ID"] == DEVICE
    assert host.TEMPLATE["PROVISION"]["PACKET_TOKEN"] != TOKEN
    assert one.host.info(world["host"], True).TEMPLATE["PROVISION"]["PACKET_TOKEN"] == TOKEN
    plain = oned.state.add_host("plain")
    assert "PROVISION" not in one.host.info(plain).TEMPLATE


def test_pyone_parses_vnet_ar_pool_and_leases(oned, world):
    vnet = oned.client().vn.info(world["public"], True)
    assert vnet.ID == world["public"] and vnet.VN_MAD == "alias_sdnat"
    ar = vnet.AR_POOL.AR[0]
    assert (ar.AR_ID, ar.IP, ar.SIZE, ar.TYPE) == ("0", "147.75.84.88", 8, "IP4")
    assert ar.IP_END == "147.75.84.95" and ar.MAC_END == "02:00:93:4b:54:5f"
    leases = ar.LEASES.LEASE
    assert sorted((le.IP, le.VM) for le in leases) == [
        ("147.75.84.88", world["vm"]), ("147.75.84.90", world["vm"])]
    assert vnet.USED_LEASES == 2


def test_pyone_typed_ar_drops_custom_attributes_raw_xml_keeps_them(oned, world):
    ar = oned.client().vn.info(world["public"], True).AR_POOL.AR[0]
    for name in ("DEPLOY_ID", "PACKET_TOKEN", "IPAM_MAD", "PACKET_PROJECT"):
        assert not hasattr(ar, name), name
    raw = xmlrpc.client.ServerProxy(oned.url).one.vn.info(oned.auth, world["public"], True)
    node = ET.fromstring(raw[1]).find("AR_POOL/AR")
    assert node.findtext("DEPLOY_ID") == RESERVATION
    assert node.findtext("PACKET_TOKEN") == TOKEN
    assert node.findtext("IPAM_MAD") == "packet"
    assert node.find("ALLOCATED") is None


def test_decrypt_flag_controls_packet_token(oned, world):
    proxy = xmlrpc.client.ServerProxy(oned.url).one

    def token(*decrypt):
        xml = proxy.vn.info(oned.auth, world["public"], *decrypt)[1]
        return ET.fromstring(xml).findtext("AR_POOL/AR/PACKET_TOKEN")

    encrypted = token()
    assert token(True) == TOKEN
    assert encrypted != TOKEN and TOKEN not in encrypted and encrypted == token(False)
    assert encrypted == token()  # stable, like a value encrypted at rest


def test_unknown_ids_answer_no_exists(oned, world):
    one = oned.client()
    for call in (one.vm.info, one.host.info, one.vn.info, one.hook.info, one.hook.delete):
        with pytest.raises(pyone.OneNoExistsException):
            call(999)
    raw = xmlrpc.client.ServerProxy(oned.url).one.vm.info(oned.auth, 999)
    assert raw[0] is False and raw[2] == 0x400 and raw[3] == 999
    assert raw[1] == "[one.vm.info] Error getting virtual machine [999]."


def test_bad_session_answers_authentication_error(oned, world):
    for session in ("oneadmin:wrong", "nobody", ""):
        with pytest.raises(pyone.OneAuthenticationException):
            pyone.OneServer(oned.url, session=session).vm.info(world["vm"])
    raw = xmlrpc.client.ServerProxy(oned.url).one.host.info("oneadmin:nope", 0)
    assert raw[0] is False and raw[2] == 0x100


def test_bad_arguments_and_unknown_methods(oned, world):
    proxy = xmlrpc.client.ServerProxy(oned.url)
    raw = proxy.one.vm.info(oned.auth, "zero")
    assert raw[0] is False and raw[2] == 0x1000
    assert proxy.one.hookpool.info(oned.auth, -9, -1, -1)[2] == 0x1000
    with pytest.raises(xmlrpc.client.Fault):
        proxy.one.vm.action(oned.auth, "terminate", 0)
    with pytest.raises(pyone.OneApiException):
        oned.client().vm.info("zero")


HOOK_TEMPLATE = """
NAME = "alias_ip_running"
TYPE = state
COMMAND = "alias_ip/alias_ip.py"
ARGUMENTS = "$TEMPLATE"
ARGUMENTS_STDIN = "yes"
ON = "CUSTOM"
RESOURCE = VM
STATE = ACTIVE
LCM_STATE = RUNNING
REMOTE = "NO"
"""


def test_hook_allocate_info_update_delete_and_pool(oned):
    one = oned.client()
    hook_id = one.hook.allocate(HOOK_TEMPLATE)
    hook = one.hook.info(hook_id)
    assert (hook.ID, hook.NAME, hook.TYPE) == (hook_id, "alias_ip_running", "state")
    assert hook.TEMPLATE["COMMAND"] == "alias_ip/alias_ip.py"
    assert hook.TEMPLATE["LCM_STATE"] == "RUNNING" and hook.TEMPLATE["ARGUMENTS_STDIN"] == "yes"
    other = one.hook.allocate({"NAME": "done", "TYPE": "state", "COMMAND": "x", "ON": "DONE",
                               "RESOURCE": "VM"})
    assert [h.NAME for h in one.hookpool.info(-2, -1, -1).HOOK] == ["alias_ip_running", "done"]
    assert one.hook.update(other, 'TIMEOUT = "5"', 1) == other
    assert one.hook.info(other).TEMPLATE["TIMEOUT"] == "5"
    assert one.hook.info(other).TEMPLATE["COMMAND"] == "x"
    assert one.hook.delete(hook_id) == hook_id
    assert [h.ID for h in one.hookpool.info(-2, -1, -1).HOOK] == [other]
    with pytest.raises(pyone.OneNoExistsException):
        one.hook.info(hook_id)


def test_hook_allocate_rejects_bad_templates(oned):
    one = oned.client()
    with pytest.raises(pyone.OneInternalException):
        one.hook.allocate('NAME = "x" = ]')
    with pytest.raises(pyone.OneInternalException):
        one.hook.allocate('NAME = "x"\nTYPE = state\nCOMMAND = "y"\nRESOURCE = VM')
    with pytest.raises(pyone.OneInternalException):
        one.hook.allocate('TYPE = state\nCOMMAND = "y"\nRESOURCE = VM\nON = DONE')
    one.hook.allocate(HOOK_TEMPLATE)
    with pytest.raises(pyone.OneActionException):
        one.hook.allocate(HOOK_TEMPLATE)
    assert len(one.hookpool.info(-2, -1, -1).HOOK) == 1


def test_hook_log_records_parse(oned):
    one = oned.client()
    hook_id = one.hook.allocate(HOOK_TEMPLATE)
    oned.state.record_execution(hook_id, "UEQ= ", "/hooks/alias_ip/alias_ip.py", "out\n",
                                "boom\n", 1)
    oned.state.record_execution(hook_id, "UEQ= ", "/hooks/alias_ip/alias_ip.py", "", "", 0,
                                retry=True)
    records = one.hook.info(hook_id).HOOKLOG.HOOK_EXECUTION_RECORD
    assert [(r.EXECUTION_ID, int(r.EXECUTION_RESULT.CODE)) for r in records] == [(0, 1), (1, 0)]
    assert records[0].ARGUMENTS == "UEQ= "
    import base64

    assert base64.b64decode(records[0].EXECUTION_RESULT.STDERR) == b"boom\n"
    assert records[1].RETRY == "yes"


def test_hook_retry_needs_a_runner_and_calls_it(oned):
    one = oned.client()
    hook_id = one.hook.allocate(HOOK_TEMPLATE)
    oned.state.record_execution(hook_id, "x ", "c", "", "", 1)
    with pytest.raises(pyone.OneActionException):
        one.hook.retry(hook_id, 0)
    calls = []
    oned.hook_runner = lambda h, e: calls.append((h, e)) or 1
    assert one.hook.retry(hook_id, 0) == hook_id
    assert calls == [(hook_id, 0)]
    with pytest.raises(pyone.OneNoExistsException):
        one.hook.retry(hook_id, 7)


def test_system_version_config_and_pools(oned, world):
    one = oned.client()
    assert one.system.version().startswith("5.12")
    assert one.system.config().VNET_ENCRYPTED_ATTR == ["AR/PACKET_TOKEN"]
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, -1).VM] == [world["vm"]]
    assert len(one.hostpool.info().HOST) == 1
    assert [v.NAME for v in one.vnpool.info(-2, -1, -1).VNET] == ["private", "public"]


def test_concurrent_calls_are_answered(oned, world):
    errors = []

    def worker():
        try:
            one = oned.client()
            for _ in range(10):
                assert one.vm.info(world["vm"]).ID == world["vm"]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert oned.calls.count(("one.vm.info", "ok")) == 60


def _start_cli(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONE_")}
    env["PYTHONPATH"] = str(LIB)
    env.update(env_extra)
    proc = subprocess.Popen([PYTHON, "-m", "packet_lab.oned.emulator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    line = proc.stdout.readline()
    return proc, line


def test_cli_serves_with_auth_from_env_and_logs_each_call(tmp_path):
    state_file = tmp_path / "oned.json"
    proc, line = _start_cli(["--add-host", f"hv1={DEVICE}", "--state-file", str(state_file)],
                            {"ONE_EMULATOR_AUTH": "admin:pw-from-env"}, tmp_path)
    try:
        assert line.startswith("listening on http://127.0.0.1:") and line.endswith("/RPC2\n")
        url = line.split()[-1]
        assert "pw-from-env" not in " ".join(proc.args)
        one = pyone.OneServer(url, session="admin:pw-from-env")
        assert one.host.info(0).TEMPLATE["PROVISION"]["DEPLOY_ID"] == DEVICE
        hook_id = one.hook.allocate(HOOK_TEMPLATE)
        with pytest.raises(pyone.OneAuthenticationException):
            pyone.OneServer(url, session="admin:other").host.info(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = err.splitlines()
    assert len(lines) == 3
    assert "one.host.info 0 -> ok" in lines[0] and "-> error 0x100" in lines[2]
    assert state_file.stat().st_mode & 0o077 == 0  # it holds tokens: owner only
    # the state survives a restart (hosts given again are not added twice)
    proc, line = _start_cli(["--state-file", str(state_file), "--add-host", f"hv1={DEVICE}"],
                            {"ONE_EMULATOR_AUTH": "admin:pw-from-env"}, tmp_path)
    try:
        one = pyone.OneServer(line.split()[-1], session="admin:pw-from-env")
        assert one.hook.info(hook_id).NAME == "alias_ip_running"
        assert len(one.hostpool.info().HOST) == 1
        # a second emulator on the same state file is refused before it reads or writes it
        before = state_file.read_bytes()
        second, out = _start_cli(["--state-file", str(state_file), "--add-host", "hv9"],
                                 {"ONE_EMULATOR_AUTH": "admin:pw-from-env"}, tmp_path)
        _, err = second.communicate(timeout=10)
        assert second.returncode == 2 and out == ""
        assert err == f"oned emulator: state file {state_file} is in use by another emulator " \
                      f"(pid {proc.pid})\n"
        assert state_file.read_bytes() == before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def test_cli_auth_file_help_and_bad_auth(tmp_path: Path):
    auth = tmp_path / "auth"
    auth.write_text("admin:from-file\n")
    proc, line = _start_cli(["--auth-file", str(auth)], {}, tmp_path)
    try:
        one = pyone.OneServer(line.split()[-1], session="admin:from-file")
        assert one.system.version().startswith("5.12")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    env = {"PYTHONPATH": str(LIB), "PATH": os.environ.get("PATH", "")}
    shown = subprocess.run([PYTHON, "-m", "packet_lab.oned.emulator", "--help"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "ONE_EMULATOR_AUTH" in shown.stdout
    assert "--auth-file" in shown.stdout and "listening on" in shown.stdout
    bad = subprocess.run([PYTHON, "-m", "packet_lab.oned.emulator"], capture_output=True,
                         text=True, env={**env, "ONE_EMULATOR_AUTH": "no-colon"}, timeout=10)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"hosts": [{"id": 0}]}')
    bad = subprocess.run([PYTHON, "-m", "packet_lab.oned.emulator", "--state-file",
                          str(broken)], capture_output=True, text=True, env=env, timeout=10)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_injected_faults(oned, world):
    one = oned.client()
    oned.fault("one.vm.info", code=0x2000, count=2)
    for _ in range(2):
        with pytest.raises(pyone.OneInternalException):
            one.vm.info(world["vm"])
    assert one.vm.info(world["vm"]).ID == world["vm"]
    assert one.host.info(world["host"]).ID == world["host"]  # other methods unaffected
    oned.fault("one.host.", status=503)
    with pytest.raises(xmlrpc.client.ProtocolError):
        one.host.info(world["host"])
    oned.fault("one.vn.info", drop=True)
    with pytest.raises(Exception, match="(?i)connection|remote|aborted"):
        one.vn.info(world["public"])
    oned.fault("one.hook.allocate", drop_after=True)
    with pytest.raises(Exception, match="(?i)connection|remote|aborted"):
        one.hook.allocate(HOOK_TEMPLATE)
    assert [h.NAME for h in one.hookpool.info(-2, -1, -1).HOOK] == ["alias_ip_running"]
    assert ("one.vn.info", "fault: connection dropped") in oned.calls


def test_stopped_oned_refuses_then_serves_again(oned, world):
    url = oned.url
    oned.stop()
    with pytest.raises(Exception, match="(?i)connect|refused"):
        pyone.OneServer(url, session=oned.auth).vm.info(world["vm"])
    oned.start()
    assert oned.url == url
    assert pyone.OneServer(url, session=oned.auth).vm.info(world["vm"]).ID == world["vm"]


def test_template_syntax_like_oned():
    from packet_provider.core.onetemplate import TemplateError, parse_template, template_string

    text = '''# a comment
name = "alias \\"ip\\" hook"
TYPE = state
EMPTY =
AR = [ TYPE = "IP4", IP = "147.75.1.8",
       SIZE = "8", PACKET_TOKEN = "t,k=]" ]
ARGUMENTS = $TEMPLATE
'''
    parsed = parse_template(text)
    assert parsed[0] == ("NAME", 'alias "ip" hook')
    assert parsed[1] == ("TYPE", "state") and parsed[2] == ("EMPTY", "")
    assert dict(parsed[3][1]) == {"TYPE": "IP4", "IP": "147.75.1.8", "SIZE": "8",
                                  "PACKET_TOKEN": "t,k=]"}
    assert parsed[4] == ("ARGUMENTS", "$TEMPLATE")
    assert parse_template(template_string(parsed)) == parsed
    xml = "<TEMPLATE><NAME><![CDATA[x]]></NAME><AR><IP>1.2.3.4</IP></AR></TEMPLATE>"
    assert parse_template(xml) == [("NAME", "x"), ("AR", {"IP": "1.2.3.4"})]
    for bad in ('A = "x" y', "A = [ B = ", "= 1", 'A = "unterminated',
                '<!DOCTYPE t [<!ENTITY e "x">]><TEMPLATE><A>&e;</A></TEMPLATE>'):
        with pytest.raises(TemplateError):
            parse_template(bad)


def test_served_xml_stays_well_formed_with_hostile_values(oned):
    state = oned.state
    host = state.add_host("h<1>&\x01", deploy_id="]]><evil/>")
    vm = state.add_vm("vm ]]> \x00 <x>")
    state.add_history(vm.id, host)
    hook_id = state.add_hook({"NAME": "h", "TYPE": "state", "COMMAND": "c", "ON": "DONE",
                              "RESOURCE": "VM"})
    state.record_execution(hook_id, "a ]]> b", "c", "out\x07", "\udcff err", 1)
    one = oned.client()
    assert one.host.info(host).TEMPLATE["PROVISION"]["DEPLOY_ID"] == "]]><evil/>"
    assert one.host.info(host).NAME == "h<1>&\ufffd"
    assert one.vm.info(vm.id).NAME == "vm ]]> \ufffd <x>"
    assert one.hook.info(hook_id).HOOKLOG.HOOK_EXECUTION_RECORD[0].ARGUMENTS == "a ]]> b"
