"""Property-based codec tests (Hypothesis).

* encode -> decode round trip of valid packets of every type at every level;
* any chunking of a byte stream parses exactly like the whole stream, errors included;
* the compiled codec behaves exactly like the reference on arbitrary bytes and on mutated
  valid encodings (same packets, or the same error, reason code, message and ``.packets``),
  and encodes to the same bytes.

The strategies only generate what the codec can represent: valid UTF-8 without U+0000,
topic names without wildcards and without the characters mqttd refuses in topics, integers
in range, properties only where the spec allows them.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, strategies as st
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

# --- strategies ---------------------------------------------------------------------------------


def _not_noncharacter(c: str) -> bool:
    cp = ord(c)
    return not (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)


TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_TOPIC_CHAR = st.characters(exclude_categories=("Cc", "Cs"),
                            exclude_characters="+#").filter(_not_noncharacter)
TOPIC = st.text(st.sampled_from("ab/$") | _TOPIC_CHAR, min_size=1, max_size=16)
FILTER = (st.text(st.sampled_from("ab/+#$") | _TOPIC_CHAR, min_size=1, max_size=16)
          | st.sampled_from(["#", "+/+", "$share/g/a/#", "$share/g/+", "$queue/q", "$SYS/#"]))
U16 = st.integers(1, 0xFFFF)
PACKET_ID = st.integers(1, 0xFFFF)

_BOOLEAN = {"payload_format_indicator", "request_problem_information",
            "request_response_information", "maximum_qos", "retain_available",
            "wildcard_subscription_available", "subscription_identifier_available",
            "shared_subscription_available"}
_NONZERO = {"receive_maximum", "maximum_packet_size", "subscription_identifier"}


def _value(name: str) -> st.SearchStrategy[Any]:
    wt = B.PROPERTIES[name][1]
    if name in _BOOLEAN:
        return st.integers(0, 1)
    if name == "response_topic":
        return TOPIC
    low = 1 if name in _NONZERO else 0
    if wt == B.BYTE:
        return st.integers(low, 0xFF)
    if wt == B.TWO:
        return st.integers(low, 0xFFFF)
    if wt == B.FOUR:
        return st.integers(low, 0xFFFFFFFF)
    if wt == B.VBI:
        return st.integers(low, 268_435_455)
    if wt == B.UTF8:
        return TEXT
    if wt == B.BIN:
        return st.binary(max_size=12)
    return st.tuples(TEXT, TEXT)


@st.composite
def properties(draw: Any, kind: int) -> dict[str, Any]:
    names = [n for n, (_, _, allowed) in B.PROPERTIES.items() if kind in allowed]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=5))
    props: dict[str, Any] = {}
    for name in chosen:
        if name == "user_property":
            props[name] = draw(st.lists(_value(name), min_size=1, max_size=4))
        elif name == "subscription_identifier":
            props[name] = draw(st.lists(_value(name), min_size=1,
                                        max_size=3 if kind == B.PUBLISH else 1))
        else:
            props[name] = draw(_value(name))
    if kind in (B.CONNECT, B.AUTH) and "authentication_data" in props:
        props.setdefault("authentication_method", draw(TEXT))
    return props


def _no_props(kind: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.just({})


@st.composite
def connects(draw: Any, level: int) -> Connect:
    v5 = level == 5
    will = None
    if draw(st.booleans()):
        will = Will(draw(TOPIC), draw(st.binary(max_size=20)), draw(st.integers(0, 2)),
                    draw(st.booleans()), draw(properties(B.WILL)) if v5 else {})
    username = draw(st.none() | TEXT)
    password = draw(st.none() | st.binary(max_size=12))
    if not v5 and username is None:
        password = None  # 3.1/3.1.1: no password without a user name
    return Connect("MQIsdp" if level == 3 else "MQTT", level, draw(st.booleans()),
                   draw(st.integers(0, 0xFFFF)), draw(TEXT), will, username, password,
                   draw(properties(B.CONNECT)) if v5 else {})


@st.composite
def packets(draw: Any, version: int, with_connect: bool = True) -> Any:
    """Any valid packet for a parser at ``version`` (CONNECTs are at that level too)."""
    v5 = version == 5
    props = properties if v5 else _no_props
    kinds = ["connack", "publish", "ack", "subscribe", "suback", "unsubscribe", "unsuback",
             "pingreq", "pingresp", "disconnect"]
    if with_connect:
        kinds.append("connect")
    if v5:
        kinds.append("auth")
    kind = draw(st.sampled_from(kinds))
    if kind == "connect":
        return draw(connects(version))
    if kind == "connack":
        code = draw(st.sampled_from(sorted(B.CONNACK_V5_CODES if v5 else B.CONNACK_V3_CODES)))
        return Connack(draw(st.booleans()) if code == 0 else False, code,
                       draw(props(B.CONNACK)))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        p = draw(props(B.PUBLISH))
        topic = draw(st.just("") if "topic_alias" in p and draw(st.booleans()) else TOPIC)
        return Publish(topic, draw(st.binary(max_size=40)), qos, draw(st.booleans()),
                       draw(st.booleans()) if qos else False, draw(PACKET_ID) if qos else 0, p)
    if kind == "ack":
        cls, ptype, codes = draw(st.sampled_from([
            (Puback, B.PUBACK, B.PUBACK_CODES), (Pubrec, B.PUBREC, B.PUBREC_CODES),
            (Pubrel, B.PUBREL, B.PUBREL_CODES), (Pubcomp, B.PUBCOMP, B.PUBCOMP_CODES)]))
        code = draw(st.sampled_from(sorted(codes))) if v5 else 0
        return cls(draw(PACKET_ID), code, draw(props(ptype)))
    if kind == "subscribe":
        topics = []
        for topic_filter in draw(st.lists(FILTER, min_size=1, max_size=4)):
            if v5:
                no_local = draw(st.booleans()) and not topic_filter.startswith("$share/")
                opts = SubOpts(draw(st.integers(0, 2)), no_local, draw(st.booleans()),
                               draw(st.integers(0, 2)))
            else:
                opts = SubOpts(draw(st.integers(0, 2)))
            topics.append((topic_filter, opts))
        return Subscribe(draw(PACKET_ID), topics, draw(props(B.SUBSCRIBE)))
    if kind == "suback":
        codes = sorted(B.SUBACK_V5_CODES if v5 else B.SUBACK_V3_CODES)
        return Suback(draw(PACKET_ID), draw(st.lists(st.sampled_from(codes), min_size=1,
                                                     max_size=5)), draw(props(B.SUBACK)))
    if kind == "unsubscribe":
        return Unsubscribe(draw(PACKET_ID), draw(st.lists(FILTER, min_size=1, max_size=4)),
                           draw(props(B.UNSUBSCRIBE)))
    if kind == "unsuback":
        codes = (draw(st.lists(st.sampled_from(sorted(B.UNSUBACK_CODES)), min_size=1,
                               max_size=5)) if v5 else [])
        return Unsuback(draw(PACKET_ID), codes, draw(props(B.UNSUBACK)))
    if kind == "pingreq":
        return Pingreq()
    if kind == "pingresp":
        return Pingresp()
    if kind == "disconnect":
        code = draw(st.sampled_from(sorted(B.DISCONNECT_CODES))) if v5 else 0
        return Disconnect(code, draw(props(B.DISCONNECT)))
    assert kind == "auth"
    return Auth(draw(st.sampled_from(sorted(B.AUTH_CODES))), draw(properties(B.AUTH)))


VERSIONS = st.sampled_from([3, 4, 5])


@st.composite
def streams(draw: Any) -> tuple[int, list[Any]]:
    version = draw(VERSIONS)
    return version, draw(st.lists(packets(version), min_size=1, max_size=6))


def _encode_stream(codec: Any, version: int, pkts: list[Any]) -> bytes:
    return b"".join(codec.encode(p, version) for p in pkts)


@st.composite
def split_points(draw: Any, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_VALID_FIRST = [0x10, 0x20, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x3A, 0x3B, 0x3C, 0x3D, 0x40,
                0x50, 0x62, 0x70, 0x82, 0x90, 0xA2, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0]


@st.composite
def framed_junk(draw: Any) -> bytes:
    """Packet-shaped noise: mostly plausible first bytes and lengths, random bodies."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        first = draw(st.sampled_from(_VALID_FIRST) | st.integers(0, 255))
        body = draw(st.binary(max_size=40))
        length = len(body) if draw(st.booleans()) else draw(st.integers(0, 60))
        out += bytes([first]) + B.vbi(length) + body
    return out


