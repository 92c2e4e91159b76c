"""What one action works with: the configuration, the local state
(:class:`packet_provider.ipam.leases.LocalState`) and Packet API clients built on demand,
each bounded by the action's deadline. ``requests`` is imported only when a client is made."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Dict, Optional

from packet_provider.ipam.leases import LocalState

if TYPE_CHECKING:  # pragma: no cover
    from packet_provider.config import Config
    from packet_provider.packet import PacketClient

ClientFactory = Callable[["Config", str], "PacketClient"]


class Context:
    """Configuration, local state and lazily built API clients for one action.

    ``deadline`` (a ``time.monotonic()`` instant) bounds every API call of the action, its
    retries and waits; ``recovery_deadline`` (earlier) bounds the recovery that precedes it.
    Closing it closes the clients and unlocks what the action still holds (the local
    state's ``with`` block ends first when the action's answer must be settled after its
    clients are closed)."""

    def __init__(self, config: Config, client_factory: Optional[ClientFactory] = None,
                 deadline: Optional[float] = None,
                 recovery_deadline: Optional[float] = None) -> None:
        self.config = config
        self.state = LocalState(config.ipam_state_dir)
        self.leases = self.state.leases
        self.journal = self.state.journal
        self.unassigns = self.state.unassigns
        self._factory = client_factory or default_client
        self._clients: Dict[str, PacketClient] = {}
        self.deadline = deadline
        self.recovery_deadline = deadline if recovery_deadline is None else recovery_deadline

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client(self, token: str) -> PacketClient:
        """The action's client for ``token`` (one per token)."""
        if token not in self._clients:
            client = self._factory(self.config, token)
            client.set_deadline(self.deadline)
            self._clients[token] = client
        return self._clients[token]

    def recovery_client(self, token: str) -> PacketClient:
        """A client that gives up at once: recovery must not slow the action down much."""
        key = "recovery:" + token
        if key not in self._clients:
            quick = self.config._replace(retries=0,
                                         read_timeout=min(self.config.read_timeout, 10.0))
            client = self._factory(quick, token)
            client.set_deadline(self.recovery_deadline)
            self._clients[key] = client
        return self._clients[key]

    def recovery_time_left(self) -> bool:
        return self.recovery_deadline is None or time.monotonic() < self.recovery_deadline

    def close_clients(self) -> None:
        for client in self._clients.values():
            client.close()

    def close(self) -> None:
        try:
            self.close_clients()
        finally:
            self.state.close()


def default_client(config: Config, token: str) -> PacketClient:
    """A PacketClient from the configuration (``requests`` is imported here, when the API is
    needed)."""
    from packet_provider.packet import PacketClient

    return PacketClient.from_config(config, token)
