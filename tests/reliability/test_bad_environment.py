"""A broken environment around good input: configuration that is not UTF-8, not YAML, a
directory, with unknown keys or wrong types; an oned auth file that is binary or missing; log
and state directories that are files. Every frontend executable must fail with one clean
line (not "internal error", exit 70), no traceback, nothing on stdout."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from packet_lab.oned.one_ipam import action_data
from reliability.relsupport import (
    VM_XML,
    base_env,
    count,
    hook_executables,
    ipam_actions,
    run,
)

RESERVATION = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"


def _config(text: str) -> Callable[[Path], Dict[str, str]]:
    def make(tmp: Path) -> Dict[str, str]:
        path = tmp / "packet_provider.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape").replace(b"{tmp}",
                                                                          str(tmp).encode()))
        return {"PACKET_PROVIDER_CONFIG": str(path)}
    return make


def _auth(data: bytes) -> Callable[[Path], Dict[str, str]]:
    def make(tmp: Path) -> Dict[str, str]:
        base = _config("log_dir: {tmp}/log\none_xmlrpc: http://127.0.0.1:9/RPC2\n")(tmp)
        auth = tmp / "one_auth"
        if data:
            auth.write_bytes(data)
        return {**base, "ONE_AUTH": str(auth)}
    return make


def _dir_as_config(tmp: Path) -> Dict[str, str]:
    return {"PACKET_PROVIDER_CONFIG": str(tmp)}


def _file_as(key: str) -> Callable[[Path], Dict[str, str]]:
    def make(tmp: Path) -> Dict[str, str]:
        (tmp / "a-file").write_text("x")
        other = "ipam_state_dir" if key == "log_dir" else "log_dir"
        return _config(f"{key}: {{tmp}}/a-file/sub\n{other}: {{tmp}}/other\n"
                       "api_url: http://127.0.0.1:9\nretries: 0\n")(tmp)
    return make


COMMON = {
    "config_not_utf8": _config("log_dir: \udc80\udc81\n"),
    "config_not_yaml": _config("log_dir: [unclosed\n  - {\n"),
    "config_not_a_mapping": _config("- just\n- a list\n"),
    "config_unknown_key": _config("log_dri: /tmp\n"),
    "config_wrong_type": _config("retries: many\n"),
    "config_bad_token_map": _config("tokens: [a, b]\n"),
    "config_is_a_directory": _dir_as_config,
}
HOOK_ONLY = {
    "auth_binary": _auth(b"\x80\x81\xfe\xff:\x00\n"),
    "auth_missing": _auth(b""),
    "auth_without_colon": _auth(b"oneadmin\n"),
}
IPAM_ONLY = {"state_dir_under_a_file": _file_as("ipam_state_dir")}

# (executable kind, case) -> reason: strict xfails, reported to the owner
KNOWN: dict = {}  # (executable kind, case) -> reason; empty: every case is handled


def _cases() -> List:
    out = []
    hook = hook_executables()
    ipam = [p for p in ipam_actions() if p.name == "get_address"]
    for kind, paths, table in (("hook", hook, {**COMMON, **HOOK_ONLY}),
                               ("ipam", ipam, {**COMMON, **IPAM_ONLY})):
        for path in paths:
            for name in table:
                marks = ()
                if (kind, name) in KNOWN:
                    marks = pytest.mark.xfail(strict=True, reason=KNOWN[(kind, name)])
                out.append(pytest.param(kind, path, name, table[name], marks=marks,
                                        id=f"{kind}-{name}"))
    return out


def _stdin(kind: str) -> bytes:
    if kind == "hook":
        return base64.b64encode(VM_XML) + b" "
    ar = {"IP": "147.75.1.8", "SIZE": "8", "IPAM_MAD": "packet", "DEPLOY_ID": RESERVATION,
          "PACKET_TOKEN": "t0k"}
    return base64.b64encode(action_data(ar, {"SIZE": "1"}).encode())


@pytest.mark.parametrize("kind,path,name,make", _cases())
def test_broken_environment_fails_cleanly(kind, path, name, make, tmp_path: Path) -> None:
    env = base_env()
    env["ALIAS_IP_SETTLE_SECONDS"] = "0"
    env.update(make(tmp_path))
    argv = [str(path)] + (["5"] if kind == "ipam" else [])
    result = run(argv, _stdin(kind), env, timeout=60)
    count("bad_environments")
    assert "Traceback" not in result.stderr
    assert result.rc not in (0, 70), (result.rc, result.stderr[-400:])
    lines = result.message_lines
    assert lines is not None and len(lines) == 1, result.stderr[-400:]
    assert "internal error" not in lines[0]
    assert result.stdout == ""
