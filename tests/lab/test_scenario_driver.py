"""The scenario driver plays oned: what it runs, with which argv and stdin, in which order,
and how it reacts to failures. Small recording executables stand in for the components."""

from __future__ import annotations

import base64
import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fixtures.common import PYTHON
from packet_lab.oned.scenario import Scenario, ScenarioError

# One recorder for every action: logs what it got, fails when a flag file says so.
RECORDER = r'''#!{python}
import base64, json, os, sys, time
here = os.path.dirname(os.path.abspath(sys.argv[0]))
kind = os.path.basename(here)
name = os.path.basename(sys.argv[0])
data = sys.stdin.read()
root = os.environ["REC_ROOT"]
with open(os.path.join(root, "log.jsonl"), "a") as log:
    log.write(json.dumps({{"dir": kind, "name": name, "argv": sys.argv[1:], "stdin": data,
                          "host": os.environ.get("REC_HOST", "")}}) + "\n")
flag = os.path.join(root, "flags", kind + "." + name)
if os.path.exists(flag):
    mode = open(flag).read().strip()
    if mode.startswith("sleep"):
        time.sleep(float(mode.split()[1]))
    else:
        sys.stdout.write("some output\n")
        sys.stderr.write("noise line\nERROR MESSAGE --8<------\n" + (mode or "it failed")
                         + "\nERROR MESSAGE ------>8--\n")
        sys.exit(3)
if kind == "fakeipam" and name == "register_address_range":
    print('AR = [ TYPE = "IP4", IP = "147.75.1.8", SIZE = "4", IPAM_MAD = "fakeipam", '
          'DEPLOY_ID = "res-1", PACKET_TOKEN = "tok" ]')
elif kind == "fakeipam" and name == "get_address":
    counter = os.path.join(root, "next_ip")
    n = int(open(counter).read()) if os.path.exists(counter) else 9
    open(counter, "w").write(str(n + 1))
    print('ADDRESS = [ IP = "147.75.1.%d", SIZE = "1" ]' % n)
'''

# A host prefix: records which host it plays, then runs the rest of argv there.
ON_HOST = r'''#!{python}
import os, sys
os.environ["REC_HOST"] = sys.argv[1]
os.execv(sys.argv[2], sys.argv[2:])
'''

IPAM_ACTIONS = ("register_address_range", "unregister_address_range", "allocate_address",
                "get_address", "free_address")


class Lab:
    def __init__(self, root: Path, oned):
        self.root = root
        self.remotes = root / "remotes"
        (root / "flags").mkdir()
        script = RECORDER.format(python=PYTHON)
        paths = [self.remotes / "vnm" / "fakevnm" / a for a in ("pre", "post", "clean")]
        paths += [self.remotes / "ipam" / "fakeipam" / a for a in IPAM_ACTIONS]
        paths += [self.remotes / "hooks" / "rec" / "hook"]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
            path.chmod(0o755)
        self.on_host = root / "on_host"
        self.on_host.write_text(ON_HOST.format(python=PYTHON))
        self.on_host.chmod(0o755)
        env = dict(os.environ, REC_ROOT=str(root))
        self.sc = Scenario(oned, self.remotes, env=env)
        self.oned = oned

    def log(self, kind=None):
        path = self.root / "log.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [e for e in entries if kind is None or e["dir"] == kind]

    def clear_log(self):
        (self.root / "log.jsonl").unlink(missing_ok=True)

    def fail(self, kind, name, mode="it failed"):
        (self.root / "flags" / f"{kind}.{name}").write_text(mode)

    def heal(self, kind, name):
        (self.root / "flags" / f"{kind}.{name}").unlink()

    def host(self, name, deploy_id=None):
        return self.sc.add_host(name, deploy_id, host_prefix=[str(self.on_host), name])

    def hook(self, name, on="CUSTOM", state="ACTIVE", lcm="RUNNING", stdin=True, **extra):
        template = {"NAME": name, "TYPE": "state", "COMMAND": "rec/hook",
                    "ARGUMENTS": "$TEMPLATE", "ON": on, "RESOURCE": "VM", "REMOTE": "NO"}
        if on == "CUSTOM":
            template.update(STATE=state, LCM_STATE=lcm)
        if stdin:
            template["ARGUMENTS_STDIN"] = "yes"
        template.update(extra)
        return self.sc.add_hook(template)


