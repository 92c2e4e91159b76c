"""The shared host-side pieces: safe XML, the VM model, the CLI error contract, redaction."""

import base64
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from packet_provider import onexml
from packet_provider.core import cli, hostxml, log, onedefs, validate
from packet_provider.core import oned as vm
from packet_provider.core.errors import InputError

EXAMPLE_VM = (Path(__file__).resolve().parents[1] / "data" / "vm-with-nic-alias.xml")
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<VM><NAME>&lol2;</NAME></VM>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE VM [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><VM><NAME>&xxe;</NAME></VM>"""


@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
@pytest.mark.parametrize("doc", [LAUGHS, EXTERNAL, b"<!DOCTYPE VM><VM/>"])
def test_doctype_is_refused_by_both_parsers(parse, doc):
    with pytest.raises(InputError, match="DOCTYPE"):
        parse(doc)


@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
@pytest.mark.parametrize("doc", [b"", b"<VM>", b"<VM><ID>1</VM>", b"not xml"])
def test_malformed_xml_is_an_input_error(parse, doc):
    with pytest.raises(InputError):
        parse(doc)


@pytest.mark.parametrize("data", [b"", b"   \n", b"%%%not base64", b"QUJD=extra"])
def test_bad_base64_is_an_input_error(data):
    with pytest.raises(InputError):
        hostxml.decode_base64(data)


def test_base64_with_trailing_space_or_newline_decodes():
    encoded = base64.b64encode(b"<VM/>")
    assert hostxml.decode_base64(encoded + b" ") == b"<VM/>"
    assert hostxml.decode_base64(encoded + b"\n") == b"<VM/>"


def example_vm(parse):
    return vm.parse_vm(parse(EXAMPLE_VM.read_bytes()))


@pytest.mark.parametrize("parse", [hostxml.parse, onexml.parse])
def test_example_vm_parses_identically_with_both_parsers(parse):
    model = example_vm(parse)
    assert model.id == 42 and model.state == onedefs.STATE_ACTIVE and model.lcm_state == 3
    (alias,) = model.aliases
    assert str(alias.ip) == "147.75.84.90" and alias.external and not alias.attach
    assert alias.vn_mad == "alias_sdnat" and alias.parent_id == 0 and alias.network_id == 2
    parent = model.parent_of(alias)
    assert parent is not None and str(parent.ip) == "192.168.150.2"
    assert model.current_history.hid == 3


def test_bad_alias_ip_is_refused_at_parse_time():
    doc = EXAMPLE_VM.read_bytes().replace(b"147.75.84.90", b"1.2.3.4; touch /tmp/x")
    with pytest.raises(InputError, match="NIC_ALIAS 1 IP"):
        vm.parse_vm(hostxml.parse(doc))


def test_wrong_root_element_is_refused():
    with pytest.raises(InputError, match="<VM>"):
        vm.parse_vm(hostxml.parse(b"<HOST><ID>1</ID></HOST>"))


@pytest.mark.parametrize("value", ["1.2.3.4/0", "1.2.3.4; rm -rf /", "::1", "", "300.1.1.1"])
def test_ipv4_validation_refuses(value):
    with pytest.raises(InputError):
        validate.ipv4(value, "IP")


@pytest.mark.parametrize("value", ["../../etc", "99d5d741-3756-4ebe-a014-34ea7a2e2be1/..", ""])
def test_uuid_validation_refuses(value):
    with pytest.raises(InputError):
        validate.uuid(value, "DEPLOY_ID")


def test_error_block_is_what_oned_extracts():
    text = cli.error_block("bad\nthing   here")
    assert text == "ERROR MESSAGE --8<------\nbad thing here\nERROR MESSAGE ------>8--\n"


def run_cli(body: str):
    code = f"import sys; from packet_provider.core import cli, errors\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "lib")})


def test_cli_turns_provider_error_into_block_and_exit_code():
    res = run_cli("def main():\n    raise errors.InputError('no IP')\ncli.run(main, 'get_address')")
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["ERROR MESSAGE --8<------", "get_address: no IP",
                                       "ERROR MESSAGE ------>8--"]


def test_cli_never_shows_a_traceback_and_redacts():
    res = run_cli("from packet_provider.core import log\nlog.register_secret('tok-123456')\n"
                  "def main():\n    raise RuntimeError('boom tok-123456')\ncli.run(main)")
    assert res.returncode == 70 and "Traceback" not in res.stderr
    assert "tok-123456" not in res.stderr and "internal error: RuntimeError" in res.stderr


def test_log_lines_never_carry_secrets(tmp_path):
    log.register_secret("abcd-secret-9999")
    logger = log.setup("unit", str(tmp_path))
    logger.info("token is %s", "abcd-secret-9999")
    logger.info('AR = [ PACKET_TOKEN = "other-secret" ]')
    logger.info("headers {'X-Auth-Token': 'hdr-secret'}")
    try:
        raise ValueError("abcd-secret-9999")
    except ValueError:
        logger.exception("failed")
    for handler in logger.handlers:
        handler.flush()
    text = (tmp_path / "unit.log").read_text()
    for secret in ("abcd-secret-9999", "other-secret", "hdr-secret"):
        assert secret not in text
    assert text.count("***") >= 4


def test_stream_logging_goes_to_stderr_when_dir_unwritable(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    logger = log.setup("unit2", str(blocked / "sub"))
    assert any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers)


def test_read_stdin_refuses_huge_input():
    with pytest.raises(InputError):
        cli.read_stdin(io.BytesIO(b"x" * (cli.MAX_STDIN_BYTES + 1)))


# -- the fast exit of a real executable -------------------------------------------------------

EXECUTABLE = """#!{python}
import atexit, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "lib"))
from packet_provider.core import cli, errors, log
atexit.register(lambda: sys.stderr.write("teardown ran\\n"))
def main():
    logger = log.setup("fast", sys.argv[1])
    logger.info("the last log line")
    sys.stdout.write("answer without a newline")
    if sys.argv[2] == "fail":
        raise errors.InputError("bad input")
    return 0
