"""Packet API client round trips against the emulator on loopback."""

from __future__ import annotations

import sys
import uuid

from packet_lab.packet.emulator import PacketEmulator
from packet_provider import packet as api


def run(bench) -> None:
    token = "bench-" + uuid.uuid4().hex
    project = str(uuid.uuid4())
    device = str(uuid.uuid4())
    emulator = PacketEmulator(tokens=[token], projects=[project],
                              devices=[f"{device}@{project}"]).start()
    bench.on_exit(emulator.stop)
    client = api.PacketClient(emulator.url, token, retries=0)
    bench.on_exit(client.close)
    res = client.reserve(project, 8, facility="ams1")
    ip = res.first_address
    bench.measure("client: get reservation (1 round trip)", lambda: client.get_reservation(res.id),
                  repeat=max(bench.repeat, 50), note="keep-alive session, emulator on loopback")
    bench.measure("client: available addresses", lambda: client.available(res.id),
                  repeat=max(bench.repeat, 50))

    def assign_unassign() -> None:
        client.unassign(client.assign(device, ip).id)

    bench.measure("client: assign + unassign", assign_unassign, repeat=max(bench.repeat, 30))

    def reserve_release() -> None:
        client.release(client.reserve(project, 4, facility="ams1").id)

    bench.measure("client: reserve + release (marked request)", reserve_release,
                  repeat=max(bench.repeat, 30))
    print(f"bench_packet: {client.calls} API calls made", file=sys.stderr)
