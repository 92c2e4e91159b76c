"""alias_sdnat post and clean on a host that already carries N other VMs' aliases.

The driver runs as the VMM driver runs it, inside a network namespace created for the bench,
with the host's own python3 (PATH without the development virtualenv), the VM's VNM view on
stdin. Each figure is the wall time of one action for a VM with two aliases. As root the
processes each action spawns are counted with PATH wrappers in a separate run, so that
counting adds nothing to the times. Then the same as oneadmin through real sudo (when the
machine allows it: root, sudo, /usr/bin/python3), with the install.sh --node drop-in (one
transaction) and with OpenNebula's stock sudoers only (single iptables commands); there the
count is the driver's own ("N iptables run(s)": sudo processes, the mode probe included).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "remotes" / "vnm" / "alias_sdnat"
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import hostuser  # noqa: E402
from fixtures.vmxml import vm_xml  # noqa: E402
from fixtures.vnmview import vnm_view  # noqa: E402
from packet_provider.vnm import nat  # noqa: E402

SIZES = (1, 10, 100, 1000)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def seed(n: int) -> str:
    """A restore script putting ``n`` other VMs with one alias each on the host."""
    lines = ["*nat"] + [f":{d} - [0:0]" for d in nat.DISPATCH.values()]
    lines += [f'-A {b} -m comment --comment "alias_sdnat" -j {d}'
              for b, d in nat.DISPATCH.items()]
    for vm_id in range(1, n + 1):
        ip = f"100.{64 + vm_id // 65536}.{vm_id // 256 % 256}.{vm_id % 256}"
        m = nat.Mapping(1, nat.ipaddress.IPv4Address(ip),
                        nat.ipaddress.IPv4Address(f"10.{vm_id // 256 % 256}.{vm_id % 256}.2"))
        for builtin, specs in nat.rules_for(vm_id, [m]).items():
            chain = nat.vm_chain(vm_id, builtin)
            lines.append(f":{chain} - [0:0]")
            lines += [f"-A {chain} {spec}" for spec in specs]
        for builtin, dispatcher in nat.DISPATCH.items():
            lines.append(f'-A {dispatcher} -m comment --comment "alias_sdnat vm={vm_id}" '
                         f"-j {nat.vm_chain(vm_id, builtin)}")
    return "\n".join(lines + ["COMMIT", ""])


def run(bench) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("bench_nat: skipped: needs root and iproute2 for a network namespace",
              file=sys.stderr)
        return
    ns = f"pb{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    bench.on_exit(lambda: subprocess.run(["ip", "netns", "del", ns], check=False))
    prefix = ["ip", "netns", "exec", ns]
    env = {"PATH": SYSTEM_PATH, "ALIAS_SDNAT_LOCK": str(bench.tmp / "alias_sdnat.lock")}
    stdin = base64.b64encode(vnm_view(vm_xml(999999, nics=[(0, "10.255.0.2")], aliases=[
        (1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")]))) + b"\n"

    def action(name: str, run_env: dict = env) -> None:
        argv = [*prefix, str(DRIVER / name)] + (["one-999999"] if name == "post" else [])
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=run_env,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed: {proc.stderr.decode().strip()}")

    counter = bench.tmp / "spawned"
    shims = _shims(bench.tmp / "shims", counter)
    counted_env = dict(env, PATH=f"{shims}:{SYSTEM_PATH}")
    bench.measure("nat: ip netns exec true (harness cost, for scale)",
                  lambda: subprocess.run([*prefix, "true"], check=True))
    for n in SIZES:
        # without --noflush: the nat table becomes exactly the seed
        subprocess.run([*prefix, "iptables-restore"], input=seed(n), text=True, check=True)
        rules = len([line for line in _save(prefix).splitlines() if line.startswith("-A ")])
        bench.measure(f"nat: post, {n} other aliases on the host", lambda: action("post"),
                      setup=lambda: action("clean"), note=f"{rules} nat rules before")
        bench.measure(f"nat: clean, {n} other aliases on the host", lambda: action("clean"),
                      setup=lambda: action("post"))
        for name in ("post", "clean"):
            counter.write_text("")
            action(name, counted_env)
            spawned = len(counter.read_text().split())
            bench.record(f"nat: processes spawned by {name}, N={n}", spawned, "processes",
                         note=" ".join(sorted(set(counter.read_text().split()))))
    reason = hostuser.missing_reason()
    if reason:
        print(f"bench_nat: as oneadmin skipped: {reason}", file=sys.stderr)
        return
    for mode in ("dropin", "stock"):
        _as_oneadmin(bench, prefix, stdin, mode)


def _as_oneadmin(bench, prefix: List[str], stdin: bytes, mode: str) -> None:
    """post and clean as oneadmin through sudo, with the ``mode``'s sudoers."""
    text = hostuser.stock_rule()
    if mode == "dropin":
        text += hostuser.plugin_dropin(bench.tmp / "node")
    label = "drop-in (transaction)" if mode == "dropin" else "stock sudoers"
    with hostuser.remotes_tree() as tree, hostuser.sudoers(f"bench-{mode}", text):
        def action(name: str, count: Callable[[int], None] = lambda _: None) -> None:
            argv = [*prefix, *hostuser.as_user([str(tree / "vnm" / "alias_sdnat" / name)])]
            argv += ["one-999999"] if name == "post" else []
            proc = subprocess.run(argv, input=stdin, capture_output=True,
                                  env={"PATH": "/usr/bin:/bin"}, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed: {proc.stderr.decode().strip()}")
            found = re.search(rb"(\d+) iptables run\(s\)", proc.stderr)
            count(int(found.group(1)) if found else -1)

        for n in (1, 100):
            subprocess.run([*prefix, "iptables-restore"], input=seed(n), text=True, check=True)
            bench.measure(f"nat: oneadmin, {label}: post, {n} other aliases",
                          lambda: action("post"), setup=lambda: action("clean"))
            bench.measure(f"nat: oneadmin, {label}: clean, {n} other aliases",
                          lambda: action("clean"), setup=lambda: action("post"))
        for name, before in (("post", "clean"), ("post", "post"), ("clean", "post")):
            action(before)
            runs: List[int] = []
            action(name, runs.append)
            what = f"{name} after {before}" if name == before else name
            bench.record(f"nat: oneadmin, {label}: sudo runs by {what}", runs[0], "processes",
                         note="each sudo also starts the iptables command it runs")


def _save(prefix: List[str]) -> str:
    return subprocess.run([*prefix, "iptables-save", "-t", "nat"], capture_output=True,
                          text=True, check=True).stdout


def _shims(directory: Path, counter: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("iptables-save", "iptables-restore"):
        real = shutil.which(name, path=SYSTEM_PATH)
        shim = directory / name
        shim.write_text(f'#!/bin/sh\necho {name} >> "{counter}"\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return directory
