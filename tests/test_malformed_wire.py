"""Malformed and abusive input against a running broker, over real sockets.

The codec tests (test_codec_malformed.py) check that the parser rejects each bad
input with the right reason code. This suite checks what a client actually
sees: a real ``mqttd start`` process on 127.0.0.1, every input built by the
independent ``builder`` and sent on a raw socket, the broker's reply read with
the reference parser. Row ids (F1, C5, S1, P3, U4, V5, ...) are the rows of
/work/shared/MQTT-MALFORMED.md; each case asserts the exact reaction:

* 3.1/3.1.1: the connection is closed (EOF or RST) and nothing was sent, except
  where the standard says CONNACK (0x01 unsupported level, 0x02 identifier
  rejected);
* 5.0, error inside CONNECT: CONNACK with the reason code, then close;
* 5.0, error after CONNACK: DISCONNECT with the reason code, then close;
* a framing error in the CONNECT's fixed header (flags, Remaining Length, size),
  or a protocol name the server cannot read a level behind: close without
  CONNACK (5.0 says a CONNACK is optional, 3.1.1 forbids one; before the level
  is read the server cannot know which format the client would read).

Where the standard leaves a choice, the reaction asserted is mqttd's documented
choice (module docstring of mqttd.mqtt.topics, mqttd.core.channel): control characters and
non-characters (S3) are refused in client ids (CONNACK 0x02/0x85), topic names,
filters, will topics and response topics (0x81), accepted in user names,
property strings and user properties; a wrong protocol level gets CONNACK 0x01
in the 3.1.1 format whatever the client's level; an invalid filter gets SUBACK
0x80/0x8F rather than a disconnect (S9, "tolerated alternative").

Rows the table words as "close" are asserted literally; a ``$SYS`` will topic
is well-formed and refused by policy, so it gets the C20 reaction (CONNACK 0x05
on 3.x, 0x90 on 5.0). Wills are checked too: a
refused CONNECT leaves no will behind, a connection closed on an error or an
invalid DISCONNECT publishes its will, a valid DISCONNECT discards it.

Every kind of rejection has an accepted neighbour (a case marked ``good``:
CONNACK 0x00, SUBACK, PUBACK, a delivered message, or a clean close for a valid
DISCONNECT), so a broker that rejects everything fails. A paho-mqtt client
subscribed on the same broker must keep receiving messages throughout (checked
at the start, after a burst of concurrent bad clients and at the end), and the
broker's log must never contain a traceback.

One broker process serves the whole module, with four listeners bound to four
zones: ``default``, ``small`` (max_packet_size 1024, for F3), ``policy``
(Maximum QoS 1, no retain, no topic aliases, no wildcard or shared
subscriptions, for C10/P5/P6/U9/V7) and ``slow`` (idle_timeout 1 s, for F4).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from support import builder as B, raw as W
from support.process import BrokerProcess

#: Seconds a read waits for the broker before calling it a hang.
TIMEOUT = 2.0


def raw_client(port: int, level: int) -> W.RawClient:
    """A raw client on ``port`` reading replies at protocol ``level``, with this suite's
    TIMEOUT as the bound of every read."""
    return W.RawClient(port, level, timeout=TIMEOUT)


# --- expected reactions ------------------------------------------------------------------

MAL, PROTO = 0x81, 0x82


class Expect(NamedTuple):
    """What the broker must do: close silently, CONNACK/DISCONNECT a code and close, or
    accept (exactly ``replies``, in any order, and stay open). For a close or a DISCONNECT,
    ``replies`` are what must come before it (the answers to good packets sent first)."""

    kind: str  # "close" | "connack" | "disconnect" | "accept" | "open"
    codes: frozenset[int] = frozenset()
    replies: tuple[tuple[Any, ...], ...] = ()
    fmt: int = 0  # protocol level whose CONNACK format the reply is read in (0: the case's)

    def describe(self) -> str:
        codes = "/".join(f"0x{c:02X}" for c in sorted(self.codes))
        first = f"{list(self.replies)}, then " if self.replies else ""
        if self.kind == "close":
            return f"{first}close, nothing sent" if not first else f"{first}close"
        if self.kind == "connack":
            return f"CONNACK {codes} (level-{self.fmt or 'same'} format), then close"
        if self.kind == "disconnect":
            return f"{first}DISCONNECT {codes}, then close"
        if self.kind == "open":
            return "accepted (no DISCONNECT), connection open"
        return f"accepted: exactly {list(self.replies)}, connection open"


CLOSE = Expect("close")
OPEN = Expect("open")


def connack(code: int, fmt: int = 0) -> Expect:
    return Expect("connack", frozenset({code}), fmt=fmt)


def disc(*codes: int, after: tuple[tuple[Any, ...], ...] = ()) -> Expect:
    return Expect("disconnect", frozenset(codes), replies=after)


def closed_after(*replies: tuple[Any, ...]) -> Expect:
    return Expect("close", replies=tuple(replies))


def accept(*replies: tuple[Any, ...]) -> Expect:
    return Expect("accept", replies=tuple(replies))


def reject(v: int, code: int, at: str) -> Expect:
    """The reaction to an error with 5.0 reason ``code``: 3.x closes silently; 5.0 answers
    with CONNACK (``at="connect"``), DISCONNECT (``at="post"``), or nothing when the error is
    in the CONNECT's fixed header (``at="frame"``)."""
    if v != 5 or at == "frame":
        return CLOSE
    return connack(code) if at == "connect" else disc(code)


# --- cases -------------------------------------------------------------------------------

class Case(NamedTuple):
    id: str
    row: str
    v: int  # protocol level of the connection (0: no level, the first packet is not CONNECT)
    wire: bytes | Callable[[tuple[Any, ...]], bytes]  # a callable gets the setup's replies
    expect: Expect
    pre: bool  # the wire opens the connection; otherwise it follows a good CONNECT/CONNACK
    setup: tuple[bytes, ...] = ()  # sent (each synced with PINGREQ) before the wire
    listener: str = "default"
    connect: tuple[tuple[str, Any], ...] = ()  # extra builder.connect() arguments
    will: bool | None = None  # connect with a will; it must (True) / must not (False) be sent
    timeout: float = TIMEOUT
    good: bool = False  # an accepted neighbour
    split: tuple[int, ...] = ()  # send the wire in pieces cut at these offsets, 20 ms apart
    will_topic: str | None = None  # for ``will`` on a ``pre`` case: the topic its CONNECT named


CASES: list[Case] = []
_ids = itertools.count(1)


def uid(prefix: str = "u") -> str:
    """A fresh name (client id, topic level) so that no two cases share state."""
    return f"{prefix}{next(_ids)}"


def _add(row: str, name: str, v: int, wire: Any, expect: Expect, pre: bool,
         **kw: Any) -> None:
    good = kw.pop("good", expect.kind in ("accept", "open"))
    kw["connect"] = tuple(kw.pop("connect", {}).items())
    level = "first" if v == 0 else f"v{v}"
    CASES.append(Case(f"{row}-{name}-{level}", row, v, wire, expect, pre, good=good, **kw))


def pre(row: str, name: str, v: int, wire: Any, expect: Expect, **kw: Any) -> None:
    """A case whose wire is the first thing the connection sends (the CONNECT, or not)."""
    _add(row, name, v, wire, expect, True, **kw)


def post(row: str, name: str, v: int, wire: Any, expect: Expect, **kw: Any) -> None:
    """A case whose wire follows an accepted CONNECT at level ``v``."""
    _add(row, name, v, wire, expect, False, **kw)


E = B.EMPTY_PROPS
NAMES = {B.CONNECT: "connect", B.CONNACK: "connack", B.PUBLISH: "publish", B.PUBACK: "puback",
         B.PUBREC: "pubrec", B.PUBREL: "pubrel", B.PUBCOMP: "pubcomp", B.SUBSCRIBE: "subscribe",
         B.SUBACK: "suback", B.UNSUBSCRIBE: "unsubscribe", B.UNSUBACK: "unsuback",
         B.PINGREQ: "pingreq", B.PINGRESP: "pingresp", B.DISCONNECT: "disconnect",
         B.AUTH: "auth"}
V345 = (3, 4, 5)
V45 = (4, 5)


def P(v: int) -> bytes:
    """The empty property block where the level has one."""
    return E if v == 5 else b""


def pub(v: int, topic: str | bytes, payload: bytes = b"x", **kw: Any) -> bytes:
    kw.setdefault("properties", P(v))
    return B.publish(topic, payload, **kw)


def pub1(v: int, topic: str | bytes, payload: bytes = b"x", **kw: Any) -> bytes:
    """QoS 1 PUBLISH with Packet Identifier 1."""
    return pub(v, topic, payload, qos=1, packet_id=1, **kw)


def sub(v: int, entries: list[tuple[str | bytes, int | None]], pid: int = 1,
        **kw: Any) -> bytes:
    kw.setdefault("properties", P(v))
    return B.subscribe(pid, entries, **kw)


def unsub(v: int, filters: list[str | bytes], pid: int = 1, **kw: Any) -> bytes:
    kw.setdefault("properties", P(v))
    return B.unsubscribe(pid, filters, **kw)


def conn(v: int, client_id: str | bytes | None = "", **kw: Any) -> bytes:
    """A CONNECT at level ``v`` with a fresh client id unless one is given (``b""`` gives an
    empty one, ``None`` none at all)."""
    return B.connect(uid("c") if client_id == "" else client_id, level=v, **kw)


def no_sub_ack(v: int) -> int:
    """PUBACK/PUBREC code for a message nobody is subscribed to."""
    return 0x10 if v == 5 else 0


def sized(build: Callable[[int], bytes], size: int) -> bytes:
    """``build(n)`` for the ``n`` that makes the whole packet exactly ``size`` bytes."""
    n = size - len(build(0))
    while len(build(n)) > size:
        n -= 1
    pkt = build(n)
    assert len(pkt) == size, (len(pkt), size)
    return pkt


def _publish_of(v: int, topic: str) -> Callable[[int], bytes]:
    """A QoS 1 PUBLISH with an n-byte payload, for :func:`sized`."""
    return lambda n: pub1(v, topic, b"z" * n)


def _connect_of(v: int, client_id: str) -> Callable[[int], bytes]:
    """A CONNECT whose client id is padded by n bytes, for :func:`sized`."""
    return lambda n: conn(v, client_id + "k" * n)


def fresh_topic() -> str:
    return "t/" + uid()


def delivered(row: str, name: str, v: int, topic: str | bytes, payload: bytes = b"d",
              **pubkw: Any) -> None:
    """Good neighbour: subscribe to ``topic``, PUBLISH QoS 1 to it; the message comes back
    (topic intact) and is acknowledged with 0x00."""
    text = topic if isinstance(topic, str) else topic.decode("utf-8")
    post(row, name, v, pub1(v, topic, payload, **pubkw),
         accept(("PUBLISH", text, payload), ("PUBACK", 0)), setup=(sub(v, [(topic, 0)], 9),))


# --- a.1 Framing ---------------------------------------------------------------------------

for v in V45:
    # F1: at most four Remaining Length bytes: decide on the fifth, never wait for more.
    post("F1", "pingreq-rl-5-bytes", v, b"\xc0\xff\xff\xff\xff\x7f", reject(v, MAL, "post"))
    post("F1", "publish-rl-5-bytes", v, b"\x30\xff\xff\xff\xff\x7f" + b"\x00\x01t",
         reject(v, MAL, "post"))
    post("F1", "publish-rl-5-bytes-small-value", v, b"\x30\x80\x80\x80\x80\x01\x00",
         reject(v, MAL, "post"))
    post("F1", "subscribe-endless-continuation", v, b"\x82" + b"\xff" * 12,
         reject(v, MAL, "post"))
    post("F1", "disconnect-rl-5-bytes", v, b"\xe0\x80\x80\x80\x80\x00", reject(v, MAL, "post"))
    pre("F1", "connect-rl-5-bytes", v, b"\x10\xff\xff\xff\xff\x7f", CLOSE)
    pre("F1", "connect-endless-continuation", v, b"\x10" + b"\x80" * 10, CLOSE)
    # Neighbours: a 3-byte Remaining Length (the longest a 1 MB maximum allows), a 2-byte one.
    delivered("F1", "publish-rl-3-bytes", v, fresh_topic(), b"L" * 20000)
    pre("F1", "connect-rl-2-bytes", v, conn(v, "c" + "x" * 200 + uid()), accept(("CONNACK", 0)))

    # F2: non-minimal Variable Byte Integers.
    post("F2", "pingreq-rl-80-00", v, b"\xc0\x80\x00", reject(v, MAL, "post"))
    post("F2", "disconnect-rl-80-00", v, b"\xe0\x80\x00", reject(v, MAL, "post"))
    _t = fresh_topic()
    _good = pub1(v, _t)
    for _nb in (2, 3, 4):
        post("F2", f"publish-rl-{_nb}-bytes-non-minimal", v,
             pub1(v, _t, rl_bytes=B.vbi(len(B.split(_good)[1]), _nb)), reject(v, MAL, "post"))
    post("F2", "publish-rl-minimal", v, _good, accept(("PUBACK", no_sub_ack(v))))
    _c = conn(v)
    pre("F2", "connect-rl-non-minimal", v, B.frame(0x10, B.split(_c)[1],
                                                    rl_bytes=B.vbi(len(B.split(_c)[1]), 2)),
        CLOSE)
    post("F2", "pingreq-minimal", v, b"\xc0\x00", accept())

