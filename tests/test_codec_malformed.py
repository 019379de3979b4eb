"""Malformed and abusive input, table-driven from /work/shared/MQTT-MALFORMED.md.

Each row id (F1, C5, S1, ...) is the row of that checklist. Every rejection
comes with its nearest valid neighbour, which must parse, so that a codec that
rejects everything cannot pass. Reason codes: 0x81 malformed, 0x82 protocol
error, 0x84 unsupported protocol name/level, 0x95 packet too large.

Rows that are not the codec's job (they depend on direction, session state or
server policy) are left to the channel tests: C1, C2, C10, C16-C22, S4/S5 (see
the golden tests), S8, S12-S14, P5-P10, P12-P14, U9, U11, U12, U15, U16,
V7-V10, V12, V13, A1-A6. F9 (a server-only packet from a client) is direction
dependent too: the codec parses CONNACK/SUBACK/UNSUBACK/PINGRESP (a bridge needs
them) and only its structural share is tested here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from support import builder as B

from mqttd.mqtt.errors import PacketError
from mqttd.mqtt.packets import Pingreq, Puback, Publish

MAL, PROTO, VERSION, TOO_LARGE = 0x81, 0x82, 0x84, 0x95
E = B.EMPTY_PROPS


class Bad(NamedTuple):
    row: str
    name: str
    version: int  # the parser's protocol level before the feed (0: before CONNECT)
    wire: bytes
    code: int
    good: bytes  # the nearest valid input
    good_count: int = 1  # packets the neighbour yields (0: accepted so far, incomplete)
    good_version: int | None = None  # when the neighbour needs another protocol level

    @property
    def id(self) -> str:
        if self.version == 0 and self.good[0] == 0x10:
            # Before CONNECT: name the level of the (valid) neighbour CONNECT instead.
            _, body = B.split(self.good)
            level = body[2 + int.from_bytes(body[:2], "big")]
            return f"{self.row}-{self.name}-connect{level}"
        return f"{self.row}-{self.name}-v{self.version}"


BAD: list[Bad] = []


def bad(row: str, name: str, version: int, wire: bytes, code: int, good: bytes,
        good_count: int = 1, good_version: int | None = None) -> None:
    BAD.append(Bad(row, name, version, wire, code, good, good_count, good_version))


# Version-aware builders: the property blocks that 5.0 needs, absent below 5.0.
def pub(v: int, topic: str | bytes = "a/b", payload: bytes = b"x", **kw: Any) -> bytes:
    if v == 5:
        kw.setdefault("properties", E)
    return B.publish(topic, payload, **kw)


def sub(v: int, entries: list[tuple[str | bytes, int | None]], pid: int = 1, **kw: Any) -> bytes:
    if v == 5:
        kw.setdefault("properties", E)
    return B.subscribe(pid, entries, **kw)


def unsub(v: int, filters: list[str | bytes], pid: int = 1, **kw: Any) -> bytes:
    if v == 5:
        kw.setdefault("properties", E)
    return B.unsubscribe(pid, filters, **kw)


def conn(v: int, client_id: str | bytes | None = "c", **kw: Any) -> bytes:
    return B.connect(client_id, level=v, **kw)


V345 = (3, 4, 5)
V45 = (4, 5)

# --- a.1 Framing -----------------------------------------------------------------------------

for v in V45:
    # F1: at most four Remaining Length bytes; decide on the fifth, never wait for more.
    bad("F1", "rl-5-bytes", v, b"\x30\xff\xff\xff\xff\x7f", MAL, b"\x30\xff\xff\xff\x7f", 0)
    bad("F1", "rl-endless-continuation", v, b"\x30" + b"\x80" * 4, MAL, b"\x30" + b"\x80" * 3,
        0)
    bad("F1", "rl-endless-continuation-long", v, b"\x30" + b"\xff" * 64, MAL,
        b"\x30\xff\xff\xff", 0)
    bad("F1", "pingreq-rl-5-bytes", v, b"\xc0\x80\x80\x80\x80\x00", MAL, b"\xc0\x00")
    # F2: non-minimal Remaining Length.
    bad("F2", "rl-80-00", v, b"\xc0\x80\x00", MAL, b"\xc0\x00")
    bad("F2", "rl-81-00", v, b"\xe0\x81\x00\x00", MAL, b"\xe0\x00")
    _p = pub(v, "t", b"y")
    for _nb in (2, 3, 4):
        bad("F2", f"rl-{_nb}-bytes-non-minimal", v,
            pub(v, "t", b"y", rl_bytes=B.vbi(len(B.split(_p)[1]), _nb)), MAL, _p)
    _p200 = pub(v, "t", b"y" * 200)
    bad("F2", "rl-3-bytes-for-2", v,
        pub(v, "t", b"y" * 200, rl_bytes=B.vbi(len(B.split(_p200)[1]), 3)), MAL, _p200)

# F1/F2 inside the packet: Property Length and Subscription Identifier are VBIs too.
bad("F1", "property-length-5-bytes", 5,
    B.publish("t", b"", properties=B.props(length_bytes=b"\xff\xff\xff\xff\x7f")), MAL,
    B.publish("t", b"", properties=E))
bad("F1", "subscription-id-5-bytes", 5,
    B.publish("t", b"", properties=B.props(b"\x0b\xff\xff\xff\xff\x7f")), MAL,
    B.publish("t", b"", properties=B.props(b"\x0b\xff\xff\xff\x7f")))
bad("F2", "property-length-80-00", 5,
    B.publish("t", b"", properties=B.props(length_bytes=b"\x80\x00")), MAL,
    B.publish("t", b"", properties=E))
bad("F2", "property-length-non-minimal", 5,
    B.publish("t", b"", properties=B.props(("topic_alias", 1), length_bytes=B.vbi(3, 2))), MAL,
    B.publish("t", b"", properties=B.props(("topic_alias", 1))))
bad("F2", "ack-property-length-non-minimal", 5,
    B.puback(1, 0x10, B.props(length_bytes=b"\x80\x00")), MAL, B.puback(1, 0x10, E))
for _raw, _ok in ((b"\x0b\x80\x00", b"\x0b\x01"), (b"\x0b\x81\x00", b"\x0b\x01"),
                  (b"\x0b\x80\x81\x00", b"\x0b\x80\x01"),
                  (b"\x0b\xff\xff\x80\x00", b"\x0b\xff\xff\x7f")):
    bad("F2", f"publish-subscription-id-{_raw[1:].hex()}", 5,
        B.publish("t", b"", properties=B.props(_raw)), MAL,
        B.publish("t", b"", properties=B.props(_ok)))
    bad("F2", f"subscribe-subscription-id-{_raw[1:].hex()}", 5,
        B.subscribe(1, [("t", 0)], properties=B.props(_raw)), MAL,
        B.subscribe(1, [("t", 0)], properties=B.props(_ok)))

# F5: the declared length ends before the fields it must hold.
for v in V45:
    bad("F5", "topic-length-overrun", v, B.packet(B.PUBLISH, 0, B.string("a/b", length=10)),
        MAL, B.packet(B.PUBLISH, 0, B.string("a/b") + (E if v == 5 else b"")))
    bad("F5", "topic-length-only", v, B.packet(B.PUBLISH, 0, b"\x00"), MAL,
        B.packet(B.PUBLISH, 0, b"\x00\x01t" + (E if v == 5 else b"")))
    bad("F5", "empty-publish", v, b"\x30\x00", MAL, pub(v, "t", b""))
    _sp = E if v == 5 else b""
    bad("F5", "filter-length-overrun", v,
        B.packet(B.SUBSCRIBE, 2, B.u16(1) + _sp + B.string("a/b", length=20) + b"\x00"), MAL,
        B.packet(B.SUBSCRIBE, 2, B.u16(1) + _sp + B.string("a/b") + b"\x00"))
    bad("F5", "unsubscribe-filter-overrun", v, unsub(v, [], extra=B.u16(9) + b"a/b"), MAL,
        unsub(v, ["a/b"]))
    bad("F5", "connect-name-overrun", 0, B.packet(B.CONNECT, 0, B.string(b"MQTT", length=50)),
        MAL, conn(v))
    bad("F5", "connect-variable-header-cut", 0, B.truncated(conn(v, None), 1), MAL, conn(v))
    bad("F5", "ack-missing-packet-id", v, B.packet(B.PUBACK, 0, b"\x00"), MAL, B.puback(1))
    bad("F5", "pubrel-empty", v, B.packet(B.PUBREL, 2, b""), MAL, B.pubrel(1))
    bad("F5", "subscribe-empty", v, B.packet(B.SUBSCRIBE, 2, b""), MAL, sub(v, [("a", 0)]))
    bad("F5", "suback-missing-packet-id", v, B.packet(B.SUBACK, 0, b"\x01"), MAL,
        B.suback(1, [0], properties=E if v == 5 else b""))
    bad("F5", "unsuback-empty", v, B.packet(B.UNSUBACK, 0, b""), MAL,
        B.unsuback(1, [0] if v == 5 else [], properties=E if v == 5 else b""))
    bad("F5", "connack-short", v, B.packet(B.CONNACK, 0, b"\x00"), MAL,
        B.connack(0, properties=E if v == 5 else b""))

for v in V345:
    _u = "u"
    bad("F5", "password-overrun", 0,
        B.connect("c", level=v, connect_flags=0xC2, extra=B.string(_u) + B.u16(10) + b"pw"),
        MAL, conn(v, username=_u, password=b"pw"))
    bad("F5", "username-overrun", 0,
        B.connect("c", level=v, connect_flags=0x82, extra=B.u16(10) + b"u"), MAL,
        conn(v, username="u"))

# v5 property blocks: length runs past the packet / a value runs past the block.
bad("F5", "property-length-overrun", 5,
    B.publish("t", b"", properties=B.props(("topic_alias", 1), length=50)), MAL,
    B.publish("t", b"", properties=B.props(("topic_alias", 1))))
bad("F5", "ack-property-length-overrun", 5, B.puback(1, 0x10, B.props(length=5)), MAL,
    B.puback(1, 0x10, E))
bad("F5", "connect-property-length-overrun", 0,
    B.connect("c", level=5, properties=B.props(length=100)), MAL, B.connect("c", level=5))
bad("F5", "connack-missing-property-length", 5, B.connack(0), MAL, B.connack(0, properties=E))
bad("F5", "disconnect-property-length-overrun", 5, B.disconnect(0x80, B.props(length=3)), MAL,
    B.disconnect(0x80, E))

for v in V345:
    # F6: bytes after the last field.
    bad("F6", "pingreq-long", v, B.pingreq(extra=b"\x00"), MAL, B.pingreq())
    bad("F6", "pingresp-long", v, B.pingresp(extra=b"\x00"), MAL, B.pingresp())
for v in (3, 4):
    bad("F6", "disconnect-long", v, B.disconnect(extra=b"\x00"), MAL, B.disconnect())
    for _pt in (B.PUBACK, B.PUBREC, B.PUBREL, B.PUBCOMP):
        bad("F6", f"ack{_pt}-long", v, B.ack(_pt, 1, extra=b"\x00"), MAL, B.ack(_pt, 1))
    bad("F6", "unsuback-long", v, B.unsuback(1, extra=b"\x00"), MAL, B.unsuback(1))
    bad("F6", "connack-long", v, B.connack(0, extra=b"\x00"), MAL, B.connack(0))
for _pt in (B.PUBACK, B.PUBREC, B.PUBREL, B.PUBCOMP):
    bad("F6", f"ack{_pt}-long", 5, B.ack(_pt, 1, 0, E, extra=b"\x00"), MAL, B.ack(_pt, 1, 0, E))
bad("F6", "disconnect-long", 5, B.disconnect(0x80, E, extra=b"\x00"), MAL,
    B.disconnect(0x80, E))
bad("F6", "auth-long", 5, B.auth(0x18, E, extra=b"\x00"), MAL, B.auth(0x18, E))
bad("F6", "connack-long", 5, B.connack(0, properties=E, extra=b"\x00"), MAL,
    B.connack(0, properties=E))
bad("F6", "unsuback-long-props", 5,
    B.packet(B.UNSUBACK, 0, b"\x00\x01" + B.props(length=3) + b"\x00"), MAL,
    B.unsuback(1, [0], properties=E))

# F7: the examples of the checklist (an exhaustive sweep is test_fixed_header_flags below).
for v in V45:
    for _first in (0x11, 0x12, 0x14, 0x18):
        bad("F7", f"connect-{_first:02x}", 0, B.with_first_byte(conn(v), _first), MAL, conn(v))
    bad("F7", "puback-41", v, B.puback(1, flags=1), MAL, B.puback(1))
    for _f in (0, 3):
        bad("F7", f"subscribe-8{_f}", v, sub(v, [("a", 0)], flags=_f), MAL, sub(v, [("a", 0)]))
        bad("F7", f"unsubscribe-a{_f}", v, unsub(v, ["a"], flags=_f), MAL, unsub(v, ["a"]))
        bad("F7", f"pubrel-6{_f}", v, B.pubrel(1, flags=_f), MAL, B.pubrel(1))
    bad("F7", "pingreq-c1", v, B.pingreq(flags=1), MAL, B.pingreq())
    bad("F7", "disconnect-e1", v, B.disconnect(flags=1), MAL, B.disconnect())
bad("F7", "auth-f1", 5, B.auth(flags=1), MAL, B.auth())

# F8: packet type 0; AUTH (type 15) below 5.0.
for v in (0, 3, 4, 5):
    bad("F8", "type-0", v, b"\x00\x00", MAL, B.pingreq())
    bad("F8", "type-0-flags", v, b"\x0f\x00", MAL, B.pingreq())
    bad("F8", "type-0-header-only", v, b"\x00", MAL, b"\xc0", 0)
for v in (0, 3, 4):
    bad("F8", "auth-below-5", v, B.auth(), MAL, B.auth(), good_version=5)
    bad("F8", "auth-below-5-with-body", v, B.auth(0x18, E), MAL, B.auth(0x18, E),
        good_version=5)

# F9 (codec share): server-to-client packets are parsed, but their structure is checked.
for v in V45:
    _e = E if v == 5 else b""
    bad("F9", "connack-reserved-flags", v, B.connack(0, ack_flags=0x02, properties=_e), MAL,
        B.connack(0, ack_flags=0x01, properties=_e))
    bad("F9", "connack-reserved-flag-7", v, B.connack(0, ack_flags=0x80, properties=_e), MAL,
        B.connack(0, properties=_e))
    bad("F9", "connack-session-present-on-failure", v,
        B.connack(0x05 if v == 4 else 0x87, session_present=True, properties=_e), PROTO,
        B.connack(0x05 if v == 4 else 0x87, properties=_e))
    bad("F9", "suback-no-codes", v, B.suback(1, [], properties=_e), PROTO,
        B.suback(1, [0], properties=_e))
    bad("F9", "pingresp-flags", v, B.pingresp(flags=8), MAL, B.pingresp())
bad("F9", "unsuback-no-codes", 5, B.unsuback(1, [], properties=E), PROTO,
    B.unsuback(1, [0x11], properties=E))

# --- a.2 CONNECT -------------------------------------------------------------------------------

# C3: protocol name (0x84: a CONNACK with "unsupported protocol version" may be sent).
for _name, _level in ((b"MQTX", 4), (b"", 4), (b"mqtt", 4), (b"MQTT\x00", 4), (b"MQT", 4),
                      (b"MQIsdp", 4), (b"MQIsdp", 5), (b"MQIsd", 3), (b"mqisdp", 3),
                      (b"\xff\xfe", 4)):
    _ok_level = _level if _level in (4, 5) else 3
    bad("C3", f"name-{_name.hex() or 'empty'}-level{_level}", 0,
        B.connect("c", level=_level, proto_name=_name), VERSION,
        B.connect("c", level=_ok_level))
bad("C3", "mqtt-with-level-3", 0, B.connect("c", level=3, proto_name="MQTT"), VERSION,
    B.connect("c", level=3))
# Name length 5 over "MQTT" swallows the level byte: still just an unknown name.
bad("C3", "name-length-lies", 0, B.packet(B.CONNECT, 0, B.string(b"MQTT\x04", length=5)
                                          + b"\x02\x00\x00\x00\x01c"), VERSION, conn(4))
# C4: unsupported protocol level.
for _level in (0, 1, 2, 6, 7, 0x83, 0x84, 0x85, 0xFF):
    bad("C4", f"level-{_level}", 0, B.connect("c", level=_level, proto_name="MQTT",
                                              properties=b""), VERSION,
        B.connect("c", level=5 if _level > 5 else 4))

for v in V345:
    # C5: reserved Connect Flags bit 0.
    bad("C5", "reserved-bit", 0, conn(v, connect_flags=0x03), MAL, conn(v, connect_flags=0x02))
    bad("C5", "reserved-bit-only", 0, conn(v, connect_flags=0x01), MAL,
        conn(v, connect_flags=0x00))
    bad("C5", "reserved-bit-with-will", 0,
        conn(v, will_topic="w", connect_flags=0x07), MAL, conn(v, will_topic="w"))
    # C6: Will QoS / Will Retain without the Will Flag.
    for _cf, _what in ((0x0A, "qos1"), (0x12, "qos2"), (0x22, "retain"), (0x2A, "qos1-retain")):
        bad("C6", f"no-will-{_what}", 0, conn(v, connect_flags=_cf), MAL,
            conn(v, will_topic="w", will_qos=(_cf >> 3) & 3, will_retain=bool(_cf & 0x20)))
    # C7: Will QoS 3, with and without the Will Flag.
    bad("C7", "will-qos3", 0, conn(v, will_topic="w", connect_flags=0x1E), MAL,
        conn(v, will_topic="w", will_qos=2))
    bad("C7", "will-qos3-no-flag", 0, conn(v, connect_flags=0x1A), MAL, conn(v))
    bad("C7", "will-qos3-retain", 0, conn(v, will_topic="w", connect_flags=0x3E), MAL,
        conn(v, will_topic="w", will_qos=2, will_retain=True))
    # C8: Will Flag set but the will fields are missing.
    bad("C8", "will-fields-missing", 0, conn(v, connect_flags=0x06), MAL,
        conn(v, will_topic="w"))
    bad("C8", "will-payload-missing", 0, B.truncated(conn(v, will_topic="w"), 2), MAL,
        conn(v, will_topic="w"))
    bad("C8", "will-payload-short", 0, B.truncated(conn(v, will_topic="w", will_payload=b"ab"),
                                                   1), MAL,
        conn(v, will_topic="w", will_payload=b"ab"))
    bad("C8", "will-topic-missing", 0, B.truncated(conn(v, will_topic="w"), 5), MAL,
        conn(v, will_topic="w"))
    # C9: Will Topic.
    for _t, _code in (("", PROTO), (b"\xff", MAL), (b"a\xc0\x80", MAL), ("a/+", PROTO),
                      ("#", PROTO), ("a/#", PROTO), ("a\x00b", MAL), ("a\x01b", MAL),
                      ("a\x7f", MAL), ("\ufffe", MAL)):
        _tid = _t.hex() if isinstance(_t, bytes) else _t.encode().hex()
        bad("C9", f"will-topic-{_tid or 'empty'}", 0, conn(v, will_topic=_t), _code,
            conn(v, will_topic="a/b"))
    # C11: user name flag vs. payload.
    bad("C11", "username-without-flag", 0, conn(v, extra=B.string("user")), MAL,
        conn(v, username="user"))
    bad("C11", "username-flag-without-username", 0, conn(v, connect_flags=0x82), MAL,
        conn(v, username="user"))
    bad("C11", "username-flag-will-no-username", 0,
        conn(v, will_topic="w", connect_flags=0x86), MAL, conn(v, will_topic="w", username="u"))
    # C13: password flag vs. payload.
    bad("C13", "password-flag-without-password", 0, conn(v, username="u", connect_flags=0xC2),
        MAL, conn(v, username="u", password=b"p"))
    bad("C13", "password-without-flag", 0, conn(v, username="u", extra=B.binary(b"pw")), MAL,
        conn(v, username="u", password=b"pw"))
    # C14: bytes after the last field the flags describe.
    bad("C14", "extra-after-client-id", 0, conn(v, extra=b"\x00"), MAL, conn(v))
    bad("C14", "extra-string-after-client-id", 0, conn(v, extra=B.string("x")), MAL, conn(v))
    bad("C14", "extra-after-will", 0, conn(v, will_topic="w", extra=b"\x00"), MAL,
        conn(v, will_topic="w"))
    bad("C14", "extra-after-password", 0,
        conn(v, username="u", password=b"p", extra=b"\x00\x00"), MAL,
        conn(v, username="u", password=b"p"))
    # C15: no Client Identifier at all.
    bad("C15", "client-id-missing", 0, conn(v, None), MAL, conn(v, ""))
    bad("C15", "client-id-half-length", 0, conn(v, None, extra=b"\x00"), MAL, conn(v, ""))
# C12: password without user name: malformed in 3.1/3.1.1, allowed in 5.0.
for v in (3, 4):
    bad("C12", f"password-without-username-at-level{v}", 0, conn(v, password=b"pw"), MAL,
        conn(5, password=b"pw"))
    bad("C12", f"password-without-username-with-will-at-level{v}", 0,
        conn(v, will_topic="w", password=b"pw"), MAL, conn(5, will_topic="w", password=b"pw"))
# C15 (5.0): properties present, payload empty.
bad("C15", "client-id-missing-after-props", 0,
    conn(5, None, properties=B.props(("receive_maximum", 1))), MAL,
    conn(5, "", properties=B.props(("receive_maximum", 1))))

# --- a.3 Strings and topics ---------------------------------------------------------------------

BAD_UTF8 = {
    "lone-continuation": b"\x80",
    "overlong-nul": b"\xc0\x80",
    "overlong-2": b"\xc1\xbf",
    "overlong-3": b"\xe0\x80\xaf",
    "overlong-4": b"\xf0\x80\x80\xaf",
    "surrogate-d800": b"\xed\xa0\x80",
    "surrogate-dfff": b"\xed\xbf\xbf",
    "surrogate-pair-cesu": b"\xed\xa0\xbd\xed\xb2\xa9",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "five-byte": b"\xf8\x88\x80\x80\x80",
    "truncated-sequence": b"\xe2\x82",
    "ff": b"\xff",
    "fe": b"\xfe",
}

# Every UTF-8 field: (name, versions, build(version, string bytes) -> wire, parser version).
StringField = tuple[str, tuple[int, ...], Callable[[int, bytes], bytes], bool]
STRING_FIELDS: list[StringField] = [
    ("client-id", V345, lambda v, s: conn(v, s), True),
    ("username", V345, lambda v, s: conn(v, username=s), True),
    ("will-topic", V345, lambda v, s: conn(v, will_topic=s), True),
    ("topic", V345, lambda v, s: pub(v, s), False),
    ("subscribe-filter", V345, lambda v, s: sub(v, [("ok", 0), (s, 1)]), False),
    ("unsubscribe-filter", V345, lambda v, s: unsub(v, [s]), False),
    ("connect-user-property-key", (5,),
     lambda v, s: conn(v, properties=B.props(B.u8(0x26) + B.string(s) + B.string("v"))), True),
    ("connect-auth-method", (5,),
     lambda v, s: conn(v, properties=B.props(B.u8(0x15) + B.string(s))), True),
    ("will-content-type", (5,),
     lambda v, s: conn(v, will_topic="w", will_properties=B.props(B.u8(0x03) + B.string(s))),
     True),
    ("publish-content-type", (5,),
     lambda v, s: B.publish("t", b"", properties=B.props(B.u8(0x03) + B.string(s))), False),
    ("publish-response-topic", (5,),
     lambda v, s: B.publish("t", b"", properties=B.props(B.u8(0x08) + B.string(s))), False),
    ("publish-user-property-value", (5,),
     lambda v, s: B.publish("t", b"", properties=B.props(B.u8(0x26) + B.string("k")
                                                         + B.string(s))), False),
    ("connack-assigned-client-id", (5,),
     lambda v, s: B.connack(0, properties=B.props(B.u8(0x12) + B.string(s))), False),
    ("puback-reason-string", (5,),
     lambda v, s: B.puback(1, 0x80, B.props(B.u8(0x1F) + B.string(s))), False),
    ("subscribe-user-property-value", (5,),
     lambda v, s: B.subscribe(1, [("t", 0)], properties=B.props(
         B.u8(0x26) + B.string("k") + B.string(s))), False),
    ("disconnect-server-reference", (5,),
     lambda v, s: B.disconnect(0x9C, B.props(B.u8(0x1C) + B.string(s))), False),
    ("auth-method", (5,),
     lambda v, s: B.auth(0x18, B.props(B.u8(0x15) + B.string(s))), False),
]

for _fname, _versions, _build, _is_connect in STRING_FIELDS:
    for v in _versions:
        _pv = 0 if _is_connect else v
        _good = _build(v, "aéb".encode())
        for _bname, _bytes in BAD_UTF8.items():
            bad("S1", f"{_fname}-{_bname}", _pv, _build(v, b"a" + _bytes + b"b"), MAL, _good)
        # S2: U+0000 is malformed in every UTF-8 string.
        bad("S2", f"{_fname}-nul", _pv, _build(v, b"a\x00b"), MAL, _build(v, b"ab"))
        bad("S2", f"{_fname}-only-nul", _pv, _build(v, b"\x00"), MAL, _build(v, b"z"))

# S3: code points mqttd refuses in topic names and filters (§1.5.4 MAY), each with the nearest
# allowed one.
DISALLOWED_NEIGHBOURS = {
    0x01: 0x20, 0x09: 0x20, 0x0A: 0x20, 0x1F: 0x20, 0x7F: 0x7E, 0x80: 0xA0, 0x85: 0xA0,
    0x9F: 0xA0, 0xFDD0: 0xFDCF, 0xFDEF: 0xFDF0, 0xFFFE: 0xFFFD, 0xFFFF: 0xFFFD,
    0x1FFFE: 0x1FFFD, 0x1FFFF: 0x20000, 0x10FFFF: 0x10FFFD,
}
TOPIC_FIELDS: list[StringField] = [
    f for f in STRING_FIELDS
    if f[0] in ("will-topic", "topic", "subscribe-filter", "unsubscribe-filter",
                "publish-response-topic")
] + [
    ("will-response-topic", (5,),
     lambda v, s: conn(v, will_topic="w", will_properties=B.props(B.u8(0x08) + B.string(s))),
     True),
]
for _fname, _versions, _build, _is_connect in TOPIC_FIELDS:
    for v in _versions:
        if v == 3:
            continue
        _pv = 0 if _is_connect else v
        for _cp, _near in DISALLOWED_NEIGHBOURS.items():
            bad("S3", f"{_fname}-U+{_cp:04X}", _pv, _build(v, f"a/{chr(_cp)}".encode()), MAL,
                _build(v, f"a/{chr(_near)}".encode()))

# S6: wildcards in a Topic Name (PUBLISH).
for v in V345:
    for _t in ("a/+", "+", "#", "a/#", "a+b", "a#b", "+/#", "/+/"):
        bad("S6", f"topic-{_t.encode().hex()}", v, pub(v, _t), PROTO, pub(v, "a/b"))
    # S7: zero-length Topic Name (5.0: unless a Topic Alias is present).
    bad("S7", "empty-topic", v, pub(v, ""), PROTO,
        pub(v, "", properties=B.props(("topic_alias", 1))) if v == 5 else pub(v, "a"))
    bad("S7", "empty-topic-qos1", v, pub(v, "", qos=1, packet_id=1), PROTO,
        pub(v, "a", qos=1, packet_id=1))
    # S11: empty filter, first or later entry.
    bad("S11", "subscribe-empty-first", v, sub(v, [("", 0)]), MAL, sub(v, [("a", 0)]))
    bad("S11", "subscribe-empty-later", v, sub(v, [("a", 0), ("", 1)]), MAL,
        sub(v, [("a", 0), ("b", 1)]))
    bad("S11", "unsubscribe-empty-first", v, unsub(v, [""]), MAL, unsub(v, ["a"]))
    bad("S11", "unsubscribe-empty-later", v, unsub(v, ["a", "", "b"]), MAL,
        unsub(v, ["a", "c", "b"]))
bad("S7", "empty-topic-with-other-props", 5,
    B.publish("", b"", properties=B.props(("message_expiry_interval", 5))), PROTO,
    B.publish("", b"", properties=B.props(("message_expiry_interval", 5), ("topic_alias", 2))))

# --- a.4 PUBLISH ------------------------------------------------------------------------------------

for v in V345:
    # P1: QoS 3 (decided from the first byte).
    for _first in (0x36, 0x37, 0x3E, 0x3F):
        bad("P1", f"qos3-{_first:02x}", v, pub(v, flags=_first & 0x0F, packet_id=1), MAL,
            pub(v, flags=(_first & 0x09) | 0x04, packet_id=1))
        bad("P1", f"qos3-{_first:02x}-first-byte-only", v, bytes([_first]), MAL, b"\x34", 0)
    # P2: DUP with QoS 0.
    for _first in (0x38, 0x39):
        bad("P2", f"dup-qos0-{_first:02x}", v, pub(v, flags=_first & 0x0F), MAL,
            pub(v, flags=(_first & 0x0F) | 0x02, packet_id=1))
    # P3: Packet Identifier 0 at QoS > 0.
    for _q in (1, 2):
        bad("P3", f"packet-id-0-qos{_q}", v, pub(v, qos=_q, packet_id=0), PROTO,
            pub(v, qos=_q, packet_id=1))
    # P4: QoS > 0 but the packet ends before the Packet Identifier.
    bad("P4", "no-packet-id", v, B.packet(B.PUBLISH, 2, B.string("a/b")), MAL,
        B.packet(B.PUBLISH, 0, B.string("a/b") + (E if v == 5 else b"")))
    bad("P4", "half-packet-id", v, B.packet(B.PUBLISH, 4, B.string("a/b") + b"\x00"), MAL,
        B.packet(B.PUBLISH, 0, B.string("a/b") + b"\x00" + (E if v == 5 else b"")))
bad("P4", "no-property-length", 5, B.publish("a/b", b"", qos=1, packet_id=1), MAL,
    B.publish("a/b", b"", qos=1, packet_id=1, properties=E))

# P11: reason codes outside the packet's table (exhaustive sweep in test_reason_code_tables).
bad("P11", "puback-ff", 5, B.puback(1, 0xFF), PROTO, B.puback(1, 0x99))
bad("P11", "puback-92", 5, B.puback(1, 0x92), PROTO, B.puback(1, 0x91))
bad("P11", "pubrel-10", 5, B.pubrel(1, 0x10, E), PROTO, B.pubrel(1, 0x92, E))
bad("P11", "pubcomp-80", 5, B.pubcomp(1, 0x80), PROTO, B.pubcomp(1, 0x92))
bad("P11", "pubrec-with-props-ff", 5, B.pubrec(1, 0xFF, B.props(("reason_string", "x"))),
    PROTO, B.pubrec(1, 0x80, B.props(("reason_string", "x"))))

# --- a.5 SUBSCRIBE / UNSUBSCRIBE / PING / DISCONNECT -----------------------------------------------

for v in V345:
    bad("U1", "subscribe-no-filter", v, sub(v, []), PROTO, sub(v, [("a", 0)]))
    bad("U2", "filter-without-options", v, sub(v, [("a/b", None)]), MAL, sub(v, [("a/b", 0)]))
    bad("U2", "last-filter-without-options", v, sub(v, [("a", 1), ("b", None)]), MAL,
        sub(v, [("a", 1), ("b", 0)]))
    bad("U3", "qos3", v, sub(v, [("a", 3)]), PROTO, sub(v, [("a", 2)]))
    bad("U3", "qos3-later", v, sub(v, [("a", 0), ("b", 3)]), PROTO,
        sub(v, [("a", 0), ("b", 2)]))
    bad("U7", "subscribe-packet-id-0", v, sub(v, [("a", 0)], pid=0), PROTO,
        sub(v, [("a", 0)], pid=1))
    bad("U7", "unsubscribe-packet-id-0", v, unsub(v, ["a"], pid=0), PROTO, unsub(v, ["a"], pid=1))
    for _pt in (B.PUBACK, B.PUBREC, B.PUBREL, B.PUBCOMP):
        bad("U7", f"ack{_pt}-packet-id-0", v, B.ack(_pt, 0), PROTO, B.ack(_pt, 1))
    _e = E if v == 5 else b""
    bad("U7", "suback-packet-id-0", v, B.suback(0, [0], properties=_e), PROTO,
        B.suback(1, [0], properties=_e))
    bad("U7", "unsuback-packet-id-0", v,
        B.unsuback(0, [0] if v == 5 else [], properties=_e), PROTO,
        B.unsuback(1, [0] if v == 5 else [], properties=_e))
    bad("U10", "unsubscribe-no-filter", v, unsub(v, []), PROTO, unsub(v, ["a"]))
    bad("U13", "pingreq-body", v, B.pingreq(extra=b"\x00"), MAL, B.pingreq())
    bad("U13", "pingreq-body-long", v, B.pingreq(extra=b"\x00" * 200), MAL, B.pingreq())
    for _f in (1, 2, 4, 8, 15):
        bad("U13", f"pingreq-flags-{_f:x}", v, B.pingreq(flags=_f), MAL, B.pingreq())
# U4: reserved option bits (3.1.1: bits 2-7; 5.0: bits 6-7).
for v in (3, 4):
    for _bit in range(2, 8):
        bad("U4", f"reserved-bit-{_bit}", v, sub(v, [("a", 1 | (1 << _bit))]), MAL,
            sub(v, [("a", 1)]))
    # The 5.0 option bits are reserved at 3.1.1: the same bytes are valid at 5.0.
    bad("U4", "v5-options-at-v3", v, B.subscribe(1, [("a", 0x2D)]), MAL,
        B.subscribe(1, [("a", 0x2D)], properties=E), good_version=5)
for _bit in (6, 7):
    bad("U4", f"reserved-bit-{_bit}", 5, sub(5, [("a", 1 | (1 << _bit))]), MAL,
        sub(5, [("a", 1 | 0x2C)]))
bad("U5", "retain-handling-3", 5, sub(5, [("a", B.sub_options(1, retain_handling=3))]), PROTO,
    sub(5, [("a", B.sub_options(1, retain_handling=2))]))
bad("U6", "no-local-shared", 5, sub(5, [("$share/g/t", B.sub_options(1, no_local=True))]), PROTO,
    sub(5, [("$share/g/t", B.sub_options(1))]))
bad("U6", "no-local-shared-later", 5,
    sub(5, [("t", B.sub_options(0, no_local=True)),
            ("$share/g/#", B.sub_options(0, no_local=True))]), PROTO,
    sub(5, [("t", B.sub_options(0, no_local=True)), ("share/g/#", B.sub_options(0, no_local=True))]))
# U8: Subscription Identifier 0, or twice in SUBSCRIBE.
bad("U8", "subscription-id-0", 5, sub(5, [("a", 0)], properties=B.props(
    ("subscription_identifier", 0))), PROTO,
    sub(5, [("a", 0)], properties=B.props(("subscription_identifier", 1))))
bad("U8", "subscription-id-twice", 5, sub(5, [("a", 0)], properties=B.props(
    ("subscription_identifier", 1), ("subscription_identifier", 2))), PROTO,
    sub(5, [("a", 0)], properties=B.props(("subscription_identifier", 1),
                                          ("user_property", ("k", "v")))))
bad("U8", "publish-subscription-id-0", 5, B.publish("t", b"", properties=B.props(
    ("subscription_identifier", 5), ("subscription_identifier", 0))), PROTO,
    B.publish("t", b"", properties=B.props(("subscription_identifier", 5),
                                           ("subscription_identifier", 1))))
# U14: DISCONNECT with an unknown reason code (5.0) or any body (3.1.1).
for _rc in (0x01, 0x05, 0x84, 0x91, 0xFF):
    bad("U14", f"disconnect-rc-{_rc:02x}", 5, B.disconnect(_rc), PROTO, B.disconnect(0x04))
    bad("U14", f"disconnect-rc-{_rc:02x}-props", 5, B.disconnect(_rc, E), PROTO,
        B.disconnect(0x8E, E))
for v in (3, 4):
    bad("U14", "disconnect-body", v, B.disconnect(0x00), MAL, B.disconnect())
    bad("U14", "disconnect-v5-form", v, B.disconnect(0x04, E), MAL, B.disconnect())

# --- a.6 MQTT 5.0 properties ------------------------------------------------------------------------

# V1: unknown identifiers (exhaustive sweep in test_property_identifiers).
for _ident in (0x00, 0x04, 0x05, 0x0A, 0x7F, 0x2B, 0xFF):
    bad("V1", f"publish-{_ident:02x}", 5, B.publish("t", b"", properties=B.props(
        B.u8(_ident) + b"\x00")), MAL,
        B.publish("t", b"", properties=B.props(("payload_format_indicator", 0))))
    bad("V1", f"connect-{_ident:02x}", 0, conn(5, properties=B.props(B.u8(_ident) + b"\x00")),
        MAL, conn(5, properties=B.props(("request_problem_information", 0))))
# V2: a known property where it is not allowed.
bad("V2", "server-keep-alive-in-publish", 5,
    B.publish("t", b"", properties=B.props(("server_keep_alive", 10))), MAL,
    B.publish("t", b"", properties=B.props(("topic_alias", 10))))
bad("V2", "session-expiry-in-will", 0,
    conn(5, will_topic="w", will_properties=B.props(("session_expiry_interval", 10))), MAL,
    conn(5, will_topic="w", will_properties=B.props(("will_delay_interval", 10))))
bad("V2", "reason-string-in-publish", 5,
    B.publish("t", b"", properties=B.props(("reason_string", "r"))), MAL,
    B.publish("t", b"", properties=B.props(("content_type", "r"))))
bad("V2", "will-delay-in-connect", 0,
    conn(5, properties=B.props(("will_delay_interval", 1))), MAL,
    conn(5, properties=B.props(("session_expiry_interval", 1))))
bad("V2", "topic-alias-in-will", 0,
    conn(5, will_topic="w", will_properties=B.props(("topic_alias", 1))), MAL,
    conn(5, will_topic="w", will_properties=B.props(("message_expiry_interval", 1))))
bad("V2", "subscription-id-in-unsubscribe", 5,
    unsub(5, ["a"], properties=B.props(("subscription_identifier", 1))), MAL,
    unsub(5, ["a"], properties=B.props(("user_property", ("k", "v")))))
bad("V2", "reason-string-in-subscribe", 5,
    sub(5, [("a", 0)], properties=B.props(("reason_string", "x"))), MAL,
    sub(5, [("a", 0)], properties=B.props(("subscription_identifier", 9))))
# V3: a property value missing or cut short, also when the block ends before the value but the
# packet goes on (the payload must not be read as the rest of the property).
_V3_CUTS = {
    "byte": (b"\x01", b"\x01\x01"),
    "two-byte": (b"\x23\x00", b"\x23\x00\x01"),
    "four-byte": (b"\x02\x00\x00", b"\x02\x00\x00\x00\x01"),
    "vbi": (b"\x0b\x80", b"\x0b\x80\x01"),
    "utf8-length": (b"\x03\x00", b"\x03\x00\x01x"),
    "utf8-body": (b"\x03\x00\x05ab", b"\x03\x00\x02ab"),
    "binary-body": (b"\x09\x00\x04\x01", b"\x09\x00\x01\x01"),
    "pair-no-value": (b"\x26\x00\x01k", b"\x26\x00\x01k\x00\x00"),
    "pair-value-cut": (b"\x26\x00\x01k\x00\x03v", b"\x26\x00\x01k\x00\x01v"),
}
for _cname, (_cut, _whole) in _V3_CUTS.items():
    bad("V3", f"publish-{_cname}-at-packet-end", 5,
        B.publish("t", b"", properties=B.props(_cut)), MAL,
        B.publish("t", b"", properties=B.props(_whole)))
    bad("V3", f"publish-{_cname}-into-payload", 5,
        B.publish("t", b"\x00\x05abcdefgh", properties=B.props(_cut)), MAL,
        B.publish("t", b"\x00\x05abcdefgh", properties=B.props(_whole)))
    if _cname in ("two-byte", "vbi"):
        continue  # no Will Property has these wire types
    bad("V3", f"connect-will-{_cname}", 0,
        conn(5, will_topic="w", will_properties=B.props(_cut)), MAL,
        conn(5, will_topic="w", will_properties=B.props(_whole)))
bad("V3", "ack-reason-string-cut", 5, B.puback(1, 0x80, B.props(b"\x1f\x00\x09abc")), MAL,
    B.puback(1, 0x80, B.props(b"\x1f\x00\x03abc")))
bad("V3", "auth-data-cut", 5, B.auth(0x18, B.props(("authentication_method", "m"),
                                                    b"\x16\x00\x09abc")), MAL,
    B.auth(0x18, B.props(("authentication_method", "m"), b"\x16\x00\x03abc")))
bad("V3", "connack-four-byte-cut", 5, B.connack(0, properties=B.props(b"\x27\x00\x01")), MAL,
    B.connack(0, properties=B.props(b"\x27\x00\x01\x00\x00")))
# V4: the same property twice (exhaustive sweep in test_duplicate_properties).
bad("V4", "publish-topic-alias-twice", 5, B.publish("t", b"", properties=B.props(
    ("topic_alias", 1), ("topic_alias", 1))), PROTO,
    B.publish("t", b"", properties=B.props(("topic_alias", 1), ("subscription_identifier", 1),
                                           ("subscription_identifier", 2))))
bad("V4", "connect-session-expiry-twice", 0, conn(5, properties=B.props(
    ("session_expiry_interval", 1), ("user_property", ("a", "b")),
    ("session_expiry_interval", 2))), PROTO,
    conn(5, properties=B.props(("session_expiry_interval", 1), ("user_property", ("a", "b")),
                               ("user_property", ("a", "b")))))
# V5: out-of-range values.
_V5_RANGE = [
    ("CONNECT", "receive_maximum", 0, 1), ("CONNECT", "maximum_packet_size", 0, 1),
    ("CONNECT", "request_problem_information", 2, 1),
    ("CONNECT", "request_response_information", 2, 1),
    ("CONNECT", "request_response_information", 0xFF, 0),
    ("PUBLISH", "payload_format_indicator", 2, 1), ("WILL", "payload_format_indicator", 2, 1),
    ("PUBLISH", "payload_format_indicator", 0xFF, 0),
    ("CONNACK", "receive_maximum", 0, 1), ("CONNACK", "maximum_packet_size", 0, 1),
    ("CONNACK", "maximum_qos", 2, 1), ("CONNACK", "retain_available", 2, 1),
    ("CONNACK", "wildcard_subscription_available", 2, 1),
    ("CONNACK", "subscription_identifier_available", 2, 1),
    ("CONNACK", "shared_subscription_available", 2, 1),
]


def _host(kind: str, block: bytes) -> tuple[int, bytes]:
    """A valid 5.0 packet of ``kind`` carrying the property block; (parser version, wire)."""
    if kind == "CONNECT":
        return 0, conn(5, properties=block)
    if kind == "WILL":
        return 0, conn(5, will_topic="w", will_properties=block)
    if kind == "CONNACK":
        return 5, B.connack(0, properties=block)
    if kind == "PUBLISH":
        return 5, B.publish("t", b"payload", properties=block)
    if kind in ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP"):
        return 5, B.ack(getattr(B, kind), 1, 0, block)
    if kind == "SUBSCRIBE":
        return 5, B.subscribe(1, [("t", 0)], properties=block)
    if kind == "SUBACK":
        return 5, B.suback(1, [0], properties=block)
    if kind == "UNSUBSCRIBE":
        return 5, B.unsubscribe(1, ["t"], properties=block)
    if kind == "UNSUBACK":
        return 5, B.unsuback(1, [0], properties=block)
    if kind == "DISCONNECT":
        return 5, B.disconnect(0, block)
    assert kind == "AUTH"
    return 5, B.auth(0x18, block)


for _kind, _pname, _badv, _goodv in _V5_RANGE:
    _pv, _w = _host(_kind, B.props((_pname, _badv)))
    bad("V5", f"{_kind.lower()}-{_pname}-{_badv}", _pv, _w, PROTO,
        _host(_kind, B.props((_pname, _goodv)))[1])
# V6: Authentication Data without an Authentication Method.
bad("V6", "connect-auth-data-no-method", 0,
    conn(5, properties=B.props(("authentication_data", b"d"))), PROTO,
    conn(5, properties=B.props(("authentication_method", "m"), ("authentication_data", b"d"))))
bad("V6", "auth-data-no-method", 5, B.auth(0x18, B.props(("authentication_data", b"d"))), PROTO,
    B.auth(0x18, B.props(("authentication_data", b"d"), ("authentication_method", "m"))))
# V11: Response Topic is a Topic Name: no wildcards, not empty, valid UTF-8.
for _kind in ("PUBLISH", "WILL"):
    for _rt, _code in (("a/+", PROTO), ("#", PROTO), ("r/#", PROTO), ("", PROTO),
                       (b"r\xff", MAL), (b"r\xed\xa0\x80", MAL), ("r\x00", MAL),
                       ("r\x1b", MAL)):
        _rid = _rt.hex() if isinstance(_rt, bytes) else _rt.encode().hex()
        _pv, _w = _host(_kind, B.props(B.u8(0x08) + B.string(_rt)))
        bad("V11", f"{_kind.lower()}-response-topic-{_rid or 'empty'}", _pv, _w, _code,
            _host(_kind, B.props(("response_topic", "reply/t")))[1])

_bad_ids = [b.id for b in BAD]
assert len(_bad_ids) == len(set(_bad_ids)), sorted(i for i in _bad_ids if _bad_ids.count(i) > 1)


# --- table tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD, ids=lambda b: b.id)
def test_rejected(codec: Any, case: Bad) -> None:
    parser = codec.Parser(version=case.version)
    with pytest.raises(PacketError) as info:
        parser.feed(case.wire)
    err = info.value
    assert (err.reason_code, case.row) == (case.code, case.row), str(err)
    assert err.packets == []
    assert str(err)


@pytest.mark.parametrize("case", BAD, ids=lambda b: b.id)
def test_neighbour_accepted(codec: Any, case: Bad) -> None:
    parser = codec.Parser(version=case.version if case.good_version is None
                          else case.good_version)
    packets = parser.feed(case.good)
    assert len(packets) == case.good_count
    assert parser.buffered == (0 if case.good_count else len(case.good))


# --- sweeps ---------------------------------------------------------------------------------------

FIXED_FLAG_TYPES = [(pt, v) for pt in sorted(B.REQUIRED_FLAGS) for v in (0, 3, 4, 5)
                    if pt != B.AUTH or v == 5]
_MINIMAL = {
    B.CONNECT: lambda v: conn(4), B.CONNACK: lambda v: B.connack(0, properties=E if v == 5
                                                                 else b""),
    B.PUBACK: lambda v: B.puback(1), B.PUBREC: lambda v: B.pubrec(1),
    B.PUBREL: lambda v: B.pubrel(1), B.PUBCOMP: lambda v: B.pubcomp(1),
    B.SUBSCRIBE: lambda v: sub(v, [("a", 0)]),
    B.SUBACK: lambda v: B.suback(1, [0], properties=E if v == 5 else b""),
    B.UNSUBSCRIBE: lambda v: unsub(v, ["a"]),
    B.UNSUBACK: lambda v: B.unsuback(1, [0] if v == 5 else [], properties=E if v == 5 else b""),
    B.PINGREQ: lambda v: B.pingreq(), B.PINGRESP: lambda v: B.pingresp(),
    B.DISCONNECT: lambda v: B.disconnect(), B.AUTH: lambda v: B.auth(),
}


@pytest.mark.parametrize("ptype,version", FIXED_FLAG_TYPES,
                         ids=[f"type{pt}-v{v}" for pt, v in FIXED_FLAG_TYPES])
def test_fixed_header_flags(codec: Any, ptype: int, version: int) -> None:
    """F7/U13: every wrong flag nibble is malformed, decided from the first byte alone."""
    good = _MINIMAL[ptype](version)
    pv = 0 if ptype == B.CONNECT else version
    assert len(codec.Parser(version=pv).feed(good)) == 1
    required = B.REQUIRED_FLAGS[ptype]
    for flags in range(16):
        if flags == required:
            continue
        wire = B.with_first_byte(good, (ptype << 4) | flags)
        for data in (wire, wire[:1]):
            with pytest.raises(PacketError) as info:
                codec.Parser(version=pv).feed(data)
            assert info.value.reason_code == MAL, (flags, data)


REASON_SWEEPS: list[tuple[str, int, Callable[[int], bytes], frozenset[int]]] = [
    ("puback", 5, lambda rc: B.puback(1, rc), B.PUBACK_CODES),
    ("puback-props", 5, lambda rc: B.puback(1, rc, B.props(("reason_string", "r"))),
     B.PUBACK_CODES),
    ("pubrec", 5, lambda rc: B.pubrec(1, rc), B.PUBREC_CODES),
    ("pubrel", 5, lambda rc: B.pubrel(1, rc), B.PUBREL_CODES),
    ("pubcomp", 5, lambda rc: B.pubcomp(1, rc, E), B.PUBCOMP_CODES),
    ("connack-v5", 5, lambda rc: B.connack(rc, properties=E), B.CONNACK_V5_CODES),
    ("connack-v4", 4, lambda rc: B.connack(rc), B.CONNACK_V3_CODES),
    ("connack-v3", 3, lambda rc: B.connack(rc), B.CONNACK_V3_CODES),
    ("suback-v5", 5, lambda rc: B.suback(1, [0, rc], properties=E), B.SUBACK_V5_CODES),
    ("suback-v4", 4, lambda rc: B.suback(1, [rc, 1]), B.SUBACK_V3_CODES),
    ("unsuback-v5", 5, lambda rc: B.unsuback(1, [rc], properties=E), B.UNSUBACK_CODES),
    ("disconnect", 5, lambda rc: B.disconnect(rc), B.DISCONNECT_CODES),
    ("disconnect-props", 5, lambda rc: B.disconnect(rc, E), B.DISCONNECT_CODES),
    ("auth", 5, lambda rc: B.auth(rc, E), B.AUTH_CODES),
]


@pytest.mark.parametrize("name,version,build,valid", REASON_SWEEPS,
                         ids=[s[0] for s in REASON_SWEEPS])
def test_reason_code_tables(codec: Any, name: str, version: int, build: Callable[[int], bytes],
                            valid: frozenset[int]) -> None:
    """P11/U14: each of the 256 codes is accepted iff it is in the spec's table (0x82 if not)."""
    for rc in range(256):
        parser = codec.Parser(version=version)
        if rc in valid:
            (packet,) = parser.feed(build(rc))
            codes = getattr(packet, "reason_codes", None)
            assert (codes[-1] if codes is not None and name.startswith("suback-v5") else
                    codes[0] if codes is not None else packet.reason_code) == rc
        else:
            with pytest.raises(PacketError) as info:
                parser.feed(build(rc))
            assert info.value.reason_code == PROTO, hex(rc)


