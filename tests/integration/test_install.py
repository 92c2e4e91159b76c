"""install.sh into temporary OpenNebula trees: layout, shebangs, config, idempotence,
uninstall, --destdir, and --hooks against the oned emulator.

The frontend executables get a virtualenv made for these tests: it sees the packages of the
project's .venv through a plain path entry (so nothing is downloaded) but not the project's
editable install, so the installed executables can only work if they find the installed
library next to them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from fixtures.common import PYTHON, ROOT, clean_env, error_block
from packet_provider import config as config_module
from packet_provider.hook import registration as hookreg

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IPAM_ACTIONS = ("register_address_range", "unregister_address_range", "allocate_address",
                "get_address", "free_address")
HOOK_TEMPLATES = ("running_hook", "hotplug_hook", "done_hook")
INSTALL = ROOT / "install.sh"  # replaced by the frozen copy (fixture frozen_source)


@pytest.fixture(scope="session", autouse=True)
def frozen_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's installable parts, taken once: other work may edit the
    checkout while these tests run, and two installs must see the same sources."""
    global INSTALL
    copy = tmp_path_factory.mktemp("src")
    shutil.copy2(ROOT / "install.sh", copy / "install.sh")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("lib", "remotes", "share"):
        shutil.copytree(ROOT / part, copy / part, symlinks=True, ignore=ignore)
    INSTALL = copy / "install.sh"
    return copy


@pytest.fixture(scope="session")
def deps_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with pyone, lxml, requests and yaml, but without packet_provider."""
    venv = tmp_path_factory.mktemp("deps") / "venv"
    _make_deps_venv(venv)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import pyone, lxml, requests, yaml"],
                           capture_output=True, text=True, env=_clean_env())
    assert probe.returncode == 0, probe.stderr
    probe = subprocess.run([python, "-c", "import packet_provider"],
                           capture_output=True, text=True, env=_clean_env())
    assert probe.returncode != 0, "the test venv must not see the project's own library"
    return venv


def _clean_env(**extra: str) -> Dict[str, str]:
    env = clean_env(("ONE_", "PACKET_", "PYTHON", "VIRTUAL_ENV", "PIP_"), PATH=SYSTEM_PATH)
    env["HOME"] = extra.pop("HOME", env.get("HOME", "/root"))
    env.update(extra)
    return env


def run_install(*args: str, location: Optional[Path] = None,
                env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    extra = dict(env or {})
    if location is not None:
        extra["ONE_LOCATION"] = str(location)
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          env=_clean_env(**extra), timeout=120)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def snapshot(root: Path, skip: tuple = ()) -> Dict[str, str]:
    """Every path under root with its kind, mode, and content hash or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel in skip:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"link {os.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            out[rel] = f"file {stat.S_IMODE(st.st_mode):o} {digest}"
    return out


@pytest.fixture
def one(tmp_path: Path) -> Path:
    """An OpenNebula self-contained tree with an oned.conf, as a frontend would have."""
    location = tmp_path / "one"
    (location / "etc").mkdir(parents=True)
    (location / "var" / "remotes").mkdir(parents=True)
    (location / "etc" / "oned.conf").write_text(
        "# IPAM_MAD = [ ARGUMENTS = \"-t 9 -i commented\" ]\n"
        "IPAM_MAD = [\n    EXECUTABLE = \"one_ipam\",\n    ARGUMENTS  = \"-t 1 -i dummy\"\n]\n")
    return location


