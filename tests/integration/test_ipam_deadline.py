"""Every IPAM action ends within ``action_deadline`` (oned drops a request about 90 s after
sending it), whatever the API does: slow answers, 429s with long Retry-After, under the
default retry policy (30 s read timeout, 3 retries, Retry-After honoured up to 30 s). An
action that cannot finish in time fails with one line and leaves nothing behind: a block
reserved too late is released by the next action, a lease claim is dropped."""

from __future__ import annotations

import ipaddress
import time

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import template_vector

DEADLINE = 3.0
BOUND = DEADLINE + 2.5  # the interpreter's start-up on a loaded 2-core box comes on top
SLOW = 8.0  # an answer this late would have been waited for under the old policy


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path, retries=3, backoff=0.5, read_timeout=30,
                       max_retry_after=30, action_deadline=DEADLINE)


def timed(run):
    started = time.monotonic()
    result = run()
    return result, time.monotonic() - started


def assert_clean_failure(result, took):
    assert not result.ok and result.rc not in (0, 70), result.stderr
    assert "Traceback" not in result.stderr and "\n" not in result.message
    assert took < BOUND, f"took {took:.1f}s with action_deadline {DEADLINE}"


def test_register_on_a_slow_api_fails_in_time_and_its_late_block_is_released(driver):
    other = driver.register(2)  # a range for the next action
    driver.packet.fault(method="POST", path="/projects/", latency=SLOW, count=10)
    result, took = timed(lambda: driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(4)))
    assert_clean_failure(result, took)
    assert "deadline" in result.message
    time.sleep(SLOW - took + 0.5)  # let the emulator finish making the block
    driver.packet.admin.clear_faults()
    late = [r["id"] for r in driver.reservations() if r["id"] != other["DEPLOY_ID"]]
    assert len(late) == 1, "the POST was meant to act before its late answer"
    assert driver.get(other).ok  # the next action releases the block oned never got
    assert [r["id"] for r in driver.reservations()] == [other["DEPLOY_ID"]]


@pytest.mark.parametrize("fault", [
    {"latency": SLOW, "count": 100},
    {"status": 429, "retry_after": 4, "count": 100},
    {"status": 503, "count": 100},
])
def test_get_address_on_a_slow_api_fails_in_time_without_a_lease(driver, fault):
    ar = driver.register(4)
    driver.packet.fault(method="GET", path="/ips/", **fault)
    result, took = timed(lambda: driver.get(ar))
    assert_clean_failure(result, took)
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_allocate_address_on_a_slow_api_fails_in_time_without_a_lease(driver):
    ar = driver.register(4)
    ip = str(ipaddress.IPv4Address(ar["IP"]) + 1)
    driver.packet.fault(method="GET", path="/ips/", latency=SLOW, count=100)
    result, took = timed(lambda: driver.allocate(ar, ip))
    assert_clean_failure(result, took)
    assert driver.leases(ar["DEPLOY_ID"]) == []


def test_unregister_on_a_slow_api_fails_in_time_and_keeps_the_leases(driver):
    ar = driver.register(4)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    driver.packet.fault(method="GET", path="/ips/", latency=SLOW, count=100)
    result, took = timed(lambda: driver.unregister(ar))
    assert_clean_failure(result, took)
    assert driver.leases(ar["DEPLOY_ID"]) == [ip]
    assert ar["DEPLOY_ID"] in [r["id"] for r in driver.reservations()]


def test_a_retry_that_fits_in_the_deadline_is_still_made(driver):
    ar = driver.register(4)
    driver.packet.fault(method="GET", path="/ips/", status=429, retry_after=1, count=1)
    result, took = timed(lambda: driver.get(ar))
    assert result.ok, result.message
    assert 1.0 <= took < BOUND


def test_free_address_on_a_slow_api_succeeds_in_time_with_its_unassignment_owed(driver):
    from packet_provider.packet import PacketClient

    ar = driver.register(4)
    ip = template_vector(driver.get(ar).stdout, "ADDRESS")["IP"]
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.assign(driver.packet.device_ids[0], ipaddress.IPv4Address(ip))
    driver.packet.fault(method="GET", path="/ips/", latency=SLOW, count=100)
    result, took = timed(lambda: driver.free(ar, ip))
    assert result.ok, result.message
    assert took < BOUND, f"took {took:.1f}s with action_deadline {DEADLINE}"
    assert driver.leases(ar["DEPLOY_ID"]) == []
    assert (driver.state_dir / "packet" / ".unassign" / ar["DEPLOY_ID"] / ip).exists()
