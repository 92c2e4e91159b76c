"""The VNM driver's host lock (filelock.PrivateLock): a 0600 file only its owner can create,
open or hold, in a directory nobody else can write; still serialising when ``onehost sync``
deletes it while it is held."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from fixtures import hostuser
from fixtures.common import LIB
from packet_provider.core.errors import StateError
from packet_provider.core.filelock import PrivateLock
from packet_provider.vnm import nat

HOLD = """
import sys, time
from packet_provider.core.filelock import PrivateLock
with PrivateLock(sys.argv[1], 20) as lock:
    while not lock.confirm():
        pass
    start = time.time()
    print("in", flush=True)
    time.sleep(float(sys.argv[2]))
    end = time.time()
print(start, end, flush=True)
"""


def holder(path: Path, seconds: float, user: str = "", lib: Path = LIB) -> subprocess.Popen:
    """A process that takes the lock, says "in", holds it ``seconds``, then prints when it
    held it; as ``user`` (on the system python3, ``lib`` a copy they can read)."""
    if user:
        argv = [*hostuser.as_user([hostuser.SYSTEM_PYTHON]), "-c", HOLD]
    else:
        argv = [sys.executable, "-c", HOLD]
    return subprocess.Popen([*argv, str(path), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(lib), "PATH": os.environ["PATH"]})


def interval(proc: subprocess.Popen) -> Tuple[float, float]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    start, end = out.split()[-2:]
    return float(start), float(end)


def test_the_lock_is_a_0600_file_held_by_one_process_at_a_time(tmp_path):
    path = tmp_path / "x.lock"
    with PrivateLock(str(path), 5):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(StateError, match="held the lock"):
            with PrivateLock(str(path), 0.2):
                pass
    with PrivateLock(str(path), 0.2):
        pass


def test_the_default_lock_is_beside_the_driver_not_in_var_lock(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/var/tmp/one/vnm/alias_sdnat/post", "one-1"])
    assert nat.default_lock_path() == "/var/tmp/one/vnm/alias_sdnat/.alias_sdnat.lock"


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(StateError, match="writable by group or others"):
        with PrivateLock(str(shared / "x.lock"), 1):
            pass
    assert not (shared / "x.lock").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666])
def test_a_lock_file_others_can_open_is_refused(tmp_path, mode):
    path = tmp_path / "x.lock"
    path.touch()
    path.chmod(mode)
    with pytest.raises(StateError, match="must be 0600"):
        with PrivateLock(str(path), 1):
            pass


def test_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").touch(mode=0o600)
    (tmp_path / "x.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="symlink"):
        with PrivateLock(str(tmp_path / "x.lock"), 1):
            pass


def test_deleted_while_held_it_still_serialises(tmp_path):
    """A holds the file; B queues on it; a sync deletes it; C takes the new file. A (at
    confirm, before it writes) and B (on waking) both queue behind C: no two critical
    sections overlap."""
    path = tmp_path / "x.lock"
    a = PrivateLock(str(path), 20)
    a.__enter__()
    try:
        b = holder(path, 0.3)
        time.sleep(0.3)  # B has opened the old file and waits on it
        path.unlink()  # rsync --delete
        c = holder(path, 0.6)
        assert c.stdout.readline().strip() == "in"  # C runs on the new file at once
        waited = time.time()
        assert a.confirm() is False  # A lost its file: it queued behind C
        a_start = time.time()
        assert a.confirm() is True
        assert a_start - waited > 0.3
        time.sleep(0.2)
        a_end = time.time()
    finally:
        a.__exit__()
    sections = sorted([interval(c), (a_start, a_end), interval(b)])
    for (_, end), (start, _) in zip(sections, sections[1:]):
        assert end <= start, sections


# -- other users (root only) --------------------------------------------------------------------

REASON = hostuser.missing_reason()
AS_USERS = pytest.mark.skipif(bool(REASON), reason=REASON or "-")


@pytest.fixture
def tree() -> Iterator[Path]:
    """A remotes tree like /var/tmp/one: the driver's directory is oneadmin's, 0755."""
    with hostuser.remotes_tree() as top:
        yield top


def _lock(tree: Path) -> Path:
    return tree / "vnm" / "alias_sdnat" / nat.LOCK_NAME


def _as(user: str, tree: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", hostuser.SYSTEM_PYTHON, "-c", code,
                           *args], capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(tree / "lib"), "PATH": os.environ["PATH"]})


OPEN = """
import os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o600)
except OSError as exc:
    print(type(exc).__name__)
else:
    print("opened")
"""


@AS_USERS
def test_another_local_user_can_neither_open_nor_create_it(tree):
    lock = _lock(tree)
    interval(holder(lock, 0.0, user="oneadmin", lib=tree / "lib"))
    assert lock.stat().st_uid == pwd.getpwnam("oneadmin").pw_uid
    assert oct(lock.stat().st_mode & 0o777) == "0o600"
    hostuser.ensure_user("nobody")
    assert _as("nobody", tree, OPEN, str(lock)).stdout.strip() == "PermissionError"
    lock.unlink()
    assert _as("nobody", tree, OPEN, str(lock)).stdout.strip() == "PermissionError"
    assert not lock.exists()


@AS_USERS
def test_a_lock_file_of_another_user_is_refused(tree):
    lock = _lock(tree)
    lock.touch(mode=0o600)
    nobody = hostuser.ensure_user("nobody")
    os.chown(lock, nobody.pw_uid, nobody.pw_gid)
    code = ("import sys\nfrom packet_provider.core.filelock import PrivateLock\n"
            "from packet_provider.core.errors import StateError\n"
            "try:\n    PrivateLock(sys.argv[1], 1).__enter__()\n"
            "except StateError as exc:\n    print(exc)\n")
    out = _as("oneadmin", tree, code, str(lock)).stdout
    assert "cannot open the lock file" in out, out


@AS_USERS
def test_root_gives_a_lock_it_creates_to_the_owner_of_the_tree(tree):
    lock = _lock(tree)
    with PrivateLock(str(lock), 1):
        pass
    assert lock.stat().st_uid == pwd.getpwnam("oneadmin").pw_uid
    interval(holder(lock, 0.0, user="oneadmin", lib=tree / "lib"))  # still usable by oneadmin


def _overlaps(sections: List[Tuple[float, float]]) -> bool:
    ordered = sorted(sections)
    return any(end > start for (_, end), (start, _) in zip(ordered, ordered[1:]))


@AS_USERS
def test_oneadmin_processes_queue_on_it(tree):
    lock = _lock(tree)
    procs = [holder(lock, 0.15, user="oneadmin", lib=tree / "lib") for _ in range(4)]
    assert not _overlaps([interval(p) for p in procs])
