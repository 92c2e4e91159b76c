"""run_action gives no answer that is ready only after ``action_deadline``: it undoes it
(abandons what the outcome holds) and fails with one line instead, since oned may have given up."""

import base64
import io
import time

import pytest

from packet_lab.oned.one_ipam import action_data
from packet_provider.core.errors import DeadlineError
from packet_provider.ipam import actions, main
from packet_provider.ipam.request import GET

AR = {"TYPE": "IP4", "IP": "147.75.84.88", "SIZE": "8", "IPAM_MAD": "packet",
      "DEPLOY_ID": "99d5d741-3756-4ebe-a014-34ea7a2e2be1", "PACKET_TOKEN": "tok-12345678"}


def run(tmp_path, handler, monkeypatch, deadline=0.5):
    config = tmp_path / "packet_provider.yaml"
    config.write_text(f"ipam_state_dir: {tmp_path}/state\nlog_dir: {tmp_path}\n"
                      f"action_deadline: {deadline}\n")
    monkeypatch.setitem(actions.HANDLERS, GET, handler)
    stdin = io.BytesIO(base64.b64encode(action_data(AR, {"SIZE": "1"}).encode()))
    out = io.StringIO()
    env = {"PACKET_PROVIDER_CONFIG": str(config)}
    return out, lambda: main.run_action(GET, ["4"], stdin, out, env=env)


class Held:
    """What an outcome holds until oned has the answer, noting what was done with it."""

    def __init__(self):
        self.committed, self.undone = [], []

    def commit(self):
        self.committed.append(1)

    def abandon(self):
        self.undone.append(1)


def test_an_answer_ready_after_the_deadline_is_undone_not_given(tmp_path, monkeypatch):
    held = Held()
    undone, committed = held.undone, held.committed

    def late(ctx, request):
        time.sleep(0.7)
        return actions.Outcome('ADDRESS = [ IP = "147.75.84.88", SIZE = "1" ]\n', holds=held)

    out, action = run(tmp_path, late, monkeypatch)
    with pytest.raises(DeadlineError) as err:
        action()
    assert out.getvalue() == "" and undone == [1] and committed == []
    assert "action_deadline" in str(err.value) and "\n" not in str(err.value)


def test_an_answer_in_time_is_given(tmp_path, monkeypatch):
    def quick(ctx, request):
        assert ctx.deadline is not None and ctx.deadline > time.monotonic()
        assert ctx.recovery_deadline < ctx.deadline
        return actions.Outcome("ADDRESS = [ IP = \"147.75.84.88\", SIZE = \"1\" ]\n",
                               holds=Held())

    out, action = run(tmp_path, quick, monkeypatch, deadline=30)
    assert action() == 0 and out.getvalue().startswith("ADDRESS")
