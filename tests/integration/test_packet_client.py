"""The Packet API client against the emulator over real HTTP: every call, every error class,
the retry policy, and lost answers that must not create anything twice."""

import ipaddress
import re
import time

import pytest

from packet_provider import packet as api
from packet_provider.core.log import redact


def client_for(packet, token=None, retries=2, backoff=0.01, read_timeout=5.0, **kw):
    return api.PacketClient(packet.url, token or packet.token, connect_timeout=2.0,
                            read_timeout=read_timeout, retries=retries, backoff=backoff, **kw)


def writes(packet, method):
    return [r for r in packet.requests() if r["method"] == method]


@pytest.fixture
def client(packet):
    with client_for(packet) as c:
        yield c


def test_reserve_returns_a_block_of_the_requested_size(client, packet):
    res = client.reserve(packet.project_id, 8, facility="ams1")
    assert res.size == 8 and res.network.prefixlen == 29
    assert res.type == "public_ipv4" and res.state == "created"
    assert res.project_id == packet.project_id and res.facility == "ams1"
    assert res.first_address == res.network.network_address
    again = client.get_reservation(res.id)
    assert again.network == res.network and again.customdata == res.customdata


def test_list_follows_pagination(client, packet):
    # the client asks for 50 a page: 53 reservations need a second page
    made = {client.reserve(packet.project_id, 1, facility="ams1").id for _ in range(53)}
    listed = [r.id for r in client.list_reservations(packet.project_id)]
    assert set(listed) == made and len(listed) == len(made)
    pages = [r for r in packet.requests()
             if r["method"] == "GET" and re.search(r"[?&]page=2(&|$)", r["path"])]
    assert pages, "the second page was never requested"


def test_available_assign_list_unassign_release(client, packet):
    res = client.reserve(packet.project_id, 4, facility="ams1")
    free = client.available(res.id)
    assert free == list(res.network)
    device = packet.device_ids[0]
    assignment = client.assign(device, free[1])
    assert assignment.address == free[1] and assignment.device_id == device
    assert assignment.reservation_id == res.id
    assert free[1] not in client.available(res.id)
    assert [a.id for a in client.device_assignments(device)] == [assignment.id]
    assert client.find_assignment(res.id, free[1]).id == assignment.id
    assert client.find_assignment(res.id, free[2]) is None
    assert client.get_assignment(assignment.id).address == free[1]
    with pytest.raises(api.Unprocessable):
        client.release(res.id)
    client.unassign(assignment.id)
    client.unassign(assignment.id)  # already gone: fine by default
    with pytest.raises(api.NotFound):
        client.unassign(assignment.id, missing_ok=False)
    client.release(res.id)
    with pytest.raises(api.NotFound):
        client.get_reservation(res.id)


