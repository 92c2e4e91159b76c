"""Reading the hook's objects from oned through pyone, as raw XML.

Endpoint: ``$ONE_XMLRPC``, else the config's ``one_xmlrpc`` (default
``http://localhost:2633/RPC2``). Credentials (``user:password``, first line of a file):
the file named by ``$ONE_AUTH``, else the config's ``one_auth`` (a path too), else
``~/.one/one_auth``: the same conventions as the OpenNebula CLI.

Why raw XML: pyone's generated ``AR`` class keeps only the schema's fields and silently drops
custom AR attributes (IPAM_MAD, DEPLOY_ID, PACKET_TOKEN), so the answer of ``one.vn.info`` is
taken before pyone binds it (``OneServer._do_request``, the call below pyone's binding step)
and parsed with the safe lxml parser (:mod:`packet_provider.onexml`). VM and HOST answers go
the same way so one model (:mod:`packet_provider.core.oned`) serves the event and oned's answer.

pyone's transport posts with requests and no timeout; :class:`_TimedTransport` adds the
configured connect/read timeouts, and :meth:`OnedClient.call` retries a connection failure a
bounded number of times. oned's own error answers (unknown id, bad session) are not retried.
The session string never reaches a log line or an error message (it is registered as a
secret, and errors name only the method and object id).
"""

from __future__ import annotations

import time
import xmlrpc.client
from typing import Any, Mapping, Optional, Tuple

import pyone
import requests

from packet_provider import onexml
from packet_provider.config import auth_path, read_session
from packet_provider.core.errors import ConfigError, ProviderError

NO_EXISTS = 0x0400
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
_CODE_NAMES = {0x0100: "authentication failed", 0x0200: "not authorized",
               0x0400: "does not exist", 0x0800: "action refused",
               0x1000: "bad request", 0x2000: "internal error"}


class OnedError(ProviderError):
    """oned answered a request with an error (``code`` is oned's error code)."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


class OnedUnavailable(ProviderError):
    """oned could not be reached or did not answer in time, after the bounded retries."""


class _TimedTransport(pyone.RequestsTransport):
    """pyone's requests-based transport, with timeouts."""

    def __init__(self, timeout: Tuple[float, float], https: bool) -> None:
        super().__init__()
        self.timeout = timeout
        self.set_https(https)

    def request(self, host: str, handler: str, request_body: bytes,
                verbose: bool = False) -> Any:
        url = self._build_url(host, handler)
        response = requests.post(url, data=request_body, timeout=self.timeout,
                                 headers={"User-Agent": self.user_agent,
                                          "Content-Type": "text/xml", "Accept": "*/*"})
        if response.status_code != 200:
            raise xmlrpc.client.ProtocolError(url, response.status_code, response.reason,
                                              dict(response.headers))
        return self.parse_response(response)


class OnedClient:
    """oned's XML-RPC API as this plugin uses it: the info calls of the hook (answered as
    parsed XML elements) and the hook calls of the installer."""

    def __init__(self, endpoint: str, session: str, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, retries: int = 3, backoff: float = 0.5) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.calls = 0
        try:
            self.server = pyone.OneServer(endpoint, session=session)
        except (OSError, ValueError) as err:  # xmlrpc.client refuses the URL
            raise ConfigError(f"oned endpoint {endpoint!r}: {err}") from None
        # pyone builds its own transport without timeouts: put ours in its place
        self.server._ServerProxy__transport = _TimedTransport(  # noqa: SLF001
            (connect_timeout, read_timeout), endpoint.startswith("https"))

    @classmethod
    def from_config(cls, config: Any, env: Mapping[str, str]) -> OnedClient:
        session = read_session(auth_path(env, config.one_auth))
        return cls(config.one_xmlrpc, session, config.connect_timeout, config.read_timeout,
                   config.retries, config.backoff)

    def request(self, method: str, *params: Any, retry: bool = True) -> Any:
        """``one.<method>(session, *params)``: the value of a successful answer (a string, an
        id...). A connection failure is retried (bounded) only when ``retry``: a write that
        is not idempotent (an allocate) is sent once."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            self.calls += 1
            try:
                answer = self.server._do_request(  # noqa: SLF001 - below pyone's binding
                    "one." + method, self.server._cast_parms(params))  # noqa: SLF001
                break
            except (requests.ConnectionError, requests.Timeout, ConnectionError) as err:
                reason = "timed out" if isinstance(err, requests.Timeout) else "unreachable"
            except xmlrpc.client.ProtocolError as err:
                reason = f"HTTP {err.errcode}"
            except (pyone.OneException, xmlrpc.client.Error, ValueError) as err:
                raise OnedError(f"oned: one.{method}: bad answer "
                                f"({type(err).__name__})") from None
            if attempt == attempts - 1:
                raise OnedUnavailable(f"oned at {self.endpoint}: one.{method}: {reason} "
                                      f"after {attempts} attempt{'s' if attempts > 1 else ''}")
            time.sleep(self.backoff * (2 ** attempt))
        if not isinstance(answer, (list, tuple)) or len(answer) < 3:
            raise OnedError(f"oned: one.{method}: malformed answer")
        if not answer[0]:
            code = answer[2] if isinstance(answer[2], int) else None
            what = _CODE_NAMES.get(code or 0, f"error {code}")
            ids = " ".join(str(p) for p in params[:1] if isinstance(p, int))
            raise OnedError(f"oned: one.{method}({ids}): {what}", code)
        return answer[1]

    def call(self, method: str, *params: Any) -> str:
        """``one.<method>(session, *params)``: the XML document of a successful answer."""
        body = self.request(method, *params)
        if not isinstance(body, str):
            raise OnedError(f"oned: one.{method}: expected an XML document")
        return body

    def _id(self, method: str, *params: Any, retry: bool = True) -> int:
        value = self.request(method, *params, retry=retry)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OnedError(f"oned: one.{method}: expected an id")
        return value

    def info(self, kind: str, object_id: int, decrypt: bool = False) -> Any:
        """``one.<kind>.info`` parsed with the safe parser."""
        body = self.call(f"{kind}.info", int(object_id), bool(decrypt))
        return onexml.parse(body.encode("utf-8"), f"oned's answer to one.{kind}.info")

    def vm(self, vm_id: int) -> Optional[Any]:
        """The VM as oned has it now, or None when oned no longer knows it."""
        try:
            return self.info("vm", vm_id)
        except OnedError as err:
            if err.code == NO_EXISTS:
                return None
            raise

    def host(self, host_id: int) -> Any:
        return self.info("host", host_id)

    def vnet(self, vnet_id: int) -> Any:
        """The network with its ARs' encrypted attributes (PACKET_TOKEN) decrypted."""
        return self.info("vn", vnet_id, decrypt=True)

    def hooks(self) -> Any:
        """Every hook (``one.hookpool.info``), as the ``<HOOK_POOL>`` element."""
        body = self.call("hookpool.info", -2, -1, -1)
        return onexml.parse(body.encode("utf-8"), "oned's answer to one.hookpool.info")

    def hook_allocate(self, template: str) -> int:
        """Create a hook from ``template`` (oned's template syntax); its id. Sent once."""
        return self._id("hook.allocate", template, retry=False)

    def hook_update(self, hook_id: int, template: str, merge: bool = True) -> int:
        """Replace (``merge`` False) or merge into a hook's template; the hook's id."""
        return self._id("hook.update", int(hook_id), template, 1 if merge else 0)
