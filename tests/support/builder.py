"""An independent, hand-written MQTT packet builder: the tests' wire truth.

Like mosquitto's ``test/mosq_test.py`` helpers, every function here builds raw
bytes from field values, written straight from the MQTT 3.1, 3.1.1 and 5.0
specifications. It deliberately imports nothing from ``mqttd`` (no encoder, no
property or reason-code table), so a bug that is symmetric in mqttd's encoder
and decoder cannot make both directions agree with it.

It can build wrong things too: every builder takes ``flags`` (fixed-header
flag nibble), ``remaining_length`` (a lie about the body size), ``rl_bytes``
(raw Remaining Length bytes, e.g. non-minimal), ``extra`` (trailing body
bytes), and string fields accept raw ``bytes`` (invalid UTF-8) as well as
``str``. Property blocks are plain bytes, so they can hold anything.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

# --- packet types (spec 2.1.2, table 2-1) ------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)
#: Pseudo type for the Will Properties inside a CONNECT payload.
WILL = 16

#: The fixed-header flag nibble each packet type must carry (2.1.3, table 2-2).
#: PUBLISH (3) is DUP/QoS/RETAIN and has no single right value.
REQUIRED_FLAGS = {
    CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2,
    SUBACK: 0, UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0, PINGRESP: 0, DISCONNECT: 0, AUTH: 0,
}

# --- MQTT 5.0 properties (2.2.2.2, table 2-4), hard-coded from the spec ------------------

BYTE, TWO, FOUR, VBI, UTF8, BIN, PAIR = "byte", "u16", "u32", "vbi", "utf8", "bin", "pair"

_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)

#: name -> (identifier, wire type, packets it may appear in)
PROPERTIES: dict[str, tuple[int, str, frozenset[int]]] = {
    "payload_format_indicator": (0x01, BYTE, frozenset({PUBLISH, WILL})),
    "message_expiry_interval": (0x02, FOUR, frozenset({PUBLISH, WILL})),
    "content_type": (0x03, UTF8, frozenset({PUBLISH, WILL})),
    "response_topic": (0x08, UTF8, frozenset({PUBLISH, WILL})),
    "correlation_data": (0x09, BIN, frozenset({PUBLISH, WILL})),
    "subscription_identifier": (0x0B, VBI, frozenset({PUBLISH, SUBSCRIBE})),
    "session_expiry_interval": (0x11, FOUR, frozenset({CONNECT, CONNACK, DISCONNECT})),
    "assigned_client_identifier": (0x12, UTF8, frozenset({CONNACK})),
    "server_keep_alive": (0x13, TWO, frozenset({CONNACK})),
    "authentication_method": (0x15, UTF8, frozenset({CONNECT, CONNACK, AUTH})),
    "authentication_data": (0x16, BIN, frozenset({CONNECT, CONNACK, AUTH})),
    "request_problem_information": (0x17, BYTE, frozenset({CONNECT})),
    "will_delay_interval": (0x18, FOUR, frozenset({WILL})),
    "request_response_information": (0x19, BYTE, frozenset({CONNECT})),
    "response_information": (0x1A, UTF8, frozenset({CONNACK})),
    "server_reference": (0x1C, UTF8, frozenset({CONNACK, DISCONNECT})),
    "reason_string": (0x1F, UTF8, frozenset({CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT,
                                             AUTH})),
    "receive_maximum": (0x21, TWO, frozenset({CONNECT, CONNACK})),
    "topic_alias_maximum": (0x22, TWO, frozenset({CONNECT, CONNACK})),
    "topic_alias": (0x23, TWO, frozenset({PUBLISH})),
    "maximum_qos": (0x24, BYTE, frozenset({CONNACK})),
    "retain_available": (0x25, BYTE, frozenset({CONNACK})),
    "user_property": (0x26, PAIR, frozenset({CONNECT, CONNACK, PUBLISH, WILL, *_ACKS, SUBSCRIBE,
                                             SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH})),
    "maximum_packet_size": (0x27, FOUR, frozenset({CONNECT, CONNACK})),
    "wildcard_subscription_available": (0x28, BYTE, frozenset({CONNACK})),
    "subscription_identifier_available": (0x29, BYTE, frozenset({CONNACK})),
    "shared_subscription_available": (0x2A, BYTE, frozenset({CONNACK})),
}
PROPERTY_BY_ID = {ident: name for name, (ident, _, _) in PROPERTIES.items()}
#: May appear more than once: User Property anywhere, Subscription Identifier in PUBLISH only.
REPEATABLE = {"user_property", "subscription_identifier"}

#: The packets that carry a property block in MQTT 5.0 (plus the Will Properties).
PACKETS_WITH_PROPERTIES = (CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE,
                           SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH, WILL)

# --- reason codes each packet may carry (5.0 tables 3-1 .. 3-13; 3.1.1 table 3.1) ----------

CONNACK_V5_CODES = frozenset({0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                              0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F})
CONNACK_V3_CODES = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x05})
PUBACK_CODES = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
PUBREC_CODES = PUBACK_CODES
PUBREL_CODES = frozenset({0x00, 0x92})
PUBCOMP_CODES = PUBREL_CODES
SUBACK_V5_CODES = frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1,
                             0xA2})
SUBACK_V3_CODES = frozenset({0x00, 0x01, 0x02, 0x80})
UNSUBACK_CODES = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
DISCONNECT_CODES = frozenset({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E,
                              0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B,
                              0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2})
AUTH_CODES = frozenset({0x00, 0x18, 0x19})


# --- primitive encodings (1.5) -----------------------------------------------------------

def u8(n: int) -> bytes:
    return struct.pack("!B", n)


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def vbi(n: int, min_bytes: int = 1) -> bytes:
    """Variable Byte Integer (1.5.5); ``min_bytes`` > needed gives a non-minimal encoding."""
    digits = []
    while True:
        digits.append(n % 128)
        n //= 128
        if not n:
            break
    while len(digits) < min_bytes:
        digits.append(0)
    return bytes([d | 0x80 for d in digits[:-1]] + [digits[-1]])


def raw(s: str | bytes) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def string(s: str | bytes, length: int | None = None) -> bytes:
    """UTF-8 Encoded String (1.5.4): two-byte length then the bytes; ``bytes`` are sent as is."""
    data = raw(s)
    return u16(len(data) if length is None else length) + data


binary = string  # Binary Data (1.5.6) has the same shape


# --- properties --------------------------------------------------------------------------

def prop(name: str, value: Any) -> bytes:
    """One property: identifier byte then its value in the property's wire type."""
    ident, wt, _ = PROPERTIES[name]
    return u8(ident) + prop_value(wt, value)


