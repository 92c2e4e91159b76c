"""Hypervisors for the real oned: network namespaces running sshd, reached from the root
namespace (where oned runs as oneadmin) over a veth each, so that the real ``one_vmm_exec``
runs ``vnm/alias_sdnat/{pre,post,clean}`` over ssh, as oneadmin, with its real VM view.

The namespaces come from the project's namespace lab (client, hypervisors, a VM plugged into
one of them); this adds the management link and sshd. Namespaces share the file system, so
every "host" sees the same ``/var/tmp/one`` that ``onehost sync`` fills, and the same sudoers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

from packet_lab.netlab import Lab, _run

SSH_PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client", "rsync": "rsync",
                "sudo": "sudo"}


def missing_tools() -> List[str]:
    return sorted({pkg for tool, pkg in SSH_PACKAGES.items()
                   if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None})


def install_tools() -> None:
    """apt-get what is missing (sshd, ssh, rsync, sudo); the service itself is not started."""
    missing = missing_tools()
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   env=env, check=True, capture_output=True)


def management_ip(index: int) -> str:
    return f"172.30.{index}.2"


class SshLab(Lab):
    """The namespace lab plus, per hypervisor, a management veth to the root namespace
    (172.30.<i>.1 <-> 172.30.<i>.2) and an sshd on the hypervisor's side."""

    def __init__(self, workdir: Path, user: pwd.struct_passwd, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.workdir = workdir
        self.user = user
        self._sshd: Dict[int, subprocess.Popen] = {}

    def _build(self) -> None:
        super()._build()
        for index, hv in self.hvs.items():
            root_if, hv_if = f"pl{self.tag}m{index}", f"pl{self.tag}n{index}"
            _run(["ip", "link", "add", root_if, "type", "veth", "peer", "name", hv_if,
                  "netns", hv])
            _run(["ip", "addr", "add", f"172.30.{index}.1/30", "dev", root_if])
            _run(["ip", "-n", hv, "addr", "add", f"{management_ip(index)}/30", "dev", hv_if])
            _run(["ip", "link", "set", root_if, "up"])
            _run(["ip", "-n", hv, "link", "set", hv_if, "up"])
        self._keys()
        for index in self.hvs:
            self._start_sshd(index)

    def _keys(self) -> None:
        unlock_for_ssh(self.user.pw_name)
        self._key_files()

    def _key_files(self) -> None:
        """oneadmin's key pair (kept if it exists), its ssh client settings for the lab's
        addresses, and the host key and authorized_keys the lab's sshd use."""
        ssh_dir = Path(self.user.pw_dir) / ".ssh"
        key = ssh_dir / "id_ed25519"
        uid, gid = self.user.pw_uid, self.user.pw_gid
        if not key.exists():
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            os.chown(ssh_dir, uid, gid)
            subprocess.run(["runuser", "-u", self.user.pw_name, "--", "ssh-keygen", "-q",
                            "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        config = ssh_dir / "config"
        marker = "# real_one test hypervisors"
        text = config.read_text() if config.exists() else ""
        if marker not in text:
            text += (f"\n{marker}\nHost 172.30.*\n    StrictHostKeyChecking no\n"
                     "    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n")
            config.write_text(text)
            os.chown(config, uid, gid)
            config.chmod(0o600)
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                           check=True)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{key}.pub").read_text())
        os.chown(authorized, uid, gid)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _start_sshd(self, index: int) -> None:
        config = self.workdir / f"sshd_config.{index}"
        config.write_text(
            f"ListenAddress {management_ip(index)}\nPort 22\n"
            f"HostKey {self.workdir / 'ssh_host_ed25519_key'}\nPidFile none\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"StrictModes no\nAllowUsers {self.user.pw_name}\n")
        proc = subprocess.Popen(["ip", "netns", "exec", self.hvs[index], "/usr/sbin/sshd",
                                 "-D", "-e", "-f", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._sshd[index] = proc
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["runuser", "-u", self.user.pw_name, "--", "ssh", "-o", "BatchMode=yes",
                 "-o", "ConnectTimeout=3", management_ip(index), "true"],
                capture_output=True, text=True)
            if probe.returncode == 0:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"sshd in {self.hvs[index]} exited: {proc.stderr.read()}")
            time.sleep(0.3)
        raise RuntimeError(f"cannot ssh as {self.user.pw_name} to {management_ip(index)}: "
                           f"{probe.stderr}")

    def close(self) -> None:
        for proc in self._sshd.values():
            proc.kill()
            proc.wait()
        self._sshd.clear()
        super().close()


def unlock_for_ssh(user: str) -> None:
    """sshd refuses key logins of a locked account ("!" password, as useradd --system
    leaves it); OpenNebula's packages leave oneadmin without a password but not locked."""
    with open("/etc/shadow") as shadow:
        for line in shadow:
            name, password = line.split(":")[:2]
            if name == user and password.startswith("!"):
                subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)
