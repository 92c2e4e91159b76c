"""alias_sdnat post and clean on a host that already carries N other VMs' aliases.

The driver runs as the VMM driver runs it, inside a network namespace created for the bench,
with the host's own python3 (PATH without the development virtualenv), the VM's VNM view on
stdin (with the HISTORY_RECORDS, ALIAS_IDS and ALIAS_ID elements of the real 5.12 view).
Each figure is the wall time of one action for a VM with two aliases, paired (run in turn,
the nat table reset to the same seed before each run) with OpenNebula 5.12's own Ruby
alias_sdnat driver from the built tree tests/real_one uses, when it is there and runs; else
with ``python3 -c pass`` in the namespace, and the output says why. As root the processes
each action spawns are counted with PATH wrappers in a separate run, so that counting adds
nothing to the times. Then the same as oneadmin through real sudo (when the machine allows
it: root, sudo, /usr/bin/python3), with the install.sh --node drop-in (one transaction) and
with OpenNebula's stock sudoers only (single iptables commands); there the count is the
driver's own ("N iptables run(s)": sudo processes, the mode probe included).
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
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "remotes" / "vnm" / "alias_sdnat"
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import hostuser  # noqa: E402
from fixtures.vmxml import vm_xml  # noqa: E402
from fixtures.vnmview import vnm_view  # noqa: E402
from packet_provider.vnm import nat  # noqa: E402

SIZES = (1, 10, 100, 1000)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
UPSTREAM_CACHE = Path("/var/cache/opennebula-5.12")
HISTORY = (b"<HISTORY_RECORDS><HISTORY><HOSTNAME>host1</HOSTNAME><DS_ID>0</DS_ID>"
           b"<VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>")


def view_xml() -> bytes:
    """The VNM view of VM 999999 (NIC0 with two aliases) in the real 5.12 shape: upstream's
    driver needs the history's VM_MAD, the parent's ALIAS_IDS and each alias's ALIAS_ID."""
    xml = vnm_view(vm_xml(999999, nics=[(0, "10.255.0.2")], aliases=[
        (1, 0, "203.0.113.1"), (2, 0, "203.0.113.2")]))
    xml = xml.replace(b"<NAME>NIC0</NAME>", b"<NAME>NIC0</NAME><ALIAS_IDS>1,2</ALIAS_IDS>", 1)
    for number, nic_id in enumerate((1, 2)):
        xml = xml.replace(f"<NIC_ID>{nic_id}</NIC_ID>".encode(),
                          f"<NIC_ID>{nic_id}</NIC_ID><ALIAS_ID>{number}</ALIAS_ID>".encode(), 1)
    return xml.replace(b"</VM>", HISTORY + b"</VM>", 1)


def upstream_driver() -> Optional[Path]:
    found = sorted(UPSTREAM_CACHE.glob("install-*/var/remotes/vnm/alias_sdnat"))
    return found[-1] if found else None


def seed(n: int) -> str:
    """A restore script putting ``n`` other VMs with one alias each on the host, as the
    driver leaves them (their markers and the index too)."""
    lines = ["*nat"] + [f":{d} - [0:0]" for d in nat.DISPATCH.values()] + [f":{nat.INDEX} - [0:0]"]
    lines += [f'-A {b} -m comment --comment "alias_sdnat" -j {d}'
              for b, d in nat.DISPATCH.items()]
    for vm_id in range(1, n + 1):
        ip = f"100.{64 + vm_id // 65536}.{vm_id // 256 % 256}.{vm_id % 256}"
        m = nat.Mapping(1, nat.ipaddress.IPv4Address(ip),
                        nat.ipaddress.IPv4Address(f"10.{vm_id // 256 % 256}.{vm_id % 256}.2"))
        lines.append(f":{nat.marker(m.alias_ip)} - [0:0]")
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
    stdin = base64.b64encode(view_xml()) + b"\n"

    def action(name: str, run_env: dict = env, directory: Path = DRIVER) -> None:
        argv = [*prefix, str(directory / name)] + (["one-999999"] if name == "post" else [])
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=run_env,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{directory.name}/{name} failed: {proc.stderr.decode().strip()}")

    upstream = upstream_driver()
    reason = _upstream_reason(upstream, prefix, seed(1), action)
    if reason:
        print(f"bench_nat: upstream's Ruby alias_sdnat not run: {reason}; the baseline is "
              "python3 -c pass in the namespace", file=sys.stderr)
    base_label = "upstream Ruby alias_sdnat (5.12)" if not reason else "python3 -c pass"

    counter = bench.tmp / "spawned"
    shims = _shims(bench.tmp / "shims", counter)
    counted_env = dict(env, PATH=f"{shims}:{SYSTEM_PATH}")
    bench.measure("nat: ip netns exec true (harness cost, for scale)",
                  lambda: subprocess.run([*prefix, "true"], check=True))
    for n in SIZES:
        text = seed(n)

        def reset(then: Optional[Callable[[], None]] = None, text: str = text) -> None:
            # without --noflush: the nat table becomes exactly the seed
            subprocess.run([*prefix, "iptables-restore"], input=text, text=True, check=True)
            if then is not None:
                then()

        def baseline(name: str) -> Callable[[], None]:
            if reason:
                return lambda: subprocess.run([*prefix, "python3", "-c", "pass"], check=True,
                                              env=env)
            return lambda: action(name, directory=upstream)

        reset()
        rules = len([line for line in _save(prefix).splitlines() if line.startswith("-A ")])
        bench.pair(f"nat: post, {n} other aliases on the host", lambda: action("post"),
                   f"nat: {base_label}: post, {n} other aliases", baseline("post"),
                   setup=reset, base_setup=reset, note=f"{rules} nat rules before")
        bench.pair(f"nat: clean, {n} other aliases on the host", lambda: action("clean"),
                   f"nat: {base_label}: clean, {n} other aliases", baseline("clean"),
                   setup=lambda: reset(lambda: action("post")),
                   base_setup=lambda: reset(None if reason else
                                            lambda: action("post", directory=upstream)))
        reset()
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


def _upstream_reason(upstream: Optional[Path], prefix: List[str], text: str,
                     action: Callable[..., None]) -> str:
    """Why upstream's driver cannot run here ("" when its post and clean work)."""
    if upstream is None:
        return f"no built OpenNebula 5.12 under {UPSTREAM_CACHE} (tests/real_one builds it)"
    if shutil.which("ruby") is None:
        return "ruby is not installed"
    subprocess.run([*prefix, "iptables-restore"], input=text, text=True, check=True)
    try:
        action("post", directory=upstream)
        action("clean", directory=upstream)
    except RuntimeError as err:
        return " ".join(str(err).split())[:200]
    return ""


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


if __name__ == "__main__":
    print(__doc__.strip())
    print("\nIt runs under the bench runner, as root:\n"
          "    .venv/bin/python bench/run.py --module bench_nat [--only 'nat: post'] "
          "[--repeat N] [--json PATH]\n"
          "(--json defaults to bench/results.json)")
