"""packet_provider.ops.reconcile with a fake oned: each fix reads again what it depends on
just before it writes."""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
import xml.etree.ElementTree as ET  # noqa: S405 - our own test documents

from packet_provider.config import Config
from packet_provider.ipam.leases import LeaseStore
from packet_provider.ops import model as m
from packet_provider.ops.reconcile import Reconciler

RID = str(uuid.uuid4())
IP = ipaddress.IPv4Address("203.0.113.9")


class FakeOned:
    """one.vn.info of network 5, whose AR 0 leases ``leased`` now."""

    def __init__(self, leased=()) -> None:
        self.leased = list(leased)
        self.calls = 0

    def vnet(self, vnet_id: int) -> ET.Element:
        self.calls += 1
        leases = "".join(f"<LEASE><IP>{ip}</IP><VM>3</VM></LEASE>" for ip in self.leased)
        return ET.fromstring(f"<VNET><ID>{vnet_id}</ID><AR_POOL><AR><AR_ID>0</AR_ID>"  # noqa: S314
                             f"<LEASES>{leases}</LEASES></AR></AR_POOL></VNET>")


def reconciler(tmp_path, oned, **kw) -> Reconciler:
    config = Config(path="x", ipam_state_dir=str(tmp_path))
    snap = m.Snapshot(ranges=[m.Range(5, 0, RID, None, "203.0.113.8", "8", frozenset({IP}))])
    return Reconciler(config, oned, lambda token: None, snap, **kw)


def missing() -> m.Finding:
    return m.Finding(m.MISSING_LEASE_FILE, "x", RID, IP, vnet_id=5, ar_id=0)


def stale() -> m.Finding:
    return m.Finding(m.STALE_LEASE_FILE, "x", RID, IP, vnet_id=5, ar_id=0)


def test_missing_lease_file_written_only_while_oned_still_leases_it(tmp_path):
    store = LeaseStore(str(tmp_path))
    report = reconciler(tmp_path, FakeOned(leased=[])).run([missing()])
    assert report.left and not report.fixed
    assert not store.is_leased(RID, IP)  # a free_address removed it: it must not come back
    oned = FakeOned(leased=[IP])
    report = reconciler(tmp_path, oned).run([missing(), missing()])
    assert store.is_leased(RID, IP) and oned.calls == 1  # the network read once per run
    assert open(store.path(RID, IP), "rb").read().startswith(b"claimed ")


def test_dry_run_writes_nothing(tmp_path):
    report = reconciler(tmp_path, FakeOned(leased=[IP]), dry_run=True).run([missing()])
    assert report.fixed == [f"would: write the lease file of {IP} in {RID}"]
    assert not LeaseStore(str(tmp_path)).is_leased(RID, IP)


def test_stale_lease_file_kept_when_young_or_leased_again(tmp_path):
    store = LeaseStore(str(tmp_path))
    store.claim(RID, IP).commit()
    path = store.path(RID, IP)
    report = reconciler(tmp_path, FakeOned()).run([stale()])
    assert os.path.exists(path) and "ago" in report.left[0]  # younger than the grace
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    report = reconciler(tmp_path, FakeOned(leased=[IP])).run([stale()])
    assert os.path.exists(path) and "oned leases" in report.left[0]
    report = reconciler(tmp_path, FakeOned()).run([stale()])
    assert not os.path.exists(path) and report.fixed
