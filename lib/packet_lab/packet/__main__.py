"""``python3 -m packet_lab.packet``: run the Packet API emulator (see --help)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from typing import Any, List, Optional

DESCRIPTION = """\
Run a Packet (Equinix Metal) API emulator: a real HTTP server answering the calls the
OpenNebula packet IPAM driver and alias_ip hook make. Reservations are carved from
documentation and benchmark address space (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
198.18.0.0/15), so nothing it hands out is routable on the Internet.

The first line on stdout is "listening on http://HOST:PORT"; then one line per request goes
to stderr (never a token)."""

EPILOG = """\
tokens (any of them is accepted in the X-Auth-Token header):
  PACKET_EMULATOR_TOKENS=t1,t2     comma-separated, keeps tokens out of the process list
  --token-file FILE                one token per line; if FILE does not exist, a random
                                   token is generated and written there (mode 0600)
  --token T                        also works, but anyone on the host can read argv

examples:
  # a project with two devices, state kept across restarts
  python3 -m packet_lab.packet --port 8080 --token-file ~/.packet-token \\
      --project 438659f0-8d50-4b1d-9f2c-3c4c1a5e0b11 \\
      --device 54ffd20d-d972-4c8d-8628-9da18e67ae17 \\
      --device 6a1c1f0e-5d2b-4f7e-9d7a-0b6f2f1c9e22 --state-file /tmp/packet-emulator.json

  # then point the plugin at it (packet_provider.yaml: api_url, or PACKET_API_URL)
  curl -H "X-Auth-Token: $(cat ~/.packet-token)" \\
      http://127.0.0.1:8080/projects/438659f0-8d50-4b1d-9f2c-3c4c1a5e0b11/ips

admin API (no token; bind to loopback):
  GET  /_emulator/state              projects, devices, reservations, assignments
  POST /_emulator/projects           {"id"?, "name"?}
  POST /_emulator/devices            {"project"?, "id"?, "hostname"?}
  POST /_emulator/tokens             {"token": "..."}
  POST /_emulator/faults             {"status": 429, "retry_after": 2, "count": 1,
                                      "method": "POST", "path": "/projects/"}
                                     also "latency": s, "drop": true (no answer, nothing
                                     done), "drop_after": true (done, answer lost),
                                     "rate": 0.1 instead of "count"
  DELETE /_emulator/faults           clear faults
  GET|DELETE /_emulator/requests     the request log / clear it
  POST /_emulator/reset              back to the start-up projects, devices and tokens
"""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m packet_lab.packet", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0,
                        help="TCP port (default 0: any free port, printed on the first line)")
    parser.add_argument("--token", action="append", default=[], metavar="T",
                        help="accept this API token (repeatable; prefer --token-file or "
                             "PACKET_EMULATOR_TOKENS)")
    parser.add_argument("--token-file", metavar="F",
                        help="file of tokens, one per line; created with a random token "
                             "if missing")
    parser.add_argument("--project", action="append", default=[], metavar="UUID",
                        help="a Packet project (repeatable)")
    parser.add_argument("--device", action="append", default=[], metavar="UUID[@PROJECT]",
                        help="a device, in PROJECT or else the first project (repeatable)")
    parser.add_argument("--state-file", metavar="F",
                        help="keep state in this JSON file (atomic writes) and resume from it")
    parser.add_argument("--per-page", type=int, default=10, metavar="N",
                        help="default page size of lists (default 10)")
    parser.add_argument("--quiet", action="store_true",
                        help="no per-request lines on stderr")
    return parser


def read_token_file(path: str) -> List[str]:
    """Tokens from ``path``; a missing file gets a fresh random token (mode 0600)."""
    if not os.path.exists(path):
        token = secrets.token_hex(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        print(f"packet emulator: wrote a new token to {path}", file=sys.stderr)
        return [token]
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle
                if line.strip() and not line.lstrip().startswith("#")]


def startup_summary(emulator: Any, args: argparse.Namespace) -> str:
    """What the emulator holds, so a user knows which project and device ids to use."""
    state = emulator.state()
    lines = [f"packet emulator: {len(state['reservations'])} reservation(s), "
             f"{state['tokens']} token(s)"
             + (f", resumed from {args.state_file}" if emulator.resumed else "")]
    for project in state["projects"]:
        devices = [d for d in state["devices"] if d["project_id"] == project["id"]]
        lines.append(f"  project {project['id']}: " + (", ".join(
            f"device {d['id']} ({d['hostname']})" for d in devices) or "no devices"))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        lines.append(f"  warning: the admin API (/_emulator/) has no authentication and "
                     f"listens on {args.host}; prefer 127.0.0.1")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from packet_lab.packet.emulator import PacketEmulator

    try:
        tokens = list(args.token)
        if tokens:
            print("packet emulator: note: --token is visible to anyone who can list "
                  "processes; prefer --token-file or PACKET_EMULATOR_TOKENS", file=sys.stderr)
        tokens += [t.strip() for t in os.environ.get("PACKET_EMULATOR_TOKENS", "").split(",")
                   if t.strip()]
        if args.token_file:
            tokens += read_token_file(args.token_file)
        emulator = PacketEmulator(host=args.host, port=args.port, tokens=tokens,
                                  projects=args.project, devices=args.device,
                                  state_file=args.state_file, per_page=args.per_page,
                                  access_log=None if args.quiet else sys.stderr)
        if not emulator.model.token_digests:
            raise ValueError("no API token: set PACKET_EMULATOR_TOKENS or give --token-file F "
                             "(a missing F gets a random token)")
        emulator.bind()
    except (OSError, ValueError) as err:
        print(f"packet emulator: {err}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on {emulator.url}", flush=True)
    print(startup_summary(emulator, args), file=sys.stderr, flush=True)
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
