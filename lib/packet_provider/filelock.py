"""Waiting a bounded time for an exclusive ``flock`` (standard library only: hosts use it)."""

from __future__ import annotations

import fcntl
import time
from typing import Callable, Optional


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
