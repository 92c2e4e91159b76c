"""Running an emulator's server in a background thread, shared by both emulators."""

from __future__ import annotations

import fcntl
import os
import socketserver
import tempfile
import threading
from typing import Any, Optional


def write_state_file(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file beside it, fsync, rename),
    owner-only: emulator state files can hold tokens."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".emulator-state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class BackgroundServer:
    """``start()`` serves in a daemon thread, ``stop()`` shuts down and closes, and the
    object is a context manager. Subclasses build their server in ``bind()``."""

    thread_name = "emulator"
    _server: Optional[socketserver.BaseServer] = None
    _thread: Optional[threading.Thread] = None
    _state_lock: int = -1

    def lock_state_file(self, path: Optional[str]) -> None:
        """Hold ``<path>.lock`` while serving: two emulators on one state file would each
        overwrite the other's changes. ValueError (one line) when another one holds it."""
        if not path or self._state_lock >= 0:
            return
        lock_path = f"{path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise ValueError(f"cannot open {lock_path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"state file {path} is in use by another emulator "
                             f"(pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._state_lock = fd

    def _unlock_state_file(self) -> None:
        fd, self._state_lock = self._state_lock, -1
        if fd >= 0:
            os.close(fd)

    def bind(self) -> Any:
        raise NotImplementedError

    def start(self) -> Any:
        """Serve in a background thread; returns self."""
        self.bind()
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            close_connections = getattr(server, "close_connections", None)
            if close_connections is not None:
                close_connections()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self._unlock_state_file()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
