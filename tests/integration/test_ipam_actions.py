"""The packet IPAM executables run as one_ipam runs them (argv ``<action> <ID>``, stdin the
base64 action data without a newline) against the Packet emulator over HTTP: each success
output read back as an oned template, each failure a clean ERROR MESSAGE block."""

from __future__ import annotations

import base64
import ipaddress
import os
import subprocess

import pytest

from fixtures.common import REMOTES
from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import error_message, parse_template, template_vector


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


def block_of(driver, ar):
    [res] = [r for r in driver.reservations() if r["id"] == ar["DEPLOY_ID"]]
    return ipaddress.IPv4Network(res["network"])


# -- register ------------------------------------------------------------------------------


def test_register_answers_the_ar_of_the_new_block(driver):
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(8, DNS="1.1.1.1"), req=7)
    assert result.ok and result.rc == 0 and result.argv[1] == "7"
    assert result.stdin and "\n" not in result.stdin  # fed like one_ipam: no newline
    assert driver.packet.token not in " ".join(result.argv)
    attrs = parse_template(result.stdout)
    assert [name for name, _ in attrs] == ["AR"]
    ar = attrs[0][1]
    [res] = driver.reservations()
    block = ipaddress.IPv4Network(res["network"])
    assert ar["DEPLOY_ID"] == res["id"] and block.num_addresses == 8
    assert ar["TYPE"] == "IP4" and ar["IP"] == str(block.network_address)
    assert ar["SIZE"] == "8" and ar["IPAM_MAD"] == "packet"
    assert ar["PACKET_TOKEN"] == driver.packet.token  # came from the AR: echoed for oned
    assert ar["PACKET_PROJECT"] == driver.packet.project_id and ar["DNS"] == "1.1.1.1"
    assert ar["IP"] != "10.255.255.1"  # the fake starting IP did not matter
    assert res["customdata"].get("opennebula_request")  # marked, so a lost answer is found
    assert not list((driver.state_dir / "packet" / ".pending").iterdir())


def test_register_with_the_configured_token_does_not_echo_it(packet, remote_env, tmp_path):
    driver = make_driver(packet, remote_env, tmp_path, tokens={packet.project_id: packet.token})
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4, token=False))
    assert result.ok, result.message
    ar = template_vector(result.stdout, "AR")
    assert "PACKET_TOKEN" not in ar and packet.token not in result.stdout
    assert ar["SIZE"] == "4"
    ar["AR_ID"] = "0"
    got = driver.get(ar)  # later actions find the token through PACKET_PROJECT
    assert got.ok, got.message


def test_register_with_the_token_in_the_config_does_not_echo_the_ars(packet, remote_env,
                                                                      tmp_path):
    """oned logs every driver reply (DEBUG_LEVEL 3): a token the config holds is not sent
    back, even when the AR carries one too."""
    driver = make_driver(packet, remote_env, tmp_path, tokens={packet.project_id: packet.token})
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4))  # with PACKET_TOKEN
    assert result.ok, result.message
    ar = template_vector(result.stdout, "AR")
    assert "PACKET_TOKEN" not in ar and packet.token not in result.stdout
    assert " WARNING " not in driver.log_lines()[-1]
    ar["AR_ID"] = "0"
    assert driver.get(ar).ok  # later actions take the token from the config


def test_register_with_the_token_only_in_the_ar_echoes_it_and_warns(driver):
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4))
    assert result.ok, result.message
    assert template_vector(result.stdout, "AR")["PACKET_TOKEN"] == driver.packet.token
    line = driver.log_lines()[-1]
    assert " WARNING " in line and "result=ok" in line
    assert f"project {driver.packet.project_id}" in line and "tokens" in line
    assert driver.packet.token not in driver.log_path.read_text()


