"""The IPAM driver's pure parts: request parsing, checks made before any API call, the
templates it prints (read back with oned's syntax), and candidate selection."""

import base64
import ipaddress

import pytest

from packet_lab.oned.one_ipam import action_data, parse_template, template_vector
from packet_provider.config import Config
from packet_provider.core import onetemplate
from packet_provider.core.errors import ConfigError, InputError
from packet_provider.ipam import actions as ipactions
from packet_provider.ipam import answer as ipanswer
from packet_provider.ipam import request as ipreq

PROJECT = "438659f0-8ba7-4b5a-9e4a-1d0c6f3b2a11"
RID = "99d5d741-3756-4ebe-a014-34ea7a2e2be1"
CONFIG = Config(path="/nonexistent.yaml", tokens={PROJECT: "config-token-abcdef"})


def request(action, ar, address=None):
    xml = action_data(ar, address)
    return ipreq.parse_request(action, 5, base64.b64encode(xml.encode()))


def user_ar(**extra):
    ar = {"TYPE": "IP4", "IP": "10.0.0.1", "SIZE": "8", "IPAM_MAD": "packet",
          "PACKET_PROJECT": PROJECT, "FACILITY": "ams1"}
    ar.update(extra)
    return {k: v for k, v in ar.items() if v is not None}


def test_args_need_a_known_action_and_one_numeric_id():
    assert ipreq.parse_args("get_address", ["12"]) == 12
    for action, argv in (("packet_ipam.py", ["1"]), ("get_address", []),
                         ("get_address", ["1", "2"]), ("get_address", ["../x"])):
        with pytest.raises(InputError):
            ipreq.parse_args(action, argv)


@pytest.mark.parametrize("data", [b"", b"not base64!", base64.b64encode(b"<AR/>"),
                                  base64.b64encode(b"<IPAM_DRIVER_ACTION_DATA/>"),
                                  base64.b64encode(b"<IPAM_DRIVER_ACTION_DATA><AR>"),
                                  base64.b64encode(b'<!DOCTYPE x [<!ENTITY a "b">]>'
                                                   b"<IPAM_DRIVER_ACTION_DATA><AR/>"
                                                   b"</IPAM_DRIVER_ACTION_DATA>")])
def test_malformed_stdin_is_an_input_error(data):
    with pytest.raises(InputError):
        ipreq.parse_request("get_address", 1, data)


def test_register_spec_from_a_complete_ar_with_config_token():
    spec = ipreq.parse_register(request("register_address_range", user_ar()), CONFIG)
    assert (spec.project, spec.size, spec.ip_type, spec.facility) == (PROJECT, 8,
                                                                      "public_ipv4", "ams1")
    assert spec.token == "config-token-abcdef" and not spec.token_from_ar
    assert "config-token-abcdef" not in repr(spec)


def test_register_with_its_project_configured_uses_that_token_and_drops_the_ars():
    spec = ipreq.parse_register(request("register_address_range",
                                       user_ar(PACKET_TOKEN="ar-token-123456")), CONFIG)
    assert spec.token == "config-token-abcdef" and not spec.token_from_ar
    text = ipanswer.ar_template(spec, RID, ipaddress.IPv4Address("147.75.84.88"), 8, "ams1")
    assert "PACKET_TOKEN" not in text and "ar-token" not in text


def test_register_with_the_token_only_in_the_ar_uses_it():
    spec = ipreq.parse_register(request("register_address_range",
                                       user_ar(PACKET_TOKEN="ar-token-123456")),
                               Config(path="/nonexistent.yaml"))
    assert spec.token == "ar-token-123456" and spec.token_from_ar


def test_fake_starting_ip_does_not_matter():
    for ip in ("0.0.0.0", "garbage", None):
        spec = ipreq.parse_register(request("register_address_range", user_ar(IP=ip)), CONFIG)
        assert spec.size == 8


@pytest.mark.parametrize("changes, error, text", [
    ({"SIZE": "6"}, InputError, "power of two"),
    ({"SIZE": "0"}, InputError, "power of two"),
    ({"SIZE": "512"}, InputError, "power of two"),
    ({"SIZE": "-8"}, InputError, "positive integer"),
    ({"SIZE": None}, InputError, "SIZE is missing"),
    ({"PACKET_IP_TYPE": "private_ipv4"}, InputError, "PACKET_IP_TYPE"),
    ({"PACKET_PROJECT": None}, InputError, "PACKET_PROJECT is missing"),
    ({"PACKET_PROJECT": "../../etc"}, InputError, "UUID"),
    ({"FACILITY": None}, InputError, "FACILITY is missing"),
    ({"FACILITY": "ams1; rm"}, InputError, "facility code"),
    ({"PACKET_PROJECT": "00000000-0000-4000-8000-000000000009"}, ConfigError, "no Packet API"),
])
def test_register_refuses_bad_ars_before_any_api_call(changes, error, text):
    with pytest.raises(error) as err:
        ipreq.parse_register(request("register_address_range", user_ar(**changes)), CONFIG)
    assert text in str(err.value)


def test_global_ipv4_needs_no_facility():
    spec = ipreq.parse_register(request("register_address_range",
                                       user_ar(FACILITY=None, PACKET_IP_TYPE="global_ipv4",
                                               SIZE="1")), CONFIG)
    assert spec.facility is None and spec.ip_type == "global_ipv4"


