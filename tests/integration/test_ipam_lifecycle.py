"""The packet IPAM driver under one_ipam's line protocol, under concurrency, after an upgrade
from the Ruby driver, and with a register killed after it asked Packet for addresses."""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures.common import REMOTES
from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import action_data, encode_info, template_vector
from packet_provider.packet import PacketClient


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


# -- one_ipam's line protocol ------------------------------------------------------------------


class LineDriver:
    """``python3 -m packet_lab.oned.one_ipam`` as oned talks to it."""

    def __init__(self, env, threads=2):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "packet_lab.oned.one_ipam", "-i", "dummy,packet",
             "--remotes", str(REMOTES), "-t", str(threads), "-w", "20"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            text=True, bufsize=1)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, action, req, xml):
        self.send(f"{action} {req} {base64.b64encode(xml.encode()).decode()}")
        answer = self.proc.stdout.readline().rstrip("\n")
        name, result, rid, info = answer.split(" ", 3)
        assert (name, rid) == (action, str(req)), answer
        return result, info

    def close(self):
        self.send("FINALIZE")
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


def decoded(info):
    return base64.b64decode(info).decode()


def test_line_protocol_drives_a_whole_address_range_life_cycle(driver):
    one = LineDriver(driver.env)
    try:
        one.send("INIT")
        assert one.proc.stdout.readline() == "INIT SUCCESS\n"
        result, info = one.ask("REGISTER_ADDRESS_RANGE", 10, action_data(driver.user_ar(4)))
        assert result == "SUCCESS", decoded(info)
        ar = template_vector(decoded(info), "AR")
        ar["AR_ID"] = "0"
        block = [str(ip) for ip in ipaddress.IPv4Network(f"{ar['IP']}/30")]
        result, info = one.ask("GET_ADDRESS", 11, action_data(ar, {"SIZE": "1"}))
        assert result == "SUCCESS"
        assert template_vector(decoded(info), "ADDRESS") == {"IP": block[0], "SIZE": "1"}
        result, info = one.ask("ALLOCATE_ADDRESS", 12,
                               action_data(ar, {"IP": block[3], "SIZE": "1"}))
        assert (result, decoded(info)) == ("SUCCESS", "-")
        result, info = one.ask("ALLOCATE_ADDRESS", 13,
                               action_data(ar, {"IP": block[3], "SIZE": "1"}))
        assert result == "FAILURE"
        assert decoded(info) == f"packet allocate_address: address {block[3]} is already leased"
        result, info = one.ask("GET_ADDRESS", 14, action_data(ar, {"SIZE": "2"}))
        assert result == "FAILURE" and "SIZE = 1" in decoded(info)
        for req, ip in ((15, block[0]), (16, block[3]), (17, block[3])):
            result, info = one.ask("FREE_ADDRESS", req, action_data(ar, {"IP": ip, "SIZE": "1"}))
            assert (result, decoded(info)) == ("SUCCESS", "-")
        assert driver.leases(ar["DEPLOY_ID"]) == []
        # a driver not enabled with -i, and an enabled one that is not installed
        result, info = one.ask("GET_ADDRESS", 18, action_data(dict(ar, IPAM_MAD="infoblox"),
                                                              {"SIZE": "1"}))
        assert (result, info) == ("FAILURE", "IPAM driver 'infoblox' not available")
        result, info = one.ask("GET_ADDRESS", 19, action_data(dict(ar, IPAM_MAD="dummy"),
                                                              {"SIZE": "1"}))
        assert (result, info) == ("FAILURE", encode_info("-"))
        result, info = one.ask("UNREGISTER_ADDRESS_RANGE", 20, action_data(ar))
        assert (result, decoded(info)) == ("SUCCESS", "-")
        assert driver.reservations() == []
    finally:
        assert one.close() == 0


# -- concurrency -----------------------------------------------------------------------------


def test_sixteen_concurrent_get_address_on_eight_addresses(driver):
    ar = driver.register(8)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: driver.get(ar, req=100 + i), range(16)))
    won = [template_vector(r.stdout, "ADDRESS")["IP"] for r in results if r.ok]
    lost = [r for r in results if not r.ok]
    block = [str(ip) for ip in ipaddress.IPv4Network(f"{ar['IP']}/29")]
    assert sorted(won, key=ipaddress.IPv4Address) == block  # 8 distinct, the whole block
    assert len(lost) == 8
    for r in lost:
        assert r.rc == 2 and r.message == (f"packet get_address: no free address in "
                                           f"reservation {ar['DEPLOY_ID']}")
        assert r.stderr.count("ERROR MESSAGE --8<------") == 1
    assert driver.leases(ar["DEPLOY_ID"]) == sorted(block)


