"""Secrets: a whole life cycle through the scenario driver (oned's part) with known API
tokens, while a sampler reads every process's argument list (/proc/*/cmdline).

Two tokens: one given in the address range (PACKET_TOKEN, which oned stores and the
register answer must echo inside the AR template), one only in the configuration file (for
a project; never echoed). A third, wrong token is tried too: it is refused, and must not
come back in the error; the oned password (from the ONE_AUTH file) is a secret too.
Afterwards none of them may appear in any log file, any stderr, any
stdout (except PACKET_TOKEN in the register answer of the range that carries it), any
process argument list, or any file in the state directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Set

import pytest

from fixtures.common import PYTHON, REMOTES, ROOT, clean_env, netns_missing_reason
from reliability.relsupport import (
    count,
    hook_executables,
    ipam_actions,
    vnm_actions,
    write_config,
)

Scenario = pytest.importorskip("packet_lab.oned.scenario").Scenario
TEMPLATES = ROOT / "share" / "examples" / "alias_ip"


class ArgvSampler:
    """Reads every process's argument list over and over until stopped."""

    def __init__(self, needles: Dict[str, str], interval: float = 0.01) -> None:
        self.needles = needles
        self.interval = interval
        self.samples = 0
        self.rounds = 0
        self.pids: Set[int] = set()
        self.found: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        argv = handle.read().decode("utf-8", "replace")
                except OSError:
                    continue
                self.samples += 1
                self.pids.add(int(entry.name))
                for name, needle in self.needles.items():
                    if needle in argv:
                        self.found.append(f"{name} in argv of pid {entry.name}: "
                                          f"{argv.replace(chr(0), ' ')[:120]}")
            self.rounds += 1
            time.sleep(self.interval)

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.skipif(not ipam_actions() or not hook_executables(),
                    reason="needs the IPAM driver and the hook")
def test_tokens_never_leak_through_a_whole_life_cycle(oned, packet, tmp_path: Path,
                                                      one_auth_file: Path) -> None:
    ar_token = "rel-AR-TOKEN-" + secrets.token_hex(16)
    config_token = "rel-CONFIG-TOKEN-" + secrets.token_hex(16)
    wrong_token = "rel-WRONG-TOKEN-" + secrets.token_hex(16)
    packet.admin.add_token(ar_token)
    packet.admin.add_token(config_token)
    second_project = packet.admin.add_project(str(uuid.uuid4()))
    packet.admin.add_device(second_project)
    needles = {"AR token": ar_token, "config token": config_token,
               "wrong token": wrong_token,
               "oned password": oned.auth.split(":", 1)[1]}

    log_dir, state_dir = tmp_path / "log", tmp_path / "state"
    config = tmp_path / "packet_provider.yaml"
    write_config(config, packet.url, state_dir, log_dir, retries=1, read_timeout=5,
                 tokens={second_project: config_token})
    env = clean_env()
    env.update(PYTHONPATH=str(ROOT / "lib"), PACKET_PROVIDER_CONFIG=str(config),
               ONE_XMLRPC=oned.url, ONE_AUTH=str(one_auth_file),
               ALIAS_IP_SETTLE_SECONDS="3",
               PATH=os.pathsep.join([str(Path(PYTHON).parent), os.environ.get("PATH", "")]))

    env["ALIAS_SDNAT_LOCK"] = str(tmp_path / "alias_sdnat.lock")
    # VNM actions run too when namespaces can stand in for the two hypervisors
    spaces = [] if netns_missing_reason() or not vnm_actions() else \
        [f"rel-sec-{uuid.uuid4().hex[:6]}-{i}" for i in (1, 2)]
    ip = shutil.which("ip") or "/usr/sbin/ip"
    for space in spaces:
        subprocess.run([ip, "netns", "add", space], check=True)
    try:
        sc = Scenario(oned, remotes_dir=REMOTES, env=env, hook_timeout=60,
                      vnm_drivers=("alias_sdnat",) if spaces else ())
        prefixes = [[ip, "netns", "exec", space] for space in spaces] or [[], []]
        with ArgvSampler(needles) as sampler:
            life_cycle(sc, packet, prefixes, ar_token, wrong_token, second_project)
        sc.detach()
    finally:
        for space in spaces:
            subprocess.run([ip, "netns", "delete", space], check=False)
    check_no_leak(sc, sampler, packet, needles, ar_token, tmp_path, config, bool(spaces))