def vm_of(stdin_b64: str) -> ET.Element:
    return ET.fromstring(base64.b64decode(stdin_b64.strip()))


@pytest.fixture
def lab(tmp_path, oned):
    return Lab(tmp_path, oned)


@pytest.fixture
def net(lab):
    """A private network on a fakevnm VN_MAD and a public one with an IPAM (fakeipam) AR."""
    sc = lab.sc
    private = sc.create_vnet("private", vn_mad="fakevnm",
                             ars=[{"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "16"}])
    public = sc.create_vnet("public", vn_mad="fakevnm")
    ar = sc.add_ar(public, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "1",
                            "IPAM_MAD": "fakeipam", "PACKET_TOKEN": "tok",
                            "PACKET_PROJECT": "proj-1"})
    lab.clear_log()
    sc.clear_events()
    return {"private": private, "public": public, "ar": ar}


def test_register_sends_user_ar_and_stores_driver_ar(lab):
    sc = lab.sc
    vnet = sc.create_vnet("public")
    ar_id = sc.add_ar(vnet, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "1",
                             "IPAM_MAD": "fakeipam", "PACKET_TOKEN": "tok"})
    (entry,) = lab.log("fakeipam")
    assert entry["name"] == "register_address_range" and entry["argv"] == ["1"]
    assert not entry["stdin"].endswith("\n")
    sent = ET.fromstring(base64.b64decode(entry["stdin"]))
    # as the real oned 5.12.13 sends it: the empty ADDRESS skeleton, no AR_ID
    assert sent.tag == "IPAM_DRIVER_ACTION_DATA" and sent.find("AR/AR_ID") is None
    assert [c.tag for c in sent.find("ADDRESS")] == ["MAC", "IP", "IP6_GLOBAL", "IP6_ULA",
                                                       "IP6", "SIZE"]
    assert sent.findtext("AR/IP") == "10.0.0.1" and sent.findtext("AR/PACKET_TOKEN") == "tok"
    ar = lab.oned.state.vnet(vnet).ar(ar_id)
    assert (ar.attrs["IP"], ar.attrs["SIZE"], ar.attrs["DEPLOY_ID"]) == ("147.75.1.8", "4",
                                                                         "res-1")
    event = sc.events_named("ipam register_address_range")[0]
    assert event.rc == 0 and event.duration_ms > 0 and event.argv[-1] == "1"


def test_failed_register_adds_no_ar_and_shows_the_error_block(lab):
    lab.fail("fakeipam", "register_address_range", "reservation refused by Packet")
    vnet = lab.sc.create_vnet("public")
    with pytest.raises(ScenarioError, match="reservation refused by Packet") as err:
        lab.sc.add_ar(vnet, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "1",
                             "IPAM_MAD": "fakeipam"})
    assert err.value.event.rc == 3
    assert lab.oned.state.vnet(vnet).ars == []
    with pytest.raises(ScenarioError):  # oned wants a (fake) first IP
        lab.sc.add_ar(vnet, {"TYPE": "IP4", "SIZE": "1", "IPAM_MAD": "fakeipam"})
    assert len(lab.log("fakeipam")) == 1


def test_create_vm_takes_leases_from_ipam(lab, net):
    sc = lab.sc
    vm = sc.create_vm("web", nics=[net["private"]],
                      aliases=[{"network_id": net["public"]},
                               {"network_id": net["public"], "ip": "147.75.1.11"}])
    calls = lab.log("fakeipam")
    assert [c["name"] for c in calls] == ["get_address", "allocate_address"]
    get = ET.fromstring(base64.b64decode(calls[0]["stdin"]))
    assert get.findtext("ADDRESS/SIZE") == "1" and get.findtext("ADDRESS/IP") is None
    assert get.findtext("AR/DEPLOY_ID") == "res-1" and get.find("AR/ALLOCATED") is None
    alloc = ET.fromstring(base64.b64decode(calls[1]["stdin"]))
    assert alloc.findtext("ADDRESS/IP") == "147.75.1.11"
    xml = ET.fromstring(sc.vm_xml(vm))
    assert xml.findtext("STATE") == "1"
    assert [a.findtext("IP") for a in xml.findall("TEMPLATE/NIC_ALIAS")] == [
        "147.75.1.9", "147.75.1.11"]
    assert xml.findtext("TEMPLATE/NIC/ALIAS_IDS") == "1,2"
    leases = lab.oned.state.vnet(net["public"]).ar(net["ar"]).leases
    assert sorted(le.ip for le in leases.values()) == ["147.75.1.11", "147.75.1.9"]