def test_second_assignment_of_an_address_is_refused(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    ip = res.first_address
    client.assign(packet.device_ids[0], ip)
    for device in packet.device_ids:
        with pytest.raises(api.Unprocessable):
            client.assign(device, ip)


def test_bad_token_is_an_auth_error_without_the_token(packet):
    with client_for(packet, token="wrong-token-0123456789") as bad:
        with pytest.raises(api.AuthError) as err:
            bad.list_reservations(packet.project_id)
    assert err.value.status == 401
    assert "wrong-token-0123456789" not in str(err.value)


def test_unknown_ids_are_not_found(client, packet):
    unknown = "00000000-0000-4000-8000-000000000001"
    for call in (lambda: client.get_reservation(unknown),
                 lambda: client.available(unknown),
                 lambda: client.device_assignments(unknown),
                 lambda: client.list_reservations(unknown)):
        with pytest.raises(api.NotFound):
            call()


def test_refused_request_is_unprocessable_with_the_api_text(client, packet):
    with pytest.raises(api.Unprocessable) as err:
        client.reserve(packet.project_id, 6, facility="ams1")
    assert err.value.status == 422 and "422" in str(err.value)


def test_429_with_retry_after_is_honoured_then_succeeds(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    packet.fault(status=429, retry_after=1, count=1, method="GET", path=f"/ips/{res.id}")
    start = time.monotonic()
    assert client.get_reservation(res.id).id == res.id
    assert time.monotonic() - start >= 0.9


def test_429_on_post_waits_and_creates_once(client, packet):
    packet.fault(status=429, retry_after=0, count=1, method="POST", path="/projects/")
    res = client.reserve(packet.project_id, 2, facility="ams1")
    assert res.size == 2
    assert len([r for r in packet.state()["reservations"]]) == 1


def test_5xx_is_retried_a_bounded_number_of_times(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    packet.fault(status=503, count=2, method="GET", path=f"/ips/{res.id}")
    assert client.get_reservation(res.id).id == res.id
    packet.fault(status=500, count=50, method="GET", path=f"/ips/{res.id}")
    before = len(packet.requests())
    with pytest.raises(api.ServerError) as err:
        client.get_reservation(res.id)
    assert err.value.status == 500
    assert len(packet.requests()) - before == 3  # one try and two retries, no more


def test_persistent_429_becomes_rate_limited(client, packet):
    packet.fault(status=429, retry_after=0, count=50, method="GET", path="/projects/")
    with pytest.raises(api.RateLimited):
        client.list_reservations(packet.project_id)


def test_lost_reservation_answer_is_recovered_not_duplicated(client, packet):
    packet.fault(drop_after=True, count=1, method="POST", path="/projects/")
    res = client.reserve(packet.project_id, 4, facility="ams1")
    state = packet.state()["reservations"]
    assert len(state) == 1 and res.size == 4
    assert len(writes(packet, "POST")) == 1


def test_timed_out_reservation_is_recovered_not_duplicated(packet):
    packet.fault(latency=1.5, count=1, method="POST", path="/projects/")
    with client_for(packet, read_timeout=0.5) as slow:
        res = slow.reserve(packet.project_id, 2, facility="ams1")
    time.sleep(1.2)  # let the slow request finish on the server
    assert [r["id"] for r in packet.state()["reservations"]] == [res.id]


def test_lost_assign_answer_is_recovered_not_duplicated(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    packet.fault(drop_after=True, count=1, method="POST", path="/devices/")
    assignment = client.assign(packet.device_ids[1], res.first_address)
    assert assignment.device_id == packet.device_ids[1]
    assert len(packet.state()["assignments"]) == 1


def test_dropped_get_is_retried(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    packet.fault(drop=True, count=1, method="GET", path=f"/ips/{res.id}/available")
    assert client.available(res.id) == list(res.network)


def test_unreachable_api_is_unavailable_quickly(packet):
    with api.PacketClient("http://127.0.0.1:9", packet.token, connect_timeout=0.5,
                          retries=1, backoff=0.01) as down:
        start = time.monotonic()
        with pytest.raises(api.Unavailable) as err:
            down.list_reservations(packet.project_id)
    assert time.monotonic() - start < 5
    assert packet.token not in str(err.value)


def test_invalid_ids_never_reach_a_url(client):
    for bad in ("../../etc", "x/../y", ""):
        with pytest.raises(api.InputError):
            client.get_reservation(bad)
        with pytest.raises(api.InputError):
            client.assign(bad, ipaddress.IPv4Address("192.0.2.1"))


def test_client_log_lines_name_calls_but_not_the_token(packet, tmp_path):
    from packet_provider.core import log

    logger = log.setup("client-test", str(tmp_path))
    with client_for(packet, logger=logger) as c:
        c.list_reservations(packet.project_id)
    text = (tmp_path / "client-test.log").read_text()
    assert "api GET /projects/" in text and "status=200" in text
    assert packet.token not in text and packet.token not in redact(text)


def test_unparsable_retry_after_falls_back_to_the_backoff(client, packet):
    res = client.reserve(packet.project_id, 2, facility="ams1")
    packet.fault(status=429, retry_after="soon", count=1, method="GET", path=f"/ips/{res.id}")
    assert client.get_reservation(res.id).id == res.id
    assert [r["status"] for r in packet.requests()[-2:]] == [429, 200]