_SAMPLE = {B.BYTE: 1, B.TWO: 1, B.FOUR: 1, B.VBI: 1, B.UTF8: "r", B.BIN: b"\x00",
           B.PAIR: ("k", "v")}
_PROP_KINDS = ["CONNECT", "WILL", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
               "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "DISCONNECT", "AUTH"]
_KIND_TYPE = {k: getattr(B, k) for k in _PROP_KINDS}


def _items(name: str) -> list[tuple[str, Any]]:
    """One valid occurrence of property ``name`` (with what it depends on)."""
    item = (name, _SAMPLE[B.PROPERTIES[name][1]])
    if name == "authentication_data":
        return [("authentication_method", "m"), item]
    return [item]


def _decoded_properties(packet: Any) -> dict[str, Any]:
    if getattr(packet, "will", None) is not None:
        return packet.will.properties
    return packet.properties


@pytest.mark.parametrize("kind", _PROP_KINDS)
def test_property_identifiers(codec: Any, kind: str) -> None:
    """V1/V2: of all 256 identifiers, exactly the ones the spec allows here are accepted."""
    where = _KIND_TYPE[kind]
    for ident in range(256):
        name = B.PROPERTY_BY_ID.get(ident)
        if name is None:
            block = B.props(B.u8(ident) + b"\x00\x01\x00\x01")
        else:
            block = B.props(*_items(name))
        version, wire = _host(kind, block)
        parser = codec.Parser(version=version)
        if name is not None and where in B.PROPERTIES[name][2]:
            (packet,) = parser.feed(wire)
            assert name in _decoded_properties(packet), (kind, name)
        else:
            with pytest.raises(PacketError) as info:
                parser.feed(wire)
            assert info.value.reason_code == MAL, (kind, hex(ident))


@pytest.mark.parametrize("kind", _PROP_KINDS)
def test_duplicate_properties(codec: Any, kind: str) -> None:
    """V4: a second occurrence is a protocol error, except User Property everywhere and
    Subscription Identifier in PUBLISH, which are kept as lists in wire order."""
    where = _KIND_TYPE[kind]
    for name, (_, wt, allowed) in B.PROPERTIES.items():
        if where not in allowed:
            continue
        first = _items(name)
        second = (name, _SAMPLE[wt] if wt != B.PAIR else ("k2", "v2"))
        if wt == B.VBI:
            second = (name, 2)
        version, wire = _host(kind, B.props(*first, second))
        parser = codec.Parser(version=version)
        repeatable = name == "user_property" or (name == "subscription_identifier"
                                                 and kind == "PUBLISH")
        if repeatable:
            (packet,) = parser.feed(wire)
            assert _decoded_properties(packet)[name] == [first[-1][1], second[1]]
        else:
            with pytest.raises(PacketError) as info:
                parser.feed(wire)
            assert info.value.reason_code == PROTO, (kind, name)


# --- F3: maximum packet size, from the fixed header alone ------------------------------------

def test_max_packet_size_boundary(codec: Any) -> None:
    wire = B.publish("t", b"x" * 200, qos=1, packet_id=1)
    size = len(wire)  # counts the fixed header too
    assert codec.Parser(max_packet_size=size, version=4).feed(wire) == [
        Publish("t", b"x" * 200, 1, False, False, 1)]
    with pytest.raises(PacketError) as info:
        codec.Parser(max_packet_size=size - 1, version=4).feed(wire)
    assert info.value.reason_code == TOO_LARGE


@pytest.mark.parametrize("first", [0x30, 0x32, 0x10, 0x82, 0xA2, 0x62, 0xE0])
def test_too_large_decided_on_fixed_header(codec: Any, first: int) -> None:
    header = bytes([first]) + B.vbi(268_435_455)  # 256 MiB announced, nothing sent
    parser = codec.Parser(max_packet_size=1024, version=4)
    with pytest.raises(PacketError) as info:
        parser.feed(header)
    assert info.value.reason_code == TOO_LARGE
    assert info.value.packets == []
    assert parser.buffered <= len(header)


def test_too_large_raised_on_the_last_length_byte(codec: Any) -> None:
    header = b"\x30" + B.vbi(100_000)  # 3 length bytes
    parser = codec.Parser(max_packet_size=65536, version=4)
    for k in range(len(header) - 1):
        assert parser.feed(header[k:k + 1]) == []
    with pytest.raises(PacketError) as info:
        parser.feed(header[-1:])
    assert info.value.reason_code == TOO_LARGE
    assert parser.buffered <= len(header)


def test_too_large_connect_before_the_level_is_known(codec: Any) -> None:
    parser = codec.Parser(max_packet_size=20)
    with pytest.raises(PacketError) as info:
        parser.feed(B.connect("x" * 30, level=5))
    assert info.value.reason_code == TOO_LARGE
    assert parser.version == 0


def test_too_large_keeps_the_packets_before_it(codec: Any) -> None:
    parser = codec.Parser(max_packet_size=100, version=4)
    with pytest.raises(PacketError) as info:
        parser.feed(B.pingreq() + B.puback(7) + b"\x30\xff\xff\xff\x7f")
    assert info.value.reason_code == TOO_LARGE
    assert info.value.packets == [Pingreq(), Puback(7)]


def test_largest_legal_header_is_not_allocated(codec: Any) -> None:
    """F4: an announced body that does not arrive is just waited for (timeouts close it)."""
    parser = codec.Parser(version=4)
    assert parser.feed(b"\x30\xff\xff\xff\x7f") == []
    assert parser.buffered == 5
    assert parser.feed(b"\x00\x01t") == []
    assert parser.buffered == 8


def test_declared_length_longer_than_data_waits(codec: Any) -> None:
    wire = B.publish("a/b", b"payload")
    parser = codec.Parser(version=4)
    assert parser.feed(wire[:-3]) == []
    assert parser.buffered == len(wire) - 3
    assert parser.feed(wire[-3:]) == [Publish("a/b", b"payload")]


# --- PacketError.packets and parser state after an error ----------------------------------------

def test_error_carries_the_good_packets_before_it(codec: Any) -> None:
    parser = codec.Parser(version=4)
    good = B.pingreq() + B.publish("a", b"1") + B.puback(3)
    with pytest.raises(PacketError) as info:
        parser.feed(good + B.publish("a/+", b"") + B.pingreq())
    assert info.value.reason_code == PROTO
    assert info.value.packets == [Pingreq(), Publish("a", b"1"), Puback(3)]


def test_error_packets_are_only_from_this_feed(codec: Any) -> None:
    parser = codec.Parser(version=4)
    assert parser.feed(B.pingreq() + B.puback(1)[:2]) == [Pingreq()]
    with pytest.raises(PacketError) as info:
        parser.feed(B.puback(1)[2:] + b"\x00\x00")
    assert info.value.reason_code == MAL
    assert info.value.packets == [Puback(1)]


def test_error_in_a_header_after_good_packets(codec: Any) -> None:
    parser = codec.Parser(version=5)
    with pytest.raises(PacketError) as info:
        parser.feed(B.pingreq() + B.pingreq() + b"\x36")
    assert info.value.reason_code == MAL
    assert info.value.packets == [Pingreq(), Pingreq()]


def test_bad_packet_split_over_feeds(codec: Any) -> None:
    bad_wire = B.publish("", b"x")
    parser = codec.Parser(version=4)
    assert parser.feed(B.pingreq() + bad_wire[:3]) == [Pingreq()]
    with pytest.raises(PacketError) as info:
        parser.feed(bad_wire[3:])
    assert info.value.reason_code == PROTO
    assert info.value.packets == []


@pytest.mark.parametrize("level", [3, 4, 5])
def test_level_is_known_after_a_connect_that_fails_later(codec: Any, level: int) -> None:
    parser = codec.Parser()
    with pytest.raises(PacketError):
        parser.feed(B.connect("c", level=level, connect_flags=0x01))
    assert parser.version == level


@pytest.mark.parametrize("wire", [B.connect("c", level=6, proto_name="MQTT"),
                                  B.connect("c", level=4, proto_name="MQIsdp"),
                                  B.connect("c", level=4, proto_name="XXXX")],
                         ids=["level-6", "mqisdp-4", "name"])
def test_level_stays_unknown_after_unsupported_protocol(codec: Any, wire: bytes) -> None:
    parser = codec.Parser()
    with pytest.raises(PacketError) as info:
        parser.feed(wire)
    assert info.value.reason_code == VERSION
    assert parser.version == 0


def test_error_is_reported_with_reason_code_and_message(codec: Any) -> None:
    with pytest.raises(PacketError) as info:
        codec.Parser(version=4).feed(b"\x00\x00")
    err = info.value
    assert isinstance(err, Exception)
    assert err.reason_code == MAL
    assert isinstance(err.message, str) and err.message == str(err)


def test_control_characters_outside_topics_are_policy_not_malformed(codec: Any) -> None:
    """S3 is a MAY: mqttd refuses them in topics and filters only; a client id with them gets
    CONNACK 0x85 from the broker's policy (C18), never a malformed-packet close, and payloads
    and user properties are opaque."""
    wire = conn(5, "id\x01\x7f\u0085\uffff", username="u\x1b",
                properties=B.props(("user_property", ("\x01", "\x9f"))))
    (packet,) = codec.Parser().feed(wire)
    assert packet.client_id == "id\x01\x7f\u0085\uffff"
    assert packet.username == "u\x1b"
    assert packet.properties["user_property"] == [("\x01", "\x9f")]