def test_failed_lease_frees_what_was_taken_and_creates_nothing(lab, net):
    lab.fail("fakeipam", "allocate_address", "address taken at Packet")
    with pytest.raises(ScenarioError, match="address taken at Packet"):
        lab.sc.create_vm("web", nics=[net["private"]],
                         aliases=[{"network_id": net["public"]},
                                  {"network_id": net["public"], "ip": "147.75.1.11"}])
    names = [c["name"] for c in lab.log("fakeipam")]
    assert names == ["get_address", "allocate_address", "free_address"]
    freed = ET.fromstring(base64.b64decode(lab.log("fakeipam")[2]["stdin"]))
    assert freed.findtext("ADDRESS/IP") == "147.75.1.9"
    assert lab.oned.state.vms == {}
    assert all(not ar.leases for v in lab.oned.state.vnets.values() for ar in v.ars)


def test_deploy_runs_vnm_like_the_vmm_driver_and_fires_hooks(lab, net):
    sc = lab.sc
    running = lab.hook("running")
    prolog = lab.hook("prolog", on="PROLOG")
    hv1 = lab.host("hv1", deploy_id="dev-1")
    vm = sc.create_vm("web", nics=[net["private"]], aliases=[{"network_id": net["public"]}])
    sc.deploy(vm, hv1)
    vnm = lab.log("fakevnm")
    assert [(c["name"], c["argv"], c["host"]) for c in vnm] == [
        ("pre", [], "hv1"), ("post", [f"one-{vm}"], "hv1")]
    assert all(c["stdin"].endswith("\n") and not c["stdin"].endswith("\n\n") for c in vnm)
    booted = vm_of(vnm[0]["stdin"])
    # the VNM view the real one_vmm_exec sends: no state, the current host's name only, each
    # NIC and NIC_ALIAS in a TEMPLATE of its own
    assert booted.find("STATE") is None and booted.find("LCM_STATE") is None
    assert [h.findtext("HOSTNAME") for h in booted.findall("HISTORY_RECORDS/HISTORY")
            if h.find("HOSTNAME") is not None] == ["hv1"]
    assert booted.find("HISTORY_RECORDS/HISTORY/HID") is None
    assert [len(t) for t in booted.findall("TEMPLATE") if t.find("NIC") is not None
            or t.find("NIC_ALIAS") is not None] == [1, 1]
    assert booted.findtext("DEPLOY_ID") == ""  # pre runs before the hypervisor names it
    assert vm_of(vnm[1]["stdin"]).findtext("DEPLOY_ID") == f"one-{vm}"
    hooks = lab.log("rec")
    assert len(hooks) == 2  # PROLOG then RUNNING, one run each
    assert hooks[1]["argv"] == [] and hooks[1]["stdin"].endswith(" ")
    assert not hooks[1]["stdin"].endswith("  ") and hooks[1]["host"] == ""
    seen = vm_of(hooks[1]["stdin"])
    assert (seen.findtext("STATE"), seen.findtext("LCM_STATE")) == ("3", "3")
    assert seen.findtext("DEPLOY_ID") == f"one-{vm}"
    assert vm_of(hooks[0]["stdin"]).findtext("LCM_STATE") == "1"
    assert [r.code for r in sc.hook_executions(running)] == [0]
    assert [r.code for r in sc.hook_executions(prolog)] == [0]
    states = [(e.detail["state"], e.detail["lcm_state"]) for e in sc.events_named("state")]
    assert states[-3:] == [("ACTIVE", "PROLOG"), ("ACTIVE", "BOOT"), ("ACTIVE", "RUNNING")]
    names = [e.name for e in sc.events if e.name != "state"]
    assert names.index("vnm fakevnm/pre") < names.index("vmm deploy") < names.index(
        "vnm fakevnm/post")