@st.composite
def mutated(draw: Any, data: bytes) -> bytes:
    """A few random edits of ``data``: overwrite, insert, delete, truncate."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "flip", "insert", "delete", "truncate"]))
        if not buf and op != "insert":
            op = "insert"
        if op == "insert":
            at = draw(st.integers(0, len(buf)))
            buf[at:at] = draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(0, len(buf) - 1))
        if op == "set":
            buf[at] = draw(st.integers(0, 255))
        elif op == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del buf[at:at + draw(st.integers(1, 4))]
        else:
            del buf[at:]
    return bytes(buf)


@st.composite
def body_mutated(draw: Any, encoded: list[bytes]) -> bytes:
    """One packet of the stream gets a mutated body under an honest Remaining Length, so the
    edit reaches the packet's field parser instead of breaking the framing."""
    k = draw(st.integers(0, len(encoded) - 1))
    first, body = B.split(encoded[k])
    parts = list(encoded)
    parts[k] = B.frame(first, draw(mutated(body)) if body else draw(st.binary(min_size=1,
                                                                              max_size=4)))
    return b"".join(parts)


# --- helpers ------------------------------------------------------------------------------------

def outcome(codec: Any, chunks: list[bytes], version: int,
            max_packet_size: int | None = None) -> tuple[Any, ...]:
    """Everything observable from feeding ``chunks``: packets (including ``err.packets``),
    the error (reason code, message) if any, the level, and what stays buffered."""
    kw = {} if max_packet_size is None else {"max_packet_size": max_packet_size}
    parser = codec.Parser(version=version, **kw)
    got: list[Any] = []
    for chunk in chunks:
        try:
            got += parser.feed(chunk)
        except PacketError as err:
            got += err.packets
            return got, (err.reason_code, str(err)), parser.version
    return got, None, parser.version, parser.buffered