def prop_value(wt: str, value: Any) -> bytes:
    if wt == BYTE:
        return u8(value)
    if wt == TWO:
        return u16(value)
    if wt == FOUR:
        return u32(value)
    if wt == VBI:
        return vbi(value)
    if wt in (UTF8, BIN):
        return string(value)
    return string(value[0]) + string(value[1])


PropItem = tuple[str, Any] | bytes


def props(*items: PropItem, length: int | None = None, length_bytes: bytes | None = None) -> bytes:
    """A property block: Property Length (VBI) then the properties in the given order.

    Items are ``(name, value)`` pairs or raw ``bytes``; ``length``/``length_bytes`` lie about
    the block's size.
    """
    body = b"".join(item if isinstance(item, bytes) else prop(*item) for item in items)
    if length_bytes is not None:
        return length_bytes + body
    return vbi(len(body) if length is None else length) + body


EMPTY_PROPS = b"\x00"


def props_dict(*items: tuple[str, Any]) -> dict[str, Any]:
    """What a decoder should give for these properties: repeatable ones as lists, in order."""
    out: dict[str, Any] = {}
    for name, value in items:
        if name in REPEATABLE:
            out.setdefault(name, []).append(tuple(value) if name == "user_property" else value)
        else:
            out[name] = value
    return out


# --- fixed header ------------------------------------------------------------------------

def frame(first_byte: int, body: bytes, *, remaining_length: int | None = None,
          rl_bytes: bytes | None = None) -> bytes:
    """Fixed header (type/flags byte + Remaining Length) followed by ``body``."""
    if rl_bytes is None:
        rl_bytes = vbi(len(body) if remaining_length is None else remaining_length)
    return u8(first_byte) + rl_bytes + body


def packet(ptype: int, flags: int, body: bytes, *, extra: bytes = b"",
           remaining_length: int | None = None, rl_bytes: bytes | None = None) -> bytes:
    return frame((ptype << 4) | flags, body + extra, remaining_length=remaining_length,
                 rl_bytes=rl_bytes)


def split(pkt: bytes) -> tuple[int, bytes]:
    """(first byte, body) of a packet this module built (Remaining Length must be honest)."""
    length, mult, i = 0, 1, 1
    while True:
        b = pkt[i]
        i += 1
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = pkt[i:]
    assert len(body) == length, "split() needs a complete, honest packet"
    return pkt[0], body


