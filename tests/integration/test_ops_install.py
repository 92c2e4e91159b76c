"""install.sh installs the packet-provider command beside the virtualenv (never in the
remotes tree onehost sync copies to hosts), with the frontend python's #! line, lists it in
the manifest so that --uninstall removes it, and, in the system layout, links it from
/usr/local/bin when that directory is writable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from fixtures.common import ROOT, clean_env

PYTHON = str(Path(sys.executable))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the installable parts (others edit the checkout meanwhile)."""
    copy = tmp_path_factory.mktemp("src")
    shutil.copy2(ROOT / "install.sh", copy / "install.sh")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("lib", "remotes", "share"):
        shutil.copytree(ROOT / part, copy / part, symlinks=True, ignore=ignore)
    return copy


def install(source: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full: Dict[str, str] = clean_env(("ONE_", "PACKET_", "PYTHON", "VIRTUAL_ENV"))
    full.update(env)
    done = subprocess.run(["bash", str(source / "install.sh"), "--python", PYTHON, *args],
                          capture_output=True, text=True, env=full, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_command_installed_runs_from_its_place_and_is_uninstalled(source, tmp_path, oned,
                                                                  one_auth_file):
    one = tmp_path / "one"
    (one / "var" / "remotes").mkdir(parents=True)
    done = install(source, ONE_LOCATION=str(one))
    command = one / "var" / "packet_provider" / "bin" / "packet-provider"
    assert f"command        {command}: check, reconcile" in done.stdout
    assert command.read_text().splitlines()[0] == f"#!{PYTHON}"
    assert os.access(command, os.X_OK)
    assert not list((one / "var" / "remotes").rglob("packet-provider"))  # not synced to hosts
    manifest = (one / "var" / "packet_provider" / "install-manifest").read_text()
    assert f"f {command}\n" in manifest
    # the installed copy finds the installed library and reads the installed config
    env = clean_env(("ONE_", "PACKET_", "PYTHON"), ONE_LOCATION=str(one),
                    ONE_XMLRPC=oned.url, ONE_AUTH=str(one_auth_file))
    ran = subprocess.run([str(command), "check"], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == "all agree: 0 range(s), 0 lease(s), 0 reservation(s)\n"

    install(source, "--uninstall", ONE_LOCATION=str(one))
    assert not command.exists() and not command.parent.exists()


def test_system_layout_links_it_from_usr_local_bin(source, tmp_path):
    stage = tmp_path / "stage"
    (stage / "usr" / "local" / "bin").mkdir(parents=True)
    done = install(source, "--destdir", str(stage))
    link = stage / "usr" / "local" / "bin" / "packet-provider"
    assert os.readlink(link) == "/var/lib/one/packet_provider/bin/packet-provider"
    assert (stage / "var/lib/one/packet_provider/bin/packet-provider").is_file()
    assert "(and /usr/local/bin/packet-provider)" in done.stdout
    manifest = (stage / "var/lib/one/packet_provider/install-manifest").read_text()
    assert "l /usr/local/bin/packet-provider\n" in manifest
    install(source, "--destdir", str(stage), "--uninstall")
    assert not os.path.lexists(link)


def test_a_foreign_usr_local_bin_packet_provider_is_left_alone(source, tmp_path):
    stage = tmp_path / "stage"
    (stage / "usr" / "local" / "bin").mkdir(parents=True)
    mine = stage / "usr" / "local" / "bin" / "packet-provider"
    mine.write_text("#!/bin/sh\necho other\n")
    done = install(source, "--destdir", str(stage))
    assert mine.read_text() == "#!/bin/sh\necho other\n"
    assert "is not ours: left alone" in done.stderr
