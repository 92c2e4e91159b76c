"""Configuration of the frontend components, from one YAML file.

Found at ``$PACKET_PROVIDER_CONFIG``, else ``$ONE_LOCATION/etc/packet_provider.yaml``, else
``/etc/one/packet_provider.yaml``. A missing file means all defaults. Every key is optional;
an unknown key or a value of the wrong kind is a one-line ConfigError naming file and key.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Dict, Mapping, NamedTuple, Optional

from packet_provider.core import validate
from packet_provider.core.errors import ConfigError, InputError
from packet_provider.core.log import record_repr, register_secret

DEFAULT_API_URL = "https://api.equinix.com/metal/v1"
DEFAULT_ONE_XMLRPC = "http://localhost:2633/RPC2"
DEFAULT_ACTION_DEADLINE = 60.0
MAX_ACTION_DEADLINE = 80.0  # oned drops an IPAM request about 90 s after sending it
# the hook's waits: environment variables that win over the file's keys (tests, one-off runs)
ENV_OVERRIDES = {"ALIAS_IP_SETTLE_SECONDS": "hook_settle_seconds",
                 "ALIAS_IP_LOCK_SECONDS": "hook_lock_seconds"}


def one_location(env: Mapping[str, str]) -> Optional[str]:
    value = env.get("ONE_LOCATION", "").strip()
    return value or None


def default_path(env: Mapping[str, str]) -> str:
    if env.get("PACKET_PROVIDER_CONFIG"):
        return env["PACKET_PROVIDER_CONFIG"]
    location = one_location(env)
    if location:
        return os.path.join(location, "etc", "packet_provider.yaml")
    return "/etc/one/packet_provider.yaml"


def default_state_dir(env: Mapping[str, str]) -> str:
    location = one_location(env)
    return os.path.join(location, "var", "ipam_state") if location else "/var/lib/one/ipam_state"


def default_log_dir(env: Mapping[str, str]) -> str:
    location = one_location(env)
    return os.path.join(location, "var") if location else "/var/log/one"


class Config(NamedTuple):
    """The settings (an immutable record: ``config._replace(...)`` makes a changed copy)."""

    path: str
    api_url: str = DEFAULT_API_URL
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    max_retry_after: float = 30.0
    action_deadline: float = DEFAULT_ACTION_DEADLINE
    ipam_state_dir: str = "/var/lib/one/ipam_state"
    log_dir: str = "/var/log/one"
    one_xmlrpc: str = DEFAULT_ONE_XMLRPC
    one_auth: Optional[str] = None
    tokens: Mapping[str, str] = MappingProxyType({})  # left out of repr()
    hook_settle_seconds: float = 20.0  # a run waits so long for a NIC hot-plug to finish
    hook_lock_seconds: float = 60.0  # ... and so long for another run on the same VM

    def __repr__(self) -> str:
        return record_repr(self, "tokens", f"tokens=<{len(self.tokens)}>")

    def token_for(self, project: Optional[str]) -> Optional[str]:
        """The configured API token of a Packet project, if any (None without a project)."""
        return self.tokens.get(project.lower()) if project else None


# key -> (type check, description for errors)
_NUMBERS = {"connect_timeout", "read_timeout", "backoff", "max_retry_after",
            "hook_settle_seconds", "hook_lock_seconds"}
_STRINGS = {"api_url", "ipam_state_dir", "log_dir", "one_xmlrpc", "one_auth"}
_KNOWN = _NUMBERS | _STRINGS | {"retries", "tokens", "action_deadline"}


def _non_negative(value: Any) -> bool:
    """A number, not a bool, from 0 up (finite: NaN and infinity are refused)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and 0 <= value < float("inf"))


