"""Issue 15: the number of Packet API requests an IPAM action makes does not grow with the
number of addresses its block has assigned (counted in the emulator's request log)."""

from __future__ import annotations

import ipaddress
from typing import Dict, List

import pytest

from integration.ipam_support import make_driver
from packet_lab.oned.one_ipam import template_vector
from packet_provider.packet import PacketClient

# at most, per action (unregister: plus one DELETE per address it must unassign)
LIMITS = {"REGISTER_ADDRESS_RANGE": 1, "GET_ADDRESS": 2, "ALLOCATE_ADDRESS": 2,
          "FREE_ADDRESS": 2, "UNREGISTER_ADDRESS_RANGE": 2}


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


def assign_all_but(driver, ar: Dict[str, str], keep: int) -> List[str]:
    """Assign every address of the range but the last ``keep`` ones to the devices, with a
    lease each (as oned would have them); returns the addresses assigned."""
    first = ipaddress.IPv4Address(ar["IP"])
    size = int(ar["SIZE"])
    lease_dir = driver.state_dir / "packet" / ar["DEPLOY_ID"]
    lease_dir.mkdir(parents=True, exist_ok=True)
    done = []
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        for index in range(size - keep):
            ip = first + index
            client.assign(driver.packet.device_ids[index % 3], ip)
            (lease_dir / str(ip)).write_text("claimed test\n")
            done.append(str(ip))
    return done


def calls(driver, action) -> List[str]:
    driver.packet.clear_requests()
    result = action()
    assert result.ok, result.message
    return [f"{r['method']} {r['path']}" for r in driver.api_calls()]


@pytest.mark.parametrize("size", [4, 256])
def test_api_calls_per_action_do_not_grow_with_the_block(driver, size):
    driver.packet.clear_requests()
    ar = driver.register(size)
    register = [f"{r['method']} {r['path']}" for r in driver.api_calls()]
    assert len(register) <= LIMITS["REGISTER_ADDRESS_RANGE"], register
    assigned = assign_all_but(driver, ar, keep=2)
    first_free = str(ipaddress.IPv4Address(ar["IP"]) + size - 2)

    driver.packet.clear_requests()
    answer = driver.get(ar)
    assert answer.ok, answer.message
    got = [f"{r['method']} {r['path']}" for r in driver.api_calls()]
    assert len(got) <= LIMITS["GET_ADDRESS"], got
    assert template_vector(answer.stdout, "ADDRESS")["IP"] == first_free

    freed = calls(driver, lambda: driver.free(ar, first_free))  # leased, not assigned
    assert len(freed) <= LIMITS["FREE_ADDRESS"], freed

    allocated = calls(driver, lambda: driver.allocate(ar, first_free))
    assert len(allocated) <= LIMITS["ALLOCATE_ADDRESS"], allocated

    # an assigned address: free unassigns it (one DELETE more, still at most 2 requests)
    freed_assigned = calls(driver, lambda: driver.free(ar, assigned[-1]))
    assert len(freed_assigned) <= LIMITS["FREE_ADDRESS"], freed_assigned
    assert any(c.startswith("DELETE") for c in freed_assigned)

    still = len(assigned) - 1
    gone = calls(driver, lambda: driver.unregister(ar))
    deletes = [c for c in gone if c.startswith("DELETE")]
    assert len(deletes) == still + 1  # each address left assigned, then the block
    assert len(gone) <= LIMITS["UNREGISTER_ADDRESS_RANGE"] + still, gone
    print(f"size={size} register={len(register)} get={len(got)} free={len(freed)} "
          f"allocate={len(allocated)} free_assigned={len(freed_assigned)} "
          f"unregister={len(gone)} (unassigned {still})")


@pytest.mark.parametrize("size", [4, 256])
def test_settling_an_owed_unassignment_reads_the_block_once(driver, size):
    """A free during an outage owes an unassignment; the next action makes it with one read
    of the block (and its DELETE), however many addresses the block has assigned."""
    ar = driver.register(size)
    assigned = assign_all_but(driver, ar, keep=2)
    driver.packet.fault(count=1000, status=503)
    deferred = driver.free(ar, assigned[0])
    driver.packet.admin.clear_faults()
    assert deferred.ok and "deferred" in driver.log_lines()[-1]

    got = calls(driver, lambda: driver.get(ar))
    reads = [c for c in got if c.startswith("GET")]
    deletes = [c for c in got if c.startswith("DELETE")]
    assert len(deletes) == 1  # the owed unassignment
    assert len(reads) <= 1 + LIMITS["GET_ADDRESS"], got  # the recovery's read, the action's
    routed = {str(ipaddress.ip_interface(a["address"]).ip) for a in driver.assignments()}
    assert assigned[0] not in routed and len(routed) == len(assigned) - 1