def test_hook_without_stdin_gets_the_template_as_argv(lab, net):
    lab.hook("argv-hook", stdin=False)
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    (run,) = lab.log("rec")
    assert run["stdin"] == "" and len(run["argv"]) == 1
    assert vm_of(run["argv"][0]).findtext("ID") == str(vm)


def test_failed_post_on_deploy_cleans_and_fails(lab, net):
    lab.fail("fakevnm", "post", "cannot add NAT rules")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    with pytest.raises(ScenarioError, match="cannot add NAT rules") as err:
        lab.sc.deploy(vm, hv1)
    assert err.value.event.name == "vnm fakevnm/post"
    assert [c["name"] for c in lab.log("fakevnm")] == ["pre", "post", "clean"]
    state = lab.oned.state.vm(vm)
    assert (state.state, state.lcm_state) == (3, 36)  # BOOT_FAILURE


def test_hook_timeout_kills_the_hook(lab, net):
    hook = lab.hook("slow", TIMEOUT="1")
    lab.fail("rec", "hook", "sleep 20")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    started = time.monotonic()
    lab.sc.deploy(vm, hv1)
    assert time.monotonic() - started < 10
    (record,) = lab.sc.hook_executions(hook)
    assert record.code == 255 and "Timeout" in record.stderr
    assert lab.sc.events_named("hook slow")[0].detail["timed_out"] is True


def test_failed_hook_is_recorded_and_retry_reruns_the_same_arguments(lab, net):
    hook = lab.hook("flaky")
    lab.fail("rec", "hook", "Packet unreachable")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    (failed,) = lab.sc.hook_executions(hook)
    assert failed.code == 3 and "Packet unreachable" in failed.stderr
    assert failed.stdout == "some output\n"
    lab.sc.poweroff(vm)  # the VM moves on; a retry still sends the original event
    lab.heal("rec", "hook")
    retried = lab.sc.retry_hook(hook, failed.execution_id)
    assert retried.code == 0 and retried.retry and retried.arguments == failed.arguments
    runs = lab.log("rec")
    assert runs[-1]["stdin"] == runs[0]["stdin"]
    assert vm_of(runs[-1]["stdin"]).findtext("LCM_STATE") == "3"
    # onehook retry through XML-RPC reaches the same runner
    one = lab.oned.client()
    assert one.hook.retry(hook, failed.execution_id) == hook
    records = one.hook.info(hook).HOOKLOG.HOOK_EXECUTION_RECORD
    assert [r.RETRY for r in records] == ["no", "yes", "yes"]
    assert len(lab.log("rec")) == 3


def test_attach_and_detach_alias(lab, net):
    sc = lab.sc
    lab.hook("hotplug", lcm="HOTPLUG_NIC")
    hv1 = lab.host("hv1")
    vm = sc.create_vm("web", nics=[net["private"]])
    sc.deploy(vm, hv1)
    lab.clear_log()
    nic_id = sc.attach_alias(vm, net["public"])
    assert [(c["name"], c["argv"]) for c in lab.log("fakevnm")] == [
        ("pre", []), ("post", [f"one-{vm}"])]
    assert [c["name"] for c in lab.log("fakeipam")] == ["get_address"]
    during = vm_of(lab.log("rec")[0]["stdin"])
    assert during.findtext("LCM_STATE") == "25"
    assert during.findtext("TEMPLATE/NIC_ALIAS/ATTACH") == "YES"
    assert during.findtext("TEMPLATE/NIC_ALIAS/EXTERNAL") == "YES"
    after = ET.fromstring(sc.vm_xml(vm))
    assert after.findtext("LCM_STATE") == "3"
    assert after.find("TEMPLATE/NIC_ALIAS/ATTACH") is None
    assert after.findtext("TEMPLATE/NIC/ALIAS_IDS") == str(nic_id)
    actions = [h.findtext("ACTION") for h in after.findall("HISTORY_RECORDS/HISTORY")]
    assert actions == ["46", "0"]
    lab.clear_log()
    sc.detach_alias(vm, nic_id)
    assert [c["name"] for c in lab.log("fakevnm")] == ["clean"]
    assert vm_of(lab.log("fakevnm")[0]["stdin"]).findtext(
        "TEMPLATE/NIC_ALIAS/ATTACH") == "YES"
    assert [c["name"] for c in lab.log("fakeipam")] == ["free_address"]
    during = vm_of(lab.log("rec")[0]["stdin"])
    assert during.findtext("TEMPLATE/NIC_ALIAS/ATTACH") == "YES"
    after = ET.fromstring(sc.vm_xml(vm))
    assert after.find("TEMPLATE/NIC_ALIAS") is None
    assert after.find("TEMPLATE/NIC/ALIAS_IDS") is None
    actions = [h.findtext("ACTION") for h in after.findall("HISTORY_RECORDS/HISTORY")]
    assert actions == ["46", "47", "0"]
    assert not lab.oned.state.vnet(net["public"]).ar(net["ar"]).leases