# The same decisions when the bytes arrive in pieces: the broker must not wait for more than
# the fifth length byte, nor for the body of a packet it already knows is too large.
for v in V45:
    post("F1", "rl-5th-byte-arrives-late", v, b"\x30\xff\xff\xff\xff\x7f",
         reject(v, MAL, "post"), split=(4,))
    post("F1", "rl-byte-by-byte", v, b"\x30\x80\x80\x80\x80\x01", reject(v, MAL, "post"),
         split=(1, 2, 3, 4, 5))
    post("F3", "header-in-two-pieces", v, b"\x30\xff\xff\xff\x7f", reject(v, 0x95, "post"),
         split=(2,), listener="small")
    post("F5", "subscribe-byte-by-byte", v, B.truncated(sub(v, [("a/b", 1)]), 1),
         reject(v, MAL, "post"), split=tuple(range(1, len(sub(v, [("a/b", 1)])) - 1)))
    post("F5", "subscribe-byte-by-byte-complete", v, sub(v, [("a/b", 1)]),
         accept(("SUBACK", (1,))), split=tuple(range(1, len(sub(v, [("a/b", 1)])))))
    pre("C5", "reserved-bit-byte-by-byte", v, conn(v, "bb", connect_flags=0x03),
        reject(v, MAL, "connect"), split=tuple(range(1, len(conn(v, "bb")))))
    pre("C5", "byte-by-byte-complete", v, conn(v, "bb"), accept(("CONNACK", 0)),
        split=tuple(range(1, len(conn(v, "bb")))))

# F1/F2 inside the packet: Property Length and Subscription Identifier are VBIs too (5.0).
_t = fresh_topic()
post("F1", "property-length-5-bytes", 5,
     B.publish(_t, b"", qos=1, packet_id=1,
               properties=B.props(length_bytes=b"\xff\xff\xff\xff\x7f")), disc(MAL))
post("F1", "subscription-id-5-bytes", 5,
     sub(5, [("f1/t", 0)], properties=B.props(b"\x0b\xff\xff\xff\xff\x7f")), disc(MAL))
post("F1", "subscription-id-4-bytes-max", 5,
     sub(5, [("f1/t", 0)], properties=B.props(b"\x0b\xff\xff\xff\x7f")), accept(("SUBACK", (0,))))
post("F2", "property-length-80-00", 5,
     B.publish(_t, b"", qos=1, packet_id=1, properties=B.props(length_bytes=b"\x80\x00")),
     disc(MAL))
post("F2", "property-length-non-minimal", 5,
     B.publish(_t, b"", qos=1, packet_id=1,
               properties=B.props(("content_type", "a"), length_bytes=B.vbi(4, 2))), disc(MAL))
post("F2", "property-length-minimal", 5,
     B.publish(_t, b"", qos=1, packet_id=1, properties=B.props(("content_type", "a"))),
     accept(("PUBACK", 0x10)))
pre("F2", "connect-property-length-80-00", 5,
    conn(5, properties=B.props(length_bytes=b"\x80\x00")), connack(MAL))
post("F2", "puback-property-length-80-00", 5, B.puback(1, 0x10, B.props(length_bytes=b"\x80\x00")),
     disc(MAL))
for _raw in (b"\x0b\x80\x00", b"\x0b\x81\x00", b"\x0b\x80\x81\x00", b"\x0b\xff\xff\x80\x00"):
    post("F2", f"subscription-id-{_raw[1:].hex()}", 5,
         sub(5, [("f2/t", 0)], properties=B.props(_raw)), disc(MAL))
post("F2", "subscription-id-81-01", 5, sub(5, [("f2/t", 0)], properties=B.props(b"\x0b\x81\x01")),
     accept(("SUBACK", (0,))))

for v in V45:
    # F3: declared length over the listener's maximum (1024): decided on the header alone,
    # the body never sent (the idle timeout of that zone is 10 s, the read waits 2 s).
    for _name, _hdr in (("publish-2000", b"\x30\xd0\x0f"), ("publish-max-rl", b"\x30\xff\xff\xff\x7f"),
                        ("subscribe-2000", b"\x82\xd0\x0f"), ("unsubscribe-1022", b"\xa2\xfe\x07")):
        post("F3", f"{_name}-header-only", v, _hdr, reject(v, 0x95, "post"), listener="small")
    pre("F3", "connect-2000-header-only", v, b"\x10\xd0\x0f", CLOSE, listener="small")
    pre("F3", "connect-max-rl-header-only", v, b"\x10\xff\xff\xff\x7f", CLOSE, listener="small")
    # Exactly at the limit (1024 bytes, fixed header included) is accepted; one more is not.
    _t = fresh_topic()
    _fill = sized(_publish_of(v, _t), 1025)
    post("F3", "publish-1025-bytes", v, _fill, reject(v, 0x95, "post"), listener="small")
    _t = fresh_topic()
    _fill = sized(_publish_of(v, _t), 1024)
    post("F3", "publish-1024-bytes", v, _fill,
         accept(("PUBLISH", _t, _fill[len(_fill.rstrip(b"z")):]), ("PUBACK", 0)),
         setup=(sub(v, [(_t, 0)], 9),), listener="small")
    _cid = uid("c")
    pre("F3", "connect-1024-bytes", v, sized(_connect_of(v, _cid), 1024),
        accept(("CONNACK", 0)), listener="small")
    pre("F3", "connect-1025-bytes", v, sized(_connect_of(v, _cid), 1025), CLOSE,
        listener="small")

    # F4: declared length longer than what follows, then silence: the keepalive (1 s here,
    # 1.5 s with the backoff) closes it after CONNACK, the idle timeout (1 s) before.
    post("F4", "publish-short-body-keepalive", v, b"\x30\x64\x00\x03a/b",
         Expect("disconnect", frozenset({0x8D})) if v == 5 else CLOSE,
         connect={"keepalive": 1}, timeout=4.0)
    post("F4", "keepalive-kept-by-pings", v, b"\xc0\x00", accept(), connect={"keepalive": 1})
    _c = conn(v)
    pre("F4", "connect-short-body-idle-timeout", v, _c[:-3], CLOSE, listener="slow", timeout=4.0)
    pre("F4", "connect-complete-slow-zone", v, conn(v), accept(("CONNACK", 0)), listener="slow")

    # F5: the fields run past the declared length.
    post("F5", "topic-length-overrun", v,
         B.packet(B.PUBLISH, 0, B.string("a/b", length=10)), reject(v, MAL, "post"))
    post("F5", "topic-length-only", v, B.packet(B.PUBLISH, 0, b"\x00"), reject(v, MAL, "post"))
    post("F5", "empty-publish", v, b"\x30\x00", reject(v, MAL, "post"))
    post("F5", "publish-rl-short-by-3", v,
         pub1(v, "f5/t", b"", remaining_length=len(B.split(pub1(v, "f5/t", b""))[1]) - 3)
         + b"\x00\x00\x00", reject(v, MAL, "post"))
    post("F5", "filter-length-overrun", v,
         B.packet(B.SUBSCRIBE, 2, B.u16(1) + P(v) + B.string("a/b", length=20) + b"\x00"),
         reject(v, MAL, "post"))
    post("F5", "unsubscribe-filter-overrun", v, unsub(v, [], extra=B.u16(9) + b"a/b"),
         reject(v, MAL, "post"))
    post("F5", "puback-missing-packet-id", v, B.packet(B.PUBACK, 0, b"\x00"),
         reject(v, MAL, "post"))
    post("F5", "pubrel-empty", v, B.packet(B.PUBREL, 2, b""), reject(v, MAL, "post"))
    post("F5", "pubrec-empty", v, B.packet(B.PUBREC, 0, b""), reject(v, MAL, "post"))
    post("F5", "pubcomp-one-byte", v, B.packet(B.PUBCOMP, 0, b"\x01"), reject(v, MAL, "post"))
    post("F5", "subscribe-empty", v, B.packet(B.SUBSCRIBE, 2, b""), reject(v, MAL, "post"))
    post("F5", "subscribe-truncated-options", v, B.truncated(sub(v, [("a/b", 1)]), 1),
         reject(v, MAL, "post"))
    post("F5", "unsubscribe-truncated-filter", v, B.truncated(unsub(v, ["a/b"]), 1),
         reject(v, MAL, "post"))
    post("F5", "subscribe-complete", v, sub(v, [("a/b", 1)]), accept(("SUBACK", (1,))))
    post("F5", "unsubscribe-complete", v, unsub(v, ["a/b"]),
         accept(("UNSUBACK", (0x11,) if v == 5 else ())))
    post("F5", "pubrel-complete", v, B.pubrel(1), accept(("PUBCOMP", 0x92 if v == 5 else 0)))
    # Before the level is read the broker cannot answer in a format: close.
    pre("F5", "connect-name-overrun", v, B.packet(B.CONNECT, 0, B.string(b"MQTT", length=50)),
        CLOSE)
    pre("F5", "connect-level-missing", v, B.packet(B.CONNECT, 0, B.string(b"MQTT")), CLOSE)
    # After the level: CONNACK 0x81 on 5.0.
    pre("F5", "connect-client-id-overrun", v,
        B.connect(None, level=v, extra=B.u16(10) + b"ab"), reject(v, MAL, "connect"))
    pre("F5", "connect-keepalive-cut", v, B.truncated(conn(v, None), 1 + (v == 5)),
        reject(v, MAL, "connect"))
    _c = conn(v)
    pre("F5", "connect-rl-short-by-2", v,
        B.frame(0x10, B.split(_c)[1][:-2]) + B.split(_c)[1][-2:], reject(v, MAL, "connect"))
    pre("F5", "connect-complete", v, _c, accept(("CONNACK", 0)))

for v in V345:
    pre("F5", "connect-password-overrun", v,
        conn(v, connect_flags=0xC2, extra=B.string("u") + B.u16(10) + b"pw"),
        reject(v, MAL, "connect"))
    pre("F5", "connect-username-overrun", v,
        conn(v, connect_flags=0x82, extra=B.u16(10) + b"u"), reject(v, MAL, "connect"))
    pre("F5", "connect-with-username-password", v, conn(v, username="u", password=b"pw"),
        accept(("CONNACK", 0)))

# 5.0 property blocks: the length runs past the packet / a value runs past the block.
post("F5", "property-length-overrun", 5,
     B.publish("f5/p", b"", qos=1, packet_id=1, properties=B.props(("content_type", "a"),
                                                                    length=50)), disc(MAL))
post("F5", "puback-property-length-overrun", 5, B.puback(1, 0x10, B.props(length=5)), disc(MAL))
post("F5", "disconnect-property-length-overrun", 5, B.disconnect(0x00, B.props(length=3)),
     disc(MAL))
post("F5", "user-property-value-overrun", 5,
     B.publish("f5/p", b"", qos=1, packet_id=1,
               properties=B.props(b"\x26" + B.string("k") + B.u16(9) + b"v")), disc(MAL))
pre("F5", "connect-property-length-overrun", 5, conn(5, properties=B.props(length=100)),
    connack(MAL))
pre("F5", "connect-property-block-missing", 5, conn(5, "abc", properties=b""), connack(MAL))
post("F5", "publish-property-block-missing", 5, B.publish("f5/p", b"", qos=1, packet_id=1),
     disc(MAL))
