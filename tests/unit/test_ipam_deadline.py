"""run_action gives no answer that is ready only after ``action_deadline``: it undoes it
(the outcome's rollback) and fails with one line instead, since oned may have given up."""

import base64
import io
import time

import pytest

from packet_lab.oned.one_ipam import action_data
from packet_provider.core.errors import DeadlineError
from packet_provider.ipam import actions as ipam

AR = {"TYPE": "IP4", "IP": "147.75.84.88", "SIZE": "8", "IPAM_MAD": "packet",
      "DEPLOY_ID": "99d5d741-3756-4ebe-a014-34ea7a2e2be1", "PACKET_TOKEN": "tok-12345678"}


def run(tmp_path, handler, monkeypatch, deadline=0.5):
    config = tmp_path / "packet_provider.yaml"
    config.write_text(f"ipam_state_dir: {tmp_path}/state\nlog_dir: {tmp_path}\n"
                      f"action_deadline: {deadline}\n")
    monkeypatch.setitem(ipam.HANDLERS, ipam.GET, handler)
    stdin = io.BytesIO(base64.b64encode(action_data(AR, {"SIZE": "1"}).encode()))
    out = io.StringIO()
    env = {"PACKET_PROVIDER_CONFIG": str(config)}
    return out, lambda: ipam.run_action(ipam.GET, ["4"], stdin, out, env=env)


def test_an_answer_ready_after_the_deadline_is_undone_not_given(tmp_path, monkeypatch):
    undone, committed = [], []

    def late(ctx, request):
        time.sleep(0.7)
        return ipam.Outcome('ADDRESS = [ IP = "147.75.84.88", SIZE = "1" ]\n',
                            commit=lambda: committed.append(1),
                            rollback=lambda: undone.append(1))

    out, action = run(tmp_path, late, monkeypatch)
    with pytest.raises(DeadlineError) as err:
        action()
    assert out.getvalue() == "" and undone == [1] and committed == []
    assert "action_deadline" in str(err.value) and "\n" not in str(err.value)


def test_an_answer_in_time_is_given(tmp_path, monkeypatch):
    def quick(ctx, request):
        assert ctx.deadline is not None and ctx.deadline > time.monotonic()
        assert ctx.recovery_deadline < ctx.deadline
        return ipam.Outcome("ADDRESS = [ IP = \"147.75.84.88\", SIZE = \"1\" ]\n",
                            rollback=lambda: None)

    out, action = run(tmp_path, quick, monkeypatch, deadline=30)
    assert action() == 0 and out.getvalue().startswith("ADDRESS")
