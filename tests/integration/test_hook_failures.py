"""The alias_ip hook's failures, concurrency, logs and oned reading, as a subprocess against
both emulators: one-line reasons, non-zero exits, nothing half-applied, retry recovers."""

from __future__ import annotations

import base64
import fcntl
import subprocess
import time

import pytest

from integration.hook_support import (
    ACTIVE,
    HOOK,
    HOTPLUG_NIC,
    PYTHON,
    PacketClient,
    World,
    alias_ips,
    failed,
    make_world,
    ok,
)


@pytest.fixture
def world(oned, packet, remote_env, tmp_path, one_auth_file) -> World:
    return make_world(oned, packet, remote_env, tmp_path, one_auth_file)


# -- hot-plug in flight ---------------------------------------------------------------------

def test_a_hotplug_still_in_flight_is_waited_for_then_fails_for_retry(world):
    vm = world.vm()
    ok(world.run(vm))
    world.attach(vm, attach=True)
    world.set_state(vm, ACTIVE, HOTPLUG_NIC)
    world.packet.clear_requests()
    env = dict(world.env, ALIAS_IP_SETTLE_SECONDS="0.5")
    reason = failed(world.run(vm, env=env))
    assert "still hot-plugging a NIC" in reason and world.writes() == []


# -- failures ------------------------------------------------------------------------------------

def test_packet_failing_then_recovering_under_retry(world):
    vm = world.vm(aliases=2)
    world.packet.fault(status=503, count=1000, method="POST")
    done = world.run(vm)
    reason = failed(done)
    assert reason.startswith("alias_ip: VM ") and "503" in reason
    assert world.placed() == {}
    world.packet.admin.clear_faults()
    ok(world.run(vm))  # what onehook retry does: the same command and stdin again
    assert len(world.placed()) == 2


def test_a_failed_move_never_leaves_the_address_on_two_devices(world):
    vm = world.vm()
    ok(world.run(vm))
    world.move(vm, 1)
    world.packet.fault(status=500, count=1000, method="POST")
    failed(world.run(vm))
    assert world.placed() == {}  # unassigned from the old device, not yet on the new one
    world.packet.admin.clear_faults()
    ok(world.run(vm))
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[1]}


def test_oned_unreachable_fails_with_one_line(world):
    vm = world.vm()
    env = dict(world.env, ONE_XMLRPC="http://127.0.0.1:9/RPC2")
    reason = failed(world.run(vm, env=env))
    assert "oned at http://127.0.0.1:9/RPC2" in reason and "unreachable" in reason
    assert world.packet.requests() == []


def test_a_bad_oned_session_fails_with_one_line(world, tmp_path):
    bad = tmp_path / "bad_auth"
    bad.write_text("oneadmin:wrong-password\n")
    reason = failed(world.run(world.vm(), env=dict(world.env, ONE_AUTH=str(bad))))
    assert "authentication failed" in reason and "wrong-password" not in reason


def test_a_host_without_deploy_id_fails_without_writes(world):
    vm = world.vm(host=2)
    reason = failed(world.run(vm))
    assert "host" in reason and "PROVISION/DEPLOY_ID" in reason
    assert world.writes() == []


def test_an_unknown_network_fails(world):
    vm = world.vm()
    xml = world.xml(vm).replace(f"<NETWORK_ID><![CDATA[{world.public}]]>".encode(),
                                b"<NETWORK_ID><![CDATA[999]]>")
    assert b"999" in xml
    reason = failed(world.run(xml=xml))
    assert "network 999 does not exist" in reason


def test_an_address_range_pointing_at_another_reservation_is_refused(world):
    """DEPLOY_ID is an ordinary AR attribute: a range whose DEPLOY_ID names a reservation
    that is not its block (network = the AR's IP, size = its SIZE) is refused, and nothing
    of its alias is touched; the VM's other aliases are handled, then the run fails."""
    with PacketClient(world.packet.url, world.packet.token) as client:
        other = client.reserve(world.packet.project_id, 4, facility="ams1")
    st = world.oned.state
    tampered = st.add_vnet("tampered", vn_mad="alias_sdnat")
    st.add_ar(tampered, {"TYPE": "IP4", "IP": str(other.first_address), "SIZE": "4",
                         "IPAM_MAD": "packet", "DEPLOY_ID": world.reservation.id,
                         "PACKET_TOKEN": world.packet.token})
    vm = world.vm()
    (good,) = alias_ips(world, vm)
    bad = world.attach(vm, public=tampered)
    world.packet.clear_requests()
    reason = failed(world.run(vm))
    assert f"{bad}: Packet reservation {world.reservation.id}" in reason
    assert "is not the block of network" in reason and "refused" in reason
    assert world.placed() == {good: world.devices[0]}
    assert world.writes() == [f"POST /devices/{world.devices[0]}/ips"]
    assert world.packet.token not in reason


def test_a_refused_range_is_not_unassigned_either(world):
    vm = world.vm()
    (ip,) = alias_ips(world, vm)
    ok(world.run(vm))
    with PacketClient(world.packet.url, world.packet.token) as client:
        other = client.reserve(world.packet.project_id, 8, facility="ams1")
    world.oned.state.vnet(world.public).ar(0).attrs["DEPLOY_ID"] = other.id
    world.set_state(vm, 6, 0)
    world.packet.clear_requests()
    assert "is not the block of network" in failed(world.run(vm))
    assert world.writes() == [] and world.placed() == {ip: world.devices[0]}


# -- concurrency -------------------------------------------------------------------------------

