"""Recovery of register requests whose process died, in process against the emulator: an
orphan is released, a request not (yet) seen at Packet is looked for again later and given up
after the grace period, and a request with no usable token is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from integration.ipam_support import make_driver
from packet_provider import config as config_mod
from packet_provider.ipam import recovery
from packet_provider.ipam.context import Context
from packet_provider.ipam.leases import PendingJournal
from packet_provider.packet import PacketClient


@pytest.fixture
def driver(packet, remote_env, tmp_path):
    return make_driver(packet, remote_env, tmp_path)


def abandon(state_dir, marker, project, token):
    """Leave a journal entry the way a killed register leaves it."""
    code = textwrap.dedent(f"""
        import os
        from packet_provider.ipam.leases import PendingJournal
        PendingJournal({str(state_dir)!r}).begin({marker!r}, {{"project": {project!r},
                                                            "token": {token!r}}})
        os._exit(9)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], env=env, check=False)


def context(driver):
    config = config_mod.load(env={"PACKET_PROVIDER_CONFIG": str(driver.config_path)})
    return Context(config)


def test_orphan_is_released_and_live_ranges_are_kept(driver):
    keep = driver.register(2)
    marker = str(uuid.uuid4())
    with PacketClient(driver.packet.url, driver.packet.token) as client:
        client.reserve(driver.packet.project_id, 4, facility="ams1", marker=marker)
    abandon(driver.state_dir, marker, driver.packet.project_id, driver.packet.token)
    ctx = context(driver)
    try:
        assert recovery.recover_abandoned(ctx) == 1
    finally:
        ctx.close()
    assert [r["id"] for r in driver.reservations()] == [keep["DEPLOY_ID"]]
    assert PendingJournal(str(driver.state_dir)).names() == []


def test_request_not_seen_yet_is_rechecked_later_then_given_up(driver):
    marker = str(uuid.uuid4())
    abandon(driver.state_dir, marker, driver.packet.project_id, driver.packet.token)
    journal = PendingJournal(str(driver.state_dir))
    ctx = context(driver)
    try:
        later = time.time() + 5
        assert recovery.recover_abandoned(ctx, now=later) == 0
        assert journal.names() == [f"{marker}.json"]
        os.utime(os.path.join(journal.dir, f"{marker}.json"),
                 (time.time() + 3, time.time() + 3))  # as if checked 3 s after creation
        driver.packet.clear_requests()
        assert recovery.recover_abandoned(ctx, now=later) == 0
        assert driver.api_calls() == []  # checked a moment ago: not asked again
        recovery.recover_abandoned(ctx, now=time.time() + recovery.RECOVERY_GRACE_S + 60)
        assert journal.names() == []  # nothing was ever created: given up
    finally:
        ctx.close()


def test_entry_without_a_usable_token_is_kept(driver):
    marker = str(uuid.uuid4())
    abandon(driver.state_dir, marker, str(uuid.uuid4()), None)
    ctx = context(driver)
    try:
        assert recovery.recover_abandoned(ctx) == 0
    finally:
        ctx.close()
    assert PendingJournal(str(driver.state_dir)).names() == [f"{marker}.json"]
    assert driver.api_calls() == []
