"""packet-provider's command line (packet_provider.ops.command) without any server: usage,
bad arguments and configs as one line with exit 2, and the hook's lock shared."""

from __future__ import annotations

import io
import os

from packet_provider.config import Config
from packet_provider.ops import command
from packet_provider.ops.reconcile import vm_lock, vm_lock_path


def run(argv, env=None):
    out, err = io.StringIO(), io.StringIO()
    code = command.run(argv, env=env or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_help_names_both_commands():
    code, out, _err = run(["--help"])
    assert code == 0 and "check" in out and "reconcile --leases" in out
    assert "RAFT_LEADER_HOOK" in out


def test_no_command_prints_help_and_exits_2():
    code, out, _err = run([])
    assert code == 2 and "usage: packet-provider" in out


def test_bad_argument_is_one_line_exit_2():
    code, _out, err = run(["reconcile", "--nope"])
    assert code == 2 and "Traceback" not in err
    assert err == "packet-provider: unrecognized arguments: --nope (see packet-provider --help)\n"


def test_bad_config_is_one_line_exit_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("tokens: [1, 2]\n")
    code, out, err = run(["check", "--config", str(config)])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "tokens" in err


def test_missing_oned_credentials_is_one_line_exit_2(tmp_path):
    code, _out, err = run(["check"], env={"ONE_AUTH": str(tmp_path / "none"),
                                          "PACKET_PROVIDER_CONFIG": str(tmp_path / "c.yaml")})
    assert code == 2 and err.count("\n") == 1 and "oned credentials" in err


def test_reconcile_takes_the_hooks_own_per_vm_lock(tmp_path):
    from packet_provider.hook import sync

    config = Config(path="x", ipam_state_dir=str(tmp_path))
    assert vm_lock_path(config, 7) == sync.lock_path(config, 7)
    with vm_lock(config, 7, 0.0):
        fd = os.open(vm_lock_path(config, 7), os.O_RDWR)
        try:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        finally:
            os.close(fd)
    assert held


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_only_on_a_terminal_and_only_after_its_delay():
    from packet_provider.ops.gather import Progress

    quiet = _Tty(False)
    Progress(quiet, delay=0.0).step("check: oned network 1 (1/2)")
    assert quiet.getvalue() == ""
    early = _Tty(True)
    Progress(early, delay=60.0).step("check: oned network 1 (1/2)")
    assert early.getvalue() == ""
    late = _Tty(True)
    progress = Progress(late, delay=0.0)
    progress.step("check: oned network 1 (1/2)")
    assert late.getvalue().endswith("check: oned network 1 (1/2)")
    progress.done()
    assert late.getvalue().endswith("\r\033[K")  # the line is cleared before the report
