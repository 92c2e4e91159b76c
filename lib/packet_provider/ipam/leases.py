"""Local state of the packet IPAM driver: address leases and the pending-reservation journal.

Leases keep the layout of the old Ruby driver, so an upgrade keeps every existing lease::

    <ipam_state_dir>/packet/<DEPLOY_ID>/<IP>

A lease is claimed by linking a prepared file to its name (``link`` fails if the name exists,
as ``O_CREAT | O_EXCL`` would): of any number of concurrent claims of one address exactly one
succeeds, whatever process makes it. Any file named after an address counts as a lease,
whatever it holds (the Ruby driver's files too), with one exception that keeps a killed action
from losing an address:

A fresh claim is *pending*: its file starts with ``pending`` and its claimer holds an
exclusive ``flock`` on it until oned has the answer, then rewrites the mark to ``claimed``
in place (:meth:`Claim.commit`). A pending file that nobody holds belongs to an action that
died before oned learned the address (oned records a lease only when the action exits 0), so
the next claim of that address takes it over.

The journal (``<ipam_state_dir>/packet/.pending/<marker>.json``) records a reservation request
before it is sent. The process that sends it holds an exclusive ``flock`` on its entry for its
whole life, and removes the entry only once its answer has reached oned. An entry that nobody
holds is therefore the trace of a register killed after (or while) it asked Packet for
addresses: the next action finds the marked reservation and releases it (see
:mod:`packet_provider.ipam.recovery`). DEPLOY_ID and IP are validated before they become paths.

The unassignment journal (``<ipam_state_dir>/packet/.unassign/<DEPLOY_ID>/<IP>``) records a
free_address whose unassignment Packet could not take (an outage): written and fsynced before
the lease is dropped, so oned can be told the address is free while the driver still owes
Packet the unassignment. Later actions complete it (:class:`UnassignJournal`); until then
the address is not handed out again. An entry holds no token: the range, its project and
the AR's IP and SIZE, so that completing it can check the block is still the range's.

An action opens all three through :class:`LocalState`, a context manager: whatever the action
still holds locked when it ends (a claim it neither committed nor abandoned, a journal entry
it did not finish) is unlocked and left as a dead process would leave it, for a later action
to take over or recover.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from packet_provider.core import validate
from packet_provider.core.errors import ProviderError, StateError

DRIVER_DIR = "packet"
PENDING_DIR = ".pending"
UNASSIGN_DIR = ".unassign"
DIR_MODE = 0o750
LEASE_MODE = 0o640
PENDING_MODE = 0o600
PENDING_MARK = b"pending "
CLAIMED_MARK = b"claimed "  # same length: committing rewrites bytes in place, never grows


def _json() -> Any:
    """The json module, imported when a journal is written or read (most actions never
    touch one)."""
    import json

    return json


def _ensure_dir(path: str, mode: int = DIR_MODE) -> None:
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as err:
        raise StateError(f"cannot create the state directory {path}: {err.strerror}") from None


class LeaseStore:
    """The lease files of every packet address range under one state directory."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, DRIVER_DIR)
        self.held: List[Any] = []  # claims made here (closed by LocalState)

    def range_dir(self, deploy_id: str) -> str:
        return os.path.join(self.root, validate.uuid(deploy_id, "DEPLOY_ID"))

    def path(self, deploy_id: str, ip: object) -> str:
        return os.path.join(self.range_dir(deploy_id), str(validate.ipv4(ip, "IP")))

    def claim(self, deploy_id: str, ip: object, note: str = "") -> Optional[Claim]:
        """Claim the lease of ``ip``, pending until :meth:`Claim.commit`; None when it is taken.

        The file is written and locked under a temporary name and then linked into place, so
        no other process ever sees the lease half-written or unlocked while its claimer
        lives. A pending lease of a dead claimer is taken over."""
        address = validate.ipv4(ip, "IP")
        directory = self.range_dir(deploy_id)
        path = os.path.join(directory, str(address))
        _ensure_dir(directory)
        temp = os.path.join(directory, f".claim.{address}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, LEASE_MODE)
        except OSError as err:
            raise StateError(f"cannot write the lease {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.write(fd, PENDING_MARK + f"pid={os.getpid()} {stamp} {note}".strip().encode()
                     + b"\n")
            for _attempt in range(3):
                try:
                    os.link(temp, path)
                    claim = Claim(path, fd)
                    self.held.append(claim)
                    return claim
                except FileExistsError:
                    if not _is_abandoned(path, take_over=True):
                        break
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            raise StateError(f"cannot write the lease {path}: {err.strerror}") from None
        finally:
            _unlink_quietly(temp)

    def release(self, deploy_id: str, ip: object) -> bool:
        """Remove the lease of ``ip``; False when there was none."""
        path = self.path(deploy_id, ip)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StateError(f"cannot remove the lease {path}: {err.strerror}") from None
        return True

    def is_leased(self, deploy_id: str, ip: object) -> bool:
        """Whether ``ip`` has a lease (a pending lease of a dead claimer does not count)."""
        path = self.path(deploy_id, ip)
        return os.path.lexists(path) and not _is_abandoned(path)

    def leased(self, deploy_id: str) -> Set[ipaddress.IPv4Address]:
        """The addresses of a range with a lease file (names that are not addresses ignored).

        Cheap (one directory read): a pending lease of a dead claimer is listed too
        (:meth:`is_leased` tells), and :meth:`claim` of that address takes it over."""
        return _addresses_in(self.range_dir(deploy_id), f"the leases of {deploy_id}")

    def remove_range(self, deploy_id: str) -> int:
        """Remove every lease of a range and its directory (if then empty); the count removed."""
        directory = self.range_dir(deploy_id)
        removed = 0
        for ip in self.leased(deploy_id):
            if self.release(deploy_id, ip):
                removed += 1
        _drop_unlocked(directory, lambda n: n.startswith(".claim."))  # killed claims
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise StateError(f"cannot remove {directory}: {err.strerror}") from None
        return removed


class Claim:
    """A pending lease held by this process: commit it once oned has the answer, or abandon
    it (the lease is removed). Until then other processes see the address as taken."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def commit(self) -> None:
        """Mark the lease claimed (in place, durably), then drop the lock."""
        try:
            os.pwrite(self.fd, CLAIMED_MARK, 0)
            os.fsync(self.fd)
        except OSError as err:
            raise StateError(f"cannot write the lease {self.path}: {err.strerror}") from None
        finally:
            self._close()

    def abandon(self) -> None:
        """Remove the lease (oned never got the address), then drop the lock."""
        try:
            if _same_file(self.path, self.fd):  # not removed and claimed anew meanwhile
                _unlink_quietly(self.path)
        finally:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    close = _close  # unlocked, left pending: the next claim of the address takes it over


def _is_abandoned(path: str, take_over: bool = False) -> bool:
    """Whether ``path`` is a pending lease nobody holds; with ``take_over``, remove it too.

    A file that vanished meanwhile counts as abandoned (the caller's claim may retry)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # writable: NFS locks need it
    except FileNotFoundError:
        return True
    except OSError:
        return False  # a lease we cannot open stays a lease
    try:
        state = _claim_state(fd, fcntl.LOCK_EX if take_over else fcntl.LOCK_SH)
        if state == "pending" and take_over and _same_file(path, fd):  # not claimed anew
            _unlink_quietly(path)
        return state in ("pending", "gone")
    finally:
        os.close(fd)


def _same_file(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _claim_state(fd: int, lock: int) -> str:
    """``held`` (its claimer lives), ``gone`` (unlinked), ``pending`` (abandoned) or ``final``
    (committed, or written by the Ruby driver). Leaves ``lock`` taken unless ``held``."""
    try:
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
    except OSError:
        return "held"  # its claimer is alive (or another process is looking at it)
    if os.fstat(fd).st_nlink == 0:
        return "gone"
    return "pending" if os.pread(fd, len(PENDING_MARK), 0) == PENDING_MARK else "final"


def _drop_unlocked(directory: str, wanted: Callable[[str], bool]) -> None:
    """Remove the temporary files of ``directory`` (names ``wanted``) that no process holds
    locked: each was left by a process killed before it could rename or link it."""
    try:
        names = [n for n in os.listdir(directory) if wanted(n)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # writable: NFS locks need it
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _unlink_quietly(path)
        except OSError:
            pass  # its owner is alive and about to rename or link it
        finally:
            os.close(fd)


def _addresses_in(directory: str, what: str) -> Set[ipaddress.IPv4Address]:
    """The IPv4 addresses that name files of ``directory`` (none when it does not exist)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as err:
        raise StateError(f"cannot read {what}: {err.strerror}") from None
    found = set()
    for name in names:
        try:
            found.add(ipaddress.IPv4Address(name))
        except ValueError:
            continue
    return found


class _JournalFile:
    """What every journal entry shares: a JSON file (``path``, ``data``) locked through
    ``fd`` by the process handling it, whose mtime says when it was last tried. As a context
    manager, its lock is dropped on leaving (the entry stays unless it was finished)."""

    def __init__(self, path: str, data: Dict[str, Any], fd: int = -1,
                 mtime: float = 0.0) -> None:
        self.path, self.data, self.fd, self.mtime = path, data, fd, mtime

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def created(self) -> float:
        try:
            return float(self.data.get("created") or 0)
        except (TypeError, ValueError):
            return 0.0

    @property
    def last_checked(self) -> Optional[float]:
        """When a later action last tried it (None: never)."""
        return self.mtime if self.mtime - self.created > 1.0 else None

    def checked(self) -> None:
        """Note that it was tried now (its mtime), so it is not tried again at once."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def close(self) -> None:
        """Drop the lock (the entry stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PendingEntry(_JournalFile):
    """A journal entry: one reservation request whose answer has not yet reached oned."""

    def __init__(self, marker: str, path: str, data: Dict[str, Any], fd: int = -1,
                 mtime: float = 0.0) -> None:
        super().__init__(path, data, fd, mtime)
        self.marker = marker

    @property
    def project(self) -> str:
        return str(self.data.get("project") or "")

    @property
    def token(self) -> Optional[str]:
        token = self.data.get("token")
        return token if isinstance(token, str) and token else None

    def finish(self) -> None:
        """The request's outcome is settled: remove the entry, then drop its lock."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StateError(f"cannot remove the journal {self.path}: {err.strerror}") from None
        finally:
            self.close()


class _Journal:
    """A directory of journal entries under ``<state_dir>/packet/``."""

    SUBDIR = ""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, DRIVER_DIR, self.SUBDIR)
        self.held: List[Any] = []  # entries locked here (closed by LocalState)

    def _held(self, entry: Any) -> Any:
        self.held.append(entry)
        return entry

    def busy(self) -> bool:
        """Whether there is any entry at all (cheap: one directory read)."""
        try:
            return bool(os.listdir(self.dir))
        except OSError:
            return False


class PendingJournal(_Journal):
    """Reservation requests in flight, each locked by the process that made it."""

    SUBDIR = PENDING_DIR

    def begin(self, marker: str, data: Dict[str, Any]) -> PendingEntry:
        """Record a request about to be sent, and keep it locked until :meth:`finish`.

        The entry is written and locked under a temporary name, then renamed into place, so
        no other process can ever see it unlocked while its owner lives."""
        marker = validate.uuid(marker, "request marker")
        _ensure_dir(os.path.dirname(self.dir))
        _ensure_dir(self.dir, 0o700)
        final = os.path.join(self.dir, f"{marker}.json")
        temp = os.path.join(self.dir, f".{marker}.tmp")
        body = dict(data, marker=marker, created=time.time(), pid=os.getpid())
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         PENDING_MODE)
        except OSError as err:
            raise StateError(f"cannot write the journal {temp}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, _json().dumps(body, sort_keys=True).encode())
            os.fsync(fd)
            os.rename(temp, final)
        except OSError as err:
            os.close(fd)
            _unlink_quietly(temp)
            raise StateError(f"cannot write the journal {final}: {err.strerror}") from None
        return self._held(PendingEntry(marker, final, body, fd))

    def finish(self, entry: PendingEntry) -> None:
        """The request's outcome is settled: remove the entry, then drop its lock."""
        entry.finish()

    def names(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(self.dir)
                          if n.endswith(".json") and not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise StateError(f"cannot read the journal {self.dir}: {err.strerror}") from None

    def abandoned(self) -> Iterator[PendingEntry]:
        """Entries whose owner is gone, each yielded locked by us (close or finish it)."""
        # temporary entries of processes that died before sending their request
        _drop_unlocked(self.dir, lambda n: n.startswith(".") and n.endswith(".tmp"))
        for name in self.names():
            path = os.path.join(self.dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                continue  # finished meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its owner is alive
            try:
                if os.fstat(fd).st_nlink == 0:
                    raise ValueError("removed meanwhile")
                data = _json().loads(os.read(fd, 1 << 16).decode() or "{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                marker = validate.uuid(data.get("marker"), "request marker")
                mtime = os.fstat(fd).st_mtime
            except (ValueError, OSError, ProviderError):
                # unreadable or half-written entry of a dead process: nothing to recover from
                _unlink_quietly(path)
                os.close(fd)
                continue
            yield self._held(PendingEntry(marker, path, data, fd, mtime))


class UnassignEntry(_JournalFile):
    """A deferred unassignment, locked by this process while it is completed."""

    def __init__(self, deploy_id: str, ip: ipaddress.IPv4Address, path: str,
                 data: Dict[str, Any], fd: int = -1, mtime: float = 0.0) -> None:
        super().__init__(path, data, fd, mtime)
        self.deploy_id, self.ip = deploy_id, ip

    @property
    def project(self) -> Optional[str]:
        value = self.data.get("project")
        return value if isinstance(value, str) and validate.is_uuid(value) else None

    @property
    def ar_ip(self) -> Optional[str]:
        value = self.data.get("ar_ip")
        return value if isinstance(value, str) else None

    @property
    def ar_size(self) -> Optional[int]:
        value = self.data.get("ar_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class UnassignJournal(_Journal):
    """Unassignments free_address could not make at Packet, owed by later actions."""

    SUBDIR = UNASSIGN_DIR

    def range_dir(self, deploy_id: str) -> str:
        return os.path.join(self.dir, validate.uuid(deploy_id, "DEPLOY_ID"))

    def record(self, deploy_id: str, ip: object, data: Dict[str, Any]) -> str:
        """Durably record that ``ip`` of ``deploy_id`` must be unassigned (replacing any older
        entry of it); returns its path. Written under a temporary name, fsynced, renamed into
        place, and the directories fsynced: once this returns, a crash cannot lose it."""
        address = validate.ipv4(ip, "IP")
        directory = self.range_dir(deploy_id)
        final = os.path.join(directory, str(address))
        temp = os.path.join(directory, f".{address}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        body = dict(data, reservation=validate.uuid(deploy_id, "DEPLOY_ID"), ip=str(address),
                    created=time.time(), pid=os.getpid())
        fd = -1
        for _attempt in range(3):  # another action may remove the emptied directory meanwhile
            for folder in (os.path.dirname(self.dir), self.dir, directory):
                _ensure_dir(folder)
            try:
                fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             LEASE_MODE)
                break
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StateError(f"cannot write {temp}: {err.strerror}") from None
        if fd < 0:
            raise StateError(f"cannot write {temp}: its directory keeps disappearing")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # so a cleanup never takes it for a dead one's
            os.write(fd, _json().dumps(body, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
            os.rename(temp, final)
            for folder in (directory, self.dir, os.path.dirname(self.dir)):
                _fsync_dir(folder)
        except OSError as err:
            _unlink_quietly(temp)
            raise StateError(f"cannot write {final}: {err.strerror}") from None
        finally:
            os.close(fd)
        return final

    def reservations(self) -> List[str]:
        """The reservations with entries (names that are not UUIDs ignored), oldest first."""
        try:
            names = [n for n in os.listdir(self.dir) if validate.is_uuid(n)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise StateError(f"cannot read {self.dir}: {err.strerror}") from None

        def age(name: str) -> float:
            try:
                return os.stat(os.path.join(self.dir, name)).st_mtime
            except OSError:
                return 0.0

        return sorted(names, key=age)

    def pending(self, deploy_id: str) -> Set[ipaddress.IPv4Address]:
        """The addresses of ``deploy_id`` whose unassignment is owed."""
        return _addresses_in(self.range_dir(deploy_id), f"the unassignments of {deploy_id}")

    def take(self, deploy_id: str) -> Iterator[UnassignEntry]:
        """The entries of ``deploy_id`` no other process is completing, each yielded locked by
        us (:meth:`done` or :meth:`UnassignEntry.close` it)."""
        directory = self.range_dir(deploy_id)
        _drop_unlocked(directory, lambda n: n.startswith(".") and n.endswith(".tmp"))
        for address in sorted(self.pending(deploy_id)):
            path = os.path.join(directory, str(address))
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # writable: NFS locks need it
            except OSError:
                continue  # completed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # another action is completing it
            try:
                if os.fstat(fd).st_nlink == 0:
                    os.close(fd)
                    continue  # completed meanwhile
                raw = os.read(fd, 1 << 16).decode("utf-8", "replace")
                mtime = os.fstat(fd).st_mtime
            except OSError:
                os.close(fd)
                continue
            try:
                data = _json().loads(raw or "{}")
            except ValueError:
                data = {}  # the path alone says what to unassign
            yield self._held(UnassignEntry(validate.uuid(deploy_id, "DEPLOY_ID"), address, path,
                                           data if isinstance(data, dict) else {}, fd, mtime))

    def done(self, entry: UnassignEntry) -> None:
        """The unassignment is made (or no longer owed): remove the entry, then its lock."""
        try:
            if _same_file(entry.path, entry.fd):  # not recorded anew meanwhile
                _unlink_quietly(entry.path)
        finally:
            entry.close()
        _rmdir_quietly(os.path.dirname(entry.path))

    def discard(self, deploy_id: str, ip: object) -> bool:
        """Drop the entry of ``ip``, if any (its unassignment was just made); False if none."""
        path = os.path.join(self.range_dir(deploy_id), str(validate.ipv4(ip, "IP")))
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StateError(f"cannot remove {path}: {err.strerror}") from None
        _rmdir_quietly(os.path.dirname(path))
        return True

    def remove_range(self, deploy_id: str) -> int:
        """Drop every entry of ``deploy_id`` (its block is released); the count dropped."""
        removed = sum(1 for ip in self.pending(deploy_id) if self.discard(deploy_id, ip))
        directory = self.range_dir(deploy_id)
        _drop_unlocked(directory, lambda n: n.startswith(".") and n.endswith(".tmp"))
        _rmdir_quietly(directory)
        return removed


class LocalState:
    """The driver's local state for one action: its leases, its register journal and the
    unassignments it owes. Leaving the ``with`` block unlocks whatever the action still
    holds (see the module's docstring); nothing is removed."""

    def __init__(self, state_dir: str) -> None:
        self.leases = LeaseStore(state_dir)
        self.journal = PendingJournal(state_dir)
        self.unassigns = UnassignJournal(state_dir)

    def __enter__(self) -> LocalState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for store in (self.leases, self.journal, self.unassigns):
            while store.held:
                store.held.pop().close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (or gone): fine


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