cli.run(main, "act")
"""


@pytest.fixture
def remotes(tmp_path):
    """``remotes/kind/name/act`` with the library at ``remotes/lib`` (a link, as in the
    checkout), and the same script outside such a tree."""
    lib = Path(__file__).resolve().parents[2] / "lib"
    (tmp_path / "remotes" / "kind" / "name").mkdir(parents=True)
    (tmp_path / "remotes" / "lib").symlink_to(lib)
    (tmp_path / "elsewhere" / "bin").mkdir(parents=True)
    text = EXECUTABLE.format(python=sys.executable).replace(
        'os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "lib")',
        f"{str(lib)!r}")
    paths = {}
    for name, where in (("entry", tmp_path / "remotes" / "kind" / "name" / "act"),
                        ("other", tmp_path / "elsewhere" / "bin" / "act")):
        where.write_text(text)
        where.chmod(0o755)
        paths[name] = where
    return paths


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_an_executable_beside_the_library_exits_fast_and_loses_nothing(remotes, tmp_path,
                                                                       outcome):
    proc = subprocess.run([str(remotes["entry"]), str(tmp_path / "log"), outcome],
                          capture_output=True, text=True, env={}, check=False)
    assert proc.returncode == (0 if outcome == "ok" else 2), proc.stderr
    assert proc.stdout == "answer without a newline"
    assert "teardown ran" not in proc.stderr  # os._exit: no atexit, no interpreter teardown
    if outcome == "fail":
        assert proc.stderr.splitlines()[-2] == "act: bad input"
    assert "the last log line" in (tmp_path / "log" / "fast.log").read_text()


def test_any_other_process_exits_the_usual_way(remotes, tmp_path):
    proc = subprocess.run([str(remotes["other"]), str(tmp_path / "log"), "fail"],
                          capture_output=True, text=True, env={}, check=False)
    assert proc.returncode == 2 and "teardown ran" in proc.stderr
    assert proc.stdout == "answer without a newline"
    assert not cli.process_entry()  # pytest's __main__ is no executable of ours


def test_the_host_side_does_not_import_logging_until_it_logs():
    code = ("import sys; from packet_provider.core import cli, log; "
            "print('logging' in sys.modules); log.setup('x'); print('logging' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "lib")},
                          check=False)
    assert proc.stdout.split() == ["False", "True"], proc.stderr
    assert issubclass(log.RedactingFilter, logging.Filter)
