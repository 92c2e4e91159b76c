"""The installed plugin under a real OpenNebula 5.12.13 (see cloud.py): one frontend for the
whole real_one session, with the Packet emulator as the API.

Everything is marked ``real_one``; without root (or without the OpenNebula scripts in
``../shared``) the tests skip with the reason. The first run on a machine compiles OpenNebula
(4 to 8 minutes, cached in /var/cache/opennebula-5.12).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from fixtures.common import ROOT
from packet_lab.packet.admin import AdminClient
from packet_lab.packet.emulator import PacketEmulator
from real_one.cloud import (
    Cloud,
    build,
    chown_tree,
    ensure_oneadmin,
    free_port,
    missing_reason,
    new_location,
)

HOOK_TEMPLATES = ("running_hook", "hotplug_hook", "done_hook")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.real_one)


class PacketSide:
    """The Packet emulator the real frontend talks to."""

    def __init__(self) -> None:
        self.token = "real-one-" + secrets.token_hex(16)
        self.project = str(uuid.uuid4())
        self.devices = [str(uuid.uuid4()) for _ in range(2)]
        self.emulator = PacketEmulator(
            tokens=[self.token], projects=[self.project],
            devices=[f"{d}@{self.project}" for d in self.devices]).start()
        self.url = self.emulator.url
        self.admin = AdminClient(self.url)

    def placement(self) -> Dict[str, str]:
        """Assigned address -> device id, as the API has it."""
        return self.admin.placement()

    def reservations(self) -> List[dict]:
        return self.admin.state()["reservations"]


def _deps_python(where: Path) -> str:
    """A virtualenv of the system python3 (which oneadmin can run: the project's may live in
    root's home) holding a copy of the project's dependencies (pyone, lxml, requests, yaml;
    nothing downloaded) but not the project's own library."""
    venv = where / "deps-venv"
    system = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    ours = shutil.ignore_patterns("__editable__*", "opennebula_packet_alias_ip*",
                                  "packet_provider*", "__pycache__", "pip", "pip-*",
                                  "_pytest", "pytest*", "hypothesis*", "ruff*")
    shutil.copytree(sysconfig.get_paths()["purelib"], site, ignore=ours, dirs_exist_ok=True)
    probe = subprocess.run([python, "-c", "import pyone, lxml.etree, requests, yaml"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    return python


def apply_printed_oned_conf(printed: str, oned_conf: Path) -> List[str]:
    """Apply the oned.conf changes install.sh printed, exactly as printed: the IPAM_MAD block
    (when it asks for one) and the VN_MAD_CONF line. Returns the lines applied."""
    text = oned_conf.read_text()
    applied = []
    block = re.search(r"^    IPAM_MAD = \[\n(.*?)^    \]\n", printed, re.S | re.M)
    if block:
        wanted = re.search(r'ARGUMENTS\s*=\s*"([^"]*)"', block.group(1)).group(1)
        text, count = re.subn(r'(IPAM_MAD\s*=\s*\[[^\]]*?ARGUMENTS\s*=\s*)"[^"]*"',
                              lambda m: f'{m.group(1)}"{wanted}"', text, count=1)
        assert count == 1
        applied.append(f'IPAM_MAD ARGUMENTS = "{wanted}"')
    for line in printed.splitlines():
        if line.strip().startswith("VN_MAD_CONF"):
            text += "\n" + line.strip() + "\n"
            applied.append(line.strip())
    oned_conf.write_text(text)
    return applied


def _install(cloud: Cloud, python: str, *extra: str) -> str:
    env = dict(cloud.env(), PATH=f"{cloud.location}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               HOME="/root")
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "--python", python, *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cloud.install_outputs.append(proc.stdout)
    return proc.stdout


@pytest.fixture(scope="session")
def packet_side() -> Iterator[PacketSide]:
    side = PacketSide()
    try:
        yield side
    finally:
        side.emulator.stop()


@pytest.fixture(scope="session")
def cloud(packet_side: PacketSide) -> Iterator[Cloud]:
    reason = missing_reason()
    if reason:
        pytest.skip(f"real OpenNebula: {reason}")
    user = ensure_oneadmin()
    location = new_location()
    ports = {"ONED_PORT": free_port(), "HM_PUB_PORT": free_port(),
             "HM_REP_PORT": free_port(), "MONITORD_PORT": free_port()}
    build(location, ports)
    cloud = Cloud(location, ports, user)
    python = _deps_python(location.parent)
    # 1. install.sh into the real tree (it holds 5.12's Ruby packet scripts)
    printed = _install(cloud, python)
    cloud.applied_conf = apply_printed_oned_conf(printed, location / "etc" / "oned.conf")
    config = location / "etc" / "packet_provider.yaml"
    config.write_text(
        f"api_url: {packet_side.url}\n"
        f"tokens:\n  \"{packet_side.project}\": \"{packet_side.token}\"\n"
        "retries: 1\nbackoff: 0.1\nmax_retry_after: 1.0\nread_timeout: 5.0\n")
    add_fake_hypervisor(location)
    chown_tree(location.parent, user)
    config.chmod(0o600)
    cloud.start()
    try:
        # 2. the hooks through oned, twice: the second run must change nothing
        cloud.hooks_first = _install(cloud, python, "--hooks")
        cloud.hooks_second = _install(cloud, python, "--hooks")
        _prepare(cloud, packet_side)
        yield cloud
    finally:
        cloud.stop()
        if not _keep():
            shutil.rmtree(location.parent, ignore_errors=True)


FAKE_VM_MAD = "fakehv"
SLOW_MIGRATE_FLAG = "/tmp/real-one-hold-migration"
# what one_vmm_exec may run on a host; each succeeds without a hypervisor (deploy prints the
# domain name oned records as DEPLOY_ID)
FAKE_ACTIONS = ("shutdown", "cancel", "save", "restore", "migrate", "migrate_local", "reboot",
                "reset", "attach_nic", "detach_nic", "attach_disk", "detach_disk",
                "prereconfigure", "reconfigure", "resize_disk", "snapshot_create",
                "snapshot_revert", "snapshot_delete", "cleanup")


def add_fake_hypervisor(location: Path) -> None:
    """A VM_MAD on the real one_vmm_exec whose hypervisor scripts do nothing, so that hosts
    reached over ssh run the real VNM steps (pre, post, clean) around them."""
    driver = location / "var" / "remotes" / "vmm" / FAKE_VM_MAD
    driver.mkdir(parents=True)
    (driver / "deploy").write_text('#!/bin/sh\ncat >/dev/null\necho "fake-$$-$(date +%s)"\n')
    for action in FAKE_ACTIONS:
        (driver / action).write_text("#!/bin/sh\nexit 0\n")
    # a live migration lasts while the tests hold this flag file (hosts share the file system)
    (driver / "migrate").write_text(
        f"#!/bin/sh\nwhile [ -e {SLOW_MIGRATE_FLAG} ]; do sleep 0.2; done\nexit 0\n")
    for script in driver.iterdir():
        script.chmod(0o755)
    with open(location / "etc" / "oned.conf", "a") as conf:
        conf.write(f'''
VM_MAD = [
    NAME          = "{FAKE_VM_MAD}",
    SUNSTONE_NAME = "Fake",
    EXECUTABLE    = "one_vmm_exec",
    ARGUMENTS     = "-t 15 -r 0 {FAKE_VM_MAD}",
    TYPE          = "xml",
    KEEP_SNAPSHOTS = "no"
]
''')


def _keep() -> bool:
    import os

    return os.environ.get("REAL_ONE_KEEP") == "1"


def _prepare(cloud: Cloud, packet_side: PacketSide) -> None:
    """Datastores on the dummy drivers, two dummy hosts that are Packet devices."""
    cloud.cli("onedatastore", "update", "0", "--append",
              cloud.template_file("ds0", 'TM_MAD = "dummy"\n'))
    cloud.cli("onedatastore", "update", "1", "--append",
              cloud.template_file("ds1", 'TM_MAD = "dummy"\nDS_MAD = "dummy"\n'))
    cloud.hosts = []
    for index, device in enumerate(packet_side.devices):
        out = cloud.cli("onehost", "create", f"host{index}", "-i", "dummy", "-v", "dummy")
        host_id = int(re.search(r"ID:\s*(\d+)", out).group(1))
        cloud.cli("onehost", "update", str(host_id), "--append", cloud.template_file(
            f"host{index}", f'PROVISION = [ DEPLOY_ID = "{device}" ]\n'))
        cloud.hosts.append(host_id)