def life_cycle(sc, packet, prefixes, ar_token: str, wrong_token: str,
               second_project: str) -> None:
    """Hooks, hosts, networks (one range with its token, one with the configured token,
    one refused), a VM through deploy, hot attach, migration, hot detach under an API
    fault and its hook retry, poweroff, resume, terminate, and the ranges removed."""
    for name in ("running_hook", "hotplug_hook", "done_hook"):
        sc.add_hook((TEMPLATES / name).read_text())
    hosts = [sc.add_host("hv1", deploy_id=packet.device_ids[0], host_prefix=prefixes[0]),
             sc.add_host("hv2", deploy_id=packet.device_ids[1], host_prefix=prefixes[1])]
    private = sc.create_vnet("private", vn_mad="dummy",
                             ars=[{"TYPE": "IP4", "IP": "192.168.150.2", "SIZE": "32"}])
    public = sc.create_vnet("public", vn_mad="alias_sdnat")
    sc.add_ar(public, {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8",
                       "IPAM_MAD": "packet", "PACKET_PROJECT": packet.project_id,
                       "PACKET_TOKEN": ar_token, "FACILITY": "ams1"})
    public2 = sc.create_vnet("public2", vn_mad="alias_sdnat")
    sc.add_ar(public2, {"TYPE": "IP4", "IP": "10.0.1.1", "SIZE": "4",
                        "IPAM_MAD": "packet", "PACKET_PROJECT": second_project,
                        "FACILITY": "ams1"})
    refused = sc.create_vnet("refused", vn_mad="alias_sdnat")
    with pytest.raises(Exception):  # noqa: B017 - the scenario's error for a failed AR
        sc.add_ar(refused, {"TYPE": "IP4", "IP": "10.0.2.1", "SIZE": "4",
                            "IPAM_MAD": "packet", "PACKET_PROJECT": packet.project_id,
                            "PACKET_TOKEN": wrong_token, "FACILITY": "ams1"})

    vm = sc.create_vm("web", nics=[private],
                      aliases=[{"network_id": public}, {"network_id": public2}])
    sc.deploy(vm, hosts[0])
    alias = sc.attach_alias(vm, public)
    sc.migrate(vm, hosts[1])
    # a hook run that fails on the API (its error goes to stderr), then its retry
    packet.fault(status=503, count=50, method="DELETE")
    sc.detach_alias(vm, alias)
    packet.admin.clear_faults()
    for hook_id in list(sc.state.hooks):
        for record in sc.hook_executions(hook_id):
            if record.code != 0:
                sc.retry_hook(hook_id, record.execution_id)
    sc.poweroff(vm)
    sc.resume(vm)
    sc.terminate(vm)
    for vnet in (public, public2):
        for ar in list(sc.state.vnet(vnet).ars):
            sc.rm_ar(vnet, ar.ar_id)
    time.sleep(0.05)


def check_no_leak(sc, sampler, packet, needles, ar_token, tmp_path, config,
                  with_vnm: bool) -> None:
    log_dir, state_dir = tmp_path / "log", tmp_path / "state"
    assert packet.state()["reservations"] == [], "the life cycle was meant to end clean"
    vnm_run = [e for e in sc.events if e.name.startswith("vnm")]
    count("secret_vnm_runs", len(vnm_run))
    if with_vnm:
        assert len(vnm_run) >= 8 and all(e.rc == 0 for e in vnm_run), \
            [(e.name, e.rc, e.stderr[-200:]) for e in vnm_run if e.rc]
    hooks_run = [e for e in sc.events if e.name.startswith("hook")]
    ipam_run = [e for e in sc.events if e.name.startswith("ipam")]
    assert len(hooks_run) >= 6 and len(ipam_run) >= 8, [e.name for e in sc.events]
    assert any(e.rc != 0 for e in hooks_run), "the injected fault was meant to fail a hook"
    assert any(e.rc != 0 and "401" in e.stderr for e in ipam_run), "wrong token not refused"

    leaks: List[str] = []
    texts = 0
    for event in sc.events:
        stdout = event.stdout
        if event.name == "ipam register_address_range" and event.rc == 0 \
                and f'PACKET_TOKEN = "{ar_token}"' in stdout:
            stdout = stdout.replace(f'PACKET_TOKEN = "{ar_token}"', "")  # oned requires it
        for where, text in (("stdout", stdout), ("stderr", event.stderr),
                            ("argv", " ".join(event.argv))):
            texts += 1
            leaks.extend(f"{name} in {where} of {event.name}" for name, needle
                         in needles.items() if needle in text)
    for folder in (log_dir, state_dir, tmp_path):
        for path in folder.rglob("*"):
            if path.is_file() and path not in (config, tmp_path / "one_auth"):
                texts += 1
                data = path.read_bytes().decode("utf-8", "replace")
                leaks.extend(f"{name} in {path.relative_to(tmp_path)}" for name, needle
                             in needles.items() if needle in data)
    # the echo oned requires happened, and only for the range that carried the token
    registers = [e for e in ipam_run if e.name == "ipam register_address_range" and e.rc == 0]
    assert sum(f'PACKET_TOKEN = "{ar_token}"' in e.stdout for e in registers) == 1
    assert log_dir.exists() and any(log_dir.iterdir()), "no log was written: nothing checked"

    count("secret_samples", sampler.samples)
    count("secret_files_checked", texts)
    count("secret_processes_seen", len(sampler.pids))
    assert sampler.rounds > 20, "the sampler barely ran"
    assert not sampler.found, sampler.found[:5]
    assert not leaks, leaks


def test_sampler_sees_a_token_in_argv() -> None:
    """The sampler above can fail: a short process with a token in its argv is caught."""
    import subprocess

    needle = "rel-CONTROL-" + secrets.token_hex(8)
    with ArgvSampler({"control": needle}) as sampler:
        proc = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(0.2)", needle])
        proc.wait()
    assert sampler.found, "a token in an argument list went unnoticed"
