"""Golden wire tests: bytes from the independent builder <-> packet objects, both directions.

For every packet type and protocol level where it exists, the builder's bytes
must parse to the expected packet, and ``encode(expected, version)`` must give
exactly the builder's bytes. A few valid but non-canonical encodings (a 5.0 ack
with an explicit Success code, say) are parse-only: the encoder picks the short
form. Then incremental parsing: many packets per buffer, every split point,
partial packets held in ``buffered``, and the protocol level switching after a
CONNECT in the same buffer.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, NamedTuple

import pytest
from support import builder as B

from mqttd.mqtt.errors import PacketError
from mqttd.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    SubOpts,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)


class Case(NamedTuple):
    id: str
    version: int
    wire: bytes
    packet: Any
    encodes: bool = True  # False: a valid non-canonical form, parse-only


CASES: list[Case] = []


def case(id: str, version: int, wire: bytes, packet: Any, encodes: bool = True) -> None:
    CASES.append(Case(f"{id}-v{version}", version, wire, packet, encodes))


P = B.props_dict  # expected property dict from (name, value) items

# --- CONNECT ----------------------------------------------------------------------------

case("connect-3.1-min", 3, B.connect("c1", level=3, keepalive=60),
     Connect("MQIsdp", 3, True, 60, "c1"))
case("connect-3.1-will-user-pass", 3,
     B.connect("c2", level=3, clean=False, keepalive=10, will_topic="w/t", will_payload=b"bye",
               will_qos=1, will_retain=True, username="u", password=b"p"),
     Connect("MQIsdp", 3, False, 10, "c2", Will("w/t", b"bye", 1, True), "u", b"p"))
case("connect-min", 4, B.connect(""), Connect("MQTT", 4, True, 0, ""))
case("connect-persistent", 4, B.connect("dev-1", clean=False, keepalive=65535),
     Connect("MQTT", 4, False, 65535, "dev-1"))
case("connect-unicode-id", 4, B.connect("ĉlient-✓-\U0002A6D4"),
     Connect(client_id="ĉlient-✓-\U0002A6D4"))
case("connect-empty-user-pass", 4, B.connect("c", username="", password=b""),
     Connect(client_id="c", username="", password=b""))

_WILLS = {
    "nowill": None,
    "will0": ("will/0", b"", 0, False),
    "will1r": ("will/1", b"gone", 1, True),
    "will2": ("will/2", bytes(range(256)), 2, False),
}
for _level in (4, 5):
    for _wname, _w in _WILLS.items():
        for _user in (None, "user"):
            for _pw in (None, b"\x00secret\xff"):
                if _level == 4 and _pw is not None and _user is None:
                    continue  # 3.1.1 forbids a password without a user name (malformed tests)
                _kw: dict[str, Any] = {}
                _will = None
                if _w is not None:
                    _kw = {"will_topic": _w[0], "will_payload": _w[1], "will_qos": _w[2],
                           "will_retain": _w[3]}
                    _will = Will(*_w)
                case(f"connect-{_wname}-user{_user is not None:d}-pass{_pw is not None:d}",
                     _level, B.connect("cid", level=_level, keepalive=30, username=_user,
                                       password=_pw, **_kw),
                     Connect("MQTT", _level, True, 30, "cid", _will, _user, _pw))

_CONNECT_PROPS = (
    ("session_expiry_interval", 0xFFFFFFFF),
    ("receive_maximum", 20),
    ("maximum_packet_size", 1048576),
    ("topic_alias_maximum", 10),
    ("request_response_information", 1),
    ("request_problem_information", 0),
    ("user_property", ("k", "v1")),
    ("user_property", ("k", "v0")),  # same key twice: order must be kept
    ("user_property", ("", "")),
    ("authentication_method", "SCRAM-SHA-1"),
    ("authentication_data", b"\x00\x01client-first"),
)
_WILL_PROPS = (
    ("will_delay_interval", 60),
    ("payload_format_indicator", 1),
    ("message_expiry_interval", 3600),
    ("content_type", "application/json"),
    ("response_topic", "reply/to/me"),
    ("correlation_data", b"\x01\x02\x03"),
    ("user_property", ("z", "last")),
    ("user_property", ("a", "first")),
)
case("connect-all-props", 5,
     B.connect("c5", level=5, keepalive=15, properties=B.props(*_CONNECT_PROPS)),
     Connect("MQTT", 5, True, 15, "c5", properties=P(*_CONNECT_PROPS)))
case("connect-will-all-props", 5,
     B.connect("c5", level=5, will_topic="w", will_payload=b"{}", will_qos=2, will_retain=True,
               will_properties=B.props(*_WILL_PROPS), username="u", password=b"p",
               properties=B.props(("session_expiry_interval", 10))),
     Connect("MQTT", 5, True, 0, "c5", Will("w", b"{}", 2, True, P(*_WILL_PROPS)), "u", b"p",
             P(("session_expiry_interval", 10))))
case("connect-bom-kept", 5, B.connect("\ufeffid", level=5, will_topic="\ufeffw/t"),
     Connect("MQTT", 5, True, 0, "\ufeffid", Will("\ufeffw/t")))
# Properties interleaved with user properties: decoded in order, re-encoded grouped.
case("connect-interleaved-user-props", 5,
     B.connect("c", level=5, properties=B.props(("user_property", ("a", "1")),
                                                ("receive_maximum", 5),
                                                ("user_property", ("b", "2")))),
     Connect("MQTT", 5, client_id="c",
             properties={"user_property": [("a", "1"), ("b", "2")], "receive_maximum": 5}),
     encodes=False)

# --- CONNACK ----------------------------------------------------------------------------

for _level in (3, 4):
    for _code in sorted(B.CONNACK_V3_CODES):
        case(f"connack-rc{_code:02x}", _level, B.connack(_code), Connack(False, _code))
    case("connack-session-present", _level, B.connack(0, session_present=True),
         Connack(True, 0))
_CONNACK_PROPS = (
    ("session_expiry_interval", 300),
    ("receive_maximum", 65535),
    ("maximum_qos", 1),
    ("retain_available", 0),
    ("maximum_packet_size", 268435460),
    ("assigned_client_identifier", "auto-3F2A"),
    ("topic_alias_maximum", 0),
    ("reason_string", "welcome"),
    ("user_property", ("node", "n1")),
    ("user_property", ("node", "n0")),
    ("wildcard_subscription_available", 1),
    ("subscription_identifier_available", 0),
    ("shared_subscription_available", 1),
    ("server_keep_alive", 120),
    ("response_information", "resp/"),
    ("server_reference", "other:1883"),
    ("authentication_method", "SCRAM-SHA-1"),
    ("authentication_data", b"server-final"),
)
case("connack-min", 5, B.connack(0, properties=B.EMPTY_PROPS), Connack(False, 0, {}))
case("connack-session-present", 5, B.connack(0, session_present=True, properties=B.EMPTY_PROPS),
     Connack(True, 0, {}))
case("connack-all-props", 5, B.connack(0, session_present=True,
                                       properties=B.props(*_CONNACK_PROPS)),
     Connack(True, 0, P(*_CONNACK_PROPS)))
for _code in (0x80, 0x84, 0x85, 0x87, 0x9C, 0x9F):
    case(f"connack-rc{_code:02x}", 5,
         B.connack(_code, properties=B.props(("reason_string", "no"))),
         Connack(False, _code, P(("reason_string", "no"))))

# --- PUBLISH ----------------------------------------------------------------------------

for _v in (3, 4, 5):
    _e = B.EMPTY_PROPS if _v == 5 else b""
    case("publish-qos0", _v, B.publish("a/b", b"hello", properties=_e), Publish("a/b", b"hello"))
    case("publish-qos1-retain", _v,
         B.publish("a/b", b"x", qos=1, retain=True, packet_id=1, properties=_e),
         Publish("a/b", b"x", 1, True, False, 1))
    case("publish-qos2-dup", _v,
         B.publish("a/b", b"x", qos=2, dup=True, packet_id=65535, properties=_e),
         Publish("a/b", b"x", 2, False, True, 65535))
    case("publish-qos1-dup-retain", _v,
         B.publish("t", b"", qos=1, dup=True, retain=True, packet_id=0x1234, properties=_e),
         Publish("t", b"", 1, True, True, 0x1234))
    case("publish-empty-payload", _v, B.publish("t", b"", properties=_e), Publish("t", b""))
    case("publish-binary-payload", _v, B.publish("t", bytes(range(256)) * 2, properties=_e),
         Publish("t", bytes(range(256)) * 2))
    case("publish-rl2", _v, B.publish("t", b"p" * 200, properties=_e), Publish("t", b"p" * 200))
    case("publish-rl3", _v, B.publish("t", b"q" * 20000, properties=_e),
         Publish("t", b"q" * 20000))
    case("publish-unicode-topic", _v, B.publish("ü/✓/\U0002A6D4", b"", properties=_e),
         Publish("ü/✓/\U0002A6D4"))
    case("publish-bom-topic-kept", _v, B.publish("\ufeffa/b", b"", properties=_e),
         Publish("\ufeffa/b"))
    case("publish-odd-levels", _v, B.publish("/a//b/", b"", properties=_e), Publish("/a//b/"))
    case("publish-control-chars-in-payload", _v, B.publish("t", b"\x00\x01\x7f\xff",
                                                           properties=_e),
         Publish("t", b"\x00\x01\x7f\xff"))
case("publish-rl4", 4, B.publish("big", b"z" * 2_100_000), Publish("big", b"z" * 2_100_000))

_PUBLISH_PROPS = (
    ("payload_format_indicator", 1),
    ("message_expiry_interval", 86400),
    ("topic_alias", 7),
    ("response_topic", "reply/here"),
    ("correlation_data", b"\x00corr\xff"),
    ("user_property", ("k1", "v1")),
    ("user_property", ("k2", "v2")),
    ("user_property", ("k1", "v3")),
    ("subscription_identifier", 1),
    ("subscription_identifier", 268435455),  # 4-byte VBI
    ("subscription_identifier", 128),  # 2-byte VBI
    ("content_type", "text/plain; charset=utf-8"),
)
case("publish-all-props", 5,
     B.publish("a/b", b"{}", qos=1, packet_id=9, properties=B.props(*_PUBLISH_PROPS)),
     Publish("a/b", b"{}", 1, False, False, 9, P(*_PUBLISH_PROPS)))
case("publish-alias-only", 5,
     B.publish("", b"x", properties=B.props(("topic_alias", 3))),
     Publish("", b"x", properties=P(("topic_alias", 3))))
case("publish-payload-format-0", 5,
     B.publish("t", b"\xff", properties=B.props(("payload_format_indicator", 0))),
     Publish("t", b"\xff", properties=P(("payload_format_indicator", 0))))

# --- PUBACK / PUBREC / PUBREL / PUBCOMP ---------------------------------------------------

_ACKS = ((B.PUBACK, Puback, 0x10, 0x80), (B.PUBREC, Pubrec, 0x10, 0x97),
         (B.PUBREL, Pubrel, 0x92, 0x92), (B.PUBCOMP, Pubcomp, 0x92, 0x92))
for _pt, _cls, _rc1, _rc2 in _ACKS:
    _n = _cls.__name__.lower()
    for _v in (3, 4):
        case(f"{_n}", _v, B.ack(_pt, 1), _cls(1))
        case(f"{_n}-id-abcd", _v, B.ack(_pt, 0xABCD), _cls(0xABCD))
    case(f"{_n}-short", 5, B.ack(_pt, 7), _cls(7, 0, {}))
    case(f"{_n}-reason-only", 5, B.ack(_pt, 7, _rc1), _cls(7, _rc1, {}))
    _ap = (("reason_string", "because"), ("user_property", ("a", "b")),
           ("user_property", ("a", "c")))
    case(f"{_n}-reason-props", 5, B.ack(_pt, 65535, _rc2, B.props(*_ap)),
         _cls(65535, _rc2, P(*_ap)))
    case(f"{_n}-success-props", 5, B.ack(_pt, 2, 0, B.props(("user_property", ("x", "y")))),
         _cls(2, 0, P(("user_property", ("x", "y")))))
    # Valid longer forms of the same thing: the encoder uses the short form.
    case(f"{_n}-explicit-success", 5, B.ack(_pt, 7, 0), _cls(7), encodes=False)
    case(f"{_n}-explicit-empty-props", 5, B.ack(_pt, 7, 0, B.EMPTY_PROPS), _cls(7),
         encodes=False)
    case(f"{_n}-reason-empty-props", 5, B.ack(_pt, 7, _rc1, B.EMPTY_PROPS), _cls(7, _rc1),
         encodes=False)

# --- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK -----------------------------------------

for _v in (3, 4):
    case("subscribe-one", _v, B.subscribe(1, [("a/b", 0)]), Subscribe(1, [("a/b", SubOpts(0))]))
    case("subscribe-many", _v, B.subscribe(0xFFFF, [("a/+", 1), ("#", 2), ("$SYS/#", 0)]),
         Subscribe(0xFFFF, [("a/+", SubOpts(1)), ("#", SubOpts(2)), ("$SYS/#", SubOpts(0))]))
    case("suback", _v, B.suback(1, [0, 1, 2, 0x80]), Suback(1, [0, 1, 2, 0x80]))
    case("unsubscribe", _v, B.unsubscribe(3, ["a/b", "c/#"]), Unsubscribe(3, ["a/b", "c/#"]))
    case("unsuback", _v, B.unsuback(3), Unsuback(3))

_ENTRIES = []
_EXPECTED_TOPICS = []
for _q in range(3):
    for _nl in (False, True):
        for _rap in (False, True):
            for _rh in range(3):
                _f = f"t/{_q}{_nl:d}{_rap:d}{_rh}"
                _ENTRIES.append((_f, B.sub_options(_q, _nl, _rap, _rh)))
                _EXPECTED_TOPICS.append((_f, SubOpts(_q, _nl, _rap, _rh)))
case("subscribe-all-options", 5, B.subscribe(10, _ENTRIES, properties=B.EMPTY_PROPS),
     Subscribe(10, _EXPECTED_TOPICS, {}))
_SUB_PROPS = (("subscription_identifier", 268435455), ("user_property", ("u", "1")),
              ("user_property", ("u", "0")))
case("subscribe-props-shared", 5,
     B.subscribe(11, [("$share/grp/a/+", B.sub_options(1, retain_as_published=True)),
                      ("$queue/q", B.sub_options(2, no_local=True))],
                 properties=B.props(*_SUB_PROPS)),
     Subscribe(11, [("$share/grp/a/+", SubOpts(1, False, True, 0)),
                    ("$queue/q", SubOpts(2, True, False, 0))], P(*_SUB_PROPS)))
case("suback-all-codes", 5,
     B.suback(12, sorted(B.SUBACK_V5_CODES), properties=B.EMPTY_PROPS),
     Suback(12, sorted(B.SUBACK_V5_CODES), {}))
_ACK_PROPS = (("reason_string", "partly"), ("user_property", ("k", "v")))
case("suback-props", 5, B.suback(13, [0x02, 0x8F], properties=B.props(*_ACK_PROPS)),
     Suback(13, [0x02, 0x8F], P(*_ACK_PROPS)))
case("unsubscribe", 5, B.unsubscribe(14, ["a", "b/#"], properties=B.EMPTY_PROPS),
     Unsubscribe(14, ["a", "b/#"], {}))
case("unsubscribe-props", 5,
     B.unsubscribe(15, ["$share/g/x"], properties=B.props(("user_property", ("p", "q")))),
     Unsubscribe(15, ["$share/g/x"], P(("user_property", ("p", "q")))))
case("unsuback-all-codes", 5,
     B.unsuback(16, sorted(B.UNSUBACK_CODES), properties=B.EMPTY_PROPS),
     Unsuback(16, sorted(B.UNSUBACK_CODES), {}))
case("unsuback-props", 5, B.unsuback(17, [0x11], properties=B.props(*_ACK_PROPS)),
     Unsuback(17, [0x11], P(*_ACK_PROPS)))

# --- PINGREQ / PINGRESP / DISCONNECT / AUTH ------------------------------------------------

for _v in (3, 4, 5):
    case("pingreq", _v, B.pingreq(), Pingreq())
    case("pingresp", _v, B.pingresp(), Pingresp())
for _v in (3, 4):
    case("disconnect", _v, B.disconnect(), Disconnect())
case("disconnect-short", 5, B.disconnect(), Disconnect(0, {}))
case("disconnect-with-will", 5, B.disconnect(0x04), Disconnect(0x04, {}))
_DISC_PROPS = (("session_expiry_interval", 0), ("reason_string", "bye"),
               ("user_property", ("a", "b")), ("server_reference", "elsewhere"))
case("disconnect-props", 5, B.disconnect(0x9C, B.props(*_DISC_PROPS)),
     Disconnect(0x9C, P(*_DISC_PROPS)))
case("disconnect-success-props", 5, B.disconnect(0, B.props(("session_expiry_interval", 5))),
     Disconnect(0, P(("session_expiry_interval", 5))))
case("disconnect-explicit-success", 5, B.disconnect(0), Disconnect(), encodes=False)
case("disconnect-explicit-empty-props", 5, B.disconnect(0, B.EMPTY_PROPS), Disconnect(),
     encodes=False)
case("disconnect-reason-empty-props", 5, B.disconnect(0x8B, B.EMPTY_PROPS), Disconnect(0x8B),
     encodes=False)

case("auth-short", 5, B.auth(), Auth(0, {}))
_AUTH_PROPS = (("authentication_method", "SCRAM-SHA-1"), ("authentication_data", b"\x00data"))
case("auth-continue", 5, B.auth(0x18, B.props(*_AUTH_PROPS)), Auth(0x18, P(*_AUTH_PROPS)))
_REAUTH_PROPS = (("authentication_method", "m"), ("reason_string", "again"),
                 ("user_property", ("k", "v")))
case("auth-reauth", 5, B.auth(0x19, B.props(*_REAUTH_PROPS)), Auth(0x19, P(*_REAUTH_PROPS)))
case("auth-continue-empty-props", 5, B.auth(0x18, B.EMPTY_PROPS), Auth(0x18, {}))
case("auth-success-props", 5, B.auth(0, B.props(("authentication_method", "m"))),
     Auth(0, P(("authentication_method", "m"))))
case("auth-explicit-success", 5, B.auth(0, B.EMPTY_PROPS), Auth(), encodes=False)

_ids = [c.id for c in CASES]
assert len(_ids) == len(set(_ids)), "duplicate golden case ids"


# --- the tests -----------------------------------------------------------------------------

def _assert_exact_types(obj: Any) -> None:
    """bytes fields are ``bytes`` (not bytearray/memoryview); nested containers as declared."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _assert_exact_types(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for value in obj.values():
            _assert_exact_types(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _assert_exact_types(value)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        assert type(obj) is bytes, f"{type(obj).__name__} where bytes was expected"
    elif isinstance(obj, bool):
        pass
    else:
        assert obj is None or type(obj) in (int, str), f"unexpected {type(obj).__name__}"


def _parser_for(codec: Any, case: Case) -> Any:
    # CONNECT sets the level itself; a fresh parser starts at 0 (unknown).
    return codec.Parser(version=0 if isinstance(case.packet, Connect) else case.version)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parse(codec: Any, case: Case) -> None:
    parser = _parser_for(codec, case)
    packets = parser.feed(case.wire)
    assert packets == [case.packet]
    assert type(packets[0]) is type(case.packet)
    _assert_exact_types(packets[0])
    assert parser.buffered == 0
    assert parser.version == case.version


@pytest.mark.parametrize("case", [c for c in CASES if c.encodes], ids=lambda c: c.id)
def test_encode(codec: Any, case: Case) -> None:
    wire = codec.encode(case.packet, case.version)
    assert type(wire) is bytes
    assert wire == case.wire


def test_connect_encoding_uses_its_own_level(codec: Any) -> None:
    packet = Connect("MQTT", 5, client_id="x", properties={"receive_maximum": 1})
    expected = B.connect("x", level=5, properties=B.props(("receive_maximum", 1)))
    for version in (0, 3, 4, 5):
        assert codec.encode(packet, version) == expected


def test_encode_rejects_non_packets(codec: Any) -> None:
    with pytest.raises(TypeError):
        codec.encode(object(), 4)


# --- incremental parsing ----------------------------------------------------------------

_STREAM_PARTS: list[tuple[bytes, Any]] = [
    (B.connect("s", level=5, keepalive=60, properties=B.props(("receive_maximum", 10))),
     Connect("MQTT", 5, True, 60, "s", properties={"receive_maximum": 10})),
    (B.publish("a/b", b"payload", qos=1, packet_id=1,
               properties=B.props(("user_property", ("k", "v")), ("topic_alias", 1))),
     Publish("a/b", b"payload", 1, False, False, 1,
             {"user_property": [("k", "v")], "topic_alias": 1})),
    (B.subscribe(2, [("x/#", B.sub_options(2, no_local=True, retain_handling=2))],
                 properties=B.props(("subscription_identifier", 300))),
     Subscribe(2, [("x/#", SubOpts(2, True, False, 2))], {"subscription_identifier": [300]})),
    (B.pingreq(), Pingreq()),
    (B.publish("big", b"B" * 300, properties=B.EMPTY_PROPS), Publish("big", b"B" * 300)),
    (B.puback(1), Puback(1)),
    (B.pubrel(5, 0x92), Pubrel(5, 0x92)),
    (B.unsubscribe(3, ["x/#"], properties=B.EMPTY_PROPS), Unsubscribe(3, ["x/#"])),
    (B.auth(0x19, B.props(("authentication_method", "m"))),
     Auth(0x19, {"authentication_method": "m"})),
    (B.disconnect(0x04), Disconnect(0x04)),
]
STREAM = b"".join(w for w, _ in _STREAM_PARTS)
STREAM_PACKETS = [p for _, p in _STREAM_PARTS]
_ENDS = []
_pos = 0
for _wire, _ in _STREAM_PARTS:
    _pos += len(_wire)
    _ENDS.append(_pos)


def _complete_before(offset: int) -> int:
    """How many stream packets end at or before ``offset``."""
    return sum(1 for end in _ENDS if end <= offset)


def test_many_packets_in_one_buffer(codec: Any) -> None:
    parser = codec.Parser()
    assert parser.feed(STREAM) == STREAM_PACKETS
    assert parser.buffered == 0
    assert parser.version == 5


def test_split_at_every_offset(codec: Any) -> None:
    for offset in range(len(STREAM) + 1):
        parser = codec.Parser()
        first = parser.feed(STREAM[:offset])
        done = _complete_before(offset)
        assert first == STREAM_PACKETS[:done], offset
        start = _ENDS[done - 1] if done else 0
        assert parser.buffered == offset - start, offset
        assert parser.feed(STREAM[offset:]) == STREAM_PACKETS[done:], offset
        assert parser.buffered == 0


def test_three_way_splits(codec: Any) -> None:
    n = len(STREAM)
    for i in range(0, n + 1, 7):
        for j in range(i, n + 1, 13):
            parser = codec.Parser()
            got = parser.feed(STREAM[:i]) + parser.feed(STREAM[i:j]) + parser.feed(STREAM[j:])
            assert got == STREAM_PACKETS, (i, j)
            assert parser.buffered == 0


def test_byte_by_byte(codec: Any) -> None:
    parser = codec.Parser()
    got = []
    for k in range(len(STREAM)):
        got += parser.feed(STREAM[k:k + 1])
        assert got == STREAM_PACKETS[:_complete_before(k + 1)]
    assert got == STREAM_PACKETS
    assert parser.buffered == 0


def test_empty_feed(codec: Any) -> None:
    parser = codec.Parser(version=4)
    assert parser.feed(b"") == []
    assert parser.buffered == 0
    parser.feed(b"\x30")
    assert parser.feed(b"") == []
    assert parser.buffered == 1


def test_partial_packet_is_kept_in_buffered(codec: Any) -> None:
    first = B.publish("t", b"one", qos=1, packet_id=1)
    second = B.publish("t", b"x" * 1000)  # two-byte Remaining Length
    parser = codec.Parser(version=4)
    # Only the type byte of the next packet, then half its length, then half its body.
    assert parser.feed(first + second[:1]) == [Publish("t", b"one", 1, False, False, 1)]
    assert parser.buffered == 1
    assert parser.feed(second[1:2]) == []
    assert parser.buffered == 2
    assert parser.feed(second[2:500]) == []
    assert parser.buffered == 500
    assert parser.feed(second[500:] + B.pingreq()) == [Publish("t", b"x" * 1000), Pingreq()]
    assert parser.buffered == 0


def test_large_packet_in_small_chunks(codec: Any) -> None:
    wire = B.publish("big", b"\xab" * 70000, qos=2, packet_id=77)
    parser = codec.Parser(version=4)
    got = []
    for k in range(0, len(wire), 4096):
        got += parser.feed(wire[k:k + 4096])
        if k + 4096 < len(wire):
            assert got == []
            assert parser.buffered == k + 4096
    assert got == [Publish("big", b"\xab" * 70000, 2, False, False, 77)]
    assert parser.buffered == 0


# The same PUBLISH bytes mean different things at 3.1.1 and 5.0: at 5.0 the first payload
# byte is the Property Length.
_AMBIGUOUS = B.publish("a/b", b"\x00hi")


@pytest.mark.parametrize("level,expected", [
    (3, Publish("a/b", b"\x00hi")),
    (4, Publish("a/b", b"\x00hi")),
    (5, Publish("a/b", b"hi")),
])
def test_version_switch_after_connect_in_same_buffer(codec: Any, level: int,
                                                     expected: Publish) -> None:
    parser = codec.Parser()
    assert parser.version == 0
    got = parser.feed(B.connect("c", level=level) + _AMBIGUOUS + _AMBIGUOUS)
    name = "MQIsdp" if level == 3 else "MQTT"
    assert got == [Connect(name, level, client_id="c"), expected, expected]
    assert parser.version == level


def test_version_switch_split_inside_connect(codec: Any) -> None:
    wire = B.connect("c", level=5) + _AMBIGUOUS
    for offset in range(1, len(wire)):
        parser = codec.Parser()
        got = parser.feed(wire[:offset]) + parser.feed(wire[offset:])
        assert got[1] == Publish("a/b", b"hi"), offset


def test_v5_only_forms_need_the_v5_level(codec: Any) -> None:
    # A 5.0 PUBACK with a reason code is "too long" at 3.1.1: the level really is used.
    wire = B.puback(1, 0x10)
    assert codec.Parser(version=5).feed(wire) == [Puback(1, 0x10)]
    with pytest.raises(PacketError) as info:
        codec.Parser(version=4).feed(wire)
    assert info.value.reason_code == 0x81


def test_unknown_level_parses_as_3_1_1(codec: Any) -> None:
    parser = codec.Parser()
    assert parser.version == 0
    assert parser.feed(_AMBIGUOUS + B.puback(9)) == [Publish("a/b", b"\x00hi"), Puback(9)]
    assert parser.version == 0


def test_level_can_be_set_on_a_live_parser(codec: Any) -> None:
    # A client-side parser learns the level from its own CONNECT, not from the wire.
    parser = codec.Parser()
    assert parser.feed(_AMBIGUOUS) == [Publish("a/b", b"\x00hi")]
    parser.version = 5
    assert parser.feed(_AMBIGUOUS) == [Publish("a/b", b"hi")]
    assert parser.version == 5


def test_long_stream_in_uneven_chunks(codec: Any) -> None:
    """Thousands of packets across hundreds of reads: buffer compaction and growth."""
    rnd = random.Random(1883)
    parts = []
    for i in range(3000):
        size = rnd.choice((0, 1, 10, 100, 127, 128, 300, 5000))
        parts.append((B.publish(f"t/{i}", bytes([i % 256]) * size, qos=1, packet_id=i % 65535 + 1),
                      Publish(f"t/{i}", bytes([i % 256]) * size, 1, False, False, i % 65535 + 1)))
        if i % 7 == 0:
            parts.append((B.pingreq(), Pingreq()))
    wire = b"".join(w for w, _ in parts)
    parser = codec.Parser(version=4)
    got: list[Any] = []
    pos = 0
    while pos < len(wire):
        step = rnd.choice((1, 2, 3, 50, 1000, 4096, 65536, 300_000))
        got += parser.feed(wire[pos:pos + step])
        pos += step
    assert got == [p for _, p in parts]
    assert parser.buffered == 0
