"""The seam to the process layer: what only the running server knows and can do.

Listeners, their sockets and the process's shutdown belong to ``mqttd.server``,
above management. Management states here what it needs from there, as a
Protocol it owns (the server hands in an object that fits), so nothing in
``mgmt/`` imports the server, not even for type hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..access.build import Access
    from ..config import Listener, Settings

__all__ = ["ListenerStatus", "ServerControl"]


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    """One configured listener as it is now (a running one's port is the bound port)."""

    name: str
    host: str
    port: int
    zone: str
    running: bool
    #: Live connections accepted through it.
    connections: int
    max_connections: int
    #: New connections per second it accepts (0: unlimited).
    max_conn_rate: float
    #: Its transport ("tcp", "ssl", "ws", "wss") and whether a PROXY header comes first.
    type: str = "tcp"
    proxy_protocol: bool = False


class ServerControl(Protocol):
    """The process-level operations a management call may ask for."""

    def listeners(self) -> list[ListenerStatus]:
        """Every configured listener, in configuration order."""
        ...

    async def stop_listener(self, name: str) -> tuple[str, int]:
        """Stop a running listener and close its clients; returns its address."""
        ...

    async def restart_listener(self, name: str) -> tuple[str, int]:
        """(Re)start a configured listener; returns its address.

        Raises :class:`~mqttd.mgmt.errors.Failed` when it cannot listen.
        """
        ...

    def reload_listener(self, name: str) -> str:
        """Load a TLS listener's certificate and key again (new handshakes use them);
        returns the certificate file.

        Raises KeyError for an unknown listener, :class:`~mqttd.mgmt.errors.Conflict`
        (``not_tls``) for a listener without TLS, :class:`~mqttd.mgmt.errors.Failed` when
        the files are bad (the old ones stay in use).
        """
        ...

    def request_stop(self, reason: str) -> None:
        """Begin a graceful shutdown of the whole node (as SIGTERM does)."""
        ...

    async def wait_stopped(self) -> None:
        """Return once the node has stopped."""
        ...

    def connection_count(self) -> int:
        """Live client connections on every listener (connected or not yet)."""
        ...

    # --- configuration reload (mgmt/conf.py) ------------------------------------------

    def config_file(self) -> str | None:
        """The configuration file the node was started with (None: none)."""
        ...

    def load_settings(self) -> Settings:
        """The settings as starting the node now would make them: the file, the environment
        and the command line it was started with. Raises ConfigError listing every problem,
        :class:`~mqttd.mgmt.errors.Unavailable` for a node started without a source."""
        ...

    async def replace_listener(self, config: Listener) -> tuple[str, int]:
        """Start a listener on ``config``, stopping the one of that name first (its clients
        are closed); returns its address. Raises :class:`~mqttd.mgmt.errors.Failed` when
        it cannot listen."""
        ...

    async def remove_listener(self, name: str) -> None:
        """Stop a listener (if running) and forget it."""
        ...

    def update_listener(self, config: Listener) -> None:
        """Give a running listener settings it reads at each accept or TLS reload."""
        ...

    def swap_access(self, access: Access) -> None:
        """Put newly built access chains in place of the running ones."""
        ...

    def refresh_anonymous(self) -> None:
        """Work out again which listeners let anonymous clients in (zones or listeners
        changed)."""
        ...

    def set_sys_interval(self, interval: float) -> None:
        """Publish ``$SYS`` every ``interval`` seconds from now on (0: stop)."""
        ...

    def set_busy_poll(self, max_wait: float) -> float:
        """Let the event loop poll for at most ``max_wait`` seconds after a busy turn
        (0: never); returns what applies (0 below two CPUs)."""
        ...
