"""Fault kinds injected through the Packet emulator's admin API, and a pool of emulators so
fault cases can run side by side without sharing faults."""

from __future__ import annotations

import queue
import secrets
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from packet_lab.packet.admin import AdminClient
from packet_lab.packet.emulator import PacketEmulator
from reliability.relsupport import count

READ_TIMEOUT = 0.8  # small, but well above an answer's time on a loaded 2-core box
RETRIES = 3
MAX_RETRY_AFTER = 1.0
RUN_BOUND_S = 15.0  # no faulted run may take longer than this (retries are bounded)

# name -> (fault specs added in order, "recover" = the run must succeed, "fail" = it must
# fail cleanly). Specs get method/path added per API call.
FAULT_KINDS: Dict[str, Tuple[List[Dict[str, Any]], str]] = {
    "429_retry_after": ([{"status": 429, "retry_after": 1, "count": 1}], "recover"),
    "5xx_burst": ([{"status": 500, "count": 1}, {"status": 502, "count": 1},
                   {"status": 503, "count": 1}], "recover"),
    "read_timeout": ([{"latency": READ_TIMEOUT * 3, "count": 1}], "recover"),
    "slow_answers": ([{"latency": READ_TIMEOUT / 3, "count": 3}], "recover"),
    "dropped_connection": ([{"drop": True, "count": 1}], "recover"),
    "lost_answer": ([{"drop_after": True, "count": 1}], "recover"),
    "429_persistent": ([{"status": 429, "retry_after": "0", "count": 1000}], "fail"),
    "503_persistent": ([{"status": 503, "count": 1000}], "fail"),
    "drop_persistent": ([{"drop": True, "count": 1000}], "fail"),
    "timeout_persistent": ([{"latency": READ_TIMEOUT * 3, "count": 1000}], "fail"),
}


@dataclass
class Cloud:
    """One emulator seeded with a token, a project and three devices."""

    emulator: PacketEmulator
    admin: AdminClient
    token: str
    project_id: str
    device_ids: Tuple[str, ...]

    @property
    def url(self) -> str:
        return self.emulator.url

    def inject(self, specs: Sequence[Dict[str, Any]], method: str, path: str) -> int:
        for spec in specs:
            self.admin.fault(method=method, path=path, **spec)
        count("faults", len(specs))
        return len(specs)

    def api_requests(self) -> List[Dict[str, Any]]:
        return [r for r in self.admin.requests() if not r["path"].startswith("/_emulator")]

    def state(self) -> Dict[str, Any]:
        return self.admin.state()

    # the shape of the ``packet`` fixture, for helpers written against it
    def requests(self) -> List[Dict[str, Any]]:
        return self.admin.requests()

    def clear_requests(self) -> None:
        self.admin.clear_requests()


def new_cloud() -> Cloud:
    token = "rel-" + secrets.token_hex(12)
    project = str(uuid.uuid4())
    devices = tuple(str(uuid.uuid4()) for _ in range(3))
    emulator = PacketEmulator(tokens=[token], projects=[project],
                              devices=[f"{d}@{project}" for d in devices]).start()
    return Cloud(emulator, AdminClient(emulator.url), token, project, devices)


class CloudPool:
    """A few emulators, each lent to one case at a time and reset before it."""

    def __init__(self, size: int) -> None:
        self.clouds = [new_cloud() for _ in range(size)]
        self.free: queue.Queue = queue.Queue()
        for cloud in self.clouds:
            self.free.put(cloud)

    @contextmanager
    def lend(self) -> Iterator[Cloud]:
        cloud = self.free.get()
        try:
            cloud.admin.reset()
            cloud.admin.clear_faults()
            cloud.admin.clear_requests()
            yield cloud
        finally:
            cloud.admin.clear_faults()
            self.free.put(cloud)

    def close(self) -> None:
        stoppers = [threading.Thread(target=c.emulator.stop) for c in self.clouds]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
