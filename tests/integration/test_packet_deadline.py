"""The Packet client under a deadline (the IPAM driver's ``action_deadline``), against the
emulator's latency and 429 faults: no request is sent, no retry made and no wait started
that cannot end before the deadline, and every read timeout is cut to the time left. Also
the caps on the waits between the transport's retries (``max_retry_after``), which urllib3
lost after the first retry."""

from __future__ import annotations

import ipaddress
import time

import pytest

from packet_provider.core.errors import DeadlineError
from packet_provider.packet import DeadlineExceeded, PacketClient, RateLimited

SLACK = 1.0  # seconds a call may overrun a bound on a loaded 2-core box


def client(packet, **options):
    kw = dict(read_timeout=30.0, retries=3, backoff=0.5, max_retry_after=30.0)
    kw.update(options)
    return PacketClient(packet.url, packet.token, **kw)


def api_calls(packet, method="GET"):
    return [r for r in packet.requests() if r["method"] == method
            and not r["path"].startswith("/_emulator")]


def timed(call):
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except Exception as err:  # noqa: BLE001 - returned for the test to check
        return err, time.monotonic() - started


@pytest.fixture
def block(packet):
    with client(packet) as c:
        return c.reserve(packet.project_id, 4, facility="ams1")


def test_a_slow_answer_is_cut_at_the_deadline(packet, block):
    packet.fault(method="GET", path="/ips/", latency=6, count=10)
    with client(packet, deadline=time.monotonic() + 1.5) as c:
        err, took = timed(lambda: c.available(block.id))
    assert isinstance(err, DeadlineExceeded) and isinstance(err, DeadlineError), err
    assert "deadline" in str(err) and packet.token not in str(err)
    assert took < 1.5 + SLACK, took


def test_retry_after_waits_that_do_not_fit_are_not_started(packet, block):
    packet.fault(method="GET", path="/ips/", status=429, retry_after=3, count=100)
    with client(packet, deadline=time.monotonic() + 2.0) as c:
        err, took = timed(lambda: c.get_reservation(block.id))
    assert isinstance(err, RateLimited), err  # the API's own answer, not a vague timeout
    assert took < 2.0 + SLACK, took
    assert len(api_calls(packet)) == 1  # a 3 s wait cannot fit in 2 s: no retry


def test_retries_that_fit_are_still_made(packet, block):
    packet.fault(method="GET", path="/ips/", status=429, retry_after=1, count=1)
    with client(packet, deadline=time.monotonic() + 10) as c:
        got, took = timed(lambda: c.get_reservation(block.id))
    assert got.id == block.id and 1.0 <= took < 1.0 + SLACK * 3


def test_post_retries_and_recovery_stop_at_the_deadline(packet):
    # the POST acts at once and answers after 6 s; the client must neither wait for it nor
    # send a second one after the deadline
    packet.fault(method="POST", path="/projects/", latency=6, count=10)
    with client(packet, deadline=time.monotonic() + 1.5) as c:
        err, took = timed(lambda: c.reserve(packet.project_id, 4, facility="ams1"))
    assert isinstance(err, DeadlineExceeded), err
    assert took < 1.5 + SLACK, took
    assert len(api_calls(packet, "POST")) == 1


def test_nothing_is_sent_once_the_deadline_is_past(packet, block):
    packet.clear_requests()
    with client(packet, deadline=time.monotonic()) as c:
        err, _took = timed(lambda: c.unassign("c2a4e6f8-1b3d-4f5a-9c7e-0d2b4a6c8e1f"))
        assert isinstance(err, DeadlineExceeded), err
        err, _took = timed(lambda: c.assign(packet.device_ids[0],
                                            ipaddress.IPv4Address(block.first_address)))
        assert isinstance(err, DeadlineExceeded), err
    assert api_calls(packet, "DELETE") == [] and api_calls(packet, "POST") == []


def test_max_retry_after_caps_every_retry_after_wait(packet, block):
    # urllib3 makes a new Retry object per attempt: the cap must survive that
    packet.fault(method="GET", path="/ips/", status=429, retry_after=4, count=2)
    with client(packet, max_retry_after=0.2) as c:
        got, took = timed(lambda: c.get_reservation(block.id))
    assert got.id == block.id and took < 0.4 + SLACK, took


def test_max_retry_after_caps_the_backoff_too(packet, block):
    packet.fault(method="GET", path="/ips/", status=503, count=2)
    with client(packet, backoff=10.0, max_retry_after=0.2) as c:
        got, took = timed(lambda: c.get_reservation(block.id))
    assert got.id == block.id and took < 0.4 + SLACK, took
