"""Connected clients (EMQX's emqx_mgmt clients): list, show, kick.

A client's row joins its connection's facts (peer, protocol, counters) with
its session's (subscriptions, inflight, queue), times in RFC 3339.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.channel import CONNECTED, Channel
from .errors import NotFound
from .listing import Listing, Row, iso

if TYPE_CHECKING:
    from ..core.registry import Registry
    from ..core.services import SessionOwner

__all__ = ["CLIENT_KEYS", "Clients", "TIME_KEYS", "client_row"]

#: A client row's keys, in the order rows show them.
CLIENT_KEYS = (
    "clientid", "username", "peername", "listener", "transport", "proto_name", "proto_ver",
    "clean_start", "keepalive",
    "expiry_interval", "connected", "created_at", "connected_at", "subscriptions", "inflight",
    "max_inflight", "awaiting_rel", "mqueue_len", "max_mqueue", "delivered", "enqueued",
    "dropped", "recv_pkt", "send_pkt", "recv_msg", "send_msg",
)
#: Keys of client and session rows that hold times.
TIME_KEYS = ("created_at", "connected_at", "disconnected_at")


def client_row(owner: SessionOwner) -> Row | None:
    """A client's row (None if it has no client id yet, or is not a channel)."""
    if not isinstance(owner, Channel) or not owner.client_id:
        return None
    channel = owner
    info: dict[str, Any] = {
        "clientid": channel.client_id,
        "username": channel.username,
        "peername": channel.peer,
        "listener": channel.listener,
        "transport": channel.transport,
        "proto_name": channel.proto_name,
        "proto_ver": channel.version,
        "clean_start": channel.clean_start,
        "keepalive": channel.keepalive,
        "connected": channel.state == CONNECTED and not channel.closing,
        "created_at": channel.created_at,
        "connected_at": channel.connected_at,
        "recv_pkt": channel.recv_pkt,
        "send_pkt": channel.send_pkt,
        "recv_msg": channel.recv_msg,
        "send_msg": channel.send_msg,
    }
    session = channel.session
    if session is not None:
        info.update(session.info())  # the session's creation time is the client's
        info["dropped"] = session.dropped + channel.dropped
    for key in TIME_KEYS:
        if key in info:
            info[key] = iso(info[key])
    row = {k: info[k] for k in CLIENT_KEYS if k in info}
    row.update(info)
    return row


class Clients:
    """The node's connected clients, by client id."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def all(self) -> Listing[SessionOwner]:
        """Every connected client (a snapshot, rows built as the front end pages)."""
        return Listing(list(self.registry.channels.values()), client_row)

    def get(self, client_id: str) -> Row:
        """One client's row; NotFound("client") if it is not connected."""
        owner = self.registry.channels.get(client_id)
        row = client_row(owner) if owner is not None else None
        if row is None:
            raise NotFound("client", client_id)
        return row

    def kick(self, client_id: str) -> Row:
        """Disconnect a client (MQTT 5: DISCONNECT 0x98); NotFound if not connected."""
        if not self.registry.kick(client_id):
            raise NotFound("client", client_id)
        return {"clientid": client_id, "kicked": True}