post("F5", "subscribe-property-block-missing", 5, B.subscribe(1, [("a/b", 0)]), disc(MAL))
post("F5", "unsubscribe-property-block-missing", 5, B.unsubscribe(1, ["a/b"]), disc(MAL))
post("F5", "puback-with-empty-properties", 5, B.puback(1, 0x10, E), accept())

# F6: bytes after the last field.
for v in V45:
    post("F6", "pingreq-long", v, B.pingreq(extra=b"\x00"), reject(v, MAL, "post"))
    post("F6", "pingreq-long-2", v, B.pingreq(extra=b"\x00\x00"), reject(v, MAL, "post"))
    post("F6", "pingreq", v, B.pingreq(), accept())
    pre("F6", "connect-long", v, conn(v, extra=b"\x00"), reject(v, MAL, "connect"))
    pre("F6", "connect-will-long", v, conn(v, will_topic="w/" + uid(), extra=b"\x01"),
        reject(v, MAL, "connect"))
    pre("F6", "connect-password-long", v, conn(v, username="u", password=b"p", extra=b"\x01"),
        reject(v, MAL, "connect"))
    pre("F6", "connect-will", v, conn(v, will_topic="w/" + uid()), accept(("CONNACK", 0)))
post("F6", "disconnect-long", 4, B.disconnect(extra=b"\x00"), CLOSE, will=True)
post("F6", "disconnect", 4, B.disconnect(), CLOSE, will=False, good=True)
for _pt in (B.PUBACK, B.PUBREC, B.PUBREL, B.PUBCOMP):
    post("F6", f"{NAMES[_pt]}-long", 4, B.ack(_pt, 1, extra=b"\x00"), CLOSE)
    post("F6", f"{NAMES[_pt]}-long", 5, B.ack(_pt, 1, 0, E, extra=b"\x00"), disc(MAL))
post("F6", "disconnect-long", 5, B.disconnect(0, E, extra=b"\x00"), disc(MAL), will=True)
post("F6", "disconnect-short-form", 5, B.disconnect(0), CLOSE, will=False, good=True)
post("F6", "disconnect-full-form", 5, B.disconnect(0, E), CLOSE, will=False, good=True)
post("F6", "puback-full-form", 5, B.puback(1, 0, E), accept())

# F7: every wrong fixed-header flag nibble of every packet type a client sends. The
# neighbour (the right nibble) is accepted; for AUTH it still fails, but with 0x82 (no
# authentication was started) instead of 0x81, so the flags are what the 0x81 is about.
_FLAGGED: dict[int, tuple[Callable[[int, int], bytes], Callable[[int], Expect]]] = {
    B.PUBACK: (lambda v, f: B.puback(1, flags=f), lambda v: accept()),
    B.PUBREC: (lambda v, f: B.pubrec(1, flags=f), lambda v: OPEN),
    B.PUBREL: (lambda v, f: B.pubrel(1, flags=f),
               lambda v: accept(("PUBCOMP", 0x92 if v == 5 else 0))),
    B.PUBCOMP: (lambda v, f: B.pubcomp(1, flags=f), lambda v: accept()),
    B.SUBSCRIBE: (lambda v, f: sub(v, [("f7/t", 0)], flags=f),
                  lambda v: accept(("SUBACK", (0,)))),
    B.UNSUBSCRIBE: (lambda v, f: unsub(v, ["f7/t"], flags=f),
                    lambda v: accept(("UNSUBACK", (0x11,) if v == 5 else ()))),
    B.PINGREQ: (lambda v, f: B.pingreq(flags=f), lambda v: accept()),
    B.DISCONNECT: (lambda v, f: B.disconnect(flags=f), lambda v: CLOSE),
    B.AUTH: (lambda v, f: B.auth(flags=f), lambda v: disc(PROTO)),
}
for v in V45:
    for _pt, (_build, _neighbour) in _FLAGGED.items():
        if _pt == B.AUTH and v != 5:
            continue
        _right = B.REQUIRED_FLAGS[_pt]
        _will = True if _pt == B.DISCONNECT else None
        for _f in range(16):
            if _f != _right:
                post("F7", f"{NAMES[_pt]}-flags-{_f:x}", v, _build(v, _f),
                     reject(v, MAL, "post"), will=_will)
        post("F7", f"{NAMES[_pt]}-flags-{_right:x}", v, _build(v, _right), _neighbour(v),
             will=False if _pt == B.DISCONNECT else None, good=_pt != B.AUTH)
for v in V345:
    for _f in range(1, 16):
        pre("F7", f"connect-flags-{_f:x}", v, conn(v, flags=_f), CLOSE)
    pre("F7", "connect-flags-0", v, conn(v), accept(("CONNACK", 0)))

# F8: reserved packet type 0; AUTH (type 15) is 5.0 only.
for v in V45:
    post("F8", "type-0", v, b"\x00\x00", reject(v, MAL, "post"))
    post("F8", "type-0-with-body", v, b"\x00\x02\x00\x01", reject(v, MAL, "post"))
post("F8", "auth-on-3.1.1", 4, b"\xf0\x00", CLOSE)
post("F8", "auth-with-reason-on-3.1.1", 4, b"\xf0\x02\x00\x00", CLOSE)
pre("F8", "type-0", 0, b"\x00\x00", CLOSE)
pre("F8", "auth", 0, B.auth(0, E), CLOSE)
post("F8", "pingreq-type-12", 4, b"\xc0\x00", accept())

# F9: packets only a server may send, from a client: protocol error.
for v in V45:
    _props = P(v)
    for _name, _pkt in (("connack", B.connack(0, properties=_props)),
                        ("connack-refusal", B.connack(0x80 if v == 5 else 5,
                                                      properties=_props)),
                        ("suback", B.suback(1, [0], properties=_props)),
                        ("unsuback", B.unsuback(1, [0] if v == 5 else [], properties=_props)),
                        ("pingresp", B.pingresp())):
        post("F9", _name, v, _pkt, reject(v, PROTO, "post"))
        pre("F9", f"{_name}-level-{v}-format", 0, _pkt, CLOSE)
# CVE-2021-28166: a malformed CONNACK from a client. Malformed and not allowed: either code.
post("F9", "connack-empty", 5, b"\x20\x00", disc(MAL, PROTO))
post("F9", "connack-one-byte", 5, b"\x20\x01\x00", disc(MAL, PROTO))
post("F9", "connack-bad-props", 5, b"\x20\x03\x00\x00\x05", disc(MAL, PROTO))
post("F9", "connack-empty", 4, b"\x20\x00", CLOSE)
post("F9", "suback-empty", 4, b"\x90\x00", CLOSE)
for v in V45:
    post("F9", "pingreq-instead-of-pingresp", v, b"\xc0\x00", accept())


# --- a.2 CONNECT ----------------------------------------------------------------------------

