"""Shared helpers of the IPAM driver tests: run the real executables the way one_ipam does
(through :func:`packet_lab.oned.one_ipam.run_action`) against the Packet emulator."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from fixtures.common import REMOTES, ROOT
from packet_lab.oned.one_ipam import (
    ActionResult,
    action_data,
    run_action,
    template_vector,
)

VENV_BIN = ROOT / ".venv" / "bin"


def write_config(path: Path, api_url: str, state_dir: Path, log_dir: Path,
                 tokens: Optional[Dict[str, str]] = None, retries: int = 1,
                 **options: Any) -> None:
    """The driver's config; ``options`` override or add keys (e.g. action_deadline=3)."""
    keys: Dict[str, Any] = {"api_url": api_url, "ipam_state_dir": state_dir,
                            "log_dir": log_dir, "retries": retries, "backoff": 0.01,
                            "connect_timeout": 2, "read_timeout": 5, "max_retry_after": 2}
    keys.update(options)
    lines = [f"{key}: {value}" for key, value in keys.items()]
    if tokens:
        lines.append("tokens:")
        lines.extend(f"  {project}: {token}" for project, token in tokens.items())
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Driver:
    """The packet IPAM driver as oned's one_ipam sees it, with its state and log on disk."""

    packet: Any
    env: Dict[str, str]
    state_dir: Path
    log_path: Path
    config_path: Path

    def run(self, action: str, ar: Dict[str, Any], address: Optional[Dict[str, Any]] = None,
            req: int = 1, data: Optional[str] = None, timeout: float = 30) -> ActionResult:
        payload = data if data is not None else action_data(ar, address)
        result = run_action(REMOTES, action, req, payload, env=self.env, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def user_ar(self, size: int = 8, token: bool = True, **extra: Any) -> Dict[str, str]:
        ar = {"TYPE": "IP4", "IP": "10.255.255.1", "SIZE": str(size), "IPAM_MAD": "packet",
              "PACKET_PROJECT": self.packet.project_id, "FACILITY": "ams1"}
        if token:
            ar["PACKET_TOKEN"] = self.packet.token
        ar.update({k: str(v) for k, v in extra.items() if v is not None})
        for key in [k for k, v in extra.items() if v is None]:
            ar.pop(key, None)
        return ar

    def register(self, size: int = 8, **extra: Any) -> Dict[str, str]:
        """Register a range and return the AR oned would store (with the MAC oned adds)."""
        result = self.run("REGISTER_ADDRESS_RANGE", self.user_ar(size, **extra))
        assert result.ok, result.message
        ar = template_vector(result.stdout, "AR")
        ar["AR_ID"] = "0"
        return ar

    def get(self, ar: Dict[str, str], req: int = 1) -> ActionResult:
        return self.run("GET_ADDRESS", ar, {"SIZE": "1"}, req)

    def allocate(self, ar: Dict[str, str], ip: str, size: str = "1") -> ActionResult:
        return self.run("ALLOCATE_ADDRESS", ar, {"IP": ip, "SIZE": size})

    def free(self, ar: Dict[str, str], ip: str) -> ActionResult:
        return self.run("FREE_ADDRESS", ar, {"IP": ip, "SIZE": "1"})

    def unregister(self, ar: Dict[str, str]) -> ActionResult:
        return self.run("UNREGISTER_ADDRESS_RANGE", ar)

    def leases(self, deploy_id: str) -> List[str]:
        directory = self.state_dir / "packet" / deploy_id
        return sorted(os.listdir(directory)) if directory.exists() else []

    def log_lines(self) -> List[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def reservations(self) -> List[Dict[str, Any]]:
        return self.packet.state()["reservations"]

    def assignments(self) -> List[Dict[str, Any]]:
        return self.packet.state()["assignments"]

    def api_writes(self) -> List[Dict[str, Any]]:
        return [r for r in self.packet.requests() if r["method"] in ("POST", "DELETE")
                and not r["path"].startswith("/_emulator")]

    def api_calls(self) -> List[Dict[str, Any]]:
        return [r for r in self.packet.requests() if not r["path"].startswith("/_emulator")]


def make_driver(packet: Any, remote_env: Dict[str, str], tmp_path: Path,
                tokens: Optional[Dict[str, str]] = None, api_url: Optional[str] = None,
                **options: Any) -> Driver:
    state, logs = tmp_path / "state", tmp_path / "log"
    config = Path(remote_env["PACKET_PROVIDER_CONFIG"])
    write_config(config, api_url or packet.url, state, logs, tokens, **options)
    env = dict(remote_env)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # python3 with lxml
    return Driver(packet, env, state, logs / "ipam-packet.log", config)
