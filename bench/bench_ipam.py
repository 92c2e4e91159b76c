"""The packet IPAM driver's five actions as one_ipam runs them: a new process per action,
base64 on stdin, from a tree installed by install.sh into a temporary ONE_LOCATION with its
library compiled (install.sh byte-compiles it, as oneadmin meets an installed tree), against the
Packet emulator on loopback. Each action is paired with ``python3 -c pass`` on the same
interpreter, run in turn; the Packet API calls (the emulator's request log) and oned calls (a
counting listener at ONE_XMLRPC) of each action are counted, and one action's import and
teardown costs measured. Upstream's Ruby driver (OpenNebula 5.12's ipam/packet, see
upstream.py) does the same work beside ours, each pair run in turn: ours is A, upstream B, so
the A/B ratio below 1 is how much less time ours takes; when upstream cannot run, the output
says why."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

from packet_lab.oned.one_ipam import action_data, run_action, template_vector
from packet_lab.packet.admin import AdminClient
from packet_lab.packet.emulator import PacketEmulator
from packet_provider import packet as api
from packet_provider.ipam.leases import LeaseStore

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class CallCounter:
    """A TCP listener that counts the connections made to it (oned's XML-RPC endpoint for
    the action; every connection is closed unanswered)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.count = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/RPC2"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def install_tree(bench, python: str) -> Path:
    """install.sh into ``bench.tmp/one`` (the interpreter ``python`` for the frontend
    executables; install.sh compiles the library); the config stays the installed example
    (comments only), the emulator's URL comes from PACKET_API_URL."""
    one = bench.tmp / "one"
    (one / "etc").mkdir(parents=True, exist_ok=True)
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"),
           "ONE_LOCATION": str(one)}
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "--python", python],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"install.sh failed: {proc.stderr.strip()[-400:]}")
    return one


def run(bench) -> None:
    from run import pair_floor, record_process_costs  # bench/run.py, loaded as __main__ or run
    from upstream import Upstream

    python = sys.executable
    token = "bench-" + uuid.uuid4().hex
    project, device = str(uuid.uuid4()), str(uuid.uuid4())
    emulator = PacketEmulator(tokens=[token], projects=[project],
                              devices=[f"{device}@{project}"]).start()
    bench.on_exit(emulator.stop)
    admin = AdminClient(emulator.url)
    oned = CallCounter()
    bench.on_exit(oned.close)
    client = api.PacketClient(emulator.url, token, retries=0)
    bench.on_exit(client.close)
    one = install_tree(bench, python)
    remotes = one / "var" / "remotes"
    state = one / "var" / "ipam_state"
    env = {"PATH": f"{Path(python).parent}{os.pathsep}{SYSTEM_PATH}",
           "ONE_LOCATION": str(one), "PACKET_API_URL": emulator.url, "ONE_XMLRPC": oned.url}
    leases = LeaseStore(str(state))

    def act(action: str, ar: Dict[str, str], address: Optional[Dict[str, str]] = None):
        result = run_action(remotes, action, 1, action_data(ar, address), env=env)
        if not result.ok:
            raise RuntimeError(f"{action}: {result.message}")
        return result

    user_ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
               "PACKET_PROJECT": project, "FACILITY": "ams1", "PACKET_TOKEN": token}
    ar = template_vector(act("REGISTER_ADDRESS_RANGE", user_ar).stdout, "AR")
    rid, first = ar["DEPLOY_ID"], ipaddress.IPv4Address(ar["IP"])
    holder: Dict[str, Dict[str, str]] = {}

    def no_leases() -> None:
        shutil.rmtree(state / "packet" / rid, ignore_errors=True)

    def leased_and_assigned() -> None:
        leases.release(rid, first)  # left by the allocate_address runs
        leases.claim(rid, first).commit()
        client.assign(device, first)

    def fresh_range() -> None:
        res = client.reserve(project, 8, facility="ams1")
        holder["ar"] = dict(ar, DEPLOY_ID=res.id, IP=str(res.first_address))
        leases.claim(res.id, res.first_address).commit()
        client.assign(device, res.first_address)

    def refused() -> None:
        result = run_action(remotes, "GET_ADDRESS", 1, action_data(dict(ar, DEPLOY_ID="x"),
                                                                   {"SIZE": "1"}), env=env)
        assert not result.ok

    single = {"IP": str(first), "SIZE": "1"}
    actions: List[tuple] = [
        ("register_address_range (8)", lambda: act("REGISTER_ADDRESS_RANGE", user_ar), None,
         "REGISTER_ADDRESS_RANGE", lambda: (user_ar, None)),
        ("get_address", lambda: act("GET_ADDRESS", ar, {"SIZE": "1"}), no_leases,
         "GET_ADDRESS", lambda: (ar, {"SIZE": "1"})),
        ("allocate_address", lambda: act("ALLOCATE_ADDRESS", ar, single), no_leases,
         "ALLOCATE_ADDRESS", lambda: (ar, single)),
        ("free_address (leased, assigned)", lambda: act("FREE_ADDRESS", ar, single),
         leased_and_assigned, "FREE_ADDRESS", lambda: (ar, single)),
        ("unregister_address_range (1 leftover)",
         lambda: act("UNREGISTER_ADDRESS_RANGE", holder["ar"]), fresh_range,
         "UNREGISTER_ADDRESS_RANGE", lambda: (holder["ar"], None)),
        ("refused input (no API call)", refused, None, None, None),
    ]
    baseline = f"ipam baseline: {Path(python).name} -c pass"
    note = "installed tree, compiled; new process per action, emulator on loopback"
    for label, fn, setup, _, _ in actions:
        bench.pair(f"ipam: {label}", fn, baseline,
                   lambda: subprocess.run([python, "-c", "pass"], check=True, env=env),
                   setup=setup, note=note, base_note="same interpreter, in turn")
    pair_floor(bench, "ipam: floor, import requests (the API client, nothing run)", python,
               "requests", env=env)
    for label, fn, setup, _, _ in actions:
        _count_calls(bench, label, fn, setup, admin, oned)
    get = remotes / "ipam" / "packet" / "get_address"
    stdin = base64.b64encode(action_data(ar, {"SIZE": "1"}).encode()) + b"\n"
    record_process_costs(bench, "ipam: get_address", [str(get), "1"], stdin, env,
                         setup=no_leases)
    record_process_costs(bench, f"ipam baseline: {Path(python).name} -c 'print()'",
                         [python, "-c", "print()"], env=env)
    _against_upstream(bench, Upstream(bench.tmp, emulator.url), act, token, project, device,
                      client, leases)