def _bad(path: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {why}")


def _check(path: str, raw: Dict[str, Any]) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _KNOWN:
            raise _bad(path, str(key), "unknown key")
        if value is None:
            continue
        if key in _NUMBERS:
            if not _non_negative(value):
                raise _bad(path, key, f"must be a non-negative number, got {value!r}")
            values[key] = float(value)
        elif key in _STRINGS:
            if not isinstance(value, str) or not value.strip():
                raise _bad(path, key, "must be a non-empty string")
            values[key] = value.strip()
        elif key == "retries":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
                raise _bad(path, key, f"must be an integer from 0 to 20, got {value!r}")
            values[key] = value
        elif key == "tokens":
            values[key] = _check_tokens(path, value)
        elif key == "action_deadline":
            values[key] = _check_deadline(path, value)
    if "api_url" in values and not values["api_url"].startswith(("http://", "https://")):
        raise _bad(path, "api_url", "must start with http:// or https://")
    return values


def _check_deadline(path: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value <= MAX_ACTION_DEADLINE):
        raise _bad(path, "action_deadline", f"must be a number of seconds above 0 and at most "
                                            f"{MAX_ACTION_DEADLINE:g} (oned gives up after "
                                            f"90), got {value!r}")
    return float(value)


def _check_tokens(path: str, value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _bad(path, "tokens", "must map Packet project UUIDs to API tokens")
    tokens = {}
    for project, token in value.items():
        try:
            project_id = validate.uuid(project, "project")
        except InputError:
            raise _bad(path, f"tokens.{project}", "is not a project UUID") from None
        if not isinstance(token, str) or not token.strip():
            raise _bad(path, f"tokens.{project_id}", "must be a non-empty string")
        tokens[project_id] = token.strip()
        register_secret(tokens[project_id])
    return tokens


def _env_seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not _non_negative(value):
        raise ConfigError(f"environment variable {name}: must be a non-negative number of "
                          f"seconds, got {text.strip()[:40]!r}")
    return value


def has_settings(text: str) -> bool:
    """Whether YAML ``text`` may hold a setting: a line other than blank, a comment or a
    document marker (the installed example holds comments only; parsing it gives None)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped not in ("---", "..."):
            return True
    return False


def load(path: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Config:
    """Load the configuration; environment overrides (PACKET_API_URL) win over the file."""
    env = os.environ if env is None else env
    path = path or default_path(env)
    raw: Dict[str, Any] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if has_settings(text):
        import yaml  # imported only for a file with settings: pyyaml costs ~15 ms to import

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the file must hold a mapping of keys to values")
        raw = loaded or {}
    values = _check(path, raw)
    values.setdefault("ipam_state_dir", default_state_dir(env))
    values.setdefault("log_dir", default_log_dir(env))
    if env.get("PACKET_API_URL"):
        values["api_url"] = env["PACKET_API_URL"].strip()
    if env.get("ONE_XMLRPC"):
        values["one_xmlrpc"] = env["ONE_XMLRPC"].strip()
    for name, key in ENV_OVERRIDES.items():
        if env.get(name, "").strip():
            values[key] = _env_seconds(name, env[name])
    values["api_url"] = values.get("api_url", DEFAULT_API_URL).rstrip("/")
    return Config(path=path, **values)


# -- the oned session (hook and installer) ---------------------------------------------------


def auth_path(env: Mapping[str, str], configured: Optional[str]) -> str:
    """The file holding the oned session, by the CLI's conventions: ``$ONE_AUTH``, else the
    config's ``one_auth``, else ``~/.one/one_auth``."""
    if env.get("ONE_AUTH"):
        return env["ONE_AUTH"]
    if configured:
        return configured
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".one", "one_auth")


def read_session(path: str) -> str:
    """``user:password`` from the first line of an auth file."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().strip()
    except OSError as err:
        raise ConfigError(f"oned credentials: cannot read {path}: {err.strerror}; set "
                          "ONE_AUTH or create ~/.one/one_auth") from None
    except UnicodeDecodeError:
        raise ConfigError(f"oned credentials: {path} is not UTF-8 text") from None
    if ":" not in line:
        raise ConfigError(f"oned credentials: {path} must hold user:password on its "
                          "first line")
    register_secret(line)
    register_secret(line.split(":", 1)[1])
    return line
