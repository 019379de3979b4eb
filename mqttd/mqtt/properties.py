"""MQTT 5.0 properties: identifier, name, wire type, and where each may appear (spec 2.2.2.2).

Packets carry properties as a dict keyed by the names below. ``user_property``
is a list of ``(name, value)`` string pairs in wire order and
``subscription_identifier`` a list of ints (a server-to-client PUBLISH may carry
several); every other property holds one value (int, str or bytes).
"""

from __future__ import annotations

from typing import NamedTuple

# Wire types.
BYTE = 1
TWO_BYTE_INT = 2
FOUR_BYTE_INT = 3
VARINT = 4
UTF8 = 5
BINARY = 6
UTF8_PAIR = 7

# Packet types (also in mqttd.packets; repeated here so this table stands alone).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)
#: Pseudo packet type for the Will Properties inside CONNECT.
WILL = 16

_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)


class Property(NamedTuple):
    ident: int
    name: str
    wire_type: int
    packets: frozenset[int]


def _p(ident: int, name: str, wire_type: int, *packets: int) -> Property:
    return Property(ident, name, wire_type, frozenset(packets))


PROPERTIES: tuple[Property, ...] = (
    _p(0x01, "payload_format_indicator", BYTE, PUBLISH, WILL),
    _p(0x02, "message_expiry_interval", FOUR_BYTE_INT, PUBLISH, WILL),
    _p(0x03, "content_type", UTF8, PUBLISH, WILL),
    _p(0x08, "response_topic", UTF8, PUBLISH, WILL),
    _p(0x09, "correlation_data", BINARY, PUBLISH, WILL),
    _p(0x0B, "subscription_identifier", VARINT, PUBLISH, SUBSCRIBE),
    _p(0x11, "session_expiry_interval", FOUR_BYTE_INT, CONNECT, CONNACK, DISCONNECT),
    _p(0x12, "assigned_client_identifier", UTF8, CONNACK),
    _p(0x13, "server_keep_alive", TWO_BYTE_INT, CONNACK),
    _p(0x15, "authentication_method", UTF8, CONNECT, CONNACK, AUTH),
    _p(0x16, "authentication_data", BINARY, CONNECT, CONNACK, AUTH),
    _p(0x17, "request_problem_information", BYTE, CONNECT),
    _p(0x18, "will_delay_interval", FOUR_BYTE_INT, WILL),
    _p(0x19, "request_response_information", BYTE, CONNECT),
    _p(0x1A, "response_information", UTF8, CONNACK),
    _p(0x1C, "server_reference", UTF8, CONNACK, DISCONNECT),
    _p(0x1F, "reason_string", UTF8, CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH),
    _p(0x21, "receive_maximum", TWO_BYTE_INT, CONNECT, CONNACK),
    _p(0x22, "topic_alias_maximum", TWO_BYTE_INT, CONNECT, CONNACK),
    _p(0x23, "topic_alias", TWO_BYTE_INT, PUBLISH),
    _p(0x24, "maximum_qos", BYTE, CONNACK),
    _p(0x25, "retain_available", BYTE, CONNACK),
    _p(0x26, "user_property", UTF8_PAIR, CONNECT, CONNACK, PUBLISH, WILL, *_ACKS, SUBSCRIBE,
       SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH),
    _p(0x27, "maximum_packet_size", FOUR_BYTE_INT, CONNECT, CONNACK),
    _p(0x28, "wildcard_subscription_available", BYTE, CONNACK),
    _p(0x29, "subscription_identifier_available", BYTE, CONNACK),
    _p(0x2A, "shared_subscription_available", BYTE, CONNACK),
)

BY_ID: dict[int, Property] = {p.ident: p for p in PROPERTIES}
BY_NAME: dict[str, Property] = {p.name: p for p in PROPERTIES}

#: Properties that may appear more than once (always held as lists).
REPEATABLE = frozenset({"user_property", "subscription_identifier"})

#: Byte properties whose only legal values are 0 and 1 (a protocol error otherwise).
BOOLEAN = frozenset(
    {"payload_format_indicator", "request_problem_information", "request_response_information",
     "maximum_qos", "retain_available", "wildcard_subscription_available",
     "subscription_identifier_available", "shared_subscription_available"}
)

#: Integer properties for which 0 is a protocol error.
NONZERO = frozenset({"receive_maximum", "maximum_packet_size", "subscription_identifier"})