@pytest.mark.parametrize("changes, text", [
    ({"SIZE": "6"}, "SIZE must be a power of two"),
    ({"PACKET_IP_TYPE": "public_ipv6"}, "PACKET_IP_TYPE must be one of"),
    ({"PACKET_PROJECT": None}, "PACKET_PROJECT is missing"),
    ({"FACILITY": None}, "FACILITY is missing"),
    ({"PACKET_TOKEN": None}, "no Packet API token"),
    ({"SIZE": None}, "SIZE is missing"),
])
def test_register_refuses_bad_ranges_before_any_api_call(driver, changes, text):
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(8, **changes))
    assert not result.ok and result.rc in (2, 3)
    assert text in result.message and result.message.startswith("packet register_address_range:")
    assert result.stderr.startswith("ERROR MESSAGE --8<------\n")
    assert driver.api_calls() == [] and driver.reservations() == []


def test_register_refused_by_the_api_is_a_clean_failure(driver):
    driver.packet.fault(status=422, count=1, method="POST", path="/projects/")
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(8))
    assert not result.ok and "422" in result.message
    assert driver.reservations() == []
    assert not list((driver.state_dir / "packet" / ".pending").iterdir())


def test_register_after_429_succeeds_once(driver):
    driver.packet.fault(status=429, retry_after=0, count=1, method="POST", path="/projects/")
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(2))
    assert result.ok, result.message
    assert len(driver.reservations()) == 1


def test_register_whose_answer_is_lost_creates_one_block(driver):
    driver.packet.fault(drop_after=True, count=1, method="POST", path="/projects/")
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4))
    assert result.ok, result.message
    [res] = driver.reservations()
    assert template_vector(result.stdout, "AR")["DEPLOY_ID"] == res["id"]


# -- get / allocate / free -----------------------------------------------------------------


def test_get_address_hands_out_the_lowest_free_address(driver):
    ar = driver.register(4)
    block = list(block_of(driver, ar))
    got = [template_vector(driver.get(ar, req=i).stdout, "ADDRESS") for i in range(4)]
    assert [g["IP"] for g in got] == [str(ip) for ip in block]
    assert all(g["SIZE"] == "1" for g in got)
    assert driver.leases(ar["DEPLOY_ID"]) == sorted(str(ip) for ip in block)
    last = driver.get(ar)
    assert not last.ok and "no free address" in last.message


def test_get_address_skips_addresses_assigned_at_packet(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(4)
    block = list(block_of(driver, ar))
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], block[0])
    got = driver.get(ar)
    assert template_vector(got.stdout, "ADDRESS")["IP"] == str(block[1])


def test_get_address_of_size_two_is_refused(driver):
    ar = driver.register(4)
    result = driver.run("GET_ADDRESS", ar, {"SIZE": "2"})
    assert not result.ok and "SIZE = 1" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_allocate_address_claims_that_address_once(driver):
    ar = driver.register(4)
    ip = str(list(block_of(driver, ar))[2])
    first = driver.allocate(ar, ip)
    assert first.ok and first.stdout == "" and first.info == "-"
    assert driver.leases(ar["DEPLOY_ID"]) == [ip]
    again = driver.allocate(ar, ip)
    assert not again.ok and "already leased" in again.message
    # get_address then never offers it
    offered = {template_vector(driver.get(ar).stdout, "ADDRESS")["IP"] for _ in range(3)}
    assert ip not in offered and len(offered) == 3


def test_allocate_address_outside_the_block_or_assigned_is_refused(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(4)
    block = list(block_of(driver, ar))
    outside = str(block[-1] + 1)
    result = driver.allocate(ar, outside)
    assert not result.ok and "not in the address range" in result.message
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[1], block[1])
    result = driver.allocate(ar, str(block[1]))
    assert not result.ok and "not free at Packet" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == []
    result = driver.allocate(ar, str(block[0]), size="4")
    assert not result.ok and "SIZE = 1" in result.message


def test_free_address_unassigns_and_removes_the_lease(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(2)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[2], ipaddress.IPv4Address(ip))
    assert len(driver.assignments()) == 1
    result = driver.free(ar, ip)
    assert result.ok and result.stdout == "", result.message
    assert driver.assignments() == [] and driver.leases(ar["DEPLOY_ID"]) == []
    again = driver.free(ar, ip)  # neither leased nor assigned: still success
    assert again.ok, again.message


