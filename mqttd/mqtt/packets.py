"""The MQTT control packets, shared by the pure-Python and the compiled codec.

One class per packet type, plain data with slots. Protocol-level differences
(3.1, 3.1.1, 5.0) live in the codec, not here: a 3.1.1 PUBACK is a ``Puback``
whose ``reason_code`` is 0 and whose ``properties`` are empty. Reason codes are
plain ints (see :mod:`mqttd.reasons` for their names); properties are a dict
keyed by the names in :mod:`mqttd.properties`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5
PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}

#: MQTT 5 properties by name (mqttd.mqtt.properties); values are int, str, bytes, or lists of
#: them (subscription identifiers, user properties), so the value type stays open.
Properties = dict[str, Any]


def _props() -> Properties:
    return {}


@dataclass(slots=True)
class Will:
    """The Will Message carried in CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Connect:
    packet_type: ClassVar[int] = CONNECT
    proto_name: str = "MQTT"
    proto_level: int = MQTT_3_1_1
    clean_start: bool = True
    keepalive: int = 0
    client_id: str = ""
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Connack:
    packet_type: ClassVar[int] = CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Publish:
    packet_type: ClassVar[int] = PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0  # 0 for QoS 0, which carries none
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Puback:
    packet_type: ClassVar[int] = PUBACK
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Pubrec:
    packet_type: ClassVar[int] = PUBREC
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Pubrel:
    packet_type: ClassVar[int] = PUBREL
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Pubcomp:
    packet_type: ClassVar[int] = PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class SubOpts:
    """Subscription options of one topic filter (3.1.1 uses only ``qos``)."""

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    packet_type: ClassVar[int] = SUBSCRIBE
    packet_id: int
    topics: list[tuple[str, SubOpts]] = field(default_factory=list)
    properties: Properties = field(default_factory=_props)
    #: A huge SUBSCRIBE's filter entries not decoded yet (the parser leaves entries past
    #: SUBSCRIBE_LAZY_BYTES to ``codec.decode_filters``, a slice per loop turn); b"" once
    #: ``topics`` holds them all. Encoded after ``topics``.
    rest: bytes = b""


@dataclass(slots=True)
class Suback:
    packet_type: ClassVar[int] = SUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Unsubscribe:
    packet_type: ClassVar[int] = UNSUBSCRIBE
    packet_id: int
    topics: list[str] = field(default_factory=list)
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Unsuback:
    packet_type: ClassVar[int] = UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # 5.0 only
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Pingreq:
    packet_type: ClassVar[int] = PINGREQ


@dataclass(slots=True)
class Pingresp:
    packet_type: ClassVar[int] = PINGRESP


@dataclass(slots=True)
class Disconnect:
    packet_type: ClassVar[int] = DISCONNECT
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


@dataclass(slots=True)
class Auth:
    packet_type: ClassVar[int] = AUTH
    reason_code: int = 0
    properties: Properties = field(default_factory=_props)


Packet = (Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback
          | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect | Auth)

PACKET_CLASSES: dict[int, type] = {
    cls.packet_type: cls
    for cls in (Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe, Suback,
                Unsubscribe, Unsuback, Pingreq, Pingresp, Disconnect, Auth)
}