def test_sixteen_get_address_lines_through_one_ipam_with_sixteen_threads(driver):
    ar = driver.register(8)
    one = LineDriver(driver.env, threads=16)
    try:
        request = base64.b64encode(action_data(ar, {"SIZE": "1"}).encode()).decode()
        for req in range(16):
            one.send(f"GET_ADDRESS {200 + req} {request}")
        answers = [one.proc.stdout.readline().split() for _ in range(16)]
    finally:
        assert one.close() == 0
    assert sorted(int(a[2]) for a in answers) == list(range(200, 216))
    won = [template_vector(decoded(a[3]), "ADDRESS")["IP"] for a in answers if a[1] == "SUCCESS"]
    lost = [decoded(a[3]) for a in answers if a[1] == "FAILURE"]
    assert sorted(won, key=ipaddress.IPv4Address) == [
        str(ip) for ip in ipaddress.IPv4Network(f"{ar['IP']}/29")]
    assert lost == [f"packet get_address: no free address in reservation {ar['DEPLOY_ID']}"] * 8


# -- upgrade from the Ruby driver --------------------------------------------------------------


def test_leases_written_by_the_ruby_driver_are_respected(driver):
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        res = client.reserve(driver.packet.project_id, 4, facility="ams1")
    block = [str(ip) for ip in res.network]
    # what the Ruby driver left: its AR template and empty state files per leased address
    old_ar = {"AR_ID": "0", "TYPE": "IP4", "IP": block[0], "SIZE": "4", "IPAM_MAD": "packet",
              "DEPLOY_ID": res.id, "PACKET_TOKEN": driver.packet.token,
              "MAC": "02:00:c0:00:02:00"}
    old_dir = driver.state_dir / "packet" / res.id
    old_dir.mkdir(parents=True)
    for ip in (block[0], block[2]):
        (old_dir / ip).touch()
    got = template_vector(driver.get(old_ar).stdout, "ADDRESS")["IP"]
    assert got == block[1]
    refused = driver.allocate(old_ar, block[2])
    assert not refused.ok and "already leased" in refused.message
    assert driver.free(old_ar, block[0]).ok
    assert driver.leases(res.id) == sorted([block[1], block[2]])
    assert template_vector(driver.get(old_ar).stdout, "ADDRESS")["IP"] == block[0]
    assert driver.unregister(old_ar).ok
    assert not old_dir.exists() and driver.reservations() == []


# -- a register killed after its request reached Packet ----------------------------------------


def start_register(driver, size=4):
    data = base64.b64encode(action_data(driver.user_ar(size)).encode())
    proc = subprocess.Popen([str(REMOTES / "ipam" / "packet" / "register_address_range"), "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=driver.env)
    proc.stdin.write(data)
    proc.stdin.close()
    return proc


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


def pending(driver):
    directory = driver.state_dir / "packet" / ".pending"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_register_killed_waiting_for_the_answer_leaves_no_orphan(driver):
    other = driver.register(2)  # a range in use, which recovery must not touch
    driver.packet.fault(latency=3.0, count=1, method="POST", path="/projects/")
    proc = start_register(driver)
    assert wait_for(lambda: len(driver.reservations()) == 2)  # made; answer not yet sent
    assert proc.poll() is None
    kill(proc)
    assert len(pending(driver)) == 1
    # the next action of the driver, whatever it is, releases the orphan
    result = driver.get(other)
    assert result.ok, result.message
    assert [r["id"] for r in driver.reservations()] == [other["DEPLOY_ID"]]
    assert pending(driver) == []
    recover = [line for line in driver.log_lines() if "action=recover" in line]
    assert len(recover) == 1 and "result=released" in recover[0]
    assert driver.packet.token not in driver.log_path.read_text()


def test_register_killed_after_the_answer_arrived_leaves_no_orphan(driver):
    driver.log_path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(driver.log_path)  # the register blocks writing its log line, answer in hand
    proc = start_register(driver)
    try:
        assert wait_for(lambda: len(driver.reservations()) == 1)
        time.sleep(0.3)
        assert proc.poll() is None
    finally:
        kill(proc)
    os.unlink(driver.log_path)
    assert len(pending(driver)) == 1
    result = driver.run("REGISTER_ADDRESS_RANGE", driver.user_ar(2))
    assert result.ok, result.message
    new_id = template_vector(result.stdout, "AR")["DEPLOY_ID"]
    assert [r["id"] for r in driver.reservations()] == [new_id]
    assert pending(driver) == []


def test_a_register_in_flight_is_not_mistaken_for_an_orphan(driver):
    other = driver.register(2)
    driver.packet.fault(latency=2.5, count=1, method="POST", path="/projects/")
    proc = start_register(driver)
    assert wait_for(lambda: len(driver.reservations()) == 2)
    assert driver.get(other).ok  # runs recovery while the register is alive
    assert proc.poll() is None  # (it was: the register still waits for its answer)
    assert proc.wait(timeout=20) == 0, proc.stderr.read()
    out = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    made = template_vector(out.decode(), "AR")["DEPLOY_ID"]
    assert sorted(r["id"] for r in driver.reservations()) == sorted([other["DEPLOY_ID"], made])
    assert pending(driver) == []