# -- unregister ----------------------------------------------------------------------------


def test_unregister_unassigns_leftovers_releases_and_drops_leases(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(4)
    ips = [template_vector(driver.get(ar).stdout, "ADDRESS")["IP"] for _ in range(2)]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(ips[0]))
    result = driver.unregister(ar)
    assert result.ok and result.stdout == "", result.message
    assert driver.reservations() == [] and driver.assignments() == []
    assert not (driver.state_dir / "packet" / ar["DEPLOY_ID"]).exists()
    assert "unassigned leftover" in driver.log_lines()[-1]


def test_unregister_of_a_released_range_is_success_with_a_warning(driver):
    ar = driver.register(2)
    assert driver.unregister(ar).ok
    again = driver.unregister(ar)
    assert again.ok, again.message
    line = driver.log_lines()[-1]
    assert " WARNING " in line and "already released" in line and "result=ok" in line


# -- failure paths ---------------------------------------------------------------------------


def test_api_down_is_a_clean_failure(packet, remote_env, tmp_path):
    driver = make_driver(packet, remote_env, tmp_path, api_url="http://127.0.0.1:9")
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(8))
    assert not result.ok and result.rc == 1 and "unreachable" in result.message
    ar = {"TYPE": "IP4", "IP": "192.0.2.0", "SIZE": "8", "IPAM_MAD": "packet",
          "DEPLOY_ID": "99d5d741-3756-4ebe-a014-34ea7a2e2be1", "PACKET_TOKEN": packet.token}
    result = driver.get(ar)
    assert not result.ok and "unreachable" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_wrong_token_is_401_without_the_token(driver):
    ar = driver.register(2)
    ar["PACKET_TOKEN"] = "wrong-token-0123456789abcdef"
    result = driver.get(ar)
    assert not result.ok and "401" in result.message
    assert "wrong-token" not in result.stderr
    assert "wrong-token" not in driver.log_path.read_text()


def test_unknown_reservation_is_404(driver):
    ar = driver.register(2)
    ar["DEPLOY_ID"] = "00000000-0000-4000-8000-000000000001"
    result = driver.get(ar)
    assert not result.ok and "404" in result.message
    result = driver.allocate(ar, ar["IP"])
    assert not result.ok and "404" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_429_then_success(driver):
    ar = driver.register(2)
    driver.packet.fault(status=429, retry_after=0, count=1, method="GET",
                        path=f"/ips/{ar['DEPLOY_ID']}/available")
    result = driver.get(ar)
    assert result.ok, result.message
    statuses = [r["status"] for r in driver.packet.requests() if "/available" in r["path"]]
    assert statuses == [429, 200]


def test_422_on_unassign_fails_free_and_keeps_the_lease(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(2)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(ip))
    driver.packet.fault(status=422, count=1, method="DELETE", path="/ips/")
    result = driver.free(ar, ip)
    assert not result.ok and "422" in result.message
    assert driver.leases(ar["DEPLOY_ID"]) == [ip]  # nothing half-applied


@pytest.mark.parametrize("stdin", [b"", b"%%%not base64%%%", b"PElQQU0=",
                                   base64.b64encode(b"<IPAM_DRIVER_ACTION_DATA><AR>"),
                                   base64.b64encode(b"<OTHER><AR/></OTHER>"),
                                   base64.b64encode(b'<!DOCTYPE d [<!ENTITY e SYSTEM '
                                                    b'"file:///etc/passwd">]>'
                                                    b"<IPAM_DRIVER_ACTION_DATA><AR>"
                                                    b"<IPAM_MAD>packet</IPAM_MAD>&e;</AR>"
                                                    b"</IPAM_DRIVER_ACTION_DATA>")])
def test_malformed_stdin_is_a_clean_failure(driver, stdin):
    # one_ipam would not even run the script for most of these: run it directly
    proc = subprocess.run([str(REMOTES / "ipam" / "packet" / "get_address"), "3"], input=stdin,
                          capture_output=True, env=driver.env, timeout=30)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""
    assert err.startswith("ERROR MESSAGE --8<------\n") and "Traceback" not in err
    assert len(err.splitlines()) == 3 and "passwd" not in err.replace("file:///etc/passwd", "")
    assert driver.api_calls() == []


