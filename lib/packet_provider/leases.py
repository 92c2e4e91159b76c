"""Local state of the packet IPAM driver: address leases and the pending-reservation journal.

Leases keep the layout of the old Ruby driver, so an upgrade keeps every existing lease::

    <ipam_state_dir>/packet/<DEPLOY_ID>/<IP>

A lease is claimed by creating its file with ``O_CREAT | O_EXCL``: of any number of
concurrent claims of one address exactly one succeeds, whatever process makes it. Any file
named after an address counts as a lease, whatever it holds (the Ruby driver's files too).

The journal (``<ipam_state_dir>/packet/.pending/<marker>.json``) records a reservation request
before it is sent. The process that sends it holds an exclusive ``flock`` on its entry for its
whole life, and removes the entry only once its answer has reached oned. An entry that nobody
holds is therefore the trace of a register killed after (or while) it asked Packet for
addresses: the next action finds the marked reservation and releases it (see
:mod:`packet_provider.ipam`). DEPLOY_ID and IP are validated before they become paths.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Set

from . import validate
from .errors import ProviderError, StateError

DRIVER_DIR = "packet"
PENDING_DIR = ".pending"
DIR_MODE = 0o750
LEASE_MODE = 0o640
PENDING_MODE = 0o600


def _ensure_dir(path: str, mode: int = DIR_MODE) -> None:
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as err:
        raise StateError(f"cannot create the state directory {path}: {err.strerror}") from None


class LeaseStore:
    """The lease files of every packet address range under one state directory."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, DRIVER_DIR)

    def range_dir(self, deploy_id: str) -> str:
        return os.path.join(self.root, validate.uuid(deploy_id, "DEPLOY_ID"))

    def path(self, deploy_id: str, ip: object) -> str:
        return os.path.join(self.range_dir(deploy_id), str(validate.ipv4(ip, "IP")))

    def claim(self, deploy_id: str, ip: object, note: str = "") -> bool:
        """Create the lease of ``ip``; False when it already exists (someone holds it)."""
        directory = self.range_dir(deploy_id)
        path = self.path(deploy_id, ip)
        _ensure_dir(directory)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         LEASE_MODE)
        except FileExistsError:
            return False
        except OSError as err:
            raise StateError(f"cannot write the lease {path}: {err.strerror}") from None
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.write(fd, f"{stamp} {note}".strip().encode() + b"\n")
        finally:
            os.close(fd)
        return True

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
        return os.path.lexists(self.path(deploy_id, ip))

    def leased(self, deploy_id: str) -> Set[ipaddress.IPv4Address]:
        """The addresses of a range with a lease file (names that are not addresses ignored)."""
        found: Set[ipaddress.IPv4Address] = set()
        try:
            names = os.listdir(self.range_dir(deploy_id))
        except FileNotFoundError:
            return found
        except OSError as err:
            raise StateError(f"cannot read the leases of {deploy_id}: {err.strerror}") from None
        for name in names:
            try:
                found.add(ipaddress.IPv4Address(name))
            except ValueError:
                continue
        return found

    def remove_range(self, deploy_id: str) -> int:
        """Remove every lease of a range and its directory (if then empty); the count removed."""
        directory = self.range_dir(deploy_id)
        removed = 0
        for ip in self.leased(deploy_id):
            if self.release(deploy_id, ip):
                removed += 1
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise StateError(f"cannot remove {directory}: {err.strerror}") from None
        return removed


@dataclass
class PendingEntry:
    """A journal entry: one reservation request whose answer has not yet reached oned."""

    marker: str
    path: str
    data: Dict[str, Any]
    fd: int = -1
    mtime: float = 0.0

    @property
    def project(self) -> str:
        return str(self.data.get("project") or "")

    @property
    def token(self) -> Optional[str]:
        token = self.data.get("token")
        return token if isinstance(token, str) and token else None

    @property
    def created(self) -> float:
        try:
            return float(self.data.get("created") or 0)
        except (TypeError, ValueError):
            return 0.0

    @property
    def last_checked(self) -> Optional[float]:
        """When recovery last looked for its reservation (None: never)."""
        return self.mtime if self.mtime - self.created > 1.0 else None

    def checked(self) -> None:
        """Note that the entry was looked at now (its mtime), so it is not re-checked at once."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def close(self) -> None:
        """Drop the lock (the entry stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PendingJournal:
    """Reservation requests in flight, each locked by the process that made it."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, DRIVER_DIR, PENDING_DIR)

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
            os.write(fd, json.dumps(body, sort_keys=True).encode())
            os.fsync(fd)
            os.rename(temp, final)
        except OSError as err:
            os.close(fd)
            _unlink_quietly(temp)
            raise StateError(f"cannot write the journal {final}: {err.strerror}") from None
        return PendingEntry(marker, final, body, fd)

    def finish(self, entry: PendingEntry) -> None:
        """The request's outcome is settled: remove the entry, then drop its lock."""
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StateError(f"cannot remove the journal {entry.path}: {err.strerror}") from None
        finally:
            entry.close()

    def busy(self) -> bool:
        """Whether there is any entry at all (cheap: one directory read)."""
        try:
            return bool(os.listdir(self.dir))
        except OSError:
            return False

    def names(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(self.dir)
                          if n.endswith(".json") and not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise StateError(f"cannot read the journal {self.dir}: {err.strerror}") from None

    def _drop_stale_temps(self) -> None:
        """Remove temporary entries of processes that died before sending their request."""
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith(".") and n.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _unlink_quietly(path)
            except OSError:
                pass  # its owner is alive and about to rename it
            finally:
                os.close(fd)

    def abandoned(self) -> Iterator[PendingEntry]:
        """Entries whose owner is gone, each yielded locked by us (close or finish it)."""
        self._drop_stale_temps()
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
                data = json.loads(os.read(fd, 1 << 16).decode() or "{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                marker = validate.uuid(data.get("marker"), "request marker")
                mtime = os.fstat(fd).st_mtime
            except (ValueError, OSError, ProviderError):
                # unreadable or half-written entry of a dead process: nothing to recover from
                _unlink_quietly(path)
                os.close(fd)
                continue
            yield PendingEntry(marker, path, data, fd, mtime)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