def test_alias_without_external_runs_no_vnm(lab, net):
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    lab.clear_log()
    nic_id = lab.sc.attach_alias(vm, net["private"], external=False)
    lab.sc.detach_alias(vm, nic_id)
    assert lab.log("fakevnm") == []


def test_failed_attach_removes_the_alias_and_its_lease(lab, net):
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    lab.fail("fakevnm", "post")
    lab.clear_log()
    with pytest.raises(ScenarioError):
        lab.sc.attach_alias(vm, net["public"])
    assert [c["name"] for c in lab.log("fakeipam")] == ["get_address", "free_address"]
    assert ET.fromstring(lab.sc.vm_xml(vm)).find("TEMPLATE/NIC_ALIAS") is None
    assert lab.oned.state.vm(vm).lcm_state == 3


def test_live_migration_order_hosts_and_history(lab, net):
    sc = lab.sc
    hv1, hv2 = lab.host("hv1", "dev-1"), lab.host("hv2", "dev-2")
    vm = sc.create_vm("web", nics=[net["private"]], aliases=[{"network_id": net["public"]}])
    sc.deploy(vm, hv1)
    lab.clear_log()
    lab.fail("fakevnm", "clean")  # ignored during a live migration
    sc.migrate(vm, hv2)
    assert [(c["name"], c["host"], c["argv"]) for c in lab.log("fakevnm")] == [
        ("pre", "hv2", []), ("clean", "hv1", []), ("post", "hv2", [f"one-{vm}"])]
    xml = ET.fromstring(sc.vm_xml(vm))
    records = xml.findall("HISTORY_RECORDS/HISTORY")
    assert [(r.findtext("HID"), r.findtext("ACTION")) for r in records] == [
        (str(hv1), "2"), (str(hv2), "0")]
    assert xml.findtext("LCM_STATE") == "3"


def test_failed_pre_on_destination_keeps_vm_on_source(lab, net):
    hv1, hv2 = lab.host("hv1"), lab.host("hv2")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    lab.fail("fakevnm", "pre")
    with pytest.raises(ScenarioError):
        lab.sc.migrate(vm, hv2)
    state = lab.oned.state.vm(vm)
    assert state.host_id == hv1 and state.lcm_state == 3


def test_poweroff_resume_terminate(lab, net):
    sc = lab.sc
    done = lab.hook("done", on="DONE")
    hv1 = lab.host("hv1")
    vm = sc.create_vm("web", nics=[net["private"]], aliases=[{"network_id": net["public"]}])
    sc.deploy(vm, hv1)
    lab.clear_log()
    sc.poweroff(vm)
    assert (lab.oned.state.vm(vm).state, lab.oned.state.vm(vm).lcm_state) == (8, 0)
    sc.resume(vm)
    sc.terminate(vm)
    assert [(c["name"], c["argv"]) for c in lab.log("fakevnm")] == [
        ("clean", []), ("pre", []), ("post", [f"one-{vm}"]), ("clean", [])]
    assert [c["name"] for c in lab.log("fakeipam")] == ["free_address"]
    (record,) = sc.hook_executions(done)
    final = vm_of(lab.log("rec")[0]["stdin"])
    assert final.findtext("STATE") == "6"
    assert final.findtext("TEMPLATE/NIC_ALIAS/IP") == "147.75.1.9"  # NICs stay, as in oned
    actions = [h.findtext("ACTION") for h in final.findall("HISTORY_RECORDS/HISTORY")]
    assert actions == ["19", "11", "27"]
    assert all(not ar.leases for v in lab.oned.state.vnets.values() for ar in v.ars)
    with pytest.raises(ScenarioError, match="Wrong state"):
        sc.resume(vm)