PARSER_VERSIONS = st.sampled_from([0, 3, 4, 5])
MAX_SIZES = st.sampled_from([None, 2, 16, 64, 1000])


# --- round trip -----------------------------------------------------------------------------

@given(data=st.data())
def test_round_trip(codec: Any, data: Any) -> None:
    version = data.draw(VERSIONS)
    packet = data.draw(packets(version))
    wire = codec.encode(packet, version)
    assert type(wire) is bytes
    parser = codec.Parser(version=0 if isinstance(packet, Connect) else version)
    assert parser.feed(wire) == [packet]
    assert parser.buffered == 0


@given(data=st.data())
def test_round_trip_of_connect_switches_level(codec: Any, data: Any) -> None:
    level = data.draw(VERSIONS)
    connect = data.draw(connects(level))
    rest = data.draw(st.lists(packets(level, with_connect=False), max_size=4))
    wire = codec.encode(connect, 0) + _encode_stream(codec, level, rest)
    parser = codec.Parser()
    assert parser.feed(wire) == [connect, *rest]
    assert parser.version == level


@given(data=st.data())
def test_any_split_parses_like_the_whole(codec: Any, data: Any) -> None:
    version, pkts = data.draw(streams())
    wire = _encode_stream(codec, version, pkts)
    chunks = data.draw(split_points(wire))
    assert outcome(codec, chunks, version) == (pkts, None, version, 0)