# C1: the first packet is not CONNECT: close, send nothing (no DISCONNECT before CONNACK).
for _name, _pkt in (("publish-qos0", B.publish("a/b", b"x")),
                    ("publish-qos1", B.publish("a/b", b"x", qos=1, packet_id=1)),
                    ("publish-v5", B.publish("a/b", b"x", properties=E)),
                    ("subscribe", B.subscribe(1, [("a/b", 0)])),
                    ("unsubscribe", B.unsubscribe(1, ["a/b"])),
                    ("pingreq", B.pingreq()), ("puback", B.puback(1)), ("pubrec", B.pubrec(1)),
                    ("pubrel", B.pubrel(1)), ("pubcomp", B.pubcomp(1)),
                    ("disconnect", B.disconnect()), ("disconnect-v5", B.disconnect(0, E)),
                    ("auth-v5", B.auth(0x18, B.props(("authentication_method", "x")))),
                    ("http-get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                    ("tls-client-hello", bytes.fromhex("160301002f0100002b0303") + b"\x00" * 40),
                    ("zeros", b"\x00" * 16), ("ff-bytes", b"\xff" * 16),
                    ("pingreq-then-connect", B.pingreq() + conn(4))):
    pre("C1", _name, 0, _pkt, CLOSE)
# CVE-2023-0809: a first packet that is not CONNECT is refused on its header; the broker
# must not wait for (or buffer) the body it announces, even within the maximum size.
pre("C1", "publish-header-only-100000", 0, b"\x30\xa0\x8d\x06", CLOSE)
pre("C1", "subscribe-header-only-100000", 0, b"\x82\xa0\x8d\x06", CLOSE)
pre("C1", "publish-header-only-max", 0, b"\x30\xff\xff\xff\x7f", CLOSE)
for v in V345:
    pre("C1", "connect-first", v, conn(v), accept(("CONNACK", 0)))

# C2: a second CONNECT.
for v in V45:
    post("C2", "second-connect", v, conn(v), reject(v, PROTO, "post"))
    post("C2", "second-connect-other-level", v, conn(9 - v), reject(v, PROTO, "post"))
post("C2", "second-connect", 3, conn(3), CLOSE)
for v in V345:
    post("C2", "pingreq-after-the-one-connect", v, B.pingreq(), accept())

# C3: protocol name not "MQTT" (nor "MQIsdp" with level 3): close (the 0x84 CONNACK is
# optional and mqttd does not send one for a name it does not know).
for v in V45:
    for _name, _pn in (("lowercase", b"mqtt"), ("MQTTX", b"MQTTX"), ("empty", b""),
                       ("MQ", b"MQ"), ("MQTT-nul", b"MQTT\x00"), ("invalid-utf8", b"\xff\xfe"),
                       ("MQIsdp-lowercase", b"mqisdp"), ("space", b"MQTT ")):
        pre("C3", f"name-{_name}", v, conn(v, proto_name=_pn), CLOSE)
    pre("C3", "name-MQTT", v, conn(v, proto_name=b"MQTT"), accept(("CONNACK", 0)))
pre("C3", "name-MQIsdp", 3, conn(3, proto_name=b"MQIsdp"), accept(("CONNACK", 0)))

# C4: a known name with a level mqttd does not speak: CONNACK 0x01 in the 3.1.1 format
# (every level can read it), then close.
for _level in (0, 1, 2, 3, 6, 7, 0x83, 0x84, 0x85, 0xFF):
    pre("C4", f"MQTT-level-{_level}", 4, B.connect(uid("c"), level=_level, proto_name="MQTT"),
        connack(0x01, fmt=4))
for _level in (4, 5, 2):
    pre("C4", f"MQIsdp-level-{_level}", 4, B.connect(uid("c"), level=_level, proto_name="MQIsdp"),
        connack(0x01, fmt=4))
pre("C4", "MQTT-level-6-v5-body", 4,
    B.connect(uid("c"), level=6, proto_name="MQTT", properties=E), connack(0x01, fmt=4))
for v in V345:
    pre("C4", "supported-level", v, conn(v), accept(("CONNACK", 0)))

for v in V345:
    # C5: reserved Connect Flags bit 0.
    pre("C5", "reserved-bit", v, conn(v, connect_flags=0x03), reject(v, MAL, "connect"))
    pre("C5", "reserved-bit-only", v, conn(v, connect_flags=0x01), reject(v, MAL, "connect"))
    pre("C5", "clean-bit-only", v, conn(v, connect_flags=0x02), accept(("CONNACK", 0)))
    # C6: Will QoS / Will Retain without the Will Flag.
    for _name, _cf in (("will-qos1", 0x0A), ("will-qos2", 0x12), ("will-retain", 0x22),
                       ("will-qos1-retain", 0x2A)):
        pre("C6", f"{_name}-without-will-flag", v, conn(v, connect_flags=_cf),
            reject(v, MAL, "connect"))
    pre("C6", "will-qos1-retain-with-will-flag", v,
        conn(v, will_topic="w/" + uid(), will_qos=1, will_retain=False),
        accept(("CONNACK", 0)))
    # C7: Will QoS 3, with and without the Will Flag.
    pre("C7", "will-qos3", v,
        conn(v, will_topic="w/" + uid(), connect_flags=0x1E), reject(v, MAL, "connect"))
    pre("C7", "will-qos3-without-will-flag", v, conn(v, connect_flags=0x1A),
        reject(v, MAL, "connect"))
    pre("C7", "will-qos2", v, conn(v, will_topic="w/" + uid(), will_qos=2),
        accept(("CONNACK", 0)))
    # C8: Will Flag set, Will Topic / Will Message missing.
    _wp = P(v)
    pre("C8", "will-fields-missing", v, conn(v, connect_flags=0x06), reject(v, MAL, "connect"))
    pre("C8", "will-message-missing", v,
        conn(v, connect_flags=0x06, extra=_wp + B.string("w/t")), reject(v, MAL, "connect"))
    pre("C8", "will-message-length-overrun", v,
        conn(v, connect_flags=0x06, extra=_wp + B.string("w/t") + B.u16(5) + b"ab"),
        reject(v, MAL, "connect"))
    pre("C8", "will-complete", v, conn(v, connect_flags=0x06,
                                       extra=_wp + B.string("w/" + uid()) + B.string(b"ab")),
        accept(("CONNACK", 0)))
pre("C8", "will-properties-only", 5, conn(5, connect_flags=0x06, extra=E), connack(MAL))
pre("C8", "will-properties-missing", 5,
    conn(5, connect_flags=0x06, extra=B.string("w/t") + B.string(b"m")), connack(MAL))

for v in V345:
    # C9: Will Topic empty, with wildcards, in $SYS.
    for _name, _wt, _code in (("empty", "", PROTO), ("plus", "a/+", PROTO),
                              ("hash", "a/#", PROTO), ("only-hash", "#", PROTO)):
        pre("C9", f"will-topic-{_name}", v, conn(v, will_topic=_wt), reject(v, _code, "connect"))
    # "$SYS" is the broker's: a well-formed CONNECT refused by policy (C20), so Topic Name
    # invalid on 5.0 and "not authorized" on 3.x [MQTT-3.2.2-5].
    pre("C9", "will-topic-SYS", v, conn(v, will_topic="$SYS/x"),
        connack(0x90) if v == 5 else connack(0x05))
    pre("C9", "will-topic-dollar-other", v, conn(v, will_topic="$other/x"),
        accept(("CONNACK", 0)))
    pre("C9", "will-topic-slash", v, conn(v, will_topic="/"), accept(("CONNACK", 0)))

# C10: Will QoS above the Maximum QoS / Will Retain when retain is unavailable (5.0).
pre("C10", "will-qos2-over-max-1", 5, conn(5, will_topic="w/x", will_qos=2), connack(0x9B),
    listener="policy")
pre("C10", "will-retain-unavailable", 5, conn(5, will_topic="w/x", will_retain=True),
    connack(0x9A), listener="policy")
pre("C10", "will-qos1-at-max", 5, conn(5, will_topic="w/x", will_qos=1),
    accept(("CONNACK", 0)), listener="policy")

for v in V345:
    # C11: User Name flag and payload disagree.
    pre("C11", "username-present-flag-0", v, conn(v, extra=B.string("user")),
        reject(v, MAL, "connect"))
    pre("C11", "username-flag-1-missing", v, conn(v, connect_flags=0x82),
        reject(v, MAL, "connect"))
    pre("C11", "username-flag-1-present", v, conn(v, username="user"), accept(("CONNACK", 0)))
    pre("C11", "username-empty", v, conn(v, username=""), accept(("CONNACK", 0)))
    # C12: Password without User Name: 3.x forbids it, 5.0 allows it.
    pre("C12", "password-without-username", v, conn(v, password=b"pw"),
        accept(("CONNACK", 0)) if v == 5 else CLOSE)
    pre("C12", "password-flag-without-username-flag", v,
        conn(v, connect_flags=0x42, extra=B.string(b"pw")),
        accept(("CONNACK", 0)) if v == 5 else CLOSE)
    # C13: Password flag and payload disagree.
    pre("C13", "password-flag-1-missing", v, conn(v, username="u", connect_flags=0xC2),
        reject(v, MAL, "connect"))
    pre("C13", "password-present-flag-0", v, conn(v, username="u", extra=B.string(b"pw")),
        reject(v, MAL, "connect"))
    pre("C13", "password-flag-1-present", v, conn(v, username="u", password=b"pw"),
        accept(("CONNACK", 0)))
    pre("C13", "password-empty", v, conn(v, username="u", password=b""), accept(("CONNACK", 0)))
    # C14: bytes after the last field the flags describe.
    for _n in (1, 2, 7):
        pre("C14", f"extra-{_n}-bytes", v, conn(v, extra=b"\x00" * _n), reject(v, MAL, "connect"))
    pre("C14", "extra-after-will", v, conn(v, will_topic="w/" + uid(), extra=b"\x00\x00"),
        reject(v, MAL, "connect"))
    pre("C14", "extra-after-password", v, conn(v, username="u", password=b"p", extra=b"\x00"),
        reject(v, MAL, "connect"))
    pre("C14", "no-extra", v, conn(v), accept(("CONNACK", 0)))
    # C15: no Client Identifier at all.
    pre("C15", "client-id-missing", v, conn(v, None), reject(v, MAL, "connect"))
    pre("C15", "client-id-missing-with-username-flag", v,
        conn(v, None, connect_flags=0x82), reject(v, MAL, "connect"))
    pre("C15", "client-id-one-byte", v, conn(v, None, extra=b"\x00"), reject(v, MAL, "connect"))
    pre("C15", "client-id-present", v, conn(v, None, extra=B.string(uid("x"))),
        accept(("CONNACK", 0)))

# C16/C17: zero-length Client Identifier.
pre("C16", "empty-client-id-clean", 4, conn(4, b""), accept(("CONNACK", 0)))
pre("C16", "empty-client-id-clean", 5, conn(5, b""), accept(("CONNACK", 0)))
pre("C17", "empty-client-id-persistent", 4, conn(4, b"", clean=False), connack(0x02))
pre("C17", "empty-client-id-persistent", 5, conn(5, b"", clean=False), accept(("CONNACK", 0)))
pre("C17", "empty-client-id", 3, conn(3, b""), connack(0x02))
pre("C17", "client-id-persistent", 4, conn(4, clean=False), accept(("CONNACK", 0)))

# A refused CONNECT leaves no session behind: its will is never published. The neighbour's
# will is (the client drops the connection without DISCONNECT).
for v in V45:
    for _row, _name, _make, _exp in (
            ("C18", "bad-client-id", lambda w, v=v: conn(v, b"a\x01b", will_topic=w),
             connack(0x85 if v == 5 else 0x02)),
            ("C5", "reserved-flag", lambda w, v=v: conn(v, will_topic=w, connect_flags=0x07),
             reject(v, MAL, "connect")),
            ("C14", "extra-bytes", lambda w, v=v: conn(v, will_topic=w, extra=b"\x00"),
             reject(v, MAL, "connect"))):
        _w = "will/" + uid("pre")
        pre(_row, f"{_name}-will-not-sent", v, _make(_w), _exp, will=False, will_topic=_w)
        _w = "will/" + uid("pre")
        pre(_row, "accepted-then-dropped-will-sent", v, conn(v, will_topic=_w),
            accept(("CONNACK", 0)), will=True, will_topic=_w)
pre("C10", "refused-will-qos-not-sent", 5, conn(5, will_topic="will/c10q", will_qos=2),
    connack(0x9B), listener="policy", will=False, will_topic="will/c10q")
pre("C10", "refused-will-retain-not-sent", 5,
    conn(5, will_topic="will/c10r", will_retain=True), connack(0x9A), listener="policy",
    will=False, will_topic="will/c10r")

# C22: what follows a refused CONNECT is not processed (no SUBACK, no PINGRESP).
_after = sub(4, [("a/b", 0)]) + B.publish("a/b", b"x", qos=1, packet_id=1) + B.pingreq()
pre("C22", "pipelined-after-bad-client-id", 4, conn(4, b"a\x01b") + _after, connack(0x02))
pre("C22", "pipelined-after-refused-level", 4,
    B.connect(uid("c"), level=6) + _after, connack(0x01, fmt=4))
pre("C22", "pipelined-after-malformed", 4, conn(4, connect_flags=0x03) + _after, CLOSE)
_after5 = sub(5, [("a/b", 0)]) + B.publish("a/b", b"x", qos=1, packet_id=1, properties=E) \
    + B.pingreq()
pre("C22", "pipelined-after-bad-client-id", 5, conn(5, b"a\x01b") + _after5, connack(0x85))
pre("C22", "pipelined-after-malformed", 5, conn(5, connect_flags=0x03) + _after5, connack(MAL))
pre("C22", "pipelined-after-auth-method", 5,
    conn(5, properties=B.props(("authentication_method", "SCRAM-SHA-1"))) + _after5,
    connack(0x8C))
pre("C22", "pipelined-after-good-connect", 4, conn(4) + _after,
    accept(("CONNACK", 0), ("SUBACK", (0,)), ("PUBLISH", "a/b", b"x"), ("PUBACK", 0)))


# --- a.3 Strings: every ill-formed UTF-8 class in every string field ------------------------

#: S1/S2: not well-formed UTF-8, or U+0000: malformed in every UTF-8 field.
ILL_FORMED: dict[str, bytes] = {
    "lone-continuation": b"a\x80b",
    "missing-continuation": b"a\xc3b",
    "cut-sequence-at-end": b"a\xe2\x82",
    "overlong-2-byte": b"a\xc0\xafb",
    "overlong-3-byte": b"a\xe0\x80\xafb",
    "overlong-4-byte": b"a\xf0\x80\x80\xafb",
    "surrogate-D800": b"a\xed\xa0\x80b",
    "surrogate-DFFF": b"a\xed\xbf\xbfb",
    "above-10FFFF": b"a\xf4\x90\x80\x80b",
    "lead-F5": b"a\xf5\x80\x80\x80b",
    "byte-FF": b"a\xffb",
    "U+0000": b"a\x00b",
}
#: S3: well-formed but disallowed code points (control characters, non-characters).
DISALLOWED: dict[str, bytes] = {
    "C0-0001": b"a\x01b",
    "C0-001F": b"a\x1fb",
    "DEL-007F": b"a\x7fb",
    "C1-0080": b"a\xc2\x80b",
    "C1-009F": b"a\xc2\x9fb",
    "nonchar-FDD0": b"a\xef\xb7\x90b",
    "nonchar-FFFE": b"a\xef\xbf\xbeb",
    "nonchar-FFFF": b"a\xef\xbf\xbfb",
    "nonchar-1FFFF": b"a\xf0\x9f\xbf\xbfb",
    "nonchar-10FFFF": b"a\xf4\x8f\xbf\xbfb",
}
#: Neighbours: well-formed, allowed, including the edges of the ranges above, S4 and S5.
WELL_FORMED: dict[str, bytes] = {
    "latin-U+00E9": "a\u00e9b".encode(),
    "U+00A0-after-C1": "a\u00a0b".encode(),
    "U+D7FF-before-surrogates": "a\ud7ffb".encode(),
    "U+E000-after-surrogates": "a\ue000b".encode(),
    "U+FFFD": "a\ufffdb".encode(),
    "U+2A6D4-supplementary": "a\U0002a6d4b".encode(),
    "U+10FFFD": "a\U0010fffdb".encode(),
    "BOM-kept": "\ufeffab".encode(),
}


class Field(NamedTuple):
    """A UTF-8 field: where it is (levels, before/after CONNACK), how to build a packet with
    a given value in it, and the reactions to a disallowed and to a valid value."""

    name: str
    levels: tuple[int, ...]
    at: str  # "connect" or "post"
    build: Callable[[int, bytes], bytes]
    disallowed: Callable[[int], Expect]  # the S3 reaction (a policy mqttd chose)
    #: (expect, setup) for a valid value; None: the value is published and must come back.
    valid: Callable[[int, bytes], tuple[Expect, tuple[bytes, ...]]] | None


def _connack_ok(v: int, s: bytes) -> tuple[Expect, tuple[bytes, ...]]:
    return accept(("CONNACK", 0)), ()


def _puback_nobody(v: int, s: bytes) -> tuple[Expect, tuple[bytes, ...]]:
    return accept(("PUBACK", no_sub_ack(v))), ()


def _topic_for(s: bytes) -> bytes:
    """A fresh topic that holds ``s`` as one level (so each case has its own)."""
    return s + b"/" + uid().encode()


FIELDS: list[Field] = [
    Field("client-id", V45, "connect", lambda v, s: conn(v, s + uid().encode()),
          lambda v: connack(0x85 if v == 5 else 0x02), _connack_ok),
    Field("username", V45, "connect", lambda v, s: conn(v, username=s),
          lambda v: accept(("CONNACK", 0)), _connack_ok),
    Field("will-topic", V45, "connect", lambda v, s: conn(v, will_topic=s),
          lambda v: reject(v, MAL, "connect"), _connack_ok),
    Field("topic-name", V45, "post", lambda v, s: pub1(v, s),
          lambda v: reject(v, MAL, "post"), None),
    Field("subscribe-filter", V45, "post", lambda v, s: sub(v, [(s, 0)]),
          lambda v: reject(v, MAL, "post"), lambda v, s: (accept(("SUBACK", (0,))), ())),
    Field("subscribe-second-filter", V45, "post", lambda v, s: sub(v, [("ok/f", 0), (s, 1)]),
          lambda v: reject(v, MAL, "post"), lambda v, s: (accept(("SUBACK", (0, 1))), ())),
    Field("unsubscribe-filter", V45, "post", lambda v, s: unsub(v, [s]),
          lambda v: reject(v, MAL, "post"),
          lambda v, s: (accept(("UNSUBACK", (0,) if v == 5 else ())), (sub(v, [(s, 0)], 9),))),
    Field("connect-user-property-key", (5,), "connect",
          lambda v, s: conn(v, properties=B.props(("user_property", (s, "v")))),
          lambda v: accept(("CONNACK", 0)), _connack_ok),
    Field("connect-user-property-value", (5,), "connect",
          lambda v, s: conn(v, properties=B.props(("user_property", ("k", s)))),
          lambda v: accept(("CONNACK", 0)), _connack_ok),
    Field("will-content-type", (5,), "connect",
          lambda v, s: conn(v, will_topic="w/" + uid(),
                            will_properties=B.props(("content_type", s))),
          lambda v: accept(("CONNACK", 0)), _connack_ok),
    Field("will-response-topic", (5,), "connect",
          lambda v, s: conn(v, will_topic="w/" + uid(),
                            will_properties=B.props(("response_topic", s))),
          lambda v: connack(MAL), _connack_ok),
    Field("will-user-property-value", (5,), "connect",
          lambda v, s: conn(v, will_topic="w/" + uid(),
                            will_properties=B.props(("user_property", ("k", s)))),
          lambda v: accept(("CONNACK", 0)), _connack_ok),
    Field("publish-content-type", (5,), "post",
          lambda v, s: pub1(v, fresh_topic(), properties=B.props(("content_type", s))),
          lambda v: accept(("PUBACK", 0x10)), _puback_nobody),
    Field("publish-response-topic", (5,), "post",
          lambda v, s: pub1(v, fresh_topic(), properties=B.props(("response_topic", s))),
          lambda v: disc(MAL), _puback_nobody),
    Field("publish-user-property-key", (5,), "post",
          lambda v, s: pub1(v, fresh_topic(), properties=B.props(("user_property", (s, "v")))),
          lambda v: accept(("PUBACK", 0x10)), _puback_nobody),
    Field("publish-user-property-value", (5,), "post",
          lambda v, s: pub1(v, fresh_topic(), properties=B.props(("user_property", ("k", s)))),
          lambda v: accept(("PUBACK", 0x10)), _puback_nobody),
    Field("subscribe-user-property-value", (5,), "post",
          lambda v, s: sub(v, [("s1/f", 0)], properties=B.props(("user_property", ("k", s)))),
          lambda v: accept(("SUBACK", (0,))), lambda v, s: (accept(("SUBACK", (0,))), ())),
    Field("puback-reason-string", (5,), "post",
          lambda v, s: B.puback(1, 0, B.props(("reason_string", s))),
          lambda v: accept(), lambda v, s: (accept(), ())),
    Field("disconnect-reason-string", (5,), "post",
          lambda v, s: B.disconnect(0, B.props(("reason_string", s))),
          lambda v: CLOSE, lambda v, s: (CLOSE, ())),
]

for _fld in FIELDS:
    for v in _fld.levels:
        add = pre if _fld.at == "connect" else post
        _is_topic = _fld.name in ("topic-name", "will-topic")
        for _cls, _s in [*ILL_FORMED.items(), *DISALLOWED.items(), *WELL_FORMED.items()]:
            _row = "S1" if _cls in ILL_FORMED else "S3" if _cls in DISALLOWED else "S5"
            if _cls == "U+0000":
                _row = "S2"
            _val = _topic_for(_s) if _is_topic else _s
            if _fld.valid is None and _row == "S5":
                delivered(_row, f"{_fld.name}-{_cls}", v, _val)
                continue
            if _row in ("S1", "S2"):
                _exp = reject(v, MAL, _fld.at)
                if _fld.name == "disconnect-reason-string":
                    _exp = disc(MAL)
                _kw: dict[str, Any] = {}
            elif _row == "S3":
                _exp = _fld.disallowed(v)
                _kw = {}
            else:
                assert _fld.valid is not None
                _exp, _setup = _fld.valid(v, _val)
                _kw = {"setup": _setup} if _setup else {}
            if _fld.name == "disconnect-reason-string":
                _kw["will"] = _row in ("S1", "S2")
                _kw["good"] = _row not in ("S1", "S2")
            add(_row, f"{_fld.name}-{_cls}", v, _fld.build(v, _val), _exp, **_kw)

# S4: a BOM at the start of a topic is part of the name: the subscriber of "ab/..." without
# it gets nothing, the one with it gets the topic back byte for byte.
for v in V45:
    _lvl = uid()
    post("S4", "bom-topic-not-stripped", v, pub1(v, "\ufeffab/" + _lvl),
         accept(("PUBACK", no_sub_ack(v))), setup=(sub(v, [("ab/" + _lvl, 0)], 9),))
    # S6: wildcards in a Topic Name; S7: empty Topic Name (5.0 allows it with a Topic Alias).
    for _name, _t in (("plus", "a/+"), ("hash", "a/#"), ("only-hash", "#"), ("only-plus", "+"),
                      ("plus-in-level", "a+b"), ("hash-in-level", "a#b")):
        post("S6", f"topic-{_name}", v, pub1(v, _t), reject(v, PROTO, "post"))
        post("S6", f"topic-{_name}-qos0", v, pub(v, _t), reject(v, PROTO, "post"))
    post("S6", "topic-dollar-and-slashes", v, pub1(v, "$x//y/" + uid()),
         accept(("PUBACK", no_sub_ack(v))))
    post("S7", "topic-empty", v, pub1(v, ""), reject(v, PROTO, "post"))
    post("S7", "topic-empty-qos0", v, pub(v, ""), reject(v, PROTO, "post"))
    post("S7", "topic-one-slash", v, pub1(v, "/"), OPEN)
    # S8: 65,534 levels: refused cleanly (5.0 PUBACK 0x90 / SUBACK 0x8F; 3.1.1 has no refusal
    # code: positive PUBACK, not delivered; SUBACK 0x80). 128 levels are within the limit.
    _deep = "/" * 65534
    post("S8", "publish-65534-slashes", v, pub1(v, _deep),
         accept(("PUBACK", 0x90 if v == 5 else 0)), setup=(sub(v, [("/#", 0)], 9),))
    post("S8", "subscribe-65534-slashes", v, sub(v, [(_deep, 0)]),
         accept(("SUBACK", (0x8F if v == 5 else 0x80,))))
    _ok = "/".join(["d"] * 128)
    delivered("S8", "publish-128-levels", v, _ok)
    post("S8", "subscribe-128-levels", v, sub(v, [(_ok, 0)]), accept(("SUBACK", (0,))))
    # S9/S10/S12: invalid filters get a failure code in SUBACK (the entry next to it succeeds).
    _bad_code = 0x8F if v == 5 else 0x80
    for _flt in ("a/#/b", "a#", "#/a", "a/b#", "a+", "+a/b", "a/b+", "++", "##", "$share/",
               "$share/g", "$share//t", "$share/g+/t", "$share/g#/t", "$share/ab"):
        _row = "S12" if _flt.startswith("$share") else "S10" if "+" in _flt else "S9"
        post(_row, f"filter-{_flt}", v, sub(v, [("ok/f", 1), (_flt, 0)]),
             accept(("SUBACK", (1, _bad_code))))
    for _flt in ("#", "+", "+/+", "a/+/b", "a/#", "/#", "$share/g/t", "$share/g/#", "$share/g/+/x"):
        _row = "S12" if _flt.startswith("$share") else "S10" if "+" in _flt else "S9"
        post(_row, f"filter-{_flt}", v, sub(v, [("ok/f", 1), (_flt, 0)]),
             accept(("SUBACK", (1, 0))))
    # S11: empty filter, first or later entry, in SUBSCRIBE and UNSUBSCRIBE.
    post("S11", "subscribe-empty-filter", v, sub(v, [("", 0)]), reject(v, MAL, "post"))
    post("S11", "subscribe-empty-second-filter", v, sub(v, [("a", 0), ("", 0)]),
         reject(v, MAL, "post"))
    post("S11", "unsubscribe-empty-filter", v, unsub(v, [""]), reject(v, MAL, "post"))
    post("S11", "unsubscribe-empty-second-filter", v, unsub(v, ["a", ""]),
         reject(v, MAL, "post"))
    post("S11", "subscribe-slash-filter", v, sub(v, [("/", 0)]), accept(("SUBACK", (0,))))
    post("S11", "unsubscribe-slash-filter", v, unsub(v, ["/"]),
         accept(("UNSUBACK", (0x11,) if v == 5 else ())))
    # S14: a client must not publish into $SYS (5.0: 0x87; 3.1.1: positive ack, dropped).
    _sys = "$SYS/wire/" + uid()
    post("S14", "publish-to-SYS", v, pub1(v, _sys),
         accept(("PUBACK", 0x87 if v == 5 else 0)), setup=(sub(v, [(_sys, 0)], 9),))
    delivered("S14", "publish-to-dollar-other", v, "$other/" + uid())


# --- a.4 PUBLISH ------------------------------------------------------------------------------

for v in V45:
    _t = fresh_topic()
    # P1: QoS 3 (with every DUP/RETAIN combination).
    for _f in (0x6, 0x7, 0xE, 0xF):
        post("P1", f"qos3-flags-{_f:x}", v, pub(v, _t, flags=_f, packet_id=1),
             reject(v, MAL, "post"), will=True)  # closed on an error: the will goes out
    # P2: DUP at QoS 0.
    for _f in (0x8, 0x9):
        post("P2", f"dup-qos0-flags-{_f:x}", v, pub(v, _t, flags=_f), reject(v, MAL, "post"))
    # P3: QoS 1/2 with Packet Identifier 0.
    post("P3", "qos1-packet-id-0", v, pub(v, _t, qos=1, packet_id=0), reject(v, PROTO, "post"))
    post("P3", "qos2-packet-id-0", v, pub(v, _t, qos=2, packet_id=0), reject(v, PROTO, "post"))
    post("P3", "qos1-dup-packet-id-0", v, pub(v, _t, qos=1, dup=True, packet_id=0),
         reject(v, PROTO, "post"))
    # P4: QoS > 0 but the packet ends before (or inside) the Packet Identifier.
    post("P4", "qos1-no-packet-id", v, B.publish(_t, b"", qos=1), reject(v, MAL, "post"))
    post("P4", "qos2-half-packet-id", v, B.publish(_t, b"", qos=2, extra=b"\x01"),
         reject(v, MAL, "post"))
    # Neighbours for P1-P4: every legal flag combination is accepted.
    post("P1", "qos1", v, pub(v, _t, qos=1, packet_id=1), accept(("PUBACK", no_sub_ack(v))))
    post("P1", "qos2", v, pub(v, _t, qos=2, packet_id=1), accept(("PUBREC", no_sub_ack(v))))
    post("P2", "qos0", v, pub(v, _t), accept())
    post("P2", "dup-qos1", v, pub(v, _t, qos=1, dup=True, packet_id=1),
         accept(("PUBACK", no_sub_ack(v))))
    post("P2", "dup-qos2", v, pub(v, _t, qos=2, dup=True, packet_id=2),
         accept(("PUBREC", no_sub_ack(v))))
    post("P3", "qos1-packet-id-65535", v, pub(v, _t, qos=1, packet_id=65535),
         accept(("PUBACK", no_sub_ack(v))))
    post("P4", "qos1-empty-payload", v, pub(v, _t, b"", qos=1, packet_id=1),
         accept(("PUBACK", no_sub_ack(v))))
    # Retain with an empty payload (clears, stores nothing).
    post("P2", "retain-qos0-empty", v, pub(v, fresh_topic(), b"", retain=True), accept())
    # P7: the same QoS 2 Packet Identifier again before PUBREL: PUBREC each time, once delivered.
    _t = fresh_topic()
    post("P7", "qos2-resent", v,
         pub(v, _t, b"q2", qos=2, packet_id=7) + pub(v, _t, b"q2", qos=2, dup=True, packet_id=7)
         + pub(v, _t, b"q2", qos=2, packet_id=7) + B.pubrel(7),
         accept(("PUBLISH", _t, b"q2"), ("PUBREC", 0), ("PUBREC", 0), ("PUBREC", 0),
                ("PUBCOMP", 0)), setup=(sub(v, [(_t, 0)], 9),))
    # P9: acknowledgements nobody asked for are ignored (PUBREL: PUBCOMP, 0x92 on 5.0).
    post("P9", "unsolicited-puback", v, B.puback(321), accept())
    post("P9", "unsolicited-pubcomp", v, B.pubcomp(321), accept())
    post("P9", "unsolicited-pubrel", v, B.pubrel(321), accept(("PUBCOMP", 0x92 if v == 5 else 0)))

# P8 (5.0): more QoS 2 messages awaiting PUBREL than the Receive Maximum mqttd announced
# (max_awaiting_rel, 100): the 101st is a DISCONNECT 0x93; 100 are fine.
_t = fresh_topic()
post("P8", "receive-maximum-exceeded", 5,
     b"".join(pub(5, _t, qos=2, packet_id=i) for i in range(1, 102)),
     disc(0x93, after=(("PUBREC", 0x10),) * 100))
post("P8", "receive-maximum-reached", 5,
     b"".join(pub(5, _t, qos=2, packet_id=i) for i in range(1, 101)),
     accept(*(("PUBREC", 0x10),) * 100))
post("P8", "receive-maximum-released-in-time", 5,
     b"".join(pub(5, _t, qos=2, packet_id=i) + B.pubrel(i) for i in range(1, 121)),
     accept(*(("PUBREC", 0x10),) * 120, *(("PUBCOMP", 0),) * 120))


def _pid(objs: tuple[Any, ...]) -> int:
    """The Packet Identifier the broker gave the message it delivered during the setup."""
    return next(o.packet_id for o in objs if type(o).__name__ == "Publish")


# P10: the wrong acknowledgement for the QoS of a message the broker delivered.
for v in V45:
    _t = fresh_topic()
    _q1 = (sub(v, [(_t, 1)], 9), pub1(v, _t, b"q1"))
    post("P10", "pubrec-for-qos1", v, lambda o: B.pubrec(_pid(o)), reject(v, PROTO, "post"),
         setup=_q1)
    post("P10", "pubcomp-for-qos1", v, lambda o: B.pubcomp(_pid(o)), reject(v, PROTO, "post"),
         setup=_q1)
    post("P10", "puback-for-qos1", v, lambda o: B.puback(_pid(o)), accept(), setup=_q1)
    _t = fresh_topic()
    _q2 = (sub(v, [(_t, 2)], 9), pub(v, _t, b"q2", qos=2, packet_id=1))
    post("P10", "puback-for-qos2", v, lambda o: B.puback(_pid(o)), reject(v, PROTO, "post"),
         setup=_q2)
    post("P10", "pubcomp-before-pubrec", v, lambda o: B.pubcomp(_pid(o)),
         reject(v, PROTO, "post"), setup=_q2)
    post("P10", "pubrec-for-qos2", v, lambda o: B.pubrec(_pid(o)), accept(("PUBREL", 0)),
         setup=_q2)
    post("P10", "pubrec-pubcomp-for-qos2", v, lambda o: B.pubrec(_pid(o)) + B.pubcomp(_pid(o)),
         accept(("PUBREL", 0)), setup=_q2)

# Good packets before the bad one in the same read are answered first, then the error.
for v in V45:
    _t = fresh_topic()
    post("F5", "good-publish-then-malformed", v, pub1(v, _t) + b"\xc0\x01\x00",
         disc(MAL, after=(("PUBACK", 0x10),)) if v == 5 else closed_after(("PUBACK", 0)))
    post("F3", "good-publish-then-too-large", v, pub1(v, _t) + b"\x30\xff\xff\xff\x7f",
         disc(0x95, after=(("PUBACK", 0x10),)) if v == 5 else closed_after(("PUBACK", 0)),
         listener="small")
    post("F9", "pingreq-then-connack", v, B.pingreq() + B.connack(0, properties=P(v)),
         disc(PROTO, after=(("PINGRESP",),)) if v == 5 else closed_after(("PINGRESP",)))

# V13 (5.0): a message larger than the client's Maximum Packet Size is not sent to it (the
# QoS 1 flow still completes); the small one after it is.
_t = fresh_topic()
post("V13", "delivery-over-client-maximum-dropped", 5,
     pub1(5, _t, b"B" * 100) + pub(5, _t, b"small", qos=1, packet_id=2),
     accept(("PUBACK", 0), ("PUBLISH", _t, b"small"), ("PUBACK", 0)),
     setup=(sub(5, [(_t, 0)], 9),),
     connect={"properties": B.props(("maximum_packet_size", 64))})

# P5/P6 (5.0): QoS above the Maximum QoS (1) / RETAIN when Retain Available is 0.
post("P5", "qos2-over-maximum", 5, pub(5, fresh_topic(), qos=2, packet_id=1), disc(0x9B),
     listener="policy")
post("P5", "qos1-at-maximum", 5, pub(5, fresh_topic(), qos=1, packet_id=1),
     accept(("PUBACK", 0x10)), listener="policy")
post("P6", "retain-unavailable", 5, pub(5, fresh_topic(), retain=True), disc(0x9A),
     listener="policy")
post("P6", "retain-unavailable-qos1", 5, pub(5, fresh_topic(), qos=1, packet_id=1, retain=True),
     disc(0x9A), listener="policy")
post("P6", "no-retain", 5, pub(5, fresh_topic()), accept(), listener="policy")
# P11 (5.0): reason codes not in the packet's table.
for _name, _pkt in (("puback-ff", B.puback(1, 0xFF)), ("puback-01", B.puback(1, 0x01)),
                    ("pubrec-05", B.pubrec(1, 0x05)), ("pubrel-10", B.pubrel(1, 0x10)),
                    ("pubcomp-80", B.pubcomp(1, 0x80)), ("puback-92", B.puback(1, 0x92))):
    post("P11", f"{_name}", 5, _pkt, disc(PROTO))
for _name, _pkt in (("puback-80", B.puback(1, 0x80)), ("puback-10", B.puback(1, 0x10)),
                    ("pubcomp-92", B.pubcomp(1, 0x92))):
    post("P11", f"{_name}", 5, _pkt, accept())
# P12 (5.0): Payload Format Indicator 1 with a payload that is not UTF-8: PUBACK 0x99.
post("P12", "utf8-indicator-bad-payload", 5,
     pub1(5, fresh_topic(), b"\xff\xfe", properties=B.props(("payload_format_indicator", 1))),
     accept(("PUBACK", 0x99)))
post("P12", "utf8-indicator-good-payload", 5,
     pub1(5, fresh_topic(), "é".encode(), properties=B.props(("payload_format_indicator", 1))),
     accept(("PUBACK", 0x10)))
post("P12", "binary-indicator-bad-payload", 5,
     pub1(5, fresh_topic(), b"\xff\xfe", properties=B.props(("payload_format_indicator", 0))),
     accept(("PUBACK", 0x10)))


# --- a.5 SUBSCRIBE / UNSUBSCRIBE / PINGREQ / DISCONNECT -------------------------------------

for v in V45:
    # U1: SUBSCRIBE without any filter.
    post("U1", "subscribe-no-filter", v, B.packet(B.SUBSCRIBE, 2, B.u16(1) + P(v)),
         reject(v, PROTO, "post"))
    post("U1", "subscribe-one-filter", v, sub(v, [("u1/t", 0)]), accept(("SUBACK", (0,))))
    # U2: a filter without its options byte.
    post("U2", "filter-without-options", v, sub(v, [("u2/t", None)]), reject(v, MAL, "post"))
    post("U2", "second-filter-without-options", v, sub(v, [("u2/a", 0), ("u2/b", None)]),
         reject(v, MAL, "post"))
    post("U2", "two-filters-with-options", v, sub(v, [("u2/a", 0), ("u2/b", 2)]),
         accept(("SUBACK", (0, 2))))
    # U3: requested QoS 3.
    post("U3", "qos3", v, sub(v, [("u3/t", 3)]), reject(v, PROTO, "post"))
    post("U3", "qos3-second-entry", v, sub(v, [("u3/a", 1), ("u3/t", 3)]),
         reject(v, PROTO, "post"))
    for _q in (0, 1, 2):
        post("U3", f"qos{_q}", v, sub(v, [("u3/t", _q)]), accept(("SUBACK", (_q,))))
    # U7: Packet Identifier 0.
    post("U7", "subscribe-packet-id-0", v, sub(v, [("u7/t", 0)], pid=0), reject(v, PROTO, "post"))
    post("U7", "unsubscribe-packet-id-0", v, unsub(v, ["u7/t"], pid=0),
         reject(v, PROTO, "post"))
    post("U7", "subscribe-packet-id-65535", v, sub(v, [("u7/t", 0)], pid=65535),
         accept(("SUBACK", (0,))))
    # U10: UNSUBSCRIBE without any filter.
    post("U10", "unsubscribe-no-filter", v, B.packet(B.UNSUBSCRIBE, 2, B.u16(1) + P(v)),
         reject(v, PROTO, "post"))
    post("U10", "unsubscribe-subscribed", v, unsub(v, ["u10/t"]),
         accept(("UNSUBACK", (0,) if v == 5 else ())), setup=(sub(v, [("u10/t", 0)], 9),))
    # U13: PINGREQ with a body (bad flags: F7).
    post("U13", "pingreq-body-1", v, b"\xc0\x01\x00",
         reject(v, MAL, "post"))
    post("U13", "pingreq-body-4", v, b"\xc0\x04\x00\x00\x00\x00", reject(v, MAL, "post"))
    post("U13", "pingreq", v, b"\xc0\x00", accept())

# U4: reserved Subscription Options bits (3.1.1: bits 2-7; 5.0: bits 6-7).
for _bit in range(2, 8):
    post("U4", f"reserved-bit-{_bit}", 4, sub(4, [("u4/t", 1 | 1 << _bit)]), CLOSE)
for _opts in (0x40, 0x80, 0xC0, 0x41, 0xEE):
    post("U4", f"reserved-bits-{_opts:02x}", 5, sub(5, [("u4/t", _opts)]), disc(MAL))
post("U4", "all-options", 5, sub(5, [("u4/t", B.sub_options(1, True, True, 2))]),
     accept(("SUBACK", (1,))))
post("U4", "qos-only", 4, sub(4, [("u4/t", 2)]), accept(("SUBACK", (2,))))
# U5: Retain Handling 3.
post("U5", "retain-handling-3", 5, sub(5, [("u5/t", B.sub_options(0, retain_handling=3))]),
     disc(PROTO))
post("U5", "retain-handling-3-qos1", 5, sub(5, [("u5/t", 0x31)]), disc(PROTO))
for _rh in (0, 1, 2):
    post("U5", f"retain-handling-{_rh}", 5,
         sub(5, [("u5/t", B.sub_options(0, retain_handling=_rh))]), accept(("SUBACK", (0,))))
# U6: No Local on a shared subscription.
post("U6", "no-local-shared", 5, sub(5, [("$share/g/u6", B.sub_options(0, no_local=True))]),
     disc(PROTO))
post("U6", "no-local-plain", 5, sub(5, [("u6/t", B.sub_options(0, no_local=True))]),
     accept(("SUBACK", (0,))))
post("U6", "shared-without-no-local", 5, sub(5, [("$share/g/u6", 0)]), accept(("SUBACK", (0,))))
# U8: Subscription Identifier 0 / twice.
post("U8", "subscription-id-0", 5,
     sub(5, [("u8/t", 0)], properties=B.props(("subscription_identifier", 0))), disc(PROTO))
post("U8", "subscription-id-twice", 5,
     sub(5, [("u8/t", 0)], properties=B.props(("subscription_identifier", 1),
                                              ("subscription_identifier", 2))), disc(PROTO))
post("U8", "subscription-id-max", 5,
     sub(5, [("u8/t", 0)], properties=B.props(("subscription_identifier", 268435455))),
     accept(("SUBACK", (0,))))
# U9: wildcard / shared subscriptions where the zone does not offer them.
for v in V45:
    post("U9", "wildcard-unsupported", v, sub(v, [("u9/+", 0), ("u9/#", 0), ("u9/t", 0)]),
         accept(("SUBACK", (0xA2, 0xA2, 0) if v == 5 else (0x80, 0x80, 0))), listener="policy")
    post("U9", "shared-unsupported", v, sub(v, [("$share/g/u9", 0)]),
         accept(("SUBACK", (0x9E if v == 5 else 0x80,))), listener="policy")
    post("U9", "qos2-granted-1", v, sub(v, [("u9/t", 2)]), accept(("SUBACK", (1,))),
         listener="policy")
# U14: DISCONNECT with a body 3.1.1 does not have / an unknown reason code: the will is sent.
post("U14", "disconnect-body", 4, b"\xe0\x01\x00", CLOSE, will=True)
post("U14", "disconnect-body-2", 4, b"\xe0\x02\x00\x00", CLOSE, will=True)
for _rc in (0x01, 0x03, 0x05, 0x7F, 0x84, 0xFF):
    post("U14", f"disconnect-reason-{_rc:02x}", 5, B.disconnect(_rc), disc(PROTO), will=True)
post("U14", "disconnect-reason-00", 5, B.disconnect(0), CLOSE, will=False, good=True)
post("U14", "disconnect-reason-00-empty", 5, b"\xe0\x00", CLOSE, will=False, good=True)
post("U14", "disconnect-reason-80", 5, B.disconnect(0x80), CLOSE, good=True)
# U15: Session Expiry set in DISCONNECT after CONNECT said 0.
post("U15", "session-expiry-after-zero", 5,
     B.disconnect(0, B.props(("session_expiry_interval", 30))), disc(PROTO), will=True)
post("U15", "session-expiry-zero-after-zero", 5,
     B.disconnect(0, B.props(("session_expiry_interval", 0))), CLOSE, will=False, good=True)
post("U15", "session-expiry-zero-after-nonzero", 5,
     B.disconnect(0, B.props(("session_expiry_interval", 0))), CLOSE, will=False, good=True,
     connect={"properties": B.props(("session_expiry_interval", 10))})
# U16: DISCONNECT 0x04: close normally but send the will.
post("U16", "disconnect-with-will", 5, B.disconnect(0x04), CLOSE, will=True, good=True)


# --- a.6 MQTT 5.0 properties: each one missing, truncated, duplicated, misplaced, out of range

#: A valid value of each property (by wire type, for those a client never sends).
SAMPLE: dict[str, Any] = {
    "payload_format_indicator": 0, "message_expiry_interval": 60, "content_type": "text/plain",
    "response_topic": "r/t", "correlation_data": b"\x00\x01", "subscription_identifier": 7,
    "session_expiry_interval": 0, "assigned_client_identifier": "id",
    "server_keep_alive": 10, "authentication_method": "SCRAM-SHA-1",
    "authentication_data": b"\x01", "request_problem_information": 1,
    "will_delay_interval": 0, "request_response_information": 0, "response_information": "ri",
    "server_reference": "other:1883", "reason_string": "why", "receive_maximum": 10,
    "topic_alias_maximum": 5, "topic_alias": 1, "maximum_qos": 1, "retain_available": 1,
    "user_property": ("k", "v"), "maximum_packet_size": 100000,
    "wildcard_subscription_available": 1, "subscription_identifier_available": 1,
    "shared_subscription_available": 1,
}


class Home(NamedTuple):
    """A client packet that carries a property block: how to build it around a block, where
    its errors are reported, and how the broker answers it when it is valid."""

    name: str
    ptype: int  # builder packet type (builder.WILL for the Will Properties)
    at: str
    build: Callable[[bytes], bytes]
    ok: Expect


HOMES = [
    Home("connect", B.CONNECT, "connect", lambda b: conn(5, properties=b), accept(("CONNACK", 0))),
    Home("will", B.WILL, "connect",
         lambda b: conn(5, will_topic="w/" + uid(), will_properties=b), accept(("CONNACK", 0))),
    Home("publish", B.PUBLISH, "post", lambda b: pub1(5, fresh_topic(), properties=b),
         accept(("PUBACK", 0x10))),
    Home("subscribe", B.SUBSCRIBE, "post", lambda b: sub(5, [("v/t", 1)], properties=b),
         accept(("SUBACK", (1,)))),
    Home("unsubscribe", B.UNSUBSCRIBE, "post", lambda b: unsub(5, ["v/t"], properties=b),
         accept(("UNSUBACK", (0x11,)))),
    Home("puback", B.PUBACK, "post", lambda b: B.puback(1, 0, b), accept()),
    Home("pubrel", B.PUBREL, "post", lambda b: B.pubrel(1, 0, b), accept(("PUBCOMP", 0x92))),
    Home("disconnect", B.DISCONNECT, "post", lambda b: B.disconnect(0, b), CLOSE),
]

#: A valid property a client may send in CONNECT but that the broker refuses by policy.
_POLICY = {("connect", "authentication_method"): connack(0x8C)}


def _truncations(wt: str, value: Any) -> list[tuple[str, bytes]]:
    """The property value cut short, each as the bytes left after the identifier."""
    full = B.prop_value(wt, value)
    if wt == B.BYTE:
        return []
    if wt == B.VBI:
        return [("vbi-continuation-only", b"\x80")]
    if wt in (B.UTF8, B.BIN):
        return [("length-only", full[:2]), ("length-overrun", B.u16(9) + full[2:])]
    if wt == B.PAIR:
        key = B.string(value[0])
        return [("key-only", key), ("value-length-overrun", key + B.u16(9) + b"v")]
    return [(f"{len(full) - 1}-of-{len(full)}-bytes", full[:-1])]


for _home in HOMES:
    for _pname, (_ident, _wt, _where) in B.PROPERTIES.items():
        _value = SAMPLE[_pname]
        _one = B.prop(_pname, _value)
        _id = f"{_home.name}-{_pname}"
        if _home.ptype not in _where:
            # V2: not allowed in this packet: malformed.
            (pre if _home.at == "connect" else post)(
                "V2", f"{_id}-misplaced", 5, _home.build(B.props(_one)),
                reject(5, MAL, _home.at))
            continue
        add = pre if _home.at == "connect" else post
        _disconnect = _home.name == "disconnect"
        _wkw: dict[str, Any] = {"will": True} if _disconnect else {}
        _okw: dict[str, Any] = {"will": False, "good": True} if _disconnect else {}
        _mal = reject(5, MAL, _home.at)
        ok = _POLICY.get((_home.name, _pname), _home.ok)
        if _pname == "authentication_data":
            # V6: Authentication Data needs an Authentication Method (itself refused: A1).
            add("V6", f"{_id}-without-method", 5, _home.build(B.props(_one)),
                reject(5, PROTO, _home.at), **_wkw)
            add("V6", f"{_id}-with-method", 5,
                _home.build(B.props(("authentication_method", "m"), _one)), connack(0x8C),
                good=True)  # parsed and understood: refused only as an unknown method
            ok = connack(0x8C)
            _one = B.prop("authentication_method", "m") + _one
        elif _home.name == "publish" and _pname == "subscription_identifier":
            # V10: a Subscription Identifier from a client is a protocol error.
            add("V10", f"{_id}", 5, _home.build(B.props(_one)), disc(PROTO))
            add("V10", f"{_id}-absent", 5, _home.build(E), _home.ok)
            continue
        elif _home.name == "publish" and _pname == "topic_alias":
            # Topic Alias 1 (within the maximum 65535): the neighbour of V7 below.
            add("V7", f"{_id}-1", 5, _home.build(B.props(_one)), ok)
        else:
            add("V3", f"{_id}-valid", 5, _home.build(B.props(_one)), ok, **_okw)
        # V3: the value is missing (the identifier ends the block) or cut short.
        add("V3", f"{_id}-value-missing", 5, _home.build(B.props(_one[:-len(
            B.prop_value(_wt, _value))])), _mal, **_wkw)
        for _tname, _cut in _truncations(_wt, _value):
            add("V3", f"{_id}-value-{_tname}", 5,
                _home.build(B.props(_one[:-len(B.prop_value(_wt, _value))] + _cut)), _mal,
                **_wkw)
        # V4: twice (only User Property may repeat in a client packet).
        if _pname == "user_property":
            add("V4", f"{_id}-twice-allowed", 5, _home.build(B.props(_one, _one)), ok, **_okw)
        else:
            add("V4", f"{_id}-twice", 5, _home.build(B.props(_one, B.prop(_pname, _value))),
                reject(5, PROTO, _home.at), **_wkw)

# V5: out-of-range values (protocol errors), next to the edges that are in range.
for _home_name, _pname, _bad, _goods in (
        ("connect", "request_problem_information", [2, 0xFF], [0, 1]),
        ("connect", "request_response_information", [2, 0x80], [0, 1]),
        ("connect", "receive_maximum", [0], [1, 65535]),
        ("connect", "maximum_packet_size", [0], [1024, 0xFFFFFFFF]),
        ("will", "payload_format_indicator", [2, 0xFF], [1]),
        ("publish", "payload_format_indicator", [2, 0xFF], [1]),
        ("subscribe", "subscription_identifier", [0], [1])):
    _home = next(h for h in HOMES if h.name == _home_name)
    add = pre if _home.at == "connect" else post
    for _num in _bad:
        add("V5", f"{_home_name}-{_pname}-{_num}", 5, _home.build(B.props((_pname, _num))),
            reject(5, PROTO, _home.at))
    for _num in _goods:
        add("V5", f"{_home_name}-{_pname}-{_num}", 5, _home.build(B.props((_pname, _num))),
            _home.ok)

# V1: property identifiers that do not exist.
for _ident in (0x00, 0x04, 0x05, 0x06, 0x07, 0x0A, 0x0C, 0x10, 0x14, 0x1B, 0x1D, 0x1E, 0x20,
               0x2B, 0x7F):
    _raw = bytes([_ident, 0x00, 0x00, 0x00, 0x00])
    pre("V1", f"connect-identifier-{_ident:02x}", 5, conn(5, properties=B.props(_raw)),
        connack(MAL))
    post("V1", f"publish-identifier-{_ident:02x}", 5,
         pub1(5, fresh_topic(), properties=B.props(_raw)), disc(MAL))
post("V1", "publish-identifier-80-multibyte", 5,
     pub1(5, fresh_topic(), properties=B.props(b"\x80\x01\x00")), disc(MAL))
post("V1", "publish-known-identifier-02", 5,
     pub1(5, fresh_topic(), properties=B.props(b"\x02\x00\x00\x00\x00")), accept(("PUBACK", 0x10)))

# V7: Topic Alias 0, or above the maximum (0 on the policy listener: any alias).
post("V7", "topic-alias-0", 5, pub1(5, fresh_topic(), properties=B.props(("topic_alias", 0))),
     disc(0x94))
post("V7", "topic-alias-0-empty-topic", 5, pub1(5, "", properties=B.props(("topic_alias", 0))),
     disc(0x94))
post("V7", "topic-alias-over-maximum-0", 5,
     pub1(5, fresh_topic(), properties=B.props(("topic_alias", 1))), disc(0x94),
     listener="policy")
post("V7", "topic-alias-65535", 5,
     pub1(5, fresh_topic(), properties=B.props(("topic_alias", 65535))), accept(("PUBACK", 0x10)))
# V8: Topic Alias with an empty Topic Name and no mapping; the neighbour uses a mapping.
post("V8", "alias-unknown-empty-topic", 5,
     pub1(5, "", properties=B.props(("topic_alias", 5))), disc(PROTO))
_t = fresh_topic()
post("V8", "alias-mapped-then-used", 5,
     pub(5, _t, b"first", properties=B.props(("topic_alias", 5)))
     + pub1(5, "", b"second", properties=B.props(("topic_alias", 5))),
     accept(("PUBLISH", _t, b"first"), ("PUBLISH", _t, b"second"), ("PUBACK", 0)),
     setup=(sub(5, [(_t, 0)], 9),))
# V11: Response Topic with wildcards or empty (protocol error), in PUBLISH and in the will.
for _rt in ("r/+", "r/#", ""):
    post("V11", f"publish-response-topic-{_rt or 'empty'}", 5,
         pub1(5, fresh_topic(), properties=B.props(("response_topic", _rt))), disc(PROTO))
    pre("V11", f"will-response-topic-{_rt or 'empty'}", 5,
        conn(5, will_topic="w/x", will_properties=B.props(("response_topic", _rt))),
        connack(PROTO))
post("V11", "publish-response-topic-plain", 5,
     pub1(5, fresh_topic(), properties=B.props(("response_topic", "r/x"))),
     accept(("PUBACK", 0x10)))
# V12: many User Properties (within the packet size) are accepted.
post("V12", "publish-2000-user-properties", 5,
     pub1(5, fresh_topic(), properties=B.props(*[("user_property", ("k", "v"))] * 2000)),
     accept(("PUBACK", 0x10)))

# A1: an Authentication Method mqttd does not support; A2/A3: AUTH without one started.
pre("A1", "unsupported-method", 5,
    conn(5, properties=B.props(("authentication_method", "SCRAM-SHA-1"))), connack(0x8C))
pre("A1", "no-method", 5, conn(5), accept(("CONNACK", 0)))
post("A2", "auth-short-form", 5, b"\xf0\x00", disc(PROTO))
post("A2", "auth-continue", 5, B.auth(0x18, B.props(("authentication_method", "m"))),
     disc(PROTO))
post("A2", "auth-reauthenticate", 5, B.auth(0x19, B.props(("authentication_method", "m"))),
     disc(PROTO))
post("A3", "auth-reason-05", 5, B.auth(0x05, E), disc(PROTO))
post("A3", "auth-data-without-method", 5, B.auth(0x18, B.props(("authentication_data", b"x"))),
     disc(PROTO))
post("A2", "pingreq-instead-of-auth", 5, B.pingreq(), accept())

# v3.1 (MQIsdp) shares the 3.1.1 reactions: a few rows at level 3.
post("P1", "qos3", 3, pub(3, "a/b", flags=0x6, packet_id=1), CLOSE)
post("P3", "qos1-packet-id-0", 3, pub(3, "a/b", qos=1, packet_id=0), CLOSE)
post("P1", "qos1", 3, pub(3, fresh_topic(), qos=1, packet_id=1), accept(("PUBACK", 0)))
post("U3", "qos3", 3, sub(3, [("a/b", 3)]), CLOSE)
post("U3", "qos2", 3, sub(3, [("a/b", 2)]), accept(("SUBACK", (2,))))
post("F6", "pingreq-long", 3, B.pingreq(extra=b"\x00"), CLOSE)
post("F6", "pingreq", 3, B.pingreq(), accept())
post("S1", "topic-name-surrogate", 3, pub1(3, b"a\xed\xa0\x80"), CLOSE)
delivered("S1", "topic-name-U+2A6D4", 3, "a/\U0002a6d4/" + uid())

_ids_seen = [c.id for c in CASES]
assert len(set(_ids_seen)) == len(_ids_seen), "duplicate case ids"


# --- the broker, the observer, the runner -----------------------------------------------------

CONFIG = """
[zones.small]
max_packet_size = 1024

[zones.policy]
max_qos_allowed = 1
retain_available = false
max_topic_alias = 0
wildcard_subscription = false
shared_subscription = false

[zones.slow]
idle_timeout = "1s"

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.small]
bind = "127.0.0.1"
port = 0
zone = "small"

[listeners.policy]
bind = "127.0.0.1"
port = 0
zone = "policy"

[listeners.slow]
bind = "127.0.0.1"
port = 0
zone = "slow"
"""


def assert_log_clean(broker: BrokerProcess) -> None:
    log = broker.log()
    assert "Traceback" not in log, "the broker logged a traceback:\n" + log[-20000:]


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    """One mqttd process for the module, listening on every zone's listener."""
    proc = BrokerProcess(CONFIG)  # returns once every configured listener listens
    try:
        yield proc
        assert proc.proc.poll() is None, f"mqttd died:\n{proc.log()[-20000:]}"
        assert_log_clean(proc)
    finally:
        proc.stop()
    assert_log_clean(proc)


class Observer:
    """A well-behaved paho-mqtt client subscribed to ``iso/#`` and ``will/#`` the whole time."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wire-observer",
                             protocol=mqtt.MQTTv311)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("the observer could not subscribe")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        client.subscribe([("iso/#", 1), ("will/#", 1)])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self.messages.append((message.topic, message.payload))
            self._cond.notify_all()

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1

    def wait_for(self, topic: str, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(t == topic for t, _ in self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def seen(self, topic: str) -> bool:
        with self._cond:
            return any(t == topic for t, _ in self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def observer(broker: BrokerProcess) -> Iterator[Observer]:
    obs = Observer(broker.ports["default"])
    yield obs
    obs.stop()


def publish(port: int, topic: str, payload: bytes = b"ping") -> None:
    """Publish one QoS 1 message from a fresh, well-behaved raw client."""
    with raw_client(port, 4) as c:
        r = c.handshake(B.connect(uid("pub"), level=4))
        assert r.packets == (("CONNACK", 0),), r.describe()
        c.try_send(B.publish(topic, payload, qos=1, packet_id=1))
        r = c.sync()
        assert ("PUBACK", 0) in r.packets and r.end == W.OPEN, r.describe()
        c.try_send(B.disconnect())
        c.read(timeout=1.0)


def assert_isolated(broker: BrokerProcess, observer: Observer, tag: str) -> None:
    """The good client still gets what is published, and was never disconnected."""
    topic = f"iso/{tag}/{uid()}"
    publish(broker.ports["default"], topic)
    assert observer.wait_for(topic), f"the observer did not receive {topic}"
    assert observer.disconnects == 0, "the observer was disconnected"


def check(case: Case, wire: bytes, r: W.Reaction) -> str | None:
    """None if the reaction is the expected one, else what went wrong."""
    exp = case.expect
    got = r.packets
    def same(a: Any, b: Any) -> bool:
        return sorted(a, key=repr) == sorted(b, key=repr)

    if exp.kind == "close":
        ok = same(got, exp.replies) and r.end == W.CLOSED
    elif exp.kind in ("connack", "disconnect"):
        name = "CONNACK" if exp.kind == "connack" else "DISCONNECT"
        ok = (len(got) >= 1 and got[-1][0] == name and got[-1][1] in exp.codes
              and same(got[:-1], exp.replies) and r.end == W.CLOSED)
    elif exp.kind == "accept":
        ok = same(got, exp.replies) and r.end == W.OPEN
    else:
        ok = r.end == W.OPEN and not any(p[0] in ("DISCONNECT", "CONNACK", "UNPARSEABLE")
                                          for p in got)
    if ok:
        return None
    shown = wire if len(wire) <= 160 else wire[:160] + b"..."
    return (f"{case.id}: sent {shown.hex(' ')} ({len(wire)} bytes)\n"
            f"  expected: {exp.describe()[:400]}\n  got:      {r.describe()[:600]}")


def run_case(broker: BrokerProcess, observer: Observer, case: Case) -> None:
    port = broker.ports[case.listener]
    level = case.expect.fmt or case.v or 4
    will_topic = case.will_topic
    with raw_client(port, level) as c:
        if not case.pre:
            cid = uid("w")
            kw = dict(case.connect)
            if case.will is not None:
                will_topic = f"will/{cid}"
                kw.update(will_topic=will_topic, will_payload=b"gone")
            r = c.handshake(B.connect(cid, level=case.v, **kw))
            assert r.packets == (("CONNACK", 0),) and r.end == W.OPEN, \
                f"{case.id}: the good CONNECT was not accepted: {r.describe()}"
        replies: tuple[Any, ...] = ()
        if case.setup:
            for pkt in case.setup:
                c.try_send(pkt)
                r = c.sync()
                assert r.end == W.OPEN and not any(p[0] == "DISCONNECT" for p in r.packets), \
                    f"{case.id}: setup {pkt[:40].hex(' ')} failed: {r.describe()}"
                replies += r.objects
        wire = case.wire(replies) if callable(case.wire) else case.wire
        accepted = case.expect.kind in ("accept", "open")
        data = wire + (W.PINGREQ if accepted else b"")
        cuts = [0, *case.split, len(data)]
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            if i:
                time.sleep(0.02)
            c.try_send(data[a:b])
        r = c.read(until=(lambda p: type(p).__name__ == "Pingresp") if accepted else None,
                   timeout=case.timeout)
    problem = check(case, wire, r)
    assert problem is None, problem
    if case.will is not None:
        assert will_topic is not None
        if case.will:
            assert observer.wait_for(will_topic), f"{case.id}: the will was not published"
        else:
            # Anything published after the close arrives after the will would have.
            marker = f"iso/marker/{uid()}"
            publish(broker.ports["default"], marker)
            assert observer.wait_for(marker), "the observer lost the marker"
            assert not observer.seen(will_topic), f"{case.id}: the will was published"


# --- the tests --------------------------------------------------------------------------------

def test_isolation_at_start(broker: BrokerProcess, observer: Observer) -> None:
    assert_isolated(broker, observer, "start")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reaction(broker: BrokerProcess, observer: Observer, case: Case) -> None:
    run_case(broker, observer, case)


def test_topic_alias_does_not_outlive_its_connection(broker: BrokerProcess) -> None:
    """V9: an alias mapped on one connection means nothing on the next one (same client id)."""
    cid, topic = uid("ta"), fresh_topic()
    port = broker.ports["default"]
    with raw_client(port, 5) as c:
        assert c.handshake(B.connect(cid, level=5)).packets == (("CONNACK", 0),)
        c.try_send(pub(5, topic, properties=B.props(("topic_alias", 3))))
        assert c.sync().end == W.OPEN
        c.try_send(B.disconnect(0))
        assert c.read().end == W.CLOSED
    with raw_client(port, 5) as c:
        assert c.handshake(B.connect(cid, level=5)).packets == (("CONNACK", 0),)
        c.try_send(pub1(5, "", properties=B.props(("topic_alias", 3))))
        r = c.read()
        assert r.packets == (("DISCONNECT", PROTO),) and r.end == W.CLOSED, r.describe()


#: Rows whose good neighbours are filed under another row.
NEIGHBOUR_ROWS = {"S1": "S5", "S2": "S5", "S3": "S5", "V2": "V3", "A3": "A2"}


def test_every_rejection_has_an_accepted_neighbour() -> None:
    good_rows = {c.row for c in CASES if c.good}
    bad_rows = {c.row for c in CASES if not c.good}
    missing = sorted(r for r in bad_rows if NEIGHBOUR_ROWS.get(r, r) not in good_rows)
    assert not missing, f"rows without an accepted neighbour: {missing}"
    assert len(CASES) >= 300


def test_isolation_during_a_burst(broker: BrokerProcess, observer: Observer) -> None:
    """Many bad clients at once (CONNECT and the bad packet pipelined), with good traffic
    in between: every bad client gets its reaction, the good client keeps receiving."""
    burst = [c for c in CASES if not c.pre and not c.good and c.listener == "default"
             and not c.setup and not c.connect and c.will is None and not callable(c.wire)
             and c.timeout == TIMEOUT and not c.split]
    burst = burst[:: max(1, len(burst) // 60)]
    clients = []
    try:
        for i, case in enumerate(burst):
            assert isinstance(case.wire, bytes)
            c = raw_client(broker.ports["default"], case.v)
            clients.append(c)
            c.try_send(B.connect(uid("b"), level=case.v) + case.wire)
            if i % 10 == 0:
                publish(broker.ports["default"], f"iso/burst/{i}")
        problems = []
        for case, c in zip(burst, clients, strict=True):
            assert isinstance(case.wire, bytes)
            r = c.read()
            assert r.packets[:1] == (("CONNACK", 0),), f"{case.id}: {r.describe()}"
            problem = check(case, case.wire, r._replace(packets=r.packets[1:]))
            if problem:
                problems.append(problem)
        assert not problems, "\n".join(problems)
    finally:
        for c in clients:
            c.close()
    for i in range(0, len(burst), 10):
        assert observer.wait_for(f"iso/burst/{i}"), f"iso/burst/{i} was not received"
    assert_isolated(broker, observer, "after-burst")


def test_isolation_at_end(broker: BrokerProcess, observer: Observer) -> None:
    assert_isolated(broker, observer, "end")
    assert broker.proc.poll() is None, "mqttd died"
    assert_log_clean(broker)
