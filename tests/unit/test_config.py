import pytest

from packet_provider import config
from packet_provider.core.errors import ConfigError
from packet_provider.core.log import redact

PROJECT = "438659f0-0000-4000-8000-000000000000"


def write(tmp_path, text):
    path = tmp_path / "packet_provider.yaml"
    path.write_text(text)
    return str(path)


def test_missing_file_gives_system_defaults(tmp_path):
    cfg = config.load(str(tmp_path / "absent.yaml"), env={})
    assert cfg.api_url == config.DEFAULT_API_URL
    assert cfg.ipam_state_dir == "/var/lib/one/ipam_state"
    assert cfg.log_dir == "/var/log/one"
    assert cfg.retries == 3 and cfg.tokens == {}


def test_one_location_moves_defaults_and_config_path(tmp_path):
    env = {"ONE_LOCATION": str(tmp_path)}
    assert config.default_path(env) == str(tmp_path / "etc" / "packet_provider.yaml")
    cfg = config.load(env=env)
    assert cfg.ipam_state_dir == str(tmp_path / "var" / "ipam_state")
    assert cfg.log_dir == str(tmp_path / "var")


def test_env_variable_names_the_file(tmp_path):
    path = write(tmp_path, "retries: 5\n")
    assert config.load(env={"PACKET_PROVIDER_CONFIG": path}).retries == 5


def test_every_key_is_read_and_url_env_overrides(tmp_path):
    path = write(tmp_path, f"""
api_url: http://127.0.0.1:9/v1/
connect_timeout: 1.5
read_timeout: 7
retries: 2
backoff: 0.1
max_retry_after: 4
ipam_state_dir: /srv/leases
log_dir: /srv/log
one_xmlrpc: http://one:2633/RPC2
one_auth: /srv/one_auth
hook_settle_seconds: 2.5
hook_lock_seconds: 9
tokens:
  {PROJECT.upper()}: s3cret-token-value
""")
    cfg = config.load(path, env={})
    assert cfg.api_url == "http://127.0.0.1:9/v1"
    assert (cfg.hook_settle_seconds, cfg.hook_lock_seconds) == (2.5, 9.0)
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.retries) == (1.5, 7.0, 2)
    assert cfg.ipam_state_dir == "/srv/leases" and cfg.log_dir == "/srv/log"
    assert cfg.token_for(PROJECT) == "s3cret-token-value"
    assert "s3cret-token-value" not in redact("token s3cret-token-value")
    cfg = config.load(path, env={"PACKET_API_URL": "http://127.0.0.1:8/"})
    assert cfg.api_url == "http://127.0.0.1:8"
    assert "s3cret-token-value" not in repr(cfg) and "tokens=<1>" in repr(cfg)
    quick = cfg._replace(retries=0)
    assert quick.retries == 0 and quick.tokens == cfg.tokens and cfg.retries == 2


def test_the_hooks_waits_default_and_their_environment_variables_win(tmp_path):
    path = write(tmp_path, "hook_settle_seconds: 5\nhook_lock_seconds: 7\n")
    defaults = config.load(str(tmp_path / "absent.yaml"), env={})
    assert (defaults.hook_settle_seconds, defaults.hook_lock_seconds) == (20.0, 60.0)
    cfg = config.load(path, env={"ALIAS_IP_SETTLE_SECONDS": "0.5", "ALIAS_IP_LOCK_SECONDS": " "})
    assert (cfg.hook_settle_seconds, cfg.hook_lock_seconds) == (0.5, 7.0)


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "1e400"])
def test_a_bad_wait_in_the_environment_is_a_one_line_error(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        config.load(str(tmp_path / "absent.yaml"), env={"ALIAS_IP_LOCK_SECONDS": value})
    assert str(err.value).startswith("environment variable ALIAS_IP_LOCK_SECONDS: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, key", [
    ("retries: many\n", "retries"),
    ("retries: -1\n", "retries"),
    ("read_timeout: fast\n", "read_timeout"),
    ("hook_lock_seconds: -3\n", "hook_lock_seconds"),
    ("hook_settle_seconds: soon\n", "hook_settle_seconds"),
    ("read_timeout: .nan\n", "read_timeout"),
    ("backoff: .inf\n", "backoff"),
    ("api_url: ftp://x\n", "api_url"),
    ("colour: blue\n", "colour"),
    ("tokens: [a, b]\n", "tokens"),
    ("tokens:\n  not-a-uuid: t\n", "tokens.not-a-uuid"),
    (f"tokens:\n  {PROJECT}: ''\n", f"tokens.{PROJECT}"),
])
def test_bad_value_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    message = str(err.value)
    assert message.startswith(path) and f": {key}:" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["retries: [\n", "- a\n- b\n", "key: 'unclosed\n"])
def test_unreadable_yaml_is_one_line(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        config.load(str(tmp_path), env={})


def test_action_deadline_defaults_well_under_oneds_90_seconds(tmp_path):
    assert config.load(str(tmp_path / "absent.yaml"), env={}).action_deadline == 60.0
    assert config.load(write(tmp_path, "action_deadline: 2.5\n"), env={}).action_deadline == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "81", "90", "soon", "true", "[1]"])
def test_action_deadline_must_end_before_oned_gives_up(tmp_path, value):
    path = write(tmp_path, f"action_deadline: {value}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert ": action_deadline:" in str(err.value) and "\n" not in str(err.value)


EXAMPLE = config.__file__.rsplit("/lib/", 1)[0] + "/share/examples/packet_provider.yaml"


def test_the_installed_example_holds_no_setting_and_yaml_is_not_imported(tmp_path):
    """A config of comments only (the installed example) is read without pyyaml."""
    import subprocess
    import sys

    with open(EXAMPLE, encoding="utf-8") as handle:
        text = handle.read()
    assert not config.has_settings(text)
    path = write(tmp_path, text)
    code = ("import sys; from packet_provider import config; "
            f"c = config.load({path!r}, env={{}}); "
            "print(c.retries, 'yaml' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": config.__file__.rsplit("/packet_provider/", 1)[0]},
                          check=False)
    assert proc.stdout.split() == ["3", "False"], proc.stderr


@pytest.mark.parametrize("text", ["retries: 5", "  retries: 5  # x", "---\nretries: 5",
                                  "{retries: 5}", "- a", "retries:\n  # c\n"])
def test_any_other_line_is_parsed_as_yaml(text):
    assert config.has_settings(text)


@pytest.mark.parametrize("text", ["", "\n\n", "# a\n  # b\n", "---\n# x\n...\n"])
def test_comments_and_markers_give_the_defaults_like_yaml_does(tmp_path, text):
    import yaml

    assert not config.has_settings(text) and yaml.safe_load(text) is None
    assert config.load(write(tmp_path, text), env={}).retries == 3
