"""Publishing a message as the operator (EMQX's ``POST /publish``).

The message goes through the broker's publish path (the ``message.publish`` hook,
counters, topic traces, retained store, routing) with no sender, as the broker's own
messages do, so ``no_local`` never hides it. The topic, QoS and MQTT 5 properties are
checked as a client's PUBLISH would be; a front end hands over the payload as bytes.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from ..core.message import Message
from ..mqtt.properties import BOOLEAN, BY_NAME, PUBLISH, UTF8, UTF8_PAIR
from ..mqtt.reasons import ReasonCode as RC
from ..mqtt.topics import has_disallowed_chars, topic_name_error
from .errors import Conflict, Failed, InvalidArgument
from .listing import Row

if TYPE_CHECKING:
    from ..core.broker import Broker

__all__ = ["PUBLISH_PROPERTIES", "Publisher", "check_topic", "decode_payload", "parse_properties"]

log = logging.getLogger("mqttd.mgmt")

#: The PUBLISH properties an operator may set (a Topic Alias and a Subscription Identifier
#: belong to one connection, not to a message).
PUBLISH_PROPERTIES = ("payload_format_indicator", "message_expiry_interval", "content_type",
                      "response_topic", "correlation_data", "user_property")
_MAX_TOPIC = 65535
_LIMITS = {"payload_format_indicator": 1, "message_expiry_interval": 0xFFFFFFFF}


def check_topic(topic: Any) -> str:
    """``topic`` if a client could publish to it; InvalidArgument saying why not."""
    if not isinstance(topic, str):
        raise InvalidArgument("topic: expected a string")
    why = None
    if not topic:
        why = "empty topic"
    elif len(topic.encode("utf-8", "surrogatepass")) > _MAX_TOPIC:
        why = f"longer than {_MAX_TOPIC} bytes"
    elif "\x00" in topic or has_disallowed_chars(topic):
        why = "control or non-character code point"
    else:
        why = topic_name_error(topic)
    if why is not None:
        raise InvalidArgument(f"topic {topic!r} is not a valid topic name: {why}")
    return topic


def parse_properties(props: Any) -> dict[str, Any]:
    """MQTT 5 PUBLISH properties from JSON: names as ``mqttd`` spells them (``content_type``,
    ``user_property`` as ``[[name, value], ...]`` or ``{name: value}``), ``correlation_data``
    as text; InvalidArgument naming the property and the problem."""
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise InvalidArgument("properties: expected an object")
    out: dict[str, Any] = {}
    for name, value in props.items():
        where = f"properties.{name}"
        if name not in PUBLISH_PROPERTIES:
            raise InvalidArgument(f"{where}: not a property a message can carry (one of "
                                  f"{', '.join(PUBLISH_PROPERTIES)})")
        prop = BY_NAME[name]
        assert PUBLISH in prop.packets
        if prop.wire_type == UTF8_PAIR:
            pairs = list(value.items()) if isinstance(value, dict) else value
            if not isinstance(pairs, list) or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2
                    and all(isinstance(x, str) for x in p) for p in pairs):
                raise InvalidArgument(f"{where}: expected [[name, value], ...] or "
                                      "{name: value} with string names and values")
            out[name] = [(str(k), str(v)) for k, v in pairs]
        elif prop.wire_type == UTF8:
            if not isinstance(value, str):
                raise InvalidArgument(f"{where}: expected a string")
            if name == "response_topic":
                check_topic(value)
            out[name] = value
        elif name == "correlation_data":
            if not isinstance(value, str):
                raise InvalidArgument(f"{where}: expected a string")
            out[name] = value.encode("utf-8")
        else:
            hi = _LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise InvalidArgument(f"{where}: expected an integer from 0 to {hi}")
            if name in BOOLEAN or name == "message_expiry_interval":
                out[name] = value
    return out


def decode_payload(payload: Any, encoding: Any) -> bytes:
    """The payload's bytes: ``encoding`` "plain" (UTF-8 text, the default) or "base64"."""
    if encoding not in (None, "plain", "base64"):
        raise InvalidArgument(f"payload_encoding: {encoding!r} is not \"plain\" or "
                              "\"base64\"")
    if payload is None:
        return b""
    if not isinstance(payload, str):
        raise InvalidArgument("payload: expected a string (text, or base64 with "
                              "\"payload_encoding\": \"base64\")")
    if encoding in (None, "plain"):
        return payload.encode("utf-8", "surrogatepass")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError:
            raise InvalidArgument("payload: not valid base64") from None
    raise AssertionError(encoding)


def _reason_name(code: int) -> str:
    try:
        return RC(code).name.lower().replace("_", " ")
    except ValueError:
        return "refused"


class Publisher:
    """Publish messages into the node's broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def publish(self, topic: Any, payload: bytes, *, qos: Any = 0, retain: Any = False,
                properties: Any = None, by: str = "management") -> Row:
        """Publish; returns ``{"topic", "qos", "retain", "payload_size", "delivered"}``
        (``delivered``: the sessions the message reached, as the broker counts them)."""
        check_topic(topic)
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise InvalidArgument("qos: should be 0, 1 or 2")
        if not isinstance(retain, bool):
            raise InvalidArgument("retain: expected true or false")
        props = parse_properties(properties)
        if topic.startswith("$SYS/"):
            raise InvalidArgument(f"topic {topic!r}: $SYS/ topics are the broker's own")
        msg = Message(topic, payload, qos, retain, props or None, None)
        # A $-topic goes through client.publish.dollar first, as a client's PUBLISH does:
        # with the delayed module loaded, "$delayed/<s>/<topic>" is delayed.
        taken = self.broker.take_dollar(msg)
        if taken is None:
            log.debug("message to %s (QoS %d) published by %s: taken by client.publish."
                      "dollar (delayed)", topic, qos, by)
            return {"topic": topic, "qos": qos, "retain": retain,
                    "payload_size": len(payload), "delivered": 0, "taken": True}
        if isinstance(taken, int):
            if taken == RC.QUOTA_EXCEEDED:
                raise Conflict(f"topic {topic!r}: refused, quota exceeded (0x97; e.g. "
                             "max_delayed_messages pending already)", "quota_exceeded")
            raise InvalidArgument(f"topic {topic!r}: refused with reason code 0x{taken:02X} "
                                  f"({_reason_name(taken)})")
        n = self.broker.publish(taken)
        if n < 0:
            raise Failed("the store is full: QoS 1/2 messages that need storing are refused "
                         "until it has room", "store_full")
        log.debug("message to %s (QoS %d%s) published by %s", topic, qos,
                  ", retained" if retain else "", by)
        return {"topic": topic, "qos": qos, "retain": retain, "payload_size": len(payload),
                "delivered": n}