@given(data=st.data())
def test_any_split_gives_the_same_error(codec: Any, data: Any) -> None:
    version, pkts = data.draw(streams())
    wire = data.draw(mutated(_encode_stream(codec, version, pkts)))
    max_size = data.draw(MAX_SIZES)
    chunks = data.draw(split_points(wire))
    assert outcome(codec, chunks, version, max_size) == outcome(codec, [wire], version, max_size)


@given(data=st.data())
def test_any_split_gives_the_same_error_in_a_packet_body(codec: Any, data: Any) -> None:
    version, pkts = data.draw(streams())
    wire = data.draw(body_mutated([codec.encode(p, version) for p in pkts]))
    chunks = data.draw(split_points(wire))
    assert outcome(codec, chunks, version) == outcome(codec, [wire], version)


@given(data=st.data())
def test_byte_at_a_time_is_like_the_whole(codec: Any, data: Any) -> None:
    version = data.draw(PARSER_VERSIONS)
    wire = data.draw(framed_junk())
    chunks = [wire[i:i + 1] for i in range(len(wire))]
    assert outcome(codec, chunks, version) == outcome(codec, [wire], version)


# --- compiled == reference --------------------------------------------------------------------

@given(wire=st.binary(max_size=200), version=PARSER_VERSIONS, max_size=MAX_SIZES)
def test_py_equals_c_on_arbitrary_bytes(codec_py: Any, codec_c: Any, wire: bytes,
                                        version: int, max_size: int | None) -> None:
    assert outcome(codec_c, [wire], version, max_size) == outcome(codec_py, [wire], version,
                                                                  max_size)


@given(data=st.data())
def test_py_equals_c_on_packet_shaped_noise(codec_py: Any, codec_c: Any, data: Any) -> None:
    wire = data.draw(framed_junk())
    version = data.draw(PARSER_VERSIONS)
    max_size = data.draw(MAX_SIZES)
    chunks = data.draw(split_points(wire))
    expected = outcome(codec_py, [wire], version, max_size)
    assert outcome(codec_c, [wire], version, max_size) == expected
    assert outcome(codec_c, chunks, version, max_size) == expected


@given(data=st.data())
def test_py_equals_c_on_mutated_encodings(codec_py: Any, codec_c: Any, data: Any) -> None:
    version, pkts = data.draw(streams())
    wire = data.draw(mutated(_encode_stream(codec_py, version, pkts)))
    parser_version = data.draw(st.sampled_from([version, 0]))
    max_size = data.draw(MAX_SIZES)
    chunks = data.draw(split_points(wire))
    expected = outcome(codec_py, [wire], parser_version, max_size)
    assert outcome(codec_c, [wire], parser_version, max_size) == expected
    assert outcome(codec_c, chunks, parser_version, max_size) == expected


@given(data=st.data())
def test_py_equals_c_on_body_mutations(codec_py: Any, codec_c: Any, data: Any) -> None:
    version, pkts = data.draw(streams())
    wire = data.draw(body_mutated([codec_py.encode(p, version) for p in pkts]))
    max_size = data.draw(MAX_SIZES)
    chunks = data.draw(split_points(wire))
    expected = outcome(codec_py, [wire], version, max_size)
    assert outcome(codec_c, [wire], version, max_size) == expected
    assert outcome(codec_c, chunks, version, max_size) == expected


@given(data=st.data())
def test_py_equals_c_encode(codec_py: Any, codec_c: Any, data: Any) -> None:
    version = data.draw(VERSIONS)
    packet = data.draw(packets(version))
    for v in (3, 4, 5):  # a packet must encode identically whatever level it is asked for
        assert codec_c.encode(packet, v) == codec_py.encode(packet, v)
