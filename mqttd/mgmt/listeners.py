"""Listeners (EMQX's emqx_mgmt listeners): list, stop, restart, through the process layer's
:class:`~mqttd.mgmt.control.ServerControl`."""

from __future__ import annotations

from .control import ListenerStatus, ServerControl
from .errors import Conflict, NotFound
from .listing import Row

__all__ = ["Listeners", "listener_row"]


def listener_row(status: ListenerStatus) -> Row:
    """A listener's row: address, zone, whether running, connections and limits."""
    kind = status.type + ("+proxy" if status.proxy_protocol else "")
    return {"name": status.name, "type": kind, "listen_on": f"{status.host}:{status.port}",
            "zone": status.zone, "running": status.running,
            "current_conn": status.connections, "max_conns": status.max_connections,
            "max_conn_rate": status.max_conn_rate}


class Listeners:
    """The node's configured listeners."""

    def __init__(self, control: ServerControl) -> None:
        self.control = control

    def all(self) -> list[Row]:
        """Every configured listener, running or not, in configuration order."""
        return [listener_row(s) for s in self.control.listeners()]

    def _status(self, name: str) -> ListenerStatus:
        for status in self.control.listeners():
            if status.name == name:
                return status
        raise NotFound("listener", name)

    async def stop(self, name: str) -> Row:
        """Stop accepting on a listener and close its clients; NotFound("listener"), or
        Conflict("not_running")."""
        if not self._status(name).running:
            raise Conflict(f"listener {name} is not running", "not_running")
        host, port = await self.control.stop_listener(name)
        return {"name": name, "listen_on": f"{host}:{port}", "running": False}

    def reload(self, name: str) -> Row:
        """Reload a TLS listener's certificate and key (live connections keep theirs);
        NotFound("listener"), Conflict("not_tls"), or Failed naming each problem."""
        self._status(name)
        certfile = self.control.reload_listener(name)
        return {"name": name, "certfile": certfile, "reloaded": True}

    async def restart(self, name: str) -> Row:
        """(Re)start a listener on the port it had; NotFound("listener"), or Failed with
        the reason it cannot listen."""
        self._status(name)
        host, port = await self.control.restart_listener(name)
        return {"name": name, "listen_on": f"{host}:{port}", "running": True}
