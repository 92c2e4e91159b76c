"""Upstream's Ruby implementation (OpenNebula 5.12.13's ``ipam/packet`` and
``hooks/alias_ip``), run beside ours on the same input and the same emulators.

tests/real_one builds OpenNebula into /var/cache/opennebula-5.12; the Ruby scripts also need
the gems of the vendored Packet client (Debian: ruby-faraday, ruby-faraday-middleware,
ruby-activesupport) and Nokogiri. The client's API URL is fixed, so a preloaded file
(``upstream_packet_url.rb``) points it at the emulator. Each run gets its own
``ONE_LOCATION`` (the build's ``lib`` and ``share``, a fresh ``var``) so that upstream's lease
files and logs stay apart from ours.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

HERE = Path(__file__).resolve().parent
UPSTREAM_CACHE = Path("/var/cache/opennebula-5.12")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
GEM_HINT = ("apt-get install ruby-faraday ruby-faraday-middleware ruby-activesupport "
            "ruby-nokogiri")


def build() -> Optional[Path]:
    """The installed tree of the cached OpenNebula 5.12 build, or None."""
    found = sorted(p for p in UPSTREAM_CACHE.glob("install-*") if p.is_dir())
    return found[-1] if found else None


class Upstream:
    """A ``ONE_LOCATION`` of upstream's scripts under ``scratch``; ``reason`` says why they
    cannot run here ("" when they can)."""

    def __init__(self, scratch: Path, api_url: str) -> None:
        self.tree = build()
        self.location = scratch / "upstream-one"
        self.state = self.location / "var" / "ipam_state"
        self.env: Dict[str, str] = {}
        self.reason = self._prepare(api_url)

    def _prepare(self, api_url: str) -> str:
        if self.tree is None:
            return f"no built OpenNebula 5.12 under {UPSTREAM_CACHE} (tests/real_one builds it)"
        if shutil.which("ruby") is None:
            return "ruby is not installed"
        (self.location / "var").mkdir(parents=True, exist_ok=True)
        for part in ("lib", "share", "etc"):
            link = self.location / part
            if not link.exists() and (self.tree / part).exists():
                link.symlink_to(self.tree / part)
        self.env = {"PATH": SYSTEM_PATH, "ONE_LOCATION": str(self.location),
                    "UPSTREAM_ONE_TREE": str(self.tree), "PACKET_API_URL": api_url,
                    "RUBYOPT": f"-r{HERE / 'upstream_packet_url.rb'}"}
        probe = subprocess.run(["ruby", "-e", "require 'packet'; require 'nokogiri'"],
                               capture_output=True, text=True, env=self.env, check=False,
                               timeout=60)
        if probe.returncode != 0:
            text = probe.stderr
            missing = (text.split("cannot load such file -- ", 1)[1].split()[0]
                       if "cannot load such file" in text else text.strip()[-120:])
            return f"its Ruby libraries do not load ({missing}): {GEM_HINT}"
        return ""

    def script(self, *parts: str) -> Path:
        return self.tree / "var" / "remotes" / Path(*parts)

    def run(self, argv_tail: list, stdin: bytes, extra_env: Optional[Dict[str, str]] = None,
            name: str = "") -> subprocess.CompletedProcess:
        """Run one upstream script; a failure is an error (the comparison needs the work
        done), with the script's last words."""
        proc = subprocess.run([str(a) for a in argv_tail], input=stdin, capture_output=True,
                              env=dict(self.env, **(extra_env or {})), check=False, timeout=120)
        if proc.returncode != 0:
            text = proc.stderr.decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"upstream {name or argv_tail[0]} failed: {text}")
        return proc

    def missing(self, bench: Any, what: str) -> bool:
        """True (with the reason recorded and printed) when upstream's ``what`` cannot run."""
        if not self.reason:
            return False
        print(f"bench: upstream's {what} not run: {self.reason}", file=sys.stderr)
        bench.record(f"upstream {what} (OpenNebula 5.12)", 0, "not run", note=self.reason)
        return True

    @staticmethod
    def pair(bench: Any, name: str, ours: Callable[[], Any], theirs: Callable[[], Any],
             setup: Optional[Callable[[], Any]] = None,
             base_setup: Optional[Callable[[], Any]] = None, what: str = "") -> None:
        """``ours`` (A) and ``theirs`` (B) in turn on the same work, and how many times
        less time ours takes (the median of B/A over the pairs)."""
        row = bench.pair(name, ours, f"{name}: upstream", theirs, setup=setup,
                         base_setup=base_setup, note="A = ours, B = upstream's",
                         base_note=f"OpenNebula 5.12.13's {what}, same input, in turn")
        if row is not None and row.get("ratio"):
            bench.record(f"{name}: times faster", 1 / row["ratio"], "x",
                         note="median of upstream/ours over the pairs")