def test_concurrent_runs_for_one_vm_are_serialised(world):
    """Slow reads make unserialised runs overlap: each would see the addresses unassigned and
    POST them (8 POSTs, 6 refused); serialised, the first assigns and the rest only read."""
    vm = world.vm(aliases=2)
    world.packet.fault(latency=0.25, count=1000, method="GET")
    data = base64.b64encode(world.xml(vm)) + b" "
    procs = [subprocess.Popen([PYTHON, str(HOOK)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env)
             for _ in range(4)]
    for proc in procs:
        proc.stdin.write(data)
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert world.placed() == {ip: world.devices[0] for ip in alias_ips(world, vm)}
    assert sorted(world.writes()) == [f"POST /devices/{world.devices[0]}/ips"] * 2


def test_a_late_done_hook_leaves_the_address_of_its_next_owner_alone(world):
    """Between the DONE hook reading oned and writing to Packet, oned hands the freed address
    to another VM on the same host, whose hook finds it already routed there. The late
    hook re-reads the lease just before the unassign and leaves it alone."""
    vm = world.vm()
    ok(world.run(vm))
    (ip,) = alias_ips(world, vm)
    done = world.xml(vm)
    world.detach(vm, ip)  # terminate: oned frees the lease
    world.set_state(vm, 6, 0)
    world.packet.fault(latency=3, method="GET", path=f"/ips/{world.reservation.id}")
    reads = world.log().count("oned=read")
    late = subprocess.Popen([PYTHON, str(HOOK)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env)
    late.stdin.write(base64.b64encode(done) + b" ")
    late.stdin.close()
    deadline = time.monotonic() + 30
    while world.log().count("oned=read") == reads:  # read oned; its Packet read is slow
        assert time.monotonic() < deadline and late.poll() is None, late.stderr.read()
        time.sleep(0.05)
    st = world.oned.state
    other = st.add_vm("next")
    nic = st.add_nic(other.id, world.private, 0, st.take_lease(world.private, 0, other.id))
    st.add_alias(other.id, int(nic["NIC_ID"]), world.public, 0,
                 st.take_lease(world.public, 0, other.id, ip=ip), external=True)
    st.add_history(other.id, world.hosts[0])
    other.set_state(ACTIVE, 3)
    st.changed()
    assert "1 already right" in ok(world.run(other.id))  # routed to its device already
    assert late.wait(timeout=60) == 0, late.stderr.read().decode()
    late.stdout.close()
    late.stderr.close()
    assert world.placed() == {ip: world.devices[0]}
    assert not [w for w in world.writes() if w.startswith("DELETE")]
    assert f"oned now leases it to VM {other.id}" in world.log()


def test_a_run_waits_for_the_vms_lock_then_fails_for_retry(world, tmp_path):
    vm = world.vm()
    lock = tmp_path / "state" / "alias_ip" / f"vm-{vm}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        reason = failed(world.run(vm, env=dict(world.env, ALIAS_IP_LOCK_SECONDS="0.3")))
        assert "another run of the hook" in reason and world.writes() == []
    ok(world.run(vm))
    assert len(world.placed()) == 1


# -- logs and secrets ------------------------------------------------------------------------------

def test_every_decision_and_write_is_logged_with_vm_id_and_timings_never_the_token(world):
    vm = world.vm(aliases=2)
    ok(world.run(vm))
    text = world.log()
    lines = [line for line in text.splitlines() if line]
    assert lines and all(f"vm={vm} " in line for line in lines)
    assert sum("decision=assign" in line for line in lines) == 2
    assert sum("action=assign" in line and "duration_ms=" in line for line in lines) == 2
    assert any("api POST" in line for line in lines)
    assert any("outcome=done" in line and "duration_ms=" in line for line in lines)
    assert world.packet.token not in text
    assert world.oned.auth.split(":")[1] not in text


def test_the_token_never_reaches_argv_or_the_error_line(world):
    vm = world.vm()
    world.packet.fault(status=401, count=1000)
    done = world.run(vm)
    reason = failed(done)
    assert world.packet.token not in done.stderr.decode() + done.stdout.decode()
    assert "401" in reason


# -- pyone and custom AR attributes ------------------------------------------------------------

def test_pyone_drops_the_custom_ar_attributes_and_the_hook_reads_them(world):
    from packet_provider import oned_client, onexml
    from packet_provider.core.oned import parse_vnet

    typed = world.oned.client().vn.info(world.public, True)
    ar = typed.AR_POOL.AR[0]
    for name in ("DEPLOY_ID", "IPAM_MAD", "PACKET_TOKEN"):
        assert not hasattr(ar, name)
    client = oned_client.OnedClient(world.oned.url, world.oned.auth, retries=0)
    (ours,) = parse_vnet(client.vnet(world.public)).values()
    assert ours.ipam_mad == "packet" and ours.reservation_id == world.reservation.id
    assert ours.token == world.packet.token  # decrypted
    raw = client.call("vn.info", world.public, False)
    (stored,) = parse_vnet(onexml.parse(raw.encode())).values()
    assert stored.token != world.packet.token  # encrypted at rest without decrypt



def test_a_lost_answer_to_an_assign_is_recovered_without_a_second_assignment(world):
    vm = world.vm()
    world.packet.fault(drop_after=True, count=1, method="POST")
    out = ok(world.run(vm))
    assert "1 API write(s)" in out
    assert world.placed() == {alias_ips(world, vm)[0]: world.devices[0]}
    posts = [w for w in world.writes() if w.startswith("POST")]
    assert len(posts) == 1  # the answer was lost, the assignment found, not re-posted