def test_deferred_hooks_see_the_vm_of_their_event(lab, net):
    lab.sc.defer_hooks = True
    lab.hook("running")
    lab.hook("hotplug", lcm="HOTPLUG_NIC")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    nic_id = lab.sc.attach_alias(vm, net["public"])
    lab.sc.detach_alias(vm, nic_id)
    assert lab.log("rec") == [] and lab.sc.pending_hooks == 5
    lab.sc.flush_hooks()
    seen = [vm_of(c["stdin"]) for c in lab.log("rec")]
    assert [s.findtext("LCM_STATE") for s in seen] == ["3", "25", "3", "25", "3"]
    assert [s.findtext("TEMPLATE/NIC_ALIAS/ATTACH") for s in seen] == [
        None, "YES", None, "YES", None]


def test_rm_ar_unregisters_and_keeps_the_ar_on_failure(lab, net):
    sc = lab.sc
    vm = sc.create_vm("web", nics=[net["private"]], aliases=[{"network_id": net["public"]}])
    with pytest.raises(ScenarioError, match="leases"):
        sc.rm_ar(net["public"], net["ar"])
    sc.terminate(vm)
    lab.fail("fakeipam", "unregister_address_range", "assignments remain")
    with pytest.raises(ScenarioError, match="assignments remain"):
        sc.rm_ar(net["public"], net["ar"])
    assert len(lab.oned.state.vnet(net["public"]).ars) == 1
    lab.heal("fakeipam", "unregister_address_range")
    sc.rm_ar(net["public"], net["ar"])
    assert lab.oned.state.vnet(net["public"]).ars == []
    names = [c["name"] for c in lab.log("fakeipam")]
    assert names[-2:] == ["unregister_address_range", "unregister_address_range"]


def test_remote_hook_runs_behind_the_host_prefix(lab, net):
    lab.hook("remote", REMOTE="YES")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    (run,) = lab.log("rec")
    assert run["host"] == "hv1"
    assert lab.oned.state.hook(0).log[0].remote_host == "hv1"


def test_vnm_drivers_not_installed_are_skipped(lab):
    hv1 = lab.host("hv1")
    private = lab.sc.create_vnet("private", vn_mad="dummy",
                                 ars=[{"TYPE": "IP4", "IP": "192.168.0.2", "SIZE": "4"}])
    vm = lab.sc.create_vm("web", nics=[private])
    lab.sc.deploy(vm, hv1)
    skipped = lab.sc.events_named("vnm dummy/")
    assert [e.detail.get("skipped") for e in skipped] == [True, True]
    assert lab.log() == []


def test_real_packet_ipam_driver_through_the_scenario(tmp_path, oned, packet, remote_env):
    """The scenario's IPAM messages fit the shipped packet driver and the Packet emulator."""
    from fixtures.common import REMOTES, ROOT

    remote_env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    config = Path(remote_env["PACKET_PROVIDER_CONFIG"])
    config.write_text(f"api_url: {packet.url}\nipam_state_dir: {tmp_path / 'ipam'}\n"
                      f"log_dir: {tmp_path / 'log'}\nretries: 1\nbackoff: 0.01\n")
    sc = Scenario(oned, REMOTES, env=remote_env, vnm_drivers=())
    public = sc.create_vnet("public")
    ar_id = sc.add_ar(public, {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": "4",
                               "IPAM_MAD": "packet", "PACKET_PROJECT": packet.project_id,
                               "PACKET_TOKEN": packet.token, "FACILITY": "ams1"})
    ar = oned.state.vnet(public).ar(ar_id)
    (reservation,) = packet.state()["reservations"]
    assert ar.attrs["DEPLOY_ID"] == reservation["id"] and ar.attrs["IP"] != "10.255.255.1"
    private = sc.create_vnet("private", vn_mad="dummy",
                             ars=[{"TYPE": "IP4", "IP": "192.168.0.2", "SIZE": "4"}])
    vm = sc.create_vm("web", nics=[private], aliases=[{"network_id": public}])
    alias_ip = oned.state.vm(vm).aliases[0]["IP"]
    assert ar.index_of(alias_ip) is not None
    sc.terminate(vm)
    assert all(e.ok for e in sc.events_named("ipam")), [e.stderr for e in sc.events]
    sc.rm_ar(public, ar_id)
    assert packet.state()["reservations"] == []