def truncated(pkt: bytes, drop: int) -> bytes:
    """The same packet with its last ``drop`` body bytes removed and an honest length."""
    first, body = split(pkt)
    return frame(first, body[:len(body) - drop])


def with_extra(pkt: bytes, extra: bytes) -> bytes:
    """The same packet with ``extra`` appended to its body and an honest length."""
    first, body = split(pkt)
    return frame(first, body + extra)


def with_first_byte(pkt: bytes, first_byte: int) -> bytes:
    _, body = split(pkt)
    return frame(first_byte, body)


# --- packets -----------------------------------------------------------------------------

_DEFAULT: Any = object()


def connect(client_id: str | bytes | None = "", *, level: int = 4,
            proto_name: str | bytes | None = None, clean: bool = True, keepalive: int = 0,
            properties: bytes = _DEFAULT, will_topic: str | bytes | None = None,
            will_payload: bytes = b"", will_qos: int = 0, will_retain: bool = False,
            will_properties: bytes = _DEFAULT, username: str | bytes | None = None,
            password: bytes | None = None, connect_flags: int | None = None, flags: int = 0,
            extra: bytes = b"", remaining_length: int | None = None) -> bytes:
    """CONNECT (3.1). ``level`` 3 is MQTT 3.1 ("MQIsdp"), 4 is 3.1.1, 5 is 5.0.

    Property blocks default to empty on level 5 and absent below; ``client_id=None`` omits the
    Client Identifier; ``connect_flags`` overrides the computed Connect Flags byte; a Will is
    present when ``will_topic`` is not None.
    """
    if proto_name is None:
        proto_name = "MQIsdp" if level == 3 else "MQTT"
    if properties is _DEFAULT:
        properties = EMPTY_PROPS if level == 5 else b""
    if will_properties is _DEFAULT:
        will_properties = EMPTY_PROPS if level == 5 else b""
    cflags = 0x02 if clean else 0
    if will_topic is not None:
        cflags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if password is not None:
        cflags |= 0x40
    if username is not None:
        cflags |= 0x80
    if connect_flags is not None:
        cflags = connect_flags
    body = string(proto_name) + u8(level) + u8(cflags) + u16(keepalive) + properties
    if client_id is not None:
        body += string(client_id)
    if will_topic is not None:
        body += will_properties + string(will_topic) + binary(will_payload)
    if username is not None:
        body += string(username)
    if password is not None:
        body += binary(password)
    return packet(CONNECT, flags, body, extra=extra, remaining_length=remaining_length)


def connack(reason_code: int = 0, *, session_present: bool = False, properties: bytes = b"",
            ack_flags: int | None = None, flags: int = 0, extra: bytes = b"",
            remaining_length: int | None = None) -> bytes:
    """CONNACK (3.2). Pass ``properties`` (a block, e.g. ``EMPTY_PROPS``) for 5.0."""
    af = (1 if session_present else 0) if ack_flags is None else ack_flags
    body = u8(af) + u8(reason_code) + properties
    return packet(CONNACK, flags, body, extra=extra, remaining_length=remaining_length)


def publish(topic: str | bytes, payload: bytes = b"", *, qos: int = 0, retain: bool = False,
            dup: bool = False, packet_id: int | None = None, properties: bytes = b"",
            flags: int | None = None, extra: bytes = b"", remaining_length: int | None = None,
            rl_bytes: bytes | None = None) -> bytes:
    """PUBLISH (3.3). The Packet Identifier is sent iff ``packet_id`` is not None (so a QoS>0
    PUBLISH without one can be built); pass ``properties`` (a block) for 5.0."""
    if flags is None:
        flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = string(topic)
    if packet_id is not None:
        body += u16(packet_id)
    body += properties + payload
    return packet(PUBLISH, flags, body, extra=extra, remaining_length=remaining_length,
                  rl_bytes=rl_bytes)


