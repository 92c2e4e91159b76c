"""The two emulators are product (users try the plugin on them): hostile requests get an
error answer (never a 500 from an exception, never a file's content, never a hang) and the
server keeps serving."""

from __future__ import annotations

import socket
import time
import urllib.request
import xmlrpc.client
from typing import Tuple
from urllib.parse import urlsplit

import pytest

from reliability.relsupport import count

LOCAL_FILE = "/etc/passwd"


def raw(url: str, data: bytes, timeout: float = 5.0) -> Tuple[int, bytes]:
    """Send bytes as they are; the status of the answer (0: connection closed) and its
    start."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while sum(map(len, chunks)) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and not data.startswith(b"POST /RPC2"):
                    break
        except socket.timeout:
            pytest.fail(f"no answer within {timeout}s to {data[:60]!r}")
        except ConnectionResetError:
            pass
    answer = b"".join(chunks)
    try:
        return int(answer.split(b" ", 2)[1]), answer
    except (IndexError, ValueError):
        return 0, answer


def packet_requests(project: str, token: str):
    head = f"X-Auth-Token: {token}\r\nHost: x\r\nConnection: close\r\n".encode()

    def post(path: str, body: bytes, length=None) -> bytes:
        size = str(len(body) if length is None else length).encode()
        return (f"POST {path} HTTP/1.1\r\n".encode() + head
                + b"Content-Type: application/json\r\nContent-Length: " + size + b"\r\n\r\n"
                + body)

    ips = f"/projects/{project}/ips"
    return {
        "json_syntax_error": post(ips, b"{bad"),
        "json_not_object": post(ips, b"[1, 2]"),
        "json_deep": post(ips, b"[" * 100000 + b"]" * 100000),
        "quantity_text": post(ips, b'{"type": "public_ipv4", "quantity": "lots"}'),
        "quantity_huge": post(ips, b'{"type": "public_ipv4", "quantity": 1e308}'),
        "quantity_negative": post(ips, b'{"type": "public_ipv4", "quantity": -8}'),
        "customdata_huge": post(ips, b'{"type": "public_ipv4", "quantity": 1, "customdata": '
                                     b'{"x": "' + b"y" * 200000 + b'"}}'),
        "address_list": post(f"/devices/{project}/ips", b'{"address": [1, 2, 3]}'),
        "address_shell": post(f"/devices/{project}/ips", b'{"address": "1.2.3.4; id"}'),
        "length_huge": post(ips, b"{}", length=10 ** 12),
        "length_negative": post(ips, b"{}", length=-5),
        "length_text": post(ips, b"{}", length="ten"),
        "path_traversal": b"GET /ips/../../etc/passwd HTTP/1.1\r\n" + head + b"\r\n",
        "path_encoded_traversal": b"GET /ips/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + head
                                  + b"\r\n",
        "path_not_utf8": b"GET /ips/\xff\xfe HTTP/1.1\r\n" + head + b"\r\n",
        "path_nul": b"GET /ips/%00 HTTP/1.1\r\n" + head + b"\r\n",
        "path_long": b"GET /ips/" + b"a" * 70000 + b" HTTP/1.1\r\n" + head + b"\r\n",
        "query_weird": f"GET {ips}?per_page=-1&page=99999999999999999999999&cidr=x HTTP/1.1\r\n"
                       .encode() + head + b"\r\n",
        "method_unknown": b"BREW /ips HTTP/1.1\r\n" + head + b"\r\n",
        "header_huge": b"GET /ips HTTP/1.1\r\nX-Auth-Token: " + b"t" * 70000 + b"\r\n\r\n",
        "admin_json_error": post("/_emulator/faults", b"{x"),
        "admin_fault_nonsense": post("/_emulator/faults", b'{"status": "x", "count": -3}'),
        "admin_fault_latency_huge": post("/_emulator/faults", b'{"latency": 1e9}'),
    }


@pytest.mark.parametrize("name", list(packet_requests("p", "t")))
def test_packet_emulator_survives(name: str, packet) -> None:
    request = packet_requests(packet.project_id, packet.token)[name]
    started = time.monotonic()
    status, answer = raw(packet.url, request)
    count("hostile_requests")
    assert time.monotonic() - started < 5
    assert status == 0 or 400 <= status < 500 or status == 501, answer[:300]
    assert b"root:" not in answer
    packet.admin.clear_faults()
    with urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - loopback emulator
            f"{packet.url}/projects/{packet.project_id}/ips",
            headers={"X-Auth-Token": packet.token}), timeout=5) as response:
        assert response.status == 200
    assert packet.state()["reservations"] == []


def _laughs() -> bytes:
    ents = ['<!ENTITY a0 "xxxxxxxxxx">'] + [
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 9)]
    return (f'<?xml version="1.0"?><!DOCTYPE m [{"".join(ents)}]>'
            "<methodCall><methodName>one.vm.info</methodName><params><param><value><string>"
            "&a8;</string></value></param></params></methodCall>").encode()


ONED_BODIES = {
    "billion_laughs": _laughs(),
    "external_entity": (f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file://'
                        f'{LOCAL_FILE}">]><methodCall><methodName>one.system.version'
                        "</methodName><params><param><value><string>&x;</string></value>"
                        "</param></params></methodCall>").encode(),
    "not_xml": b"\xff\xfe\x00garbage",
    "truncated": b"<methodCall><methodName>one.vm.info</methodName><params>",
    "wrong_types": (b"<methodCall><methodName>one.vm.info</methodName><params><param><value>"
                    b"<string>x</string></value></param><param><value><string>NaN</string>"
                    b"</value></param></params></methodCall>"),
    "unknown_method": (b"<methodCall><methodName>__class__.__init__</methodName><params>"
                       b"</params></methodCall>"),
    "huge_int": (b"<methodCall><methodName>one.vm.info</methodName><params><param><value>"
                 b"<string>x</string></value></param><param><value><int>"
                 + b"9" * 5000 + b"</int></value></param></params></methodCall>"),
}


@pytest.mark.parametrize("name", list(ONED_BODIES))
def test_oned_emulator_survives(name: str, oned) -> None:
    body = ONED_BODIES[name]
    request = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nConnection: "
               b"close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    started = time.monotonic()
    status, answer = raw(oned.url, request)
    count("hostile_requests")
    assert time.monotonic() - started < 5
    assert status in (0, 200, 400, 413, 500) and b"root:x:" not in answer, answer[:300]
    if status == 200:
        assert b"<fault>" in answer or b"<boolean>0</boolean>" in answer, answer[:300]
    version = xmlrpc.client.ServerProxy(oned.url).one.system.version(oned.auth)
    assert version[0] is True


def test_one_ipam_line_protocol_survives_hostile_lines(tmp_path) -> None:
    """The one_ipam emulator answers every request line carrying an id with a FAILURE,
    ignores the others, resolves no entity, runs nothing outside remotes/ipam/<allowed>,
    and ends cleanly on FINALIZE."""
    import base64
    import subprocess

    from fixtures.common import PYTHON
    from reliability.relsupport import REMOTES, base_env

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    secret = tmp_path / "secret.txt"
    secret.write_text("ONE-IPAM-SECRET-91\n")
    marker = tmp_path / "ran"
    lines = [
        "INIT", "", "GARBAGE", "GET_ADDRESS x !!!", "GET_ADDRESS 1 notbase64",
        "GET_ADDRESS 2 " + b64("hello"),
        "GET_ADDRESS 3 " + b64(f'<!DOCTYPE x [<!ENTITY e SYSTEM "{secret.as_uri()}">]>'
                               "<IPAM_DRIVER_ACTION_DATA><AR><IPAM_MAD>&e;</IPAM_MAD></AR>"
                               "</IPAM_DRIVER_ACTION_DATA>"),
        "GET_ADDRESS 4 " + b64("<IPAM_DRIVER_ACTION_DATA><AR><IPAM_MAD>../../hooks/alias_ip"
                               "</IPAM_MAD></AR></IPAM_DRIVER_ACTION_DATA>"),
        "GET_ADDRESS 5 " + b64(f"<IPAM_DRIVER_ACTION_DATA><AR><IPAM_MAD>packet; touch {marker}"
                               "</IPAM_MAD></AR></IPAM_DRIVER_ACTION_DATA>"),
        "FOO 6 " + b64("<x/>"),
        "GET_ADDRESS 7 " + b64("<IPAM_DRIVER_ACTION_DATA><AR><IPAM_MAD>packet</IPAM_MAD>"
                               "</AR></IPAM_DRIVER_ACTION_DATA>"),
        "GET_ADDRESS 8 " + "A" * 200000,
        "FINALIZE",
    ]
    env = base_env()
    env["PACKET_PROVIDER_CONFIG"] = str(tmp_path / "none.yaml")
    done = subprocess.run([PYTHON, "-m",
                           "packet_lab.oned.one_ipam", "-i", "dummy,packet",
                           "--remotes", str(REMOTES)], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=env, timeout=60)
    count("hostile_requests", len(lines))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    answers = done.stdout.splitlines()
    assert answers[0] == "INIT SUCCESS"
    ids = sorted(line.split()[2] for line in answers[1:])
    assert ids == ["1", "2", "3", "4", "5", "7", "8", "x"], answers
    assert all(line.split()[1] == "FAILURE" for line in answers[1:]), answers
    assert "ONE-IPAM-SECRET" not in done.stdout + done.stderr
    assert not marker.exists()
