"""The fault-injection model both emulators share.

A :class:`Fault` says which requests it hits (an upper-case ``method`` and a ``target``
prefix: the URL path for the Packet emulator, the XML-RPC method name for the oned emulator),
how many (``count`` of them, ``-1`` for every one, or a ``rate`` between 0 and 1 drawn from a
seeded generator) and what happens to them: a ``latency`` first, then at most one of an
answer with an error ``status`` (HTTP) or ``code`` (oned's failure answer), ``drop`` (close
without answering, before acting) or ``drop_after`` (act, then close: a lost answer).
:class:`Faults` is the thread-safe list a server consults once per request.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

ALWAYS = -1


@dataclass
class Fault:
    method: str = ""
    target: str = ""
    status: Optional[int] = None
    code: Optional[int] = None
    message: str = "injected failure"
    drop: bool = False
    drop_after: bool = False
    latency: float = 0.0
    count: Optional[int] = 1
    rate: Optional[float] = None
    seed: Any = None
    retry_after: Optional[str] = None  # HTTP only: the Retry-After header of the answer
    body: Any = None  # HTTP only: the answer's JSON body instead of the default
    hits: int = 0
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if sum((self.status is not None or self.code is not None, self.drop,
                self.drop_after)) > 1:
            raise ValueError("give at most one of an error answer, drop or drop_after")
        if self.rate is not None:
            self.count = None
        self._random = random.Random(self.seed)  # noqa: S311 - not for security

    @property
    def fails(self) -> bool:
        """Whether the request gets an error answer or no answer (not just a delay)."""
        return self.drop or self.status is not None or self.code is not None

    def matches(self, method: str, target: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.target and not target.startswith(self.target):
            return False
        if self.count is not None:
            return self.count != 0
        return self._random.random() < (self.rate or 0.0)

    def describe(self) -> Dict[str, Any]:
        """The fault as the Packet emulator's admin API shows it."""
        return {"id": self.id, "status": self.status, "count": self.count, "rate": self.rate,
                "method": self.method or None, "path": self.target or None,
                "retry_after": self.retry_after, "latency": self.latency, "drop": self.drop,
                "drop_after": self.drop_after, "body": self.body, "hits": self.hits}

    def kind(self) -> str:
        if self.drop:
            return "drop"
        if self.drop_after:
            return "drop_after"
        if self.status is not None:
            return str(self.status)
        if self.code is not None:
            return f"error 0x{self.code:x}"
        return "latency"


class Faults:
    """The faults a server holds; :meth:`take` finds the one a request meets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: List[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.items.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.items = []

    def take(self, method: str, target: str) -> Optional[Fault]:
        """The first fault matching this request, one of its ``count`` used up."""
        with self._lock:
            for fault in self.items:
                if fault.matches(method, target):
                    fault.hits += 1
                    if fault.count is not None and fault.count > 0:
                        fault.count -= 1
                    self.items = [f for f in self.items if f.count != 0]
                    return fault
        return None

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self.items]
