"""Fuzzing the IPAM driver's request parsing and the templates it answers oned with.

A user's address range attributes travel from ``onevnet addar`` through the driver back into
the AR template oned parses. Whatever they hold, the driver either refuses them with an
InputError/ConfigError or answers one line that oned reads back as exactly the attributes
given: no value can close the vector, add an attribute or start a new line.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Dict, List, Tuple
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packet_provider.config import Config
from packet_provider.core.errors import ConfigError, InputError, ProviderError
from packet_provider.ipam import answer as ipanswer
from packet_provider.ipam import request as ipreq

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROJECT = "438659f0-1111-4222-8333-444455556666"
RESERVATION = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
CONFIG = Config(path="/nonexistent/packet_provider.yaml")

_VECTOR = re.compile(r'^([A-Z][A-Z0-9_]*) = \[ (.*) \]\n$')
_PAIR = re.compile(r'([A-Z][A-Z0-9_]*) = "([^"\\]*)"(?:, |$)')


def read_vector(text: str) -> Tuple[str, List[Tuple[str, str]]]:
    """Read ``NAME = [ A = "x", B = "y" ]`` the strict way: the whole body must be pairs."""
    match = _VECTOR.match(text)
    assert match, f"not a one-line vector: {text!r}"
    body, pairs, pos = match.group(2), [], 0
    while pos < len(body):
        pair = _PAIR.match(body, pos)
        assert pair, f"bad pair at {pos} in {body!r}"
        pairs.append((pair.group(1), pair.group(2)))
        pos = pair.end()
    return match.group(1), pairs


def action_data(ar: Dict[str, str], address: Dict[str, str] = None) -> bytes:
    parts = ["<IPAM_DRIVER_ACTION_DATA><AR>"]
    parts += [f"<{k}>{escape(v)}</{k}>" for k, v in ar.items()]
    parts.append("</AR>")
    if address is not None:
        parts.append("<ADDRESS>" + "".join(f"<{k}>{escape(v)}</{k}>"
                                           for k, v in address.items()) + "</ADDRESS>")
    parts.append("</IPAM_DRIVER_ACTION_DATA>")
    return base64.b64encode("".join(parts).encode())


def attempt(fn):
    try:
        return fn()
    except (InputError, ConfigError) as err:
        assert str(err)
        return err
    except ProviderError as err:  # pragma: no cover
        pytest.fail(f"unexpected {type(err).__name__}: {err}")


XML_TEXT = st.text(alphabet=st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="".join(chr(c) for c in range(32) if c not in (9, 10, 13))
    + "\ufffe\uffff"), max_size=40)
NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)


@FUZZ
@given(extra=st.dictionaries(NAMES, XML_TEXT, max_size=6),
       token=st.one_of(st.just("tok-en"), XML_TEXT),
       size=st.sampled_from(["1", "8", "8", "256", "3", "0", "512", "-8", "8.0", "", "x"]),
       facility=st.sampled_from(["ams1", "ams1", "ewr1-2", "", "AMS1", "ams1; rm -rf /", "a"]))
def test_register_template_cannot_be_injected(extra, token, size, facility) -> None:
    ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": size, "IPAM_MAD": "packet",
          "PACKET_PROJECT": PROJECT, "FACILITY": facility}
    if token.strip():
        ar["PACKET_TOKEN"] = token
    for key, value in extra.items():
        ar.setdefault(key, value)
    request = attempt(lambda: ipreq.parse_request(ipreq.REGISTER, 7, action_data(ar)))
    if isinstance(request, InputError):
        return
    spec = attempt(lambda: ipreq.parse_register(request, CONFIG))
    if isinstance(spec, (InputError, ConfigError)):
        return
    first = ipaddress.IPv4Address("147.75.1.8")
    text = attempt(lambda: ipanswer.ar_template(spec, RESERVATION, first, spec.size,
                                            spec.facility))
    if isinstance(text, InputError):
        return
    name, pairs = read_vector(text)
    assert name == "AR"
    got = dict(pairs)
    assert len(got) == len(pairs), f"an attribute appears twice: {text!r}"
    assert got["DEPLOY_ID"] == RESERVATION and got["IPAM_MAD"] == "packet"
    assert got["SIZE"] == str(spec.size) and got["IP"] == str(first)
    for key, value in extra.items():
        if key in got and key not in ipreq._OWN_ATTRS:
            assert got[key] == value.strip()


VALID_RANGE = {"DEPLOY_ID": RESERVATION, "IP": "147.75.1.8", "SIZE": "8",
               "PACKET_PROJECT": PROJECT}
VALID_ADDRESS = {"IP": "147.75.1.9", "SIZE": "1"}
RANGE_VALUES = st.one_of(XML_TEXT, st.sampled_from(
    ["../../etc", RESERVATION + "/../x", " " + RESERVATION.upper() + " ", "1.2.3.4/0",
     "1.2.3.4; id", "01.2.3.4", "::1", "4294967295", "99999999", "255.255.255.255", PROJECT,
     "147.75.1.15", "147.75.1.16", "1", "0", "8"]))


@FUZZ
@given(ar_changes=st.dictionaries(st.sampled_from(["DEPLOY_ID", "IP", "SIZE", "PACKET_PROJECT",
                                                   "PACKET_TOKEN"]), RANGE_VALUES, max_size=2),
       address_changes=st.dictionaries(st.sampled_from(["IP", "SIZE", "MAC"]), RANGE_VALUES,
                                       max_size=2),
       drop=st.sets(st.sampled_from(["DEPLOY_ID", "IP", "SIZE", "ADDRESS"]), max_size=1),
       action=st.sampled_from([ipreq.ALLOCATE, ipreq.GET, ipreq.FREE, ipreq.UNREGISTER]))
def test_range_and_address_parsing_only_input_errors(ar_changes, address_changes, drop,
                                                     action) -> None:
    ar = {k: v for k, v in {**VALID_RANGE, **ar_changes}.items() if k not in drop}
    address = {**VALID_ADDRESS, **address_changes} if "ADDRESS" not in drop else None
    request = attempt(lambda: ipreq.parse_request(action, 3, action_data(ar, address)))
    if isinstance(request, InputError):
        return
    config = Config(path="/nonexistent", tokens={PROJECT: "configured-token"})
    rng = attempt(lambda: ipreq.parse_range(request, config,
                                           need_block=action != ipreq.UNREGISTER))
    if isinstance(rng, (InputError, ConfigError)):
        return
    # what reaches file paths and URLs is a strict UUID
    assert re.fullmatch(r"[0-9a-f-]{36}", rng.deploy_id)
    if action == ipreq.UNREGISTER:
        return
    ip = attempt(lambda: ipreq.parse_address(request, rng, need_ip=action != ipreq.GET))
    if isinstance(ip, ipaddress.IPv4Address):
        assert ip in rng
        assert address is not None and str(ip) == address["IP"].strip()


@FUZZ
@given(st.binary(max_size=512))
def test_request_bytes_only_input_errors(data: bytes) -> None:
    for blob in (data, base64.b64encode(data)):
        attempt(lambda b=blob: ipreq.parse_request(ipreq.GET, 1, b))


@pytest.mark.parametrize("argv", [[], ["1", "2"], ["-1"], ["x"], ["1;id"], ["../1"],
                                  ["99999999999"], [""]])
def test_bad_request_ids_refused(argv: List[str]) -> None:
    with pytest.raises(InputError):
        ipreq.parse_args(ipreq.GET, argv)


def test_address_template_round_trips() -> None:
    name, pairs = read_vector(ipanswer.address_template(ipaddress.IPv4Address("147.75.1.9")))
    assert name == "ADDRESS" and pairs == [("IP", "147.75.1.9"), ("SIZE", "1")]
