"""Running an emulator's server in a background thread, shared by both emulators."""

from __future__ import annotations

import socketserver
import threading
from typing import Any, Optional


class BackgroundServer:
    """``start()`` serves in a daemon thread, ``stop()`` shuts down and closes, and the
    object is a context manager. Subclasses build their server in ``bind()``."""

    thread_name = "emulator"
    _server: Optional[socketserver.BaseServer] = None
    _thread: Optional[threading.Thread] = None

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

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
