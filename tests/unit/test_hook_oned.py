"""How the hook finds oned and its credentials (the OpenNebula CLI's conventions)."""

import pytest

from packet_provider import oned_client as hook_oned
from packet_provider.core import log
from packet_provider.core.errors import ConfigError


def test_one_auth_wins_then_the_config_then_home(tmp_path):
    env = {"ONE_AUTH": "/from/env", "HOME": str(tmp_path)}
    assert hook_oned.auth_path(env, "/from/config") == "/from/env"
    assert hook_oned.auth_path({"HOME": str(tmp_path)}, "/from/config") == "/from/config"
    assert hook_oned.auth_path({"HOME": str(tmp_path)}, None) == str(tmp_path / ".one" /
                                                                     "one_auth")


def test_the_session_is_the_first_line_and_becomes_a_secret(tmp_path):
    path = tmp_path / "one_auth"
    path.write_text("oneadmin:s3cret-password\nignored\n")
    assert hook_oned.read_session(str(path)) == "oneadmin:s3cret-password"
    assert "s3cret-password" not in log.redact("login with s3cret-password failed")


@pytest.mark.parametrize("content", ["", "no-colon-here\n"])
def test_a_malformed_auth_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "one_auth"
    path.write_text(content)
    with pytest.raises(ConfigError, match="user:password"):
        hook_oned.read_session(str(path))


def test_a_missing_auth_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="set ONE_AUTH or create ~/.one/one_auth"):
        hook_oned.read_session(str(tmp_path / "absent"))


@pytest.mark.parametrize("endpoint", ["ftp://host/RPC2", "not a url"])
def test_a_bad_endpoint_is_a_config_error(endpoint):
    with pytest.raises(ConfigError, match="oned endpoint"):
        hook_oned.OnedClient(endpoint, "oneadmin:x")


def test_an_unreachable_oned_is_retried_a_bounded_number_of_times():
    client = hook_oned.OnedClient("http://127.0.0.1:9/RPC2", "oneadmin:x", connect_timeout=1,
                                  retries=2, backoff=0.01)
    with pytest.raises(hook_oned.OnedUnavailable, match="unreachable after 3 attempts"):
        client.vm(1)
    assert client.calls == 3
