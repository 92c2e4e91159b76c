"""Registering the plugin with oned, for install.sh.

Two commands::

    python3 -m packet_provider.hook.registration oned-conf [--oned-conf FILE]
    python3 -m packet_provider.hook.registration hooks TEMPLATE... [--config FILE]

``oned-conf`` (standard library only) prints the oned.conf changes: the IPAM_MAD ARGUMENTS
with ``packet`` added to the current ``-i`` list, and the VN_MAD_CONF entry of alias_sdnat.

``hooks`` creates the alias_ip hooks through oned's XML-RPC API
(:class:`packet_provider.oned_client.OnedClient`; templates read and written by
:mod:`packet_provider.core.onetemplate`), idempotently: a hook is identified by its NAME; a
missing one is created, an existing one whose attributes already match is left alone, and an
existing one that differs (for example a hook created from the old documentation with
``COMMAND = "alias_ip/alias_ip.rb"``) is updated in merge mode, so attributes the
administrator added (TIMEOUT...) are kept. Never a duplicate.
oned is found the usual way: ``ONE_XMLRPC``, else the config's ``one_xmlrpc``; the session
from the file named by ``ONE_AUTH``, else the config's ``one_auth``, else ``~/.one/one_auth``,
else (``--fallback-auth``) oneadmin's, so that ``sudo ./install.sh --hooks`` just works.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from packet_provider.config import auth_path as config_auth_path
from packet_provider.config import read_session as config_read_session
from packet_provider.core import validate
from packet_provider.core.cli import run
from packet_provider.core.errors import ConfigError, InputError, ProviderError
from packet_provider.core.onedefs import ALIAS_VN_MAD, PACKET_IPAM_MAD
from packet_provider.core.onetemplate import TemplateError, parse_template, template_string

DEFAULT_IPAM_ARGUMENTS = f"-t 1 -i dummy,{PACKET_IPAM_MAD}"

_IPAM_BLOCK = re.compile(r"^[ \t]*IPAM_MAD[ \t]*=[ \t]*\[(.*?)\]", re.S | re.M)
_ARGUMENTS = re.compile(r"ARGUMENTS[ \t]*=[ \t]*\"([^\"]*)\"")
_VN_MAD_CONF = re.compile(r"^[ \t]*VN_MAD_CONF[ \t]*=[ \t]*\[(.*?)\]", re.S | re.M)
_NAME = re.compile(r"NAME[ \t]*=[ \t]*\"?([A-Za-z0-9_.-]+)\"?")


# -- oned.conf -----------------------------------------------------------------------------

def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def ipam_arguments(oned_conf: Optional[str]) -> Tuple[Optional[str], str]:
    """(current IPAM_MAD ARGUMENTS or None, the ARGUMENTS with ``packet`` in the -i list)."""
    if not oned_conf:
        return None, DEFAULT_IPAM_ARGUMENTS
    block = _IPAM_BLOCK.search(_strip_comments(oned_conf))
    found = _ARGUMENTS.search(block.group(1)) if block else None
    if not found:
        return None, DEFAULT_IPAM_ARGUMENTS
    current = found.group(1).strip()
    words = current.split()
    for index, word in enumerate(words):
        if word in ("-i", "--ipam-types") and index + 1 < len(words):
            drivers = [d for d in words[index + 1].split(",") if d]
            if PACKET_IPAM_MAD not in drivers:
                drivers.append(PACKET_IPAM_MAD)
            words[index + 1] = ",".join(drivers)
            return current, " ".join(words)
    return current, " ".join([*words, "-i", f"dummy,{PACKET_IPAM_MAD}"])


def has_vn_mad_conf(oned_conf: Optional[str]) -> bool:
    """True when oned.conf already declares VN_MAD_CONF for alias_sdnat."""
    for block in _VN_MAD_CONF.finditer(_strip_comments(oned_conf or "")):
        name = _NAME.search(block.group(1))
        if name and name.group(1) == ALIAS_VN_MAD:
            return True
    return False


def oned_conf_changes(oned_conf: Optional[str], path: str) -> str:
    """The text install.sh prints: what to change in oned.conf, and whether it is needed."""
    current, wanted = ipam_arguments(oned_conf)
    lines = []
    where = path if oned_conf is not None else f"{path} (not found: showing the defaults)"
    lines.append(f"oned.conf changes ({where}), then restart oned:")
    lines.append("")
    if current is not None and current == wanted:
        lines.append(f"  IPAM_MAD already enables packet (ARGUMENTS = \"{current}\"): no change.")
    else:
        if current is not None:
            lines.append(f"  In IPAM_MAD, replace ARGUMENTS = \"{current}\" with:")
        else:
            lines.append("  Set IPAM_MAD to:")
        lines += [
            "",
            "    IPAM_MAD = [",
            "        EXECUTABLE = \"one_ipam\",",
            f"        ARGUMENTS  = \"{wanted}\"",
            "    ]",
        ]
    lines.append("")
    if has_vn_mad_conf(oned_conf):
        lines.append("  VN_MAD_CONF for alias_sdnat is already there: no change.")
    else:
        lines += [
            "  Add:",
            "",
            f"    VN_MAD_CONF = [ NAME = \"{ALIAS_VN_MAD}\", BRIDGE_TYPE = \"linux\" ]",
        ]
    return "\n".join(lines) + "\n"


# -- hook templates ------------------------------------------------------------------------

def parse_hook_template(text: str, source: str = "template") -> Dict[str, str]:
    """Parse a flat oned template (``KEY = "value"`` lines, ``#`` comments) into a dict with
    upper-case keys; the hook templates we ship use nothing else (no vectors)."""
    try:
        attrs = parse_template(text)
    except TemplateError as err:
        raise InputError(f"{source}: {err}") from None
    values: Dict[str, str] = {}
    for name, value in attrs:
        if not isinstance(value, str):
            raise InputError(f"{source}: {name} is a vector; hook templates hold none")
        values[name] = value
    if not values.get("NAME"):
        raise InputError(f"{source}: no NAME")
    return values


def render_template(values: Mapping[str, str]) -> str:
    """oned template text for ``values``."""
    return template_string(values.items())


@dataclass(frozen=True)
class Existing:
    id: int
    name: str
    template: Dict[str, str]


@dataclass(frozen=True)
class Step:
    """What to do for one wanted hook: ``create``, ``update`` (with the differing keys) or
    ``keep``; ``hook_id`` of the existing hook, if any."""

    action: str
    name: str
    hook_id: Optional[int] = None
    differences: Tuple[Tuple[str, str, str], ...] = ()


# What oned stores for each ON shortcut of a state hook (src/hm/HookStateVM.cc): it drops ON
# and keeps STATE and LCM_STATE. CUSTOM keeps the STATE and LCM_STATE given.
ON_STATES = {
    "PROLOG": ("ACTIVE", "PROLOG"),
    "RUNNING": ("ACTIVE", "RUNNING"),
    "SHUTDOWN": ("ACTIVE", "EPILOG"),
    "STOP": ("STOPPED", "LCM_INIT"),
    "DONE": ("DONE", "LCM_INIT"),
    "UNKNOWN": ("ACTIVE", "UNKNOWN"),
}


def as_stored(template: Mapping[str, str]) -> Dict[str, str]:
    """``template`` as oned keeps it: ``ON`` replaced by the STATE and LCM_STATE it means."""
    stored = {k: v for k, v in template.items() if k != "ON"}
    on = template.get("ON", "").strip().upper()
    if on in ON_STATES:
        stored["STATE"], stored["LCM_STATE"] = ON_STATES[on]
    return stored


def plan_hooks(wanted: Sequence[Mapping[str, str]], existing: Sequence[Existing]) -> List[Step]:
    """Decide, per wanted hook, whether to create, update or keep it (by NAME). Hooks are
    compared as oned stores them (:func:`as_stored`), so a hook we created compares equal."""
    by_name: Dict[str, Existing] = {}
    for hook in sorted(existing, key=lambda h: h.id):
        by_name.setdefault(hook.name, hook)
    steps = []
    for template in wanted:
        name = template["NAME"]
        hook = by_name.get(name)
        if hook is None:
            steps.append(Step("create", name))
            continue
        have = as_stored(hook.template)
        diffs = tuple(
            (key, have.get(key, ""), value)
            for key, value in as_stored(template).items()
            if key not in ("NAME", "TYPE")
            and have.get(key, "").strip().upper() != value.strip().upper()
        )
        steps.append(Step("update" if diffs else "keep", name, hook.id, diffs))
    return steps


# -- oned ----------------------------------------------------------------------------------

def session_path(env: Mapping[str, str], configured: Optional[str],
                 fallback: Optional[str] = None) -> str:
    """The session file (:func:`packet_provider.config.auth_path`), or ``fallback``
    (install.sh passes oneadmin's, for a root without one) when only the default
    ``~/.one/one_auth`` applies, it does not exist and the fallback does."""
    path = config_auth_path(env, configured)
    if not env.get("ONE_AUTH") and not configured and not os.path.exists(path) \
            and fallback and os.path.exists(fallback):
        return fallback
    return path


def read_session(path: str) -> Tuple[str, str]:
    """(session "user:password", the file it came from)."""
    return config_read_session(path), path


def existing_hooks(client: Any) -> List[Existing]:
    """Every hook in oned's pool (:meth:`OnedClient.hooks`) with its template's single-valued
    attributes as flat strings (vectors and repeated attributes left out)."""
    hooks = []
    for hook in client.hooks().findall("HOOK"):
        template = hook.find("TEMPLATE")
        children = list(template) if template is not None else []
        counts: Dict[str, int] = {}
        for child in children:
            counts[child.tag] = counts.get(child.tag, 0) + 1
        flat = {str(c.tag).upper(): (c.text or "") for c in children
                if isinstance(c.tag, str) and not len(c) and counts[c.tag] == 1}
        hooks.append(Existing(validate.object_id(hook.findtext("ID"), "HOOK ID"),
                              (hook.findtext("NAME") or "").strip(), flat))
    return hooks


def apply_hooks(client: Any, wanted: Sequence[Mapping[str, str]]) -> List[Tuple[Step, int]]:
    """Create or update the wanted hooks through ``client`` (an :class:`OnedClient`);
    (step, hook id) for each."""
    done = []
    for step, template in zip(plan_hooks(wanted, existing_hooks(client)), wanted):
        if step.action == "create":
            hook_id = client.hook_allocate(render_template(template))
        elif step.action == "update":
            stored = as_stored(template)
            changed = {k: stored[k] for k, _old, _new in step.differences}
            hook_id = client.hook_update(step.hook_id, render_template(changed), merge=True)
        else:
            hook_id = int(step.hook_id)  # type: ignore[arg-type]
        done.append((step, hook_id))
    return done


def describe(step: Step, hook_id: int) -> str:
    """The line install.sh prints for one hook."""
    if step.action == "create":
        return f"hook {step.name}: created (id {hook_id})"
    if step.action == "keep":
        return f"hook {step.name}: already there (id {hook_id}), unchanged"
    changes = ", ".join(f"{k} {old or '-'!r} -> {new!r}" for k, old, new in step.differences)
    return f"hook {step.name}: updated (id {hook_id}): {changes}"


def register_hooks(template_files: Sequence[str], config_path: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None,
                   fallback_auth: Optional[str] = None) -> List[str]:
    """Create or update the hooks of ``template_files`` in oned; one line per hook."""
    from packet_provider import config as config_module
    from packet_provider.oned_client import AUTHENTICATION, OnedClient, OnedError

    env = os.environ if env is None else env
    wanted = []
    for path in template_files:
        try:
            with open(path, encoding="utf-8") as handle:
                wanted.append(parse_hook_template(handle.read(), path))
        except OSError as err:
            raise InputError(f"cannot read the hook template {path}: {err.strerror}") from None
    cfg = config_module.load(config_path, env)
    session, auth_path = read_session(session_path(env, cfg.one_auth, fallback_auth))
    url = cfg.one_xmlrpc
    client = OnedClient(url, session, cfg.connect_timeout, cfg.read_timeout, cfg.retries,
                        cfg.backoff)
    try:
        return [describe(step, hook_id) for step, hook_id in apply_hooks(client, wanted)]
    except OnedError as err:
        if err.code == AUTHENTICATION:
            raise ProviderError(f"oned at {url} refused the session from {auth_path}") from None
        raise ProviderError(f"oned at {url}: {err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m packet_provider.hook.registration",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("oned-conf", help="print the oned.conf changes")
    conf.add_argument("--oned-conf", default="/etc/one/oned.conf", metavar="FILE")
    hooks = sub.add_parser("hooks", help="create or update the hooks in oned")
    hooks.add_argument("templates", nargs="+", metavar="TEMPLATE")
    hooks.add_argument("--config", default=None, metavar="FILE")
    hooks.add_argument("--fallback-auth", default=None, metavar="FILE",
                       help="session file to use when ~/.one/one_auth does not exist")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "oned-conf":
        try:
            with open(args.oned_conf, encoding="utf-8", errors="replace") as handle:
                text: Optional[str] = handle.read()
        except FileNotFoundError:
            text = None
        except OSError as err:
            raise ConfigError(f"cannot read {args.oned_conf}: {err.strerror}") from None
        sys.stdout.write(oned_conf_changes(text, args.oned_conf))
        return 0
    for line in register_hooks(args.templates, args.config, fallback_auth=args.fallback_auth):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    run(main, "hookreg")
