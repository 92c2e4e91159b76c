"""IPAM faults that only the real oned shows: what it does with a free_address during a
Packet outage, and what of the driver's replies it writes to oned.log."""

from __future__ import annotations

import re
import secrets
import time
import xml.etree.ElementTree as ET  # noqa: S405 - oned's answers

import pytest

from real_one.cloud import (
    CliError,
    Cloud,
    private_vnet,
    public_vnet,
    wait_for,
    with_base64_decoded,
)
from real_one.test_lifecycle import vm_template

ACTIVE, RUNNING, DONE = 3, 3, 6


def test_free_during_a_packet_outage_loses_no_address(cloud: Cloud, packet_side) -> None:
    """oned never retries a free: the driver must succeed (oned drops its lease) and make
    the unassignment once Packet answers again; nothing stays routed that nobody holds."""
    nets = {"priv": cloud.create("vnet", private_vnet("out-priv", "10.11.0.10", 20)),
            "pub": cloud.create("vnet", public_vnet("out-pub", packet_side.project, 2))}
    vm = cloud.deploy_vm(vm_template("out", nets), cloud.hosts[0])
    cloud.wait_vm(vm, ACTIVE, RUNNING)
    (ip,) = cloud.aliases(vm).values()
    wait_for("the alias routed", lambda: ip in packet_side.placement())
    packet_side.admin.fault(status=503, rate=1.0, method="DELETE", path="/ips/")
    try:
        cloud.cli("onevm", "terminate", "--hard", str(vm))
        cloud.wait_vm(vm, DONE)
        wait_for("oned dropping the lease", lambda: cloud.leased_ips(nets["pub"]) == {})
        assert ip not in sum(cloud.lease_files().values(), [])
        assert ip in packet_side.placement(), "Packet was down: still routed, owed"
    finally:
        packet_side.admin.clear_faults()
    # the next IPAM action (a new VM taking an address of that range) settles what is owed
    again = cloud.deploy_vm(vm_template("out2", nets), cloud.hosts[1])
    cloud.wait_vm(again, ACTIVE, RUNNING)
    held = set(cloud.aliases(again).values())
    wait_for("only held addresses routed, on the new VM's device", lambda: {
        a: d for a, d in packet_side.placement().items() if a in (held | {ip})}
        == {a: packet_side.devices[1] for a in held})
    cloud.cli("onevm", "terminate", "--hard", str(again))
    cloud.wait_vm(again, DONE)
    wait_for("all unrouted", lambda: not (set(packet_side.placement()) & (held | {ip})))
    for vnet in (nets["pub"], nets["priv"]):
        cloud.cli("onevnet", "delete", str(vnet))


def test_tokens_stay_out_of_oned_log_unless_only_the_range_has_one(cloud: Cloud,
                                                                   packet_side) -> None:
    """oned logs every driver reply at its default debug level. With the token in the
    config, register echoes none; a range that carries its own token (the Ruby driver's
    way) keeps working, with a warning naming its project."""
    # the range carries a token too, but the config has its project: nothing echoed
    configured = cloud.create("vnet", public_vnet("tok-conf", packet_side.project, 1,
                                                  f', PACKET_TOKEN = "{packet_side.token}"'))
    assert cloud.ar(configured).findtext("DEPLOY_ID")
    assert packet_side.token not in cloud.oned_log_decoded()
    other_token = "ar-only-" + secrets.token_hex(12)
    project = packet_side.admin.add_project(name="ar-token-only")
    packet_side.admin.add_token(other_token)
    ar_only = cloud.create("vnet", public_vnet("tok-ar", project, 1,
                                               f', PACKET_TOKEN = "{other_token}"'))
    assert cloud.ar(ar_only).findtext("DEPLOY_ID"), "the range works"
    log = (cloud.location / "var" / "ipam-packet.log").read_text()
    assert project in log and other_token not in log
    assert other_token in cloud.oned_log_decoded(), "echoed: the range needs it (documented)"
    assert packet_side.token not in cloud.oned_log_decoded()
    for vnet in (configured, ar_only):
        cloud.cli("onevnet", "delete", str(vnet))


def test_a_slow_register_ends_within_its_deadline_and_leaves_no_block(cloud: Cloud,
                                                                       packet_side) -> None:
    """oned gives up on an IPAM request about 90 s after sending it. With a Packet that
    takes longer, register must fail within action_deadline (here 6 s) with a message that
    says so, and the block Packet made late must not stay reserved with no range."""
    config = cloud.location / "etc" / "packet_provider.yaml"
    original = config.read_text()
    config.write_text(original + "action_deadline: 6\n")
    packet_side.admin.fault(latency=12, rate=1.0, path="/projects/")
    try:
        started = time.monotonic()
        with pytest.raises(CliError) as err:
            cloud.create("vnet", public_vnet("slow", packet_side.project, 2))
        took = time.monotonic() - started
    finally:
        packet_side.admin.clear_faults()
        config.write_text(original)
    assert took < 15, f"register took {took:.0f}s"
    said = with_base64_decoded(err.value.proc.stdout + err.value.proc.stderr)
    assert re.search(r"deadline.*action_deadline", said), said  # the deadline, not a bad key
    # the next IPAM action releases the late block: every reservation has its range
    wait_for("Packet's late answer", lambda: len(packet_side.reservations()) > len(
        ranges_deploy_ids(cloud)), timeout=20)
    nxt = cloud.create("vnet", public_vnet("after-slow", packet_side.project, 1))
    assert {r["id"] for r in packet_side.reservations()} == ranges_deploy_ids(cloud)
    cloud.cli("onevnet", "delete", str(nxt))


def ranges_deploy_ids(cloud: Cloud) -> set:
    pool = ET.fromstring(cloud.cli("onevnet", "list", "-x"))  # noqa: S314
    ids = set()
    for vnet in pool.findall("VNET"):
        for ar in cloud.xml("vnet", vnet.findtext("ID")).findall("AR_POOL/AR"):
            if ar.findtext("IPAM_MAD") == "packet" and ar.findtext("DEPLOY_ID"):
                ids.add(ar.findtext("DEPLOY_ID"))
    return ids
