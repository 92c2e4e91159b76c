"""The packet IPAM driver's five actions, each run as one_ipam runs it (a new process, base64
on stdin) against the Packet emulator on loopback: median wall time per action."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import uuid
from pathlib import Path

from packet_lab.oned.one_ipam import action_data, run_action, template_vector
from packet_lab.packet.emulator import PacketEmulator
from packet_provider import packet as api
from packet_provider.ipam.leases import LeaseStore

ROOT = Path(__file__).resolve().parents[1]
REMOTES = ROOT / "remotes"


def run(bench) -> None:
    token = "bench-" + uuid.uuid4().hex
    project, device = str(uuid.uuid4()), str(uuid.uuid4())
    emulator = PacketEmulator(tokens=[token], projects=[project],
                              devices=[f"{device}@{project}"]).start()
    bench.on_exit(emulator.stop)
    client = api.PacketClient(emulator.url, token, retries=0)
    bench.on_exit(client.close)
    base = bench.tmp / "ipam"
    state = base / "state"
    base.mkdir(parents=True, exist_ok=True)
    config = base / "packet_provider.yaml"
    config.write_text(f"api_url: {emulator.url}\nipam_state_dir: {state}\n"
                      f"log_dir: {base / 'log'}\nretries: 1\nbackoff: 0.01\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "PACKET_"))}
    env.update(PYTHONPATH=str(ROOT / "lib"), PACKET_PROVIDER_CONFIG=str(config),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    leases = LeaseStore(str(state))

    def act(action, ar, address=None):
        result = run_action(REMOTES, action, 1, action_data(ar, address), env=env)
        if not result.ok:
            raise RuntimeError(f"{action}: {result.message}")
        return result

    user_ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
               "PACKET_PROJECT": project, "FACILITY": "ams1", "PACKET_TOKEN": token}
    ar = template_vector(act("REGISTER_ADDRESS_RANGE", user_ar).stdout, "AR")
    rid, first = ar["DEPLOY_ID"], ipaddress.IPv4Address(ar["IP"])
    note = "new process per action, emulator on loopback"

    bench.measure("ipam: register_address_range (8)", lambda: act("REGISTER_ADDRESS_RANGE",
                                                                  user_ar), note=note)

    def no_leases() -> None:
        shutil.rmtree(state / "packet" / rid, ignore_errors=True)

    bench.measure("ipam: get_address", lambda: act("GET_ADDRESS", ar, {"SIZE": "1"}),
                  setup=no_leases, note=note)
    bench.measure("ipam: allocate_address", lambda: act("ALLOCATE_ADDRESS", ar,
                                                        {"IP": str(first), "SIZE": "1"}),
                  setup=no_leases, note=note)

    def leased_and_assigned() -> None:
        leases.release(rid, first)  # left by the allocate_address runs
        leases.claim(rid, first).commit()
        client.assign(device, first)

    bench.measure("ipam: free_address (leased, assigned)",
                  lambda: act("FREE_ADDRESS", ar, {"IP": str(first), "SIZE": "1"}),
                  setup=leased_and_assigned, note=note)
    holder = {}

    def fresh_range() -> None:
        res = client.reserve(project, 8, facility="ams1")
        holder["ar"] = dict(ar, DEPLOY_ID=res.id, IP=str(res.first_address))
        leases.claim(res.id, res.first_address).commit()
        client.assign(device, res.first_address)

    bench.measure("ipam: unregister_address_range (1 leftover)",
                  lambda: act("UNREGISTER_ADDRESS_RANGE", holder["ar"]), setup=fresh_range,
                  note=note)

    def refused() -> None:
        result = run_action(REMOTES, "GET_ADDRESS", 1, action_data(dict(ar, DEPLOY_ID="x"),
                                                                   {"SIZE": "1"}), env=env)
        assert not result.ok

    bench.measure("ipam: refused input (no API call)", refused,
                  note="start-up, parsing and the error block only")

    import subprocess

    python = sys.executable
    lib_env = dict(env)
    for name, code in (("ipam: import driver (no requests)", "import packet_provider.ipam.actions, "
                        "packet_provider.onexml, yaml"),
                       ("ipam: import driver + API client", "import packet_provider.ipam.actions, "
                        "packet_provider.onexml, yaml, packet_provider.packet")):
        bench.measure(name, lambda code=code: subprocess.run([python, "-c", code], check=True,
                                                             env=lib_env),
                      note="process start-up with the imports an action needs")