def ack(ptype: int, packet_id: int, reason_code: int | None = None,
        properties: bytes | None = None, *, flags: int | None = None, extra: bytes = b"",
        remaining_length: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP (3.4-3.7). Reason Code and properties are sent only when
    given: the 5.0 short forms (Remaining Length 2 or 3) come from leaving them out."""
    body = u16(packet_id)
    if reason_code is not None:
        body += u8(reason_code)
    if properties is not None:
        body += properties
    if flags is None:
        flags = REQUIRED_FLAGS[ptype]
    return packet(ptype, flags, body, extra=extra, remaining_length=remaining_length)


def puback(packet_id: int, reason_code: int | None = None, properties: bytes | None = None,
           **kw: Any) -> bytes:
    return ack(PUBACK, packet_id, reason_code, properties, **kw)


def pubrec(packet_id: int, reason_code: int | None = None, properties: bytes | None = None,
           **kw: Any) -> bytes:
    return ack(PUBREC, packet_id, reason_code, properties, **kw)


def pubrel(packet_id: int, reason_code: int | None = None, properties: bytes | None = None,
           **kw: Any) -> bytes:
    return ack(PUBREL, packet_id, reason_code, properties, **kw)


def pubcomp(packet_id: int, reason_code: int | None = None, properties: bytes | None = None,
            **kw: Any) -> bytes:
    return ack(PUBCOMP, packet_id, reason_code, properties, **kw)


def sub_options(qos: int = 0, no_local: bool = False, retain_as_published: bool = False,
                retain_handling: int = 0, reserved: int = 0) -> int:
    """The Subscription Options byte (3.8.3.1); ``reserved`` is OR-ed in as is."""
    return (qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0)
            | (retain_handling << 4) | reserved)


def subscribe(packet_id: int, entries: Iterable[tuple[str | bytes, int | None]], *,
              properties: bytes = b"", flags: int = 2, extra: bytes = b"",
              remaining_length: int | None = None) -> bytes:
    """SUBSCRIBE (3.8): ``entries`` are (filter, options byte); options None omits the byte."""
    body = u16(packet_id) + properties
    for topic_filter, opts in entries:
        body += string(topic_filter)
        if opts is not None:
            body += u8(opts)
    return packet(SUBSCRIBE, flags, body, extra=extra, remaining_length=remaining_length)


def suback(packet_id: int, reason_codes: Sequence[int], *, properties: bytes = b"",
           flags: int = 0, extra: bytes = b"") -> bytes:
    """SUBACK (3.9)."""
    return packet(SUBACK, flags, u16(packet_id) + properties + bytes(reason_codes), extra=extra)


def unsubscribe(packet_id: int, filters: Iterable[str | bytes], *, properties: bytes = b"",
                flags: int = 2, extra: bytes = b"") -> bytes:
    """UNSUBSCRIBE (3.10)."""
    body = u16(packet_id) + properties + b"".join(string(f) for f in filters)
    return packet(UNSUBSCRIBE, flags, body, extra=extra)


def unsuback(packet_id: int, reason_codes: Sequence[int] = (), *, properties: bytes = b"",
             flags: int = 0, extra: bytes = b"") -> bytes:
    """UNSUBACK (3.11): 3.1.1 has only the Packet Identifier."""
    return packet(UNSUBACK, flags, u16(packet_id) + properties + bytes(reason_codes), extra=extra)


def pingreq(*, flags: int = 0, extra: bytes = b"") -> bytes:
    """PINGREQ (3.12)."""
    return packet(PINGREQ, flags, b"", extra=extra)


def pingresp(*, flags: int = 0, extra: bytes = b"") -> bytes:
    """PINGRESP (3.13)."""
    return packet(PINGRESP, flags, b"", extra=extra)


def disconnect(reason_code: int | None = None, properties: bytes | None = None, *,
               flags: int = 0, extra: bytes = b"") -> bytes:
    """DISCONNECT (3.14): Reason Code / properties sent only when given (5.0 short forms)."""
    body = b"" if reason_code is None else u8(reason_code)
    if properties is not None:
        body += properties
    return packet(DISCONNECT, flags, body, extra=extra)


def auth(reason_code: int | None = None, properties: bytes | None = None, *, flags: int = 0,
         extra: bytes = b"") -> bytes:
    """AUTH (3.15, 5.0 only): Reason Code / properties sent only when given."""
    body = b"" if reason_code is None else u8(reason_code)
    if properties is not None:
        body += properties
    return packet(AUTH, flags, body, extra=extra)


def auth_properties(method: str | bytes, data: bytes | None = None, *more: PropItem) -> bytes:
    """The property block of an MQTT 5 enhanced authentication CONNECT or AUTH (3.15.2.2):
    Authentication Method, Authentication Data when given, then ``more``."""
    items: list[PropItem] = [("authentication_method", method)]
    if data is not None:
        items.append(("authentication_data", data))
    return props(*items, *more)
