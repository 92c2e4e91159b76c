"""File locks (standard library only: hosts use it).

- :func:`flock_within`: wait a bounded time for an exclusive ``flock``.
- :class:`PrivateLock`: an exclusive lock on a file that only the effective user (and root)
  can create, open or hold, and that survives being deleted while held (``onehost sync``
  runs ``rsync --delete`` over the tree that holds the VNM driver's lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import Callable, Optional

from packet_provider.core.errors import StateError


def flock_within(fd: int, seconds: float, poll: float,
                 on_first_wait: Optional[Callable[[], None]] = None) -> bool:
    """Take an exclusive lock on ``fd``, polling every ``poll`` s for at most ``seconds``;
    False when another process still holds it then. ``on_first_wait`` runs once, before
    the first wait (to say why the action is slow)."""
    deadline = time.monotonic() + seconds
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            return False
        if not waited and on_first_wait is not None:
            on_first_wait()
        waited = True
        time.sleep(poll)


class PrivateLock:
    """An exclusive ``flock`` on ``path``, mode 0600, that no other local user can hold.

    Refused (StateError, one line): a directory writable by group or others, or owned by
    a user other than the effective one or root (when not root); a lock file that is not a
    regular file, is a symlink, is not owned by the effective user (root also accepts the
    directory's owner, and gives a file it creates to that owner, so that the unprivileged
    user who owns the tree can still use it), or grants any access to group or others.

    Deletion: once the ``flock`` is taken the path must still name the locked inode
    (``fstat`` against ``stat``); if the file was deleted or replaced meanwhile, the lock is
    taken again on whatever the path names now. Waiters that opened the old file therefore
    queue on the new one instead of running beside its holder. :meth:`confirm` repeats the
    check just before the caller writes, so a holder whose file was deleted re-queues
    behind anyone who took the new file; only the instant between that check and the write
    is left unguarded.
    """

    def __init__(self, path: str, timeout: float, poll: float = 0.01) -> None:
        self.path, self.timeout, self.poll = path, timeout, poll
        self.fd = -1

    # -- checks --

    def _directory(self) -> os.stat_result:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise StateError(f"cannot use the lock directory {directory}: "
                             f"{exc.strerror}") from None
        euid = os.geteuid()
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateError(f"refusing the lock {self.path}: its directory is writable by "
                             "group or others (chmod go-w it)")
        if euid != 0 and st.st_uid not in (euid, 0):
            raise StateError(f"refusing the lock {self.path}: its directory belongs to uid "
                             f"{st.st_uid}, not to uid {euid} or root")
        return st

    def _open(self) -> int:
        """Open (creating when missing) and check the lock file; -1 when it vanished."""
        parent = self._directory()
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        created = False
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                return -1
            except OSError as exc:
                why = ("it is a symlink" if exc.errno == errno.ELOOP else
                       f"{exc.strerror} (it must belong to uid {os.geteuid()}, mode 0600)")
                raise StateError(f"cannot open the lock file {self.path}: {why}") from None
        except FileNotFoundError:
            return -1  # the directory went away (a sync replacing the tree): try again
        except OSError as exc:
            raise StateError(f"cannot create the lock file {self.path}: "
                             f"{exc.strerror}") from None
        try:
            self._check_file(fd, parent, created)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_file(self, fd: int, parent: os.stat_result, created: bool) -> None:
        st = os.fstat(fd)
        euid = os.geteuid()
        if created and euid == 0 and parent.st_uid != 0:
            os.fchown(fd, parent.st_uid, parent.st_gid)  # keep it usable by the tree's owner
            st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"refusing the lock {self.path}: not a regular file")
        owners = {euid} | ({parent.st_uid} if euid == 0 else set())
        if st.st_uid not in owners:
            raise StateError(f"refusing the lock {self.path}: it belongs to uid {st.st_uid}, "
                             f"not to uid {euid} (remove it)")
        if st.st_mode & 0o077:
            raise StateError(f"refusing the lock {self.path}: mode "
                             f"{stat.S_IMODE(st.st_mode):04o} lets group or others use it "
                             "(it must be 0600)")

    def _names(self, fd: int) -> bool:
        """Whether the path still names the file open on ``fd``."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    # -- taking and keeping it --

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            fd = self._open()
            if fd < 0:
                if time.monotonic() >= deadline:
                    raise StateError(f"the lock file {self.path} kept vanishing")
                time.sleep(self.poll)
                continue
            if not flock_within(fd, max(0.0, deadline - time.monotonic()), self.poll):
                os.close(fd)
                raise StateError(f"another action held the lock {self.path} for "
                                 f"{self.timeout:.0f}s")
            if self._names(fd):
                self.fd = fd
                return
            os.close(fd)  # deleted or replaced while we waited: queue on the new file

    def confirm(self) -> bool:
        """True when the lock file is still in place; otherwise take the lock again on the
        file the path names now and return False (what was read under the old one may be
        stale)."""
        if self._names(self.fd):
            return True
        os.close(self.fd)
        self.fd = -1
        self._acquire()
        return False

    def __enter__(self) -> PrivateLock:
        self._acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the lock
            self.fd = -1
