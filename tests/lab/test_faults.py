"""The fault model both emulators share (packet_lab.faults)."""

from __future__ import annotations

import pytest

from packet_lab.faults import ALWAYS, Fault, Faults


def test_a_counted_fault_hits_that_many_matching_requests_then_goes():
    faults = Faults()
    fault = faults.add(Fault(method="POST", target="/devices/", status=503, count=2))
    assert faults.take("GET", "/devices/x/ips") is None
    assert faults.take("POST", "/projects/p/ips") is None
    assert faults.take("POST", "/devices/x/ips") is fault
    assert faults.take("POST", "/devices/y/ips") is fault
    assert faults.take("POST", "/devices/z/ips") is None
    assert fault.hits == 2 and faults.snapshot() == []


def test_an_always_fault_stays_and_a_rate_fault_is_repeatable_with_its_seed():
    faults = Faults()
    faults.add(Fault(target="one.vm.", code=0x2000, count=ALWAYS))
    assert all(faults.take("", "one.vm.info") for _ in range(50))
    assert faults.take("", "one.vnet.info") is None

    def draws(seed):
        rated = Faults()
        rated.add(Fault(status=500, rate=0.5, seed=seed))
        return [rated.take("GET", "/ips/x") is not None for _ in range(40)]

    first = draws(7)
    assert first == draws(7) and 5 < sum(first) < 35


def test_a_fault_is_one_kind_of_failure():
    with pytest.raises(ValueError):
        Fault(status=500, drop=True)
    assert Fault(latency=1.0, count=1).kind() == "latency"
    assert not Fault(latency=1.0).fails and Fault(drop=True).fails
    assert Fault(code=0x400).kind() == "error 0x400"
