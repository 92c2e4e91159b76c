"""The one_ipam emulation on its own, with small shell drivers in a temporary remotes tree:
what the script receives, how its outcome becomes one_ipam's answer, timeouts, and oned's
template syntax."""

import base64
import io
import os
import stat

import pytest

from packet_lab.oned import one_ipam
from packet_lab.oned.one_ipam import (
    OneIpam,
    action_data,
    error_message,
    parse_template,
    run_action,
)


def script(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def remotes(tmp_path):
    root = tmp_path / "remotes"
    echo = root / "ipam" / "echo"
    # records argv and stdin byte for byte, prints an ADDRESS
    script(echo / "get_address",
           'printf "%s" "$*" > "$(dirname "$0")/argv"; cat > "$(dirname "$0")/stdin"\n'
           'echo \'ADDRESS = [ IP = "192.0.2.9", SIZE = "1" ]\'\n')
    script(echo / "free_address", "cat >/dev/null\n")
    script(echo / "allocate_address",
           'cat >/dev/null; echo "a log line" >&2\n'
           'printf "ERROR MESSAGE --8<------\\n  address taken  \\n" >&2\n'
           'printf "ERROR MESSAGE ------>8--\\n" >&2\n'
           "exit 3\n")
    script(echo / "register_address_range", 'cat >/dev/null; echo "no block" >&2; exit 1\n')
    script(echo / "unregister_address_range", "sleep 5\n")
    return root


AR = {"TYPE": "IP4", "IP": "192.0.2.8", "SIZE": "8", "IPAM_MAD": "echo"}


def test_script_gets_the_id_and_the_base64_without_newline(remotes):
    xml = action_data(AR, {"SIZE": "1"})
    result = run_action(remotes, "GET_ADDRESS", 42, xml)
    directory = remotes / "ipam" / "echo"
    assert (directory / "argv").read_text() == "42"
    sent = (directory / "stdin").read_bytes()
    assert sent == base64.b64encode(xml.encode()) and not sent.endswith(b"\n")
    assert result.ok and result.info == 'ADDRESS = [ IP = "192.0.2.9", SIZE = "1" ]\n'
    assert result.line == "GET_ADDRESS SUCCESS 42 " + base64.b64encode(
        result.info.encode()).decode()


def test_base64_input_is_passed_through_unchanged(remotes):
    b64 = base64.b64encode(action_data(AR, {"SIZE": "1"}).encode()).decode()
    run_action(remotes, "get_address", 1, b64)
    assert (remotes / "ipam" / "echo" / "stdin").read_text() == b64


def test_empty_success_is_a_dash(remotes):
    result = run_action(remotes, "FREE_ADDRESS", 1, action_data(AR, {"IP": "192.0.2.9"}))
    assert result.ok and result.info == "-"


def test_failure_info_is_the_error_block_only(remotes):
    result = run_action(remotes, "ALLOCATE_ADDRESS", 1, action_data(AR, {"IP": "192.0.2.9"}))
    assert not result.ok and result.rc == 3
    assert result.info == result.message == "address taken"
    result = run_action(remotes, "REGISTER_ADDRESS_RANGE", 1, action_data(AR))
    assert not result.ok and result.info == "-"  # no block: oned shows "-"


def test_timeout_kills_and_fails(remotes):
    result = run_action(remotes, "UNREGISTER_ADDRESS_RANGE", 1, action_data(AR), timeout=0.5)
    assert not result.ok and result.timed_out and result.rc == 255
    assert result.info.startswith("Timeout executing ")


def test_early_failures_answer_in_plain_text(remotes):
    result = run_action(remotes, "GET_ADDRESS", 4, "<IPAM_DRIVER_ACTION_DATA><AR/>"
                        "</IPAM_DRIVER_ACTION_DATA>")
    assert result.line == "GET_ADDRESS FAILURE 4 Cannot perform get_address, cannot find " \
                          "ipman driver"
    result = run_action(remotes, "GET_ADDRESS", 4, action_data(dict(AR, IPAM_MAD="echo")),
                        drivers=["packet"])
    assert result.line == "GET_ADDRESS FAILURE 4 IPAM driver 'echo' not available"


def test_line_server_answers_every_request(remotes):
    out = io.StringIO()
    server = OneIpam(str(remotes), ["echo"], threads=3, out=out)
    req = base64.b64encode(action_data(AR, {"SIZE": "1"}).encode()).decode()
    lines = ["INIT", f"GET_ADDRESS 1 {req}", f"FREE_ADDRESS 2 {req}", f"ALLOCATE_ADDRESS 3 {req}",
             "BOGUS 4 x", "FINALIZE", f"GET_ADDRESS 5 {req}"]
    server.serve(io.StringIO("\n".join(lines) + "\n"))
    answers = out.getvalue().splitlines()
    assert answers[0] == "INIT SUCCESS"
    by_id = {a.split()[2]: a.split()[1] for a in answers[1:]}
    assert by_id == {"1": "SUCCESS", "2": "SUCCESS", "3": "FAILURE"}  # nothing after FINALIZE


def test_error_message_takes_the_first_block():
    text = ("noise\nERROR MESSAGE --8<------\nfirst\nERROR MESSAGE ------>8--\n"
            "ERROR MESSAGE --8<------\nsecond\nERROR MESSAGE ------>8--\n")
    assert error_message(text) == "first"
    assert error_message("") == "-" and error_message("just text") == "-"


def test_template_parsing():
    text = '# comment\nAR = [ TYPE = "IP4", IP = 192.0.2.8,\n  X = "a \\"q\\" b" ]\nNAME = "n"\n'
    assert parse_template(text) == [("AR", {"TYPE": "IP4", "IP": "192.0.2.8",
                                            "X": 'a "q" b'}), ("NAME", "n")]
    for bad in ("AR = [ TYPE = ", "= x", "AR = [ A = 1 B = 2 ]", 'A = "open'):
        with pytest.raises(ValueError):
            parse_template(bad)


def test_module_runs_as_a_program(remotes, capsys, monkeypatch):
    req = base64.b64encode(action_data(AR, {"SIZE": "1"}).encode()).decode()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"GET_ADDRESS 7 {req}\n"))
    assert one_ipam.main(["-i", "dummy,echo", "--remotes", str(remotes), "-t", "2"]) == 0
    assert capsys.readouterr().out.startswith("GET_ADDRESS SUCCESS 7 ")
    assert os.path.exists(remotes / "ipam" / "echo" / "argv")
