"""Connection and session manager (EMQX's emqx_cm + emqx_sm): one live channel per client id.

Everything runs on the event loop's thread, so opening a session is atomic:
when a client id connects again, the old channel is kicked (MQTT 5
DISCONNECT 0x8E), its session is resumed or discarded as the new CONNECT
asks, and no second session can appear for the same id. Offline sessions
expire on a timer; delayed wills are published when their delay passes or
their session ends, whichever is first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .reasons import ReasonCode as RC
from .session import Session

if TYPE_CHECKING:
    from .channel import Channel
    from .message import Message
    from .node import Node

log = logging.getLogger("mqttd.registry")

#: Session Expiry Interval meaning "never expires".
NEVER = 0xFFFFFFFF


class Registry:
    """Client id -> live channel, and client id -> session (connected or offline)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.channels: dict[str, Channel] = {}
        self.sessions: dict[str, Session] = {}
        #: client id -> (will message, timer handle) for wills waiting out their delay
        self._wills: dict[str, tuple[Message, Any]] = {}

    def open_session(self, channel: Channel, client_id: str, clean_start: bool, expiry: int,
                     *, max_inflight: int) -> tuple[Session, bool]:
        """Attach ``channel`` to a new or resumed session; returns (session, present)."""
        old = self.channels.get(client_id)
        if old is not None and old is not channel:
            self._takeover(old)
        zone = channel.zone
        session = self.sessions.get(client_id)
        present = False
        if session is not None:
            self._cancel_expiry(session)
            if clean_start:
                self.discard(session, "discarded")
                session = None
            else:
                present = True
                # A new connection for the session before the will delay passed:
                # the will is not sent [MQTT-3.1.3-9].
                self._cancel_will(client_id)
                self.node.run_hook("session.resumed", session)
        if session is None:
            session = Session(client_id, expiry_interval=expiry, max_inflight=max_inflight,
                              max_mqueue_len=zone.max_mqueue_len,
                              mqueue_store_qos0=zone.mqueue_store_qos0)
            self.sessions[client_id] = session
            self.node.run_hook("session.created", session)
        else:
            session.expiry_interval = expiry
            session.max_inflight = max_inflight
        session.persistent = expiry > 0
        session.channel = channel
        self.channels[client_id] = channel
        return session, present

    def _takeover(self, old: Channel) -> None:
        log.info("client %s taken over by a new connection", old.client_id)
        old.kick(RC.SESSION_TAKEN_OVER, "session taken over")
        self.node.run_hook("session.takeovered", old.session)
        self.detach(old)

    def detach(self, channel: Channel) -> None:
        """The channel's connection ended (or was taken over): deal with will and session."""
        session = channel.session
        if session is None or session.channel is not channel:
            return
        client_id = channel.client_id
        session.channel = None
        if self.channels.get(client_id) is channel:
            del self.channels[client_id]
        will = channel.will
        channel.will = None
        if will is not None:
            delay = channel.will_delay
            if delay and session.expiry_interval:
                self._schedule_will(client_id, will, delay)
            else:
                self.node.publish_will(will)
        if session.expiry_interval == 0:
            self.discard(session, "terminated")
        elif session.expiry_interval != NEVER:
            loop = asyncio.get_running_loop()
            session.expire_handle = loop.call_later(session.expiry_interval, self._expire,
                                                    session)

    def _schedule_will(self, client_id: str, will: Message, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._fire_will, client_id)
        self._wills[client_id] = (will, handle)

    def _fire_will(self, client_id: str) -> None:
        entry = self._wills.pop(client_id, None)
        if entry is not None:
            self.node.publish_will(entry[0])

    def _cancel_will(self, client_id: str) -> None:
        entry = self._wills.pop(client_id, None)
        if entry is not None:
            entry[1].cancel()

    def _cancel_expiry(self, session: Session) -> None:
        if session.expire_handle is not None:
            session.expire_handle.cancel()
            session.expire_handle = None

    def _expire(self, session: Session) -> None:
        session.expire_handle = None
        if session.channel is None and self.sessions.get(session.client_id) is session:
            log.info("session %s expired", session.client_id)
            self.discard(session, "expired")

    def discard(self, session: Session, why: str) -> None:
        """End a session: drop its subscriptions, hand shared work on, send a pending will."""
        self._cancel_expiry(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        # The session ends: a will still waiting out its delay goes now [MQTT-3.1.3-9].
        entry = self._wills.pop(session.client_id, None)
        if entry is not None:
            entry[1].cancel()
            self.node.publish_will(entry[0])
        broker = self.node.broker
        broker.unsubscribe_all(session)
        pending = session.pending()
        if pending:
            broker.redispatch_shared(session, pending)
        session.inflight.clear()
        session.mqueue.clear()
        self.node.run_hook("session.terminated" if why != "discarded" else "session.discarded",
                           session)

    def kick(self, client_id: str) -> bool:
        channel = self.channels.get(client_id)
        if channel is None:
            return False
        channel.kick(RC.ADMINISTRATIVE_ACTION, "kicked by the operator")
        self.detach(channel)
        return True

    def clean_session(self, client_id: str) -> bool:
        """Kick the client if connected and discard its session."""
        self.kick(client_id)
        session = self.sessions.get(client_id)
        if session is None:
            return False
        self.discard(session, "discarded")
        return True