def test_ar_template_parses_back_as_oned_reads_it():
    req = request("register_address_range",
                  user_ar(PACKET_TOKEN="tok-12345678", GATEWAY_NOTE="kept", AR_ID="3"))
    spec = ipreq.parse_register(req, Config(path="/nonexistent.yaml"))
    text = ipanswer.ar_template(spec, RID, ipaddress.IPv4Address("147.75.84.88"), 8, "ams1")
    assert text.startswith("AR = [ ") and text.endswith(" ]\n") and text.count("\n") == 1
    ar = template_vector(text, "AR")
    assert ar["TYPE"] == "IP4" and ar["IP"] == "147.75.84.88" and ar["SIZE"] == "8"
    assert ar["IPAM_MAD"] == "packet" and ar["DEPLOY_ID"] == RID
    assert ar["PACKET_TOKEN"] == "tok-12345678" and ar["PACKET_PROJECT"] == PROJECT
    assert ar["GATEWAY_NOTE"] == "kept" and "AR_ID" not in ar


def test_config_token_is_never_printed():
    spec = ipreq.parse_register(request("register_address_range", user_ar()), CONFIG)
    text = ipanswer.ar_template(spec, RID, ipaddress.IPv4Address("147.75.84.88"), 8, "ams1")
    assert "PACKET_TOKEN" not in text and "config-token" not in text


def test_values_that_cannot_be_quoted_are_refused():
    with pytest.raises(InputError):
        onetemplate.quote("X", 'a"b')
    with pytest.raises(InputError):
        onetemplate.quote("X", "a\nb")


def test_address_template():
    text = ipanswer.address_template(ipaddress.IPv4Address("147.75.84.90"))
    assert parse_template(text) == [("ADDRESS", {"IP": "147.75.84.90", "SIZE": "1"})]


def range_request(action, address=None, **changes):
    ar = {"TYPE": "IP4", "IP": "147.75.84.88", "SIZE": "8", "IPAM_MAD": "packet",
          "DEPLOY_ID": RID, "PACKET_TOKEN": "tok-12345678"}
    ar.update(changes)
    return request(action, {k: v for k, v in ar.items() if v is not None}, address)


def test_range_and_address_checks():
    req = range_request("allocate_address", {"IP": "147.75.84.95", "SIZE": "1"})
    rng = ipreq.parse_range(req, CONFIG)
    assert ipreq.parse_address(req, rng, True) == ipaddress.IPv4Address("147.75.84.95")
    for address, text in (({"IP": "147.75.84.96", "SIZE": "1"}, "not in the address range"),
                          ({"IP": "147.75.84.90", "SIZE": "2"}, "SIZE = 1"),
                          ({"IP": "bad", "SIZE": "1"}, "IPv4"),
                          ({"SIZE": "1"}, "IPv4")):
        req = range_request("allocate_address", address)
        with pytest.raises(InputError) as err:
            ipreq.parse_address(req, ipreq.parse_range(req, CONFIG), True)
        assert text in str(err.value)


@pytest.mark.parametrize("deploy_id", ["../../etc", "", None, RID + "/../x"])
def test_deploy_id_must_be_a_uuid(deploy_id):
    with pytest.raises(InputError):
        ipreq.parse_range(range_request("get_address", {"SIZE": "1"}, DEPLOY_ID=deploy_id),
                         CONFIG)


def test_missing_token_without_project_is_a_config_error():
    with pytest.raises(ConfigError):
        ipreq.parse_range(range_request("get_address", {"SIZE": "1"}, PACKET_TOKEN=None),
                         CONFIG)


def test_candidates_are_free_in_range_and_unleased_lowest_first():
    rng = ipreq.Range(RID, ipaddress.IPv4Address("147.75.84.88"), 8, None, "t")
    ips = [ipaddress.IPv4Address(f"147.75.84.{i}") for i in (95, 89, 90, 88, 100)]
    leased = {ipaddress.IPv4Address("147.75.84.89")}
    assert [str(i) for i in ipactions.pick_candidates(ips, rng, leased)] == [
        "147.75.84.88", "147.75.84.90", "147.75.84.95"]


def test_used_leases_is_read_from_the_ar():
    assert ipreq.used_leases(request(ipreq.GET, {"USED_LEASES": "3"}, {"SIZE": "1"})) == 3
    assert ipreq.used_leases(request(ipreq.GET, {"IP": "1.2.3.4"}, {"SIZE": "1"})) is None
    for bad in ("-1", "x", "1e3"):
        with pytest.raises(InputError, match="USED_LEASES"):
            ipreq.used_leases(request(ipreq.GET, {"USED_LEASES": bad}, {"SIZE": "1"}))


def test_fewer_local_leases_than_oned_uses_is_refused_naming_reconcile(tmp_path):
    from types import SimpleNamespace

    from packet_provider.core.errors import ProviderError
    from packet_provider.ipam.leases import LeaseStore

    store = LeaseStore(str(tmp_path))
    ctx = SimpleNamespace(leases=store)
    rng = ipreq.Range(RID, ipaddress.IPv4Address("147.75.84.88"), 8, None, "t")
    ar = {"DEPLOY_ID": RID, "USED_LEASES": "2"}
    with pytest.raises(ProviderError) as err:
        ipactions.check_leases_known(ctx, request(ipreq.GET, ar, {"SIZE": "1"}), rng)
    assert "packet-provider reconcile --leases" in str(err.value)
    assert "\n" not in str(err.value)
    for ip in ("147.75.84.88", "147.75.84.89"):
        store.claim(RID, ip).commit()
    ipactions.check_leases_known(ctx, request(ipreq.GET, ar, {"SIZE": "1"}), rng)
    ipactions.check_leases_known(ctx, request(ipreq.GET, {"DEPLOY_ID": RID}, {"SIZE": "1"}),
                                 rng)
