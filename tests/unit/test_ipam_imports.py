"""Issue 15: the IPAM driver's import path is light. An action that needs no API call (bad
input, a refusal before Packet is asked) imports neither requests nor urllib3, and the driver
never imports lxml (oned's XML is read with the standard library); only a register, which
marks its reservation request with a fresh UUID, imports uuid."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fixtures.common import LIB
from packet_lab.oned.one_ipam import action_data

RID = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
AR = {"TYPE": "IP4", "IP": "147.75.84.88", "SIZE": "8", "IPAM_MAD": "packet",
      "DEPLOY_ID": RID, "PACKET_TOKEN": "tok-12345678"}
HEAVY = ("requests", "urllib3", "lxml", "uuid", "dataclasses")  # records are NamedTuples


def modules_after(tmp_path, action, ar, address=None):
    """Run one action in a fresh interpreter; the heavy modules it imported, and its exit."""
    config = tmp_path / "packet_provider.yaml"
    config.write_text(f"ipam_state_dir: {tmp_path}/state\nlog_dir: {tmp_path}\n"
                      "api_url: http://127.0.0.1:9\n")
    data = base64.b64encode(action_data(ar, address).encode()).decode()
    code = textwrap.dedent(f"""
        import io, json, sys
        from packet_provider.ipam import main
        try:
            main.run_action({action!r}, ["3"], io.BytesIO({data!r}.encode()), io.StringIO())
            code = 0
        except Exception as err:
            code = type(err).__name__
        print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))
    """)
    env = dict(os.environ, PYTHONPATH=str(LIB), PACKET_PROVIDER_CONFIG=str(config))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.parametrize("action,ar,address", [
    ("get_address", dict(AR, DEPLOY_ID="../x"), {"SIZE": "1"}),
    ("free_address", AR, {"IP": "10.0.0.1", "SIZE": "1"}),  # outside the range
    ("get_address", dict(AR, USED_LEASES="3"), {"SIZE": "1"}),  # leases missing: refused
    ("allocate_address", dict(AR, USED_LEASES="1"), {"IP": "147.75.84.89", "SIZE": "1"}),
])
def test_an_action_refused_before_any_api_call_imports_no_http_client(tmp_path, action, ar,
                                                                      address):
    code, heavy = modules_after(tmp_path, action, ar, address)
    assert code in ("InputError", "ProviderError")
    assert heavy == []


def test_an_action_that_calls_the_api_imports_requests_but_not_lxml(tmp_path):
    code, heavy = modules_after(tmp_path, "get_address", AR, {"SIZE": "1"})
    assert code == "Unavailable"  # nothing listens on port 9
    assert heavy == ["requests", "urllib3"]


def test_only_a_register_imports_uuid(tmp_path):
    ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
          "PACKET_PROJECT": "438659f0-0000-4000-8000-000000000000", "FACILITY": "ams1",
          "PACKET_TOKEN": "tok-1234"}
    code, heavy = modules_after(tmp_path, "register_address_range", ar)
    assert code == "Unavailable"
    assert heavy == ["requests", "urllib3", "uuid"]
