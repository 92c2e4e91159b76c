"""Fuzzing the configuration loader: whatever the file holds, a Config or a one-line
ConfigError naming the file, never another exception, and never a token in the message."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packet_provider import config as config_mod
from packet_provider.core.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["api_url", "connect_timeout", "read_timeout", "retries", "backoff", "max_retry_after",
        "ipam_state_dir", "log_dir", "one_xmlrpc", "one_auth", "tokens", "unknown"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 12),
                    st.floats(allow_nan=True), st.text(max_size=30),
                    st.sampled_from(["http://127.0.0.1:1", "ftp://x", "", " ", "~", "!!python/x"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
TOKEN = "fuzz-secret-token-6d1f"


def load_text(text: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "packet_provider.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return config_mod.load(env={"PACKET_PROVIDER_CONFIG": str(path)})
        except ConfigError as err:
            message = str(err)
            assert str(path) in message and "\n" not in message.strip()
            assert TOKEN not in message
            return err


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_structured_configs(data) -> None:
    data = dict(data)
    if "tokens" in data and isinstance(data["tokens"], dict):
        data["tokens"] = {**data["tokens"], "438659f0-1111-4222-8333-444455556666": TOKEN}
    load_text(yaml.safe_dump(data))


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    load_text(text)


def test_yaml_tricks_refused_cleanly() -> None:
    for text in ["a: &a [*a]", "!!python/object/apply:os.system ['true']", "- 1\n- 2",
                 "retries: !!binary aGk=", "tokens: {x: " + TOKEN + "}",
                 "lol: &1 [1,1,1,1]\nl2: &2 [*1,*1,*1,*1]\nl3: [*2,*2,*2,*2]",
                 "\t\x00", "api_url: file:///etc/passwd"]:
        assert isinstance(load_text(text), ConfigError), text


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "packet_provider.yaml"
        path.write_bytes(data)
        try:
            config_mod.load(env={"PACKET_PROVIDER_CONFIG": str(path)})
        except ConfigError as err:
            assert str(path) in str(err)