def test_alias_hotplug_on_a_powered_off_vm(lab, net):
    hook = lab.hook("hotplug-off", lcm="HOTPLUG_NIC_POWEROFF")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    lab.sc.deploy(vm, hv1)
    lab.sc.poweroff(vm)
    lab.clear_log()
    nic_id = lab.sc.attach_alias(vm, net["public"])
    lab.sc.detach_alias(vm, nic_id)
    assert lab.log("fakevnm") == []  # nothing runs on the host of a powered-off VM
    seen = [vm_of(c["stdin"]) for c in lab.log("rec")]
    assert [(s.findtext("STATE"), s.findtext("LCM_STATE")) for s in seen] == [
        ("3", "65"), ("3", "65")]
    assert [r.code for r in lab.sc.hook_executions(hook)] == [0, 0]
    state = lab.oned.state.vm(vm)
    assert (state.state, state.lcm_state) == (8, 0)


def test_state_numbers_match_pyone():
    import pyone

    from packet_lab.oned.objects import HISTORY_ACTIONS, LCM_STATES, VM_STATES

    assert {k: pyone.LCM_STATE[k].value for k in LCM_STATES} == LCM_STATES
    assert {k: pyone.VM_STATE[k].value for k in VM_STATES} == VM_STATES
    known = {k: v for k, v in HISTORY_ACTIONS.items() if k in pyone.HISTORY_ACTION.__members__}
    assert {k: pyone.HISTORY_ACTION[k].value for k in known} == known


def test_vm_model_hotplug_nic_poweroff_matches_pyone():
    import pyone

    from packet_provider.core import onedefs as vm_model

    assert vm_model.LCM_HOTPLUG_NIC_POWEROFF == pyone.LCM_STATE.HOTPLUG_NIC_POWEROFF.value


def test_parallel_flush_runs_queued_hooks_at_once(lab, net):
    lab.sc.defer_hooks = True
    hook = lab.hook("slow-running", on="RUNNING")
    lab.fail("rec", "hook", "sleep 0.8")
    hv1 = lab.host("hv1")
    vms = [lab.sc.create_vm(f"web{i}", nics=[net["private"]]) for i in range(4)]
    for vm in vms:
        lab.sc.deploy(vm, hv1)
    started = time.monotonic()
    records = lab.sc.flush_hooks(parallel=True)
    assert time.monotonic() - started < 2.5  # four 0.8 s hooks, not one after another
    assert sorted(r.execution_id for r in records) == [0, 1, 2, 3]
    seen = sorted(vm_of(c["stdin"]).findtext("ID") for c in lab.log("rec"))
    assert seen == sorted(str(v) for v in vms)
    assert len(lab.sc.hook_executions(hook)) == 4


def test_vnm_timeout_fails_the_step(lab, net):
    lab.sc.vnm_timeout = 1
    lab.fail("fakevnm", "pre", "sleep 20")
    hv1 = lab.host("hv1")
    vm = lab.sc.create_vm("web", nics=[net["private"]])
    started = time.monotonic()
    with pytest.raises(ScenarioError) as err:
        lab.sc.deploy(vm, hv1)
    assert time.monotonic() - started < 10
    assert err.value.event.rc == 255 and err.value.event.detail["timed_out"] is True
    assert lab.oned.state.vm(vm).lcm_state == 36  # BOOT_FAILURE


def test_drivers_run_hook_argument_string_and_missing_command(tmp_path):
    from packet_lab.oned import drivers

    assert drivers.hook_arguments("$ID $TEMPLATE literal", "<VM/>", 7) == \
        f"7 {base64.b64encode(b'<VM/>').decode()} literal "
    missing = drivers.run_hook(tmp_path, "nope/hook", "$TEMPLATE", "<VM/>")
    assert missing.rc == 127 and "nope/hook" in missing.stderr
    assert drivers.hook_command(tmp_path, "/abs/cmd") == "/abs/cmd"
    with pytest.raises(ValueError):
        drivers.vnm_path(tmp_path, "../etc", "pre")