@pytest.fixture
def install(one: Path, deps_venv: Path):
    def _install(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return ok(run_install("--venv", str(deps_venv), *args, location=one, env=env))
    return _install


def shebang(path: Path) -> str:
    return path.read_text().splitlines()[0]


# -- layout --------------------------------------------------------------------------------

def test_install_puts_every_part_where_oned_and_onehost_sync_find_it(install, one, deps_venv):
    out = install().stdout
    remotes = one / "var" / "remotes"
    venv_python = f"#!{deps_venv}/bin/python"

    ipam = remotes / "ipam" / "packet"
    real = {p.name for p in ipam.iterdir() if not p.is_symlink()}
    assert len(real) == 1, real
    (script,) = real
    assert shebang(ipam / script) == venv_python
    for action in IPAM_ACTIONS:
        link = ipam / action
        assert link.is_symlink() and os.readlink(link) == script, action
        assert os.access(link, os.X_OK)

    hook = remotes / "hooks" / "alias_ip" / "alias_ip.py"
    assert shebang(hook) == venv_python and os.access(hook, os.X_OK)
    compat = remotes / "hooks" / "alias_ip" / "alias_ip.rb"
    assert compat.is_symlink() and os.readlink(compat) == "alias_ip.py"

    vnm = remotes / "vnm" / "alias_sdnat"
    src_vnm = INSTALL.parent / "remotes" / "vnm" / "alias_sdnat"
    assert sorted(p.name for p in vnm.iterdir()) == sorted(p.name for p in src_vnm.iterdir()
                                                           if p.name != "__pycache__")
    for path in vnm.iterdir():
        if not path.is_symlink() and path.read_text().startswith("#!"):
            assert shebang(path) == "#!/usr/bin/env python3", path

    lib = remotes / "lib" / "packet_provider"
    for module in ("core/cli.py", "ipam/actions.py", "hook/entry.py", "hook/registration.py",
                   "config.py", "vnm/nat.py"):
        assert (lib / module).exists(), module
    # the product only: the emulators and the demo are not pushed to hypervisors
    assert not (remotes / "lib" / "packet_lab").exists()
    assert not any(lib.rglob("*emulator*")), sorted(lib.rglob("*emulator*"))
    # compiled by install.sh with the frontend python, caches checked by the source's hash
    # (they stay valid in onehost sync's copies); none copied from the checkout
    tag = subprocess.run([venv_python[2:], "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    sources = sorted(lib.rglob("*.py"))
    caches = sorted(lib.rglob("*.pyc"))
    assert caches == sorted(p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc" for p in sources)
    for cache in caches:
        flags = int.from_bytes(cache.read_bytes()[4:8], "little")
        assert flags == 0b11, (cache, flags)  # hash-based, checked against the source

    state = one / "var" / "ipam_state"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    for name in HOOK_TEMPLATES:
        template = one / "share" / "packet_provider" / "hooks" / name
        source = INSTALL.parent / "share" / "examples" / "alias_ip" / name
        assert template.read_text() == source.read_text()
        assert f"onehook create {template}\n" in out
    assert "onehost sync" in out


def test_the_lab_is_installed_only_when_asked_and_outside_the_remotes_tree(one, deps_venv):
    python = str(deps_venv / "bin" / "python")
    ok(run_install("--venv", str(deps_venv), location=one))
    lab = one / "var" / "packet_provider" / "lab" / "packet_lab"
    assert not lab.exists()
    ok(run_install("--venv", str(deps_venv), "--lab", location=one))
    assert (lab / "packet" / "emulator.py").exists()
    assert not list((one / "var" / "remotes").rglob("packet_lab"))
    path = f"{lab.parent}:{one / 'var' / 'remotes' / 'lib'}"
    shown = subprocess.run([python, "-m", "packet_lab.packet", "--help"], capture_output=True,
                           text=True, env=_clean_env(PYTHONPATH=path), timeout=60)
    assert shown.returncode == 0 and "Packet" in shown.stdout, shown.stderr
    ok(run_install("--venv", str(deps_venv), location=one))  # asked no more: taken away
    assert not lab.exists()


def test_install_prints_the_oned_conf_changes_from_the_current_ipam_list(install, one):
    out = install().stdout
    assert 'In IPAM_MAD, replace ARGUMENTS = "-t 1 -i dummy" with:' in out
    assert 'ARGUMENTS  = "-t 1 -i dummy,packet"' in out
    assert 'VN_MAD_CONF = [ NAME = "alias_sdnat", BRIDGE_TYPE = "linux" ]' in out

    conf = one / "etc" / "oned.conf"
    conf.write_text('IPAM_MAD = [ EXECUTABLE = "one_ipam", ARGUMENTS = "-t 4 -i dummy,packet" ]\n'
                    'VN_MAD_CONF = [\n  BRIDGE_TYPE = "linux",\n  NAME = "alias_sdnat"\n]\n')
    out = install().stdout
    assert "IPAM_MAD already enables packet" in out
    assert "VN_MAD_CONF for alias_sdnat is already" in out
    assert "ARGUMENTS  =" not in out


def test_config_is_written_once_mode_0600_and_holds_the_defaults(install, one):
    install()
    cfg = one / "etc" / "packet_provider.yaml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    example = INSTALL.parent / "share" / "examples" / "packet_provider.yaml"
    assert cfg.read_text() == example.read_text()
    loaded = config_module.load(str(cfg), {"ONE_LOCATION": str(one)})
    defaults = config_module.Config(path=str(cfg), ipam_state_dir=str(one / "var" / "ipam_state"),
                                    log_dir=str(one / "var"))
    assert loaded == defaults

    cfg.write_text("retries: 7\n")
    cfg.chmod(0o640)
    install()
    assert cfg.read_text() == "retries: 7\n"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640


def test_example_config_shows_every_key_at_its_real_default(tmp_path):
    """Uncommenting every "#key: value" line of the example gives exactly the defaults."""
    text = (INSTALL.parent / "share" / "examples" / "packet_provider.yaml").read_text()
    settings = re.findall(r"^#([a-z_]+):(?: (.*))?$", text, re.M)
    keys = [k for k, _ in settings]
    assert sorted(set(keys)) == sorted(config_module._KNOWN)
    assert len(keys) == len(set(keys))
    uncommented = "".join(f"{k}: {v}\n" for k, v in settings)
    path = tmp_path / "all.yaml"
    path.write_text(uncommented)
    loaded = config_module.load(str(path), {})
    assert loaded == config_module.Config(path=str(path))


def test_readme_configuration_table_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert sorted(documented) == sorted(config_module._KNOWN)
    defaults = config_module.Config(path="x")
    for key in ("api_url", "connect_timeout", "read_timeout", "retries", "backoff",
                "max_retry_after", "one_xmlrpc"):
        row = next(line for line in section.splitlines() if line.startswith(f"| `{key}` |"))
        assert f"`{getattr(defaults, key)}`" in row, row


# -- the installed executables use the installed library -----------------------------------

def _run(exe: Path, argv: List[str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *argv], input=stdin, capture_output=True, timeout=60,
                          env=_clean_env(), cwd="/")


def _assert_error_block(result: subprocess.CompletedProcess, what: str) -> None:
    err = result.stderr.decode()
    assert result.returncode != 0, what
    assert "Traceback" not in err, f"{what}: {err}"
    block = error_block(err)
    assert block, f"{what}: {err}"
    message = block[0]
    assert message and "internal error" not in message, f"{what}: {message}"


def test_installed_executables_start_and_reject_bad_input_with_oned_error_block(install, one):
    install()
    remotes = one / "var" / "remotes"
    for action in IPAM_ACTIONS:
        result = _run(remotes / "ipam" / "packet" / action, ["7"], b"this is not base64!")
        _assert_error_block(result, action)
    not_xml = base64.b64encode(b"<VM><ID>x</ID>").decode() + " "
    for name in ("alias_ip.py", "alias_ip.rb"):
        result = _run(remotes / "hooks" / "alias_ip" / name, [], not_xml.encode())
        _assert_error_block(result, name)


def test_installed_vnm_driver_runs_on_the_system_python3(install, one):
    probe = subprocess.run(["python3", "-c", "import packet_provider"], capture_output=True,
                           env=_clean_env())
    assert probe.returncode != 0, "system python3 must not see the project library here"
    install()
    vnm = one / "var" / "remotes" / "vnm" / "alias_sdnat"
    actions = [p for p in ("pre", "post", "clean", "update_sg") if (vnm / p).exists()]
    assert actions == ["pre", "post", "clean", "update_sg"]
    for action in actions:
        result = _run(vnm / action, ["one-1"], b"%%% not base64 %%%\n")
        _assert_error_block(result, action)


# -- idempotence, uninstall, destdir -------------------------------------------------------

def test_install_twice_gives_the_same_tree_and_keeps_the_config(install, one):
    install()
    cfg = one / "etc" / "packet_provider.yaml"
    cfg.write_text("backoff: 1.5\n")
    first = snapshot(one, skip=("etc/packet_provider.yaml",))
    second_run = install()
    assert snapshot(one, skip=("etc/packet_provider.yaml",)) == first
    assert cfg.read_text() == "backoff: 1.5\n"
    assert "kept as it is" in second_run.stdout


def test_uninstall_removes_what_was_installed_and_keeps_leases_logs_config(install, one):
    remotes = one / "var" / "remotes"
    foreign = remotes / "ipam" / "dummy" / "allocate_address"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\n")
    before = snapshot(one)
    install()
    reservation = "0b7a8f40-8a4c-4f8e-9d0b-2f6c1e9b1a11"
    lease = one / "var" / "ipam_state" / "packet" / reservation / "147.75.1.9"
    lease.parent.mkdir(parents=True)
    lease.write_text("vm 3\n")
    log = one / "var" / "ipam-packet.log"
    log.write_text("a line\n")
    cfg = one / "etc" / "packet_provider.yaml"
    cfg_text = cfg.read_text()

    out = install("--uninstall").stdout
    assert "Kept:" in out
    after = snapshot(one)
    added = set(after) - set(before)
    assert added == {
        "etc/packet_provider.yaml", "var/ipam-packet.log", "var/ipam_state",
        "var/ipam_state/packet", f"var/ipam_state/packet/{lease.parent.name}",
        f"var/ipam_state/packet/{lease.parent.name}/147.75.1.9",
    }, sorted(added)
    assert all(after[k] == v for k, v in before.items())
    assert cfg.read_text() == cfg_text and lease.read_text() == "vm 3\n"
    again = run_install("--uninstall", location=one)
    assert again.returncode != 0 and "nothing to uninstall" in again.stderr


def test_a_failure_midway_still_leaves_a_manifest_of_everything_written(one):
    blocker = one / "var" / "remotes" / "ipam" / "packet" / "get_address"
    (blocker / "inside").mkdir(parents=True)
    before = snapshot(one)
    failed = run_install("--python", PYTHON, location=one)
    assert failed.returncode != 0 and "is a directory" in failed.stderr
    manifest = (one / "var" / "packet_provider" / "install-manifest").read_text()
    lib = one / "var" / "remotes" / "lib" / "packet_provider"
    assert f"f {lib}/core/cli.py\n" in manifest  # copied before the failure, so listed
    ok(run_install("--python", PYTHON, "--uninstall", location=one))
    assert snapshot(one) == before


def test_the_installed_copy_of_install_sh_uninstalls_without_the_checkout(install, one):
    before = snapshot(one)
    install()
    copy = one / "var" / "packet_provider" / "install.sh"
    result = subprocess.run(["bash", str(copy), "--uninstall"], capture_output=True, text=True,
                            env=_clean_env(ONE_LOCATION=str(one)), cwd="/")
    ok(result)
    after = snapshot(one)
    assert set(after) - set(before) == {"etc/packet_provider.yaml", "var/ipam_state"}


def test_files_of_the_ruby_driver_are_kept_aside_and_restored(install, one):
    remotes = one / "var" / "remotes"
    ruby_ipam = remotes / "ipam" / "packet" / "register_address_range"
    ruby_hook = remotes / "hooks" / "alias_ip" / "alias_ip.rb"
    for path in (ruby_ipam, ruby_hook):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/usr/bin/env ruby\n# the old driver\n")
        path.chmod(0o755)
    install()
    assert ruby_ipam.is_symlink() and ruby_hook.is_symlink()
    install()
    install("--uninstall")
    for path in (ruby_ipam, ruby_hook):
        assert not path.is_symlink() and path.read_text().endswith("# the old driver\n")
    assert not (one / "var" / "packet_provider").exists()


def test_destdir_stages_under_the_root_and_names_the_final_paths(tmp_path, deps_venv):
    stage = tmp_path / "stage"
    final = tmp_path / "final-one"  # never created: everything goes under stage
    result = ok(run_install("--destdir", str(stage), "--python", str(deps_venv / "bin" / "python"),
                            location=final))
    staged = stage / str(final).lstrip("/")
    assert not final.exists()
    ipam = staged / "var" / "remotes" / "ipam" / "packet"
    assert shebang(ipam / os.readlink(ipam / "get_address")) == f"#!{deps_venv}/bin/python"
    manifest = (staged / "var" / "packet_provider" / "install-manifest").read_text().splitlines()
    assert manifest and all(line.split(" ", 1)[1].startswith(str(final)) for line in manifest)
    assert f"onehook create {final}/share/packet_provider/hooks/running_hook" in result.stdout
    assert stat.S_IMODE((staged / "etc" / "packet_provider.yaml").stat().st_mode) == 0o600

    ok(run_install("--destdir", str(stage), "--uninstall", location=final))
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*")) == [
        "etc", "etc/packet_provider.yaml", "var", "var/ipam_state"]


# -- refusals ------------------------------------------------------------------------------

def test_help_and_bad_options(tmp_path):
    help_text = ok(run_install("--help")).stdout
    for option in ("--destdir", "--venv", "--python", "--no-venv", "--hooks", "--uninstall"):
        assert option in help_text
    bad = run_install("--frobnicate", location=tmp_path / "one")
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert not (tmp_path / "one").exists()


def test_a_tree_without_remotes_gets_a_warning(tmp_path, deps_venv):
    result = ok(run_install("--venv", str(deps_venv), location=tmp_path / "fresh"))
    assert "did not exist: is OpenNebula installed here?" in result.stderr
    assert (tmp_path / "fresh" / "var" / "remotes" / "ipam" / "packet").is_dir()


def test_a_python_without_the_packages_is_refused_before_anything_is_written(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True)
    result = run_install("--python", str(bare / "bin" / "python"), location=tmp_path / "one")
    assert result.returncode != 0 and "cannot import pyone" in result.stderr
    assert not (tmp_path / "one").exists()


# -- the frontend python -------------------------------------------------------------------

def _make_deps_venv(path: Path) -> None:
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(path)], check=True)
    site = subprocess.run(
        [str(path / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(site, "project_deps.pth").write_text("\n".join(paths) + "\n")


def test_default_virtualenv_is_reused_when_it_has_the_packages(one):
    venv = one / "var" / "packet_provider" / "venv"
    _make_deps_venv(venv)
    result = ok(run_install(location=one, env={"PIP_NO_INDEX": "1"}))
    assert "Installing pyone" not in result.stdout
    assert "Creating the virtualenv" not in result.stdout
    hook = one / "var" / "remotes" / "hooks" / "alias_ip" / "alias_ip.py"
    assert shebang(hook) == f"#!{venv}/bin/python"
    manifest = (one / "var" / "packet_provider" / "install-manifest").read_text()
    assert f"v {venv}" not in manifest  # not ours: it stays on uninstall
    ok(run_install("--uninstall", location=one))
    assert (venv / "bin" / "python").exists()


def test_default_virtualenv_failing_pip_leaves_nothing_behind(one):
    before = snapshot(one)
    result = run_install(location=one, env={"PIP_NO_INDEX": "1"})
    assert result.returncode != 0, result.stdout
    assert "PIP_FIND_LINKS" in result.stderr and "Traceback" not in result.stdout
    assert snapshot(one) == before


def test_no_venv_uses_the_system_python3(tmp_path):
    system_python = subprocess.run(["bash", "-c", "command -v python3"], capture_output=True,
                                   text=True, env=_clean_env()).stdout.strip()
    refused = run_install("--no-venv", location=tmp_path / "one")
    assert refused.returncode != 0 and "cannot import pyone" in refused.stderr
    assert not (tmp_path / "one").exists()
    # a packager's build machine need not have them: a warning, and the final shebang
    stage = tmp_path / "stage"
    staged = ok(run_install("--no-venv", "--destdir", str(stage), location=Path("/opt/one-x")))
    assert "warning" in staged.stderr
    ipam = stage / "opt" / "one-x" / "var" / "remotes" / "ipam" / "packet"
    assert shebang(ipam / os.readlink(ipam / "free_address")) == f"#!{system_python}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_owner_gets_the_config_leases_and_installed_files(one, deps_venv):
    import pwd

    nobody = pwd.getpwnam("nobody")
    ok(run_install("--venv", str(deps_venv), "--owner", "nobody", location=one))
    for path in (one / "etc" / "packet_provider.yaml", one / "var" / "ipam_state",
                 one / "var" / "remotes" / "hooks" / "alias_ip" / "alias_ip.py",
                 one / "var" / "remotes" / "lib" / "packet_provider" / "ipam" / "actions.py"):
        assert path.lstat().st_uid == nobody.pw_uid, path
    assert stat.S_IMODE((one / "etc" / "packet_provider.yaml").stat().st_mode) == 0o600


# -- hooks through oned --------------------------------------------------------------------

def _hooks(oned) -> Dict[str, dict]:
    pool = oned.client().hookpool.info(-2, -1, -1)
    hooks = getattr(pool, "HOOK", None) or []
    names = [h.NAME for h in hooks]
    assert len(names) == len(set(names)), names
    return {h.NAME: dict(h.TEMPLATE) for h in hooks}


def _wanted() -> Dict[str, Dict[str, str]]:
    out = {}
    for name in HOOK_TEMPLATES:
        values = hookreg.parse_hook_template(
            (INSTALL.parent / "share" / "examples" / "alias_ip" / name).read_text())
        out[values["NAME"]] = hookreg.as_stored(values)  # as oned keeps it: ON -> STATE
    return out


def test_hooks_option_creates_the_three_hooks_once(install, oned, one_auth_file):
    env = {"ONE_XMLRPC": oned.url, "ONE_AUTH": str(one_auth_file)}
    out = install("--hooks", env=env).stdout
    assert out.count(": created (id ") == 3
    hooks = _hooks(oned)
    wanted = _wanted()
    assert sorted(hooks) == sorted(wanted)
    assert sorted(wanted) == ["alias_ip_done", "alias_ip_hotplug", "alias_ip_running"]
    for name, template in wanted.items():
        for key, value in template.items():
            if key != "NAME":
                assert hooks[name][key] == value, (name, key)

    assert all("ON" not in template for template in hooks.values())  # oned drops ON

    out = install("--hooks", env=env).stdout
    assert out.count("unchanged") == 3 and "updated" not in out
    assert _hooks(oned) == hooks


def test_hooks_option_updates_a_hook_made_from_the_old_documentation(install, oned, one_auth_file):
    client = oned.client()
    old_id = client.hook.allocate(
        'NAME = "alias_ip_running"\nTYPE = "state"\nCOMMAND = "alias_ip/alias_ip.rb"\n'
        'ARGUMENTS = "$TEMPLATE"\nARGUMENTS_STDIN = "yes"\nON = "CUSTOM"\nRESOURCE = "VM"\n'
        'STATE = "ACTIVE"\nLCM_STATE = "RUNNING"\nREMOTE = "NO"\nMY_NOTE = "keep me"\n')
    env = {"ONE_XMLRPC": oned.url, "ONE_AUTH": str(one_auth_file)}
    out = install("--hooks", env=env).stdout
    assert f"hook alias_ip_running: updated (id {old_id})" in out
    hooks = _hooks(oned)
    assert len(hooks) == 3
    assert hooks["alias_ip_running"]["COMMAND"] == _wanted()["alias_ip_running"]["COMMAND"]
    assert hooks["alias_ip_running"]["MY_NOTE"] == "keep me"


def test_hooks_option_with_a_bad_session_fails_with_one_line(oned, tmp_path, one, deps_venv):
    auth = tmp_path / "bad_auth"
    auth.write_text("oneadmin:wrong\n")
    result = run_install("--venv", str(deps_venv), "--hooks", location=one,
                         env={"ONE_XMLRPC": oned.url, "ONE_AUTH": str(auth)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "refused the session" in result.stderr and "wrong" not in result.stderr
    assert _hooks(oned) == {}


# -- oned.conf parsing (pure) --------------------------------------------------------------

@pytest.mark.parametrize(("conf", "current", "wanted"), [
    (None, None, "-t 1 -i dummy,packet"),
    ("", None, "-t 1 -i dummy,packet"),
    ('IPAM_MAD = [ EXECUTABLE = "one_ipam", ARGUMENTS = "-t 1 -i dummy" ]', "-t 1 -i dummy",
     "-t 1 -i dummy,packet"),
    ('IPAM_MAD=[\n ARGUMENTS="-t 8 -i dummy,aws -w 90",\n EXECUTABLE="one_ipam"]',
     "-t 8 -i dummy,aws -w 90", "-t 8 -i dummy,aws,packet -w 90"),
    ('IPAM_MAD = [ ARGUMENTS = "-t 1 -i dummy,packet" ]', "-t 1 -i dummy,packet",
     "-t 1 -i dummy,packet"),
    ('IPAM_MAD = [ ARGUMENTS = "-t 2" ]', "-t 2", "-t 2 -i dummy,packet"),
    ('#IPAM_MAD = [ ARGUMENTS = "-t 2 -i x" ]\n', None, "-t 1 -i dummy,packet"),
])
def test_ipam_arguments_adds_packet_to_the_current_list(conf, current, wanted):
    assert hookreg.ipam_arguments(conf) == (current, wanted)


def test_plan_hooks_creates_updates_or_keeps_by_name():
    wanted = [{"NAME": "a", "COMMAND": "alias_ip/alias_ip.py", "ON": "DONE"},
              {"NAME": "b", "COMMAND": "alias_ip/alias_ip.py"},
              {"NAME": "c", "COMMAND": "x"}]
    existing = [hookreg.Existing(4, "a", {"COMMAND": "alias_ip/alias_ip.rb", "ON": "done"}),
                hookreg.Existing(5, "b", {"COMMAND": "alias_ip/alias_ip.py", "TIMEOUT": "9"})]
    steps = hookreg.plan_hooks(wanted, existing)
    assert [(s.action, s.hook_id) for s in steps] == [("update", 4), ("keep", 5), ("create", None)]
    assert steps[0].differences == (("COMMAND", "alias_ip/alias_ip.rb", "alias_ip/alias_ip.py"),)


def test_plan_hooks_compares_hooks_as_oned_stores_them():
    """Real oned drops ON and keeps the STATE and LCM_STATE it stands for: a hook created
    from our template must compare equal to it, whichever form each side has."""
    done = {"NAME": "d", "COMMAND": "alias_ip/alias_ip.py", "ON": "DONE"}
    running = {"NAME": "r", "COMMAND": "alias_ip/alias_ip.py", "ON": "CUSTOM",
               "STATE": "ACTIVE", "LCM_STATE": "RUNNING"}
    stored = [hookreg.Existing(1, "d", {"COMMAND": "alias_ip/alias_ip.py", "STATE": "DONE",
                                        "LCM_STATE": "LCM_INIT"}),
              hookreg.Existing(2, "r", {"COMMAND": "alias_ip/alias_ip.py", "STATE": "ACTIVE",
                                        "LCM_STATE": "RUNNING"})]
    assert [s.action for s in hookreg.plan_hooks([done, running], stored)] == ["keep", "keep"]
    moved = [hookreg.Existing(1, "d", {"COMMAND": "alias_ip/alias_ip.py", "STATE": "ACTIVE",
                                       "LCM_STATE": "RUNNING"})]
    step = hookreg.plan_hooks([done], moved)[0]
    assert step.action == "update"
    assert {k for k, _old, _new in step.differences} == {"STATE", "LCM_STATE"}
    assert hookreg.as_stored(running) == {k: v for k, v in running.items() if k != "ON"}


def test_session_file_order_env_config_home_then_owner(tmp_path):
    home, owner = tmp_path / "home", tmp_path / "oneadmin_auth"
    owner.write_text("oneadmin:x\n")
    env = {"HOME": str(home)}
    assert hookreg.session_path({**env, "ONE_AUTH": "/a"}, "/b", str(owner)) == "/a"
    assert hookreg.session_path(env, "/b", str(owner)) == "/b"
    assert hookreg.session_path(env, None, str(owner)) == str(owner)
    (home / ".one").mkdir(parents=True)
    (home / ".one" / "one_auth").write_text("root:y\n")
    assert hookreg.session_path(env, None, str(owner)) == str(home / ".one" / "one_auth")
    assert hookreg.read_session(str(owner)) == ("oneadmin:x", str(owner))


@pytest.mark.parametrize("text", [
    'COMMAND = "x"\n',                        # no NAME
    'NAME = "a"\nCOMMAND = x y\n',           # unquoted value with a space
    'NAME = "a"\nVECTOR = [ A = "b" ]\n',    # vectors are not ours
])
def test_hook_template_parser_refuses_what_our_templates_never_hold(text):
    with pytest.raises(hookreg.InputError):
        hookreg.parse_hook_template(text)


# -- install.sh --node: the hypervisor's sudoers drop-in --------------------------------------

DROPIN = Path("etc/sudoers.d/opennebula-alias_sdnat")
SUDO_TOOLS = all(shutil.which(t, path=SYSTEM_PATH) for t in ("sudo", "visudo"))


def _sudoers_commands(text: str) -> List[str]:
    (line,) = [x for x in text.splitlines() if x.startswith("Cmnd_Alias ALIAS_SDNAT_NAT = ")]
    return line.split(" = ", 1)[1].split(", ")


@pytest.mark.skipif(not SUDO_TOOLS, reason="needs sudo's visudo (apt-get install sudo)")
def test_node_stages_a_valid_sudoers_dropin_and_is_idempotent(tmp_path):
    stage = tmp_path / "stage"
    result = ok(run_install("--node", "--destdir", str(stage)))  # ONE_LOCATION unset
    dropin = stage / DROPIN
    assert "Wrote " in result.stdout and stat.S_IMODE(dropin.stat().st_mode) == 0o440
    text = dropin.read_text()
    commands = _sudoers_commands(text)
    wanted = [shutil.which(n, path=SYSTEM_PATH) for n in ("iptables-save", "iptables-restore")]
    assert all(c.startswith("/") for c in commands) and set(wanted) <= set(commands)
    assert {Path(c).name for c in commands} <= {
        f"iptables{v}-{a}" for v in ("", "-legacy", "-nft") for a in ("save", "restore")}
    assert "oneadmin ALL=(root) NOPASSWD: ALIAS_SDNAT_NAT" in text
    assert not any(Path(c).name == "iptables" for c in commands)  # that is ONE_NET's
    check = subprocess.run(["visudo", "-cf", str(dropin)], capture_output=True, text=True,
                           env=_clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    before = snapshot(stage)
    ok(run_install("--node", "--destdir", str(stage)))
    assert snapshot(stage) == before
    assert sorted(p.name for p in (stage / "etc" / "sudoers.d").iterdir()) == [DROPIN.name]
    assert not (stage / "var").exists() and not (stage / "usr").exists()  # nothing else


def test_node_refuses_without_root_or_destdir(tmp_path):
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as readable:  # a copy nobody can read
        os.chmod(readable, 0o755)
        script = Path(readable) / "install.sh"
        shutil.copy2(INSTALL, script)
        script.chmod(0o755)
        result = subprocess.run([*as_user, "bash", str(script), "--node"], capture_output=True,
                                text=True, env=_clean_env(), timeout=60, cwd="/")
    assert result.returncode != 0 and "run it as root" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "--node" in ok(run_install("--help")).stdout


@pytest.mark.skipif(os.geteuid() != 0 or not SUDO_TOOLS,
                    reason="writes /etc/sudoers.d and asks sudo: needs root and sudo")
def test_node_for_real_lets_oneadmin_run_iptables_restore_through_sudo():
    real = Path("/") / DROPIN
    if subprocess.run(["id", "oneadmin"], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--create-home", "oneadmin"], check=True)
    probe = ["runuser", "-u", "oneadmin", "--", "sudo", "-n", "-l", "iptables-restore"]
    from fixtures.hostuser import sudoers_turn  # other tests' sudoers must not overlap

    with sudoers_turn():
        _node_for_real(real, probe)


def _node_for_real(real: Path, probe: List[str]) -> None:
    if real.exists():
        pytest.skip(f"{real} exists on this machine already: not touching it")
    try:
        first = ok(run_install("--node"))
        assert f"Wrote {real}" in first.stdout and first.stderr == ""
        assert stat.S_IMODE(real.stat().st_mode) == 0o440 and real.stat().st_uid == 0
        assert subprocess.run(probe, capture_output=True, check=False).returncode == 0
        again = ok(run_install("--node"))
        assert "already in place" in again.stdout
        ok(run_install("--node", "--uninstall"))
        assert not real.exists()
        assert not list(real.parent.glob(".opennebula-alias_sdnat*"))
    finally:
        real.unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
