"""The broker's message: what a PUBLISH becomes between its sender and its subscribers."""

from __future__ import annotations

import time

from ..mqtt.packets import Properties

_monotonic = time.monotonic
_time = time.time  # one global lookup per message instead of a module attribute lookup


class Message:
    """An application message in flight through the broker (EMQX's #message{}).

    ``properties`` are the publisher's MQTT 5 properties less the Topic Alias;
    ``expiry`` is a ``time.monotonic()`` deadline from Message Expiry Interval,
    or 0.0 when the message never expires. An interval of 0 counts as none (as in
    mosquitto): it is passed on as 0, never a reason to drop the message unsent.
    ``sender`` is the publishing client's id (None for the broker's own
    messages, e.g. $SYS).
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "sender", "timestamp", "expiry")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: Properties | None = None, sender: str | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties if properties is not None else {}
        self.sender = sender
        self.timestamp = _time()
        if properties:
            interval = properties.get("message_expiry_interval")
            self.expiry = _monotonic() + interval if interval else 0.0
        else:  # the common case: no properties, never expires
            self.expiry = 0.0

    def restamp(self) -> None:
        """Start the message's clock now: a Will is built at CONNECT but published later,
        and its Message Expiry Interval counts from publication (MQTT 5.0 3.1.3.2.3)."""
        self.timestamp = time.time()
        interval = self.properties.get("message_expiry_interval")
        self.expiry = _monotonic() + interval if interval else 0.0

    def remaining_expiry(self, now: float) -> int | None:
        """Whole seconds left before expiry (None if it never expires; <= 0 if expired)."""
        if not self.expiry:
            return None
        left = self.expiry - now
        return int(left) + (1 if left > int(left) else 0)

    def expired(self, now: float) -> bool:
        return bool(self.expiry) and now >= self.expiry

    def __repr__(self) -> str:
        return (f"Message({self.topic!r}, {self.payload[:32]!r}, qos={self.qos}, "
                f"retain={self.retain}, sender={self.sender!r})")
