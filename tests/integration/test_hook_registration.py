"""install.sh --hooks through the one oned client (OnedClient) against the oned emulator:
create, keep, merge-update, one-line errors; no process-wide socket timeout is set."""

import socket
from pathlib import Path

import pytest

from packet_provider.core.errors import ProviderError
from packet_provider.hook import registration

EXAMPLES = Path(__file__).resolve().parents[2] / "share" / "examples" / "alias_ip"
TEMPLATES = [str(EXAMPLES / name) for name in ("running_hook", "hotplug_hook", "done_hook")]


@pytest.fixture
def env(oned, one_auth_file, tmp_path):
    return {"ONE_XMLRPC": oned.url, "ONE_AUTH": str(one_auth_file), "HOME": str(tmp_path),
            "PACKET_PROVIDER_CONFIG": str(tmp_path / "none.yaml")}


def test_created_once_then_kept_and_no_socket_default_timeout(oned, env):
    before = socket.getdefaulttimeout()
    lines = registration.register_hooks(TEMPLATES, env=env)
    assert [line.split(":")[1] for line in lines] == [" created (id 0)", " created (id 1)",
                                                     " created (id 2)"]
    again = registration.register_hooks(TEMPLATES, env=env)
    assert all("unchanged" in line for line in again), again
    assert socket.getdefaulttimeout() == before  # pyone's timeout= would have set it
    assert [c[0] for c in oned.calls].count("one.hook.allocate") == 3


def test_a_hook_that_differs_is_merged_keeping_the_admins_attributes(oned, env):
    old = oned.client().hook.allocate(
        'NAME = "alias_ip_done"\nTYPE = "state"\nCOMMAND = "alias_ip/alias_ip.rb"\n'
        'ARGUMENTS = "$TEMPLATE"\nARGUMENTS_STDIN = "yes"\nON = "DONE"\nRESOURCE = "VM"\n'
        'REMOTE = "NO"\nMY_NOTE = "keep me"\n')
    lines = registration.register_hooks(TEMPLATES, env=env)
    assert f"hook alias_ip_done: updated (id {old}): COMMAND 'alias_ip/alias_ip.rb'" in lines[2]
    stored = {h.name: h.template for h in registration.existing_hooks(_client(oned))}
    assert stored["alias_ip_done"]["MY_NOTE"] == "keep me"
    assert stored["alias_ip_done"]["COMMAND"] == "alias_ip/alias_ip.py"


def _client(oned):
    from packet_provider.oned_client import OnedClient

    return OnedClient(oned.url, oned.auth, retries=0)


def test_a_bad_session_is_one_line_without_the_password(oned, env, tmp_path):
    bad = tmp_path / "bad_auth"
    bad.write_text("oneadmin:wrong-password\n")
    with pytest.raises(ProviderError, match="refused the session") as err:
        registration.register_hooks(TEMPLATES, env={**env, "ONE_AUTH": str(bad)})
    assert "wrong-password" not in str(err.value) and "\n" not in str(err.value)


def test_oned_down_is_one_line(env, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("retries: 0\nconnect_timeout: 1\n")
    with pytest.raises(ProviderError, match="unreachable") as err:
        registration.register_hooks(TEMPLATES, env={**env, "ONE_XMLRPC": "http://127.0.0.1:9/RPC2",
                                                    "PACKET_PROVIDER_CONFIG": str(config)})
    assert "\n" not in str(err.value)
