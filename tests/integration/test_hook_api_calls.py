"""The hook's API calls do not grow with the addresses a block or a device holds: assigning
one alias beside 200 others already assigned (to the same VM, or to another VM on the same
host) is one Packet read and one write, counted in the Packet emulator's request log; oned
is read three times (the VM, its aliases' network, its host)."""

import pytest

from integration.hook_support import ACTIVE, RUNNING, World, make_world, ok
from packet_provider.packet import PacketClient

OTHERS = 200


@pytest.fixture
def world(oned, packet, remote_env, tmp_path, one_auth_file) -> World:
    return make_world(oned, packet, remote_env, tmp_path, one_auth_file)


@pytest.mark.parametrize("others_on", ["the same VM", "another VM on the host"])
def test_one_alias_beside_200_assigned_is_one_read_and_one_write(world, others_on):
    with PacketClient(world.packet.url, world.packet.token) as client:
        block = client.reserve(world.packet.project_id, 256, facility="ams1")
        st = world.oned.state
        big = st.add_vnet("big", vn_mad="alias_sdnat")
        st.add_ar(big, {"TYPE": "IP4", "IP": str(block.first_address), "SIZE": "256",
                        "IPAM_MAD": "packet", "DEPLOY_ID": block.id,
                        "PACKET_TOKEN": world.packet.token,
                        "PACKET_PROJECT": world.packet.project_id})
        vm = world.vm(aliases=OTHERS if others_on == "the same VM" else 0, public=big)
        if others_on != "the same VM":
            world.vm(aliases=OTHERS, public=big)
        assigned = [a["IP"] for v in list(st.vms.values()) for a in v.aliases
                    if str(a["NETWORK_ID"]) == str(big)]
        assert len(assigned) == OTHERS
        for ip in assigned:
            client.assign(world.devices[0], ip)
    new = world.attach(vm, public=big)
    world.set_state(vm, ACTIVE, RUNNING)
    world.packet.clear_requests()
    world.oned.calls.clear()
    out = ok(world.run(vm))
    assert "1 API write(s)" in out
    calls = [(r["method"], r["path"]) for r in world.packet.requests()]
    assert calls == [("GET", f"/ips/{block.id}?include=assignments"),
                     ("POST", f"/devices/{world.devices[0]}/ips")], calls
    assert sorted(m for m, _ in world.oned.calls) == ["one.host.info", "one.vm.info",
                                                      "one.vn.info"]
    assert world.placed()[new] == world.devices[0]
    assert len(world.placed()) == OTHERS + 1