def test_missing_attributes_are_named(driver):
    ar = driver.register(2)
    for name, text in (("DEPLOY_ID", "DEPLOY_ID must be a UUID"), ("IP", "AR IP"),
                       ("PACKET_TOKEN", "no Packet API token")):
        broken = {k: v for k, v in ar.items() if k != name}
        if name == "PACKET_TOKEN":
            broken.pop("PACKET_PROJECT")
        result = driver.get(broken)
        assert not result.ok and text in result.message, result.message


def test_path_tricks_in_deploy_id_and_ip_touch_nothing(driver, tmp_path):
    ar = driver.register(2)
    evil = dict(ar, DEPLOY_ID="../../etc")
    for result in (driver.get(evil), driver.allocate(evil, ar["IP"]), driver.free(evil, ar["IP"]),
                   driver.unregister(evil)):
        assert not result.ok and result.rc == 2 and "DEPLOY_ID must be a UUID" in result.message
    result = driver.allocate(ar, "../../../tmp/x")
    assert not result.ok and "IPv4" in result.message
    assert sorted(os.listdir(driver.state_dir / "packet")) == [".pending"]
    assert not (tmp_path / "etc").exists()


# -- logs ------------------------------------------------------------------------------------


def test_one_log_line_per_action_without_the_token(driver):
    ar = driver.register(2)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    driver.free(ar, ip)
    driver.allocate(ar, "203.0.113.77")
    lines = driver.log_lines()
    assert len(lines) == 4
    for line, action in zip(lines, ("register_address_range", "get_address", "free_address",
                                    "allocate_address")):
        assert f"action={action} " in line and f"reservation={ar['DEPLOY_ID']}" in line
        assert "duration_ms=" in line and "result=" in line
    assert f"ip={ip} " in lines[1] and "result=error" in lines[3]
    assert driver.packet.token not in driver.log_path.read_text()


def test_error_block_is_what_one_ipam_reports(driver):
    result = driver.run("GET_ADDRESS", {"IPAM_MAD": "packet"}, {"SIZE": "1"})
    assert not result.ok
    assert result.info == error_message(result.stderr) == result.message
    assert result.message.startswith("packet get_address: ")


def test_unwritable_state_fails_register_before_any_api_call(packet, remote_env, tmp_path):
    driver = make_driver(packet, remote_env, tmp_path)
    driver.state_dir.write_text("a file where the state directory should be")
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4))
    assert not result.ok and result.rc == 4 and "state directory" in result.message
    assert driver.api_calls() == [] and driver.reservations() == []


class BrokenStdout:
    """A stdout whose reader went away (oned's pipe closed)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def run_in_process(driver, action, ar, address=None, stdout=None):
    import io

    from packet_lab.oned.one_ipam import action_data
    from packet_provider.ipam import main as ipam

    data = io.BytesIO(base64.b64encode(action_data(ar, address).encode()))
    env = {"PACKET_PROVIDER_CONFIG": str(driver.config_path)}
    return ipam.run_action(action, ["9"], data, stdout or io.StringIO(), env=env)


def test_register_whose_answer_cannot_be_written_releases_its_block(driver):
    with pytest.raises(BrokenPipeError):
        run_in_process(driver, "register_address_range", driver.user_ar(4),
                       stdout=BrokenStdout())
    assert driver.reservations() == []
    assert not list((driver.state_dir / "packet" / ".pending").iterdir())


def test_get_address_whose_answer_cannot_be_written_drops_its_lease(driver):
    ar = driver.register(2)
    with pytest.raises(BrokenPipeError):
        run_in_process(driver, "get_address", ar, {"SIZE": "1"}, stdout=BrokenStdout())
    assert driver.leases(ar["DEPLOY_ID"]) == []
    assert "result=error" in driver.log_lines()[-1]