def _count_calls(bench, label: str, fn: Callable[[], object],
                 setup: Optional[Callable[[], object]], admin: AdminClient,
                 oned: CallCounter) -> None:
    if not bench.wanted(f"ipam: {label}"):
        return
    if setup is not None:
        setup()
    admin.clear_requests()
    before = oned.count
    fn()
    calls = admin.requests()
    paths = " ".join(f"{c['method']} {c['path'].split('?')[0]}" for c in calls)
    bench.record(f"ipam: Packet API calls by {label}", len(calls), "calls", note=paths)
    bench.record(f"ipam: oned calls by {label}", oned.count - before, "calls")


def _against_upstream(bench, upstream, act: Callable, token: str, project: str, device: str,
                      client: api.PacketClient, leases: LeaseStore) -> None:
    """Each action, ours (A) and upstream's (B) in turn, on the same input and the same
    emulator; before each run, both lease directories are set to the same state."""
    if upstream.missing(bench, "Ruby packet IPAM driver"):
        return
    # PACKET_IP_TYPE given: upstream has no default for it
    user_ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
               "PACKET_PROJECT": project, "FACILITY": "ams1", "PACKET_IP_TYPE": "public_ipv4",
               "PACKET_TOKEN": token}
    ar = template_vector(act("REGISTER_ADDRESS_RANGE", user_ar).stdout, "AR")
    rid, first = ar["DEPLOY_ID"], ipaddress.IPv4Address(ar["IP"])
    upstream_leases = upstream.state / "packet" / rid
    single = {"IP": str(first), "SIZE": "1"}
    empty: Dict[str, Dict[str, str]] = {}

    def no_leases() -> None:
        shutil.rmtree(leases.range_dir(rid), ignore_errors=True)
        shutil.rmtree(upstream_leases, ignore_errors=True)

    def leased_and_assigned(ours: bool) -> Callable[[], None]:
        def setup() -> None:
            no_leases()
            if ours:
                leases.claim(rid, first).commit()
            else:
                upstream_leases.mkdir(parents=True, exist_ok=True)
                (upstream_leases / str(first)).touch()
            client.assign(device, first)
        return setup

    def empty_block() -> None:
        res = client.reserve(project, 8, facility="ams1")
        empty["ar"] = dict(ar, DEPLOY_ID=res.id, IP=str(res.first_address))

    cases = [
        ("register_address_range (8)", "register_address_range", lambda: (user_ar, None),
         None, None),
        ("get_address", "get_address", lambda: (ar, {"SIZE": "1"}), no_leases, no_leases),
        ("allocate_address", "allocate_address", lambda: (ar, single), no_leases, no_leases),
        ("free_address (leased, assigned)", "free_address", lambda: (ar, single),
         leased_and_assigned(True), leased_and_assigned(False)),
        ("unregister_address_range (empty block)", "unregister_address_range",
         lambda: (empty["ar"], None), empty_block, empty_block),
    ]
    for label, script, data, setup, base_setup in cases:
        def ours(script=script, data=data) -> None:
            act(script.upper(), *data())

        def theirs(script=script, data=data) -> None:
            stdin = base64.b64encode(action_data(*data()).encode()) + b"\n"
            upstream.run([upstream.script("ipam", "packet", script), "1"], stdin,
                         name=script)

        upstream.pair(bench, f"ipam vs upstream: {label}", ours, theirs, setup=setup,
                      base_setup=base_setup, what="ipam/packet")
