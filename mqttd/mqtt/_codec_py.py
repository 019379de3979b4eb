"""Pure-Python MQTT codec: the reference implementation (EMQX's emqx_frame).

``mqttd/_speedups/_codec.pyx`` is the compiled twin: same API, same packets,
same errors with the same reason codes and messages on the same bytes. Keep
the order of checks identical in both; the tests compare them on arbitrary
bytes.

Parsing is incremental: :meth:`ParserPy.feed` takes whatever a read returned
and gives back every complete packet; the maximum packet size is enforced
from the fixed header alone, before the body is buffered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import properties as P, reasons as R
from .errors import (
    MALFORMED_PACKET,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    PacketError,
)
from .packets import (
    PACKET_NAMES,
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
from .topics import SHARE_PREFIX, has_disallowed_chars

#: Largest packet MQTT can express: 1 type byte + 4 length bytes + 268,435,455.
MAX_PACKET_SIZE = 268_435_460
_MAX_VARINT = 268_435_455

# Fixed-header flags each packet type must carry; PUBLISH (3) has its own rules.
_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)

#: A SUBSCRIBE whose filter entries are longer than this is returned undecoded
#: (:attr:`Subscribe.rest`; about 2,000 typical filters, ~1 ms of decoding).
SUBSCRIBE_LAZY_BYTES = 65536

_ACK_CODES = (None, None, None, None, R.PUBACK, R.PUBREC, R.PUBREL, R.PUBCOMP)


def _malformed(msg: str) -> PacketError:
    return PacketError(MALFORMED_PACKET, msg)


def _protocol(msg: str) -> PacketError:
    return PacketError(PROTOCOL_ERROR, msg)


class _Reader:
    """Cursor over one packet body; every read past ``end`` is a malformed packet."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | bytearray, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def need(self, n: int) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise _malformed("packet too short")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.data[self.need(1)]

    def u16(self) -> int:
        p = self.need(2)
        return (self.data[p] << 8) | self.data[p + 1]

    def u32(self) -> int:
        p = self.need(4)
        return int.from_bytes(self.data[p:p + 4], "big")

    def varint(self) -> int:
        value, shift, count = 0, 0, 0
        while True:
            b = self.u8()
            count += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and count > 1:
                    raise _malformed("variable byte integer not minimally encoded")
                return value
            if count == 4:
                raise _malformed("variable byte integer longer than 4 bytes")
            shift += 7

    def binary(self) -> bytes:
        n = self.u16()
        p = self.need(n)
        return bytes(self.data[p:p + n])

    def utf8(self) -> str:
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("invalid UTF-8 string") from None
        if "\x00" in s:
            raise _malformed("string contains U+0000")
        return s

    def topic(self) -> str:
        """A topic name or filter: a UTF-8 string without disallowed characters."""
        s = self.utf8()
        if has_disallowed_chars(s):
            raise _malformed("topic contains a disallowed character")
        return s

    def remaining(self) -> int:
        return self.end - self.pos

    def rest(self) -> bytes:
        data = bytes(self.data[self.pos:self.end])
        self.pos = self.end
        return data

    def done(self) -> None:
        if self.pos != self.end:
            raise _malformed("unexpected bytes after the end of the packet")


def _properties(r: _Reader, where: int) -> dict[str, Any]:
    """Read a property block allowed in packet type ``where`` (or ``P.WILL``)."""
    length = r.varint()
    if length > r.remaining():
        raise _malformed("property length exceeds the packet")
    props: dict[str, Any] = {}
    if not length:
        return props
    outer_end = r.end
    r.end = r.pos + length
    while r.pos < r.end:
        ident = r.u8()
        prop = P.BY_ID.get(ident)
        if prop is None:
            raise _malformed("unknown property 0x%02X" % ident)
        name = prop.name
        if where not in prop.packets:
            raise _malformed("property %s not allowed in %s" % (name, _where_name(where)))
        wt = prop.wire_type
        if wt == P.BYTE:
            value: Any = r.u8()
        elif wt == P.TWO_BYTE_INT:
            value = r.u16()
        elif wt == P.FOUR_BYTE_INT:
            value = r.u32()
        elif wt == P.VARINT:
            value = r.varint()
        elif wt == P.UTF8:
            value = r.utf8()
        elif wt == P.BINARY:
            value = r.binary()
        else:
            value = (r.utf8(), r.utf8())
        if name in P.BOOLEAN and value > 1:
            raise _protocol("invalid value %d for property %s" % (value, name))
        if name in P.NONZERO and value == 0:
            raise _protocol("property %s must not be 0" % name)
        if name == "user_property" or (name == "subscription_identifier" and where == P.PUBLISH):
            props.setdefault(name, []).append(value)
        elif name in props:
            raise _protocol("duplicate property %s" % name)
        elif name == "subscription_identifier":
            props[name] = [value]
        else:
            props[name] = value
    r.end = outer_end
    return props


def _where_name(where: int) -> str:
    return "Will Properties" if where == P.WILL else PACKET_NAMES[where]


def _check_topic_name(topic: str) -> None:
    if "+" in topic or "#" in topic:
        raise _protocol("topic name contains a wildcard")


def _check_response_topic(props: dict[str, Any]) -> None:
    topic = props.get("response_topic")
    if topic is not None:
        if not topic:
            raise _protocol("empty response topic")
        if has_disallowed_chars(topic):
            raise _malformed("topic contains a disallowed character")
        _check_topic_name(topic)


def _check_auth(props: dict[str, Any]) -> None:
    if "authentication_data" in props and "authentication_method" not in props:
        raise _protocol("authentication data without an authentication method")


# --- packet bodies -----------------------------------------------------------------------

def _connect(parser: ParserPy, r: _Reader, flags: int) -> Connect:
    name_raw = r.binary()
    level = r.u8()
    if name_raw == b"MQTT":
        if level != 4 and level != 5:
            raise PacketError(UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol level %d" % level)
        name = "MQTT"
    elif name_raw == b"MQIsdp":
        if level != 3:
            raise PacketError(UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol level %d" % level)
        name = "MQIsdp"
    else:
        raise PacketError(UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol name")
    # From here on the connection knows which CONNACK format the client reads.
    parser.version = level
    cflags = r.u8()
    if cflags & 0x01:
        raise _malformed("reserved connect flag set")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    has_password = cflags & 0x40
    has_username = cflags & 0x80
    if will_qos == 3:
        raise _malformed("will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise _malformed("will QoS or retain set without a will")
    if level != 5 and has_password and not has_username:
        raise _malformed("password flag set without username flag")
    keepalive = r.u16()
    props = _properties(r, P.CONNECT) if level == 5 else {}
    client_id = r.utf8()
    will = None
    if will_flag:
        will_props = _properties(r, P.WILL) if level == 5 else {}
        will_topic = r.topic()
        if not will_topic:
            raise _protocol("empty will topic")
        _check_topic_name(will_topic)
        _check_response_topic(will_props)
        will = Will(will_topic, r.binary(), will_qos, will_retain, will_props)
    username = r.utf8() if has_username else None
    password = r.binary() if has_password else None
    r.done()
    _check_auth(props)
    return Connect(name, level, bool(cflags & 0x02), keepalive, client_id, will, username,
                   password, props)


def _connack(parser: ParserPy, r: _Reader, flags: int) -> Connack:
    ack_flags = r.u8()
    if ack_flags & 0xFE:
        raise _malformed("reserved CONNACK flag set")
    code = r.u8()
    if parser.version == 5:
        props = _properties(r, P.CONNACK)
        valid = R.CONNACK_V5
    else:
        props = {}
        valid = R.CONNACK_V3
    r.done()
    if code not in valid:
        raise _protocol("invalid CONNACK reason code 0x%02X" % code)
    if ack_flags and code:
        raise _protocol("session present with a failure reason code")
    return Connack(bool(ack_flags), code, props)


def _publish(parser: ParserPy, r: _Reader, flags: int) -> Publish:
    qos = (flags >> 1) & 0x03
    topic = r.topic()
    _check_topic_name(topic)
    packet_id = 0
    if qos:
        packet_id = r.u16()
        if not packet_id:
            raise _protocol("packet identifier 0")
    if parser.version == 5:
        props = _properties(r, P.PUBLISH)
        if not topic and "topic_alias" not in props:
            raise _protocol("empty topic name without a topic alias")
        _check_response_topic(props)
    else:
        props = {}
        if not topic:
            raise _protocol("empty topic name")
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, props)


def _ack(parser: ParserPy, r: _Reader, ptype: int) -> tuple[int, int, dict[str, Any]]:
    packet_id = r.u16()
    if not packet_id:
        raise _protocol("packet identifier 0")
    code = 0
    props: dict[str, Any] = {}
    if parser.version == 5 and r.remaining():
        code = r.u8()
        if r.remaining():
            props = _properties(r, ptype)
        allowed = _ACK_CODES[ptype]
        assert allowed is not None  # every ack type has its table
        if code not in allowed:
            raise _protocol("invalid %s reason code 0x%02X" % (PACKET_NAMES[ptype], code))
    r.done()
    return packet_id, code, props


def _puback(parser: ParserPy, r: _Reader, flags: int) -> Puback:
    return Puback(*_ack(parser, r, 4))


def _pubrec(parser: ParserPy, r: _Reader, flags: int) -> Pubrec:
    return Pubrec(*_ack(parser, r, 5))


def _pubrel(parser: ParserPy, r: _Reader, flags: int) -> Pubrel:
    return Pubrel(*_ack(parser, r, 6))


def _pubcomp(parser: ParserPy, r: _Reader, flags: int) -> Pubcomp:
    return Pubcomp(*_ack(parser, r, 7))


def _subscribe(parser: ParserPy, r: _Reader, flags: int) -> Subscribe:
    packet_id = r.u16()
    if not packet_id:
        raise _protocol("packet identifier 0")
    v5 = parser.version == 5
    props = _properties(r, P.SUBSCRIBE) if v5 else {}
    topics: list[tuple[str, SubOpts]] = []
    if r.remaining() > SUBSCRIBE_LAZY_BYTES:
        # Decoding 100,000 filters at once stalls the loop ~50 ms: the channel decodes
        # them a slice per turn (decode_filters), before applying any.
        return Subscribe(packet_id, topics, props, r.rest())
    _filters(r, v5, topics, -1)
    if not topics:
        raise _protocol("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, topics, props)


def _filters(r: _Reader, v5: bool, topics: list[tuple[str, SubOpts]], count: int) -> None:
    """Decode SUBSCRIBE entries into ``topics`` until the end, or ``count`` of them (>= 0)."""
    while r.remaining() and count:
        count -= 1
        topic_filter = r.topic()
        if not topic_filter:
            raise _malformed("empty topic filter")
        opts = r.u8()
        if opts & (0xC0 if v5 else 0xFC):
            raise _malformed("reserved subscription option bits set")
        qos = opts & 0x03
        if qos == 3:
            raise _protocol("subscription QoS 3")
        if v5:
            retain_handling = (opts >> 4) & 0x03
            if retain_handling == 3:
                raise _protocol("retain handling 3")
            no_local = bool(opts & 0x04)
            if no_local and topic_filter.startswith(SHARE_PREFIX):
                raise _protocol("no local on a shared subscription")
            sub = SubOpts(qos, no_local, bool(opts & 0x08), retain_handling)
        else:
            sub = SubOpts(qos)
        topics.append((topic_filter, sub))


def decode_filters(data: bytes, pos: int, version: int, count: int
                   ) -> tuple[list[tuple[str, SubOpts]], int]:
    """Up to ``count`` SUBSCRIBE entries of ``data`` (a :attr:`Subscribe.rest`) from ``pos``,
    and the position after them (``len(data)`` at the end). Raises the :class:`PacketError`
    the parser would have raised for a bad entry."""
    if type(data) is not bytes:
        raise TypeError("data must be bytes")
    if count < 0 or pos < 0 or pos > len(data):
        raise ValueError("bad position or count")
    r = _Reader(data, pos, len(data))
    topics: list[tuple[str, SubOpts]] = []
    _filters(r, version == 5, topics, count)
    return topics, r.pos


def _suback(parser: ParserPy, r: _Reader, flags: int) -> Suback:
    packet_id = r.u16()
    if not packet_id:
        raise _protocol("packet identifier 0")
    if parser.version == 5:
        props = _properties(r, P.SUBACK)
        valid = R.SUBACK_V5
    else:
        props = {}
        valid = R.SUBACK_V3
    codes = list(r.rest())
    if not codes:
        raise _protocol("SUBACK without reason codes")
    for code in codes:
        if code not in valid:
            raise _protocol("invalid SUBACK reason code 0x%02X" % code)
    return Suback(packet_id, codes, props)


def _unsubscribe(parser: ParserPy, r: _Reader, flags: int) -> Unsubscribe:
    packet_id = r.u16()
    if not packet_id:
        raise _protocol("packet identifier 0")
    props = _properties(r, P.UNSUBSCRIBE) if parser.version == 5 else {}
    topics = []
    while r.remaining():
        topic_filter = r.topic()
        if not topic_filter:
            raise _malformed("empty topic filter")
        topics.append(topic_filter)
    if not topics:
        raise _protocol("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, topics, props)


def _unsuback(parser: ParserPy, r: _Reader, flags: int) -> Unsuback:
    packet_id = r.u16()
    if not packet_id:
        raise _protocol("packet identifier 0")
    if parser.version != 5:
        r.done()
        return Unsuback(packet_id, [], {})
    props = _properties(r, P.UNSUBACK)
    codes = list(r.rest())
    if not codes:
        raise _protocol("UNSUBACK without reason codes")
    for code in codes:
        if code not in R.UNSUBACK:
            raise _protocol("invalid UNSUBACK reason code 0x%02X" % code)
    return Unsuback(packet_id, codes, props)


def _pingreq(parser: ParserPy, r: _Reader, flags: int) -> Pingreq:
    r.done()
    return Pingreq()


def _pingresp(parser: ParserPy, r: _Reader, flags: int) -> Pingresp:
    r.done()
    return Pingresp()


def _reason_and_props(parser: ParserPy, r: _Reader, ptype: int,
                      valid: frozenset[int]) -> tuple[int, dict[str, Any]]:
    code = 0
    props: dict[str, Any] = {}
    if parser.version == 5 and r.remaining():
        code = r.u8()
        if r.remaining() or ptype == 15:  # AUTH with a reason code always has properties
            props = _properties(r, ptype)
    r.done()
    if code not in valid:
        raise _protocol("invalid %s reason code 0x%02X" % (PACKET_NAMES[ptype], code))
    return code, props


def _disconnect(parser: ParserPy, r: _Reader, flags: int) -> Disconnect:
    return Disconnect(*_reason_and_props(parser, r, 14, R.DISCONNECT))


def _auth(parser: ParserPy, r: _Reader, flags: int) -> Auth:
    code, props = _reason_and_props(parser, r, 15, R.AUTH)
    _check_auth(props)
    return Auth(code, props)


_DECODERS: tuple[Callable[[ParserPy, _Reader, int], Any] | None, ...] = (
    None, _connect, _connack, _publish, _puback, _pubrec, _pubrel, _pubcomp, _subscribe,
    _suback, _unsubscribe, _unsuback, _pingreq, _pingresp, _disconnect, _auth,
)


class ParserPy:
    """Incremental MQTT parser.

    ``version`` is the protocol level used for packets other than CONNECT (0
    until known, parsed as 3.1.1); parsing a CONNECT sets it. ``max_packet_size``
    counts the whole packet, fixed header included.
    """

    __slots__ = ("_buf", "max_packet_size", "version")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE, version: int = 0) -> None:
        self._buf = bytearray()
        self.max_packet_size = max_packet_size
        self.version = version

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a packet that has not fully arrived."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Any]:
        """Parse ``data`` (any split of the stream) and return every packet now complete.

        Raises :class:`PacketError` on the first bad packet; its ``packets``
        attribute holds the good packets that came before it in this call.
        """
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        packets: list[Any] = []
        try:
            while pos < n:
                b0 = buf[pos]
                ptype = b0 >> 4
                flags = b0 & 0x0F
                if ptype == 3:
                    if flags & 0x06 == 0x06:
                        raise _malformed("PUBLISH with QoS 3")
                    if flags & 0x08 and not flags & 0x06:
                        raise _malformed("PUBLISH with DUP set at QoS 0")
                elif ptype == 0:
                    raise _malformed("reserved packet type 0")
                elif ptype == 15 and self.version != 5:
                    raise _malformed("AUTH before MQTT 5")
                elif flags != _FLAGS[ptype]:
                    raise _malformed("invalid fixed header flags for %s" % PACKET_NAMES[ptype])
                # Remaining Length: at most 4 bytes, minimally encoded.
                length = 0
                i = pos + 1
                shift = 0
                while True:
                    if i >= n:
                        length = -1
                        break
                    b = buf[i]
                    i += 1
                    length |= (b & 0x7F) << shift
                    if not b & 0x80:
                        if b == 0 and i - pos > 2:
                            raise _malformed("variable byte integer not minimally encoded")
                        break
                    if i - pos == 5:
                        raise _malformed("variable byte integer longer than 4 bytes")
                    shift += 7
                if length < 0:
                    break
                total = i - pos + length
                if total > self.max_packet_size:
                    raise PacketError(
                        PACKET_TOO_LARGE,
                        "packet of %d bytes exceeds the maximum packet size of %d"
                        % (total, self.max_packet_size))
                end = i + length
                if end > n:
                    break
                decoder = _DECODERS[ptype]
                assert decoder is not None
                packets.append(decoder(self, _Reader(buf, i, end), flags))
                pos = end
        except PacketError as err:
            err.packets = packets
            del buf[:]
            raise
        del buf[:pos]
        return packets


# --- encoding ----------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    if n < 0 or n > _MAX_VARINT:
        raise ValueError("value %d does not fit a variable byte integer" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("string or binary field longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _str(s: str) -> bytes:
    return _bin(s.encode("utf-8"))


def _encode_properties(props: dict[str, Any]) -> bytes:
    out = bytearray()
    for name, value in props.items():
        prop = P.BY_NAME.get(name)
        if prop is None:
            raise ValueError("unknown property %r" % name)
        values = value if name in P.REPEATABLE else (value,)
        wt = prop.wire_type
        for v in values:
            out.append(prop.ident)
            if wt == P.BYTE:
                out.append(v)
            elif wt == P.TWO_BYTE_INT:
                out += v.to_bytes(2, "big")
            elif wt == P.FOUR_BYTE_INT:
                out += v.to_bytes(4, "big")
            elif wt == P.VARINT:
                out += _varint(v)
            elif wt == P.UTF8:
                out += _str(v)
            elif wt == P.BINARY:
                out += _bin(v)
            else:
                out += _str(v[0])
                out += _str(v[1])
    return _varint(len(out)) + bytes(out)


def _frame(first_byte: int, body: bytes | bytearray) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + bytes(body)


def _enc_connect(p: Connect, version: int) -> bytes:
    level = p.proto_level
    body = bytearray(_str(p.proto_name))
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    body.append(level)
    body.append(flags)
    body += p.keepalive.to_bytes(2, "big")
    if level == 5:
        body += _encode_properties(p.properties)
    body += _str(p.client_id)
    if will is not None:
        if level == 5:
            body += _encode_properties(will.properties)
        body += _str(will.topic)
        body += _bin(will.payload)
    if p.username is not None:
        body += _str(p.username)
    if p.password is not None:
        body += _bin(p.password)
    return _frame(0x10, body)


def _enc_connack(p: Connack, version: int) -> bytes:
    body = bytearray((1 if p.session_present else 0, p.reason_code))
    if version == 5:
        body += _encode_properties(p.properties)
    return _frame(0x20, body)


def _enc_publish(p: Publish, version: int) -> bytes:
    qos = p.qos
    first = 0x30 | (qos << 1) | (0x01 if p.retain else 0) | (0x08 if p.dup else 0)
    body = bytearray(_str(p.topic))
    if qos:
        body += p.packet_id.to_bytes(2, "big")
    if version == 5:
        body += _encode_properties(p.properties)
    body += p.payload
    return _frame(first, body)


def encode_publish(topic: str, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int, properties: dict[str, Any], version: int) -> bytes:
    """``encode_py(Publish(topic, payload, qos, retain, dup, packet_id, properties), version)``
    without the Publish: the broker's QoS 0 delivery path encodes straight from the message.
    The compiled twin must return the same bytes (tests/test_codec_publish.py)."""
    return _enc_publish(Publish(topic, payload, qos, retain, dup, packet_id, properties),
                        version)


def _enc_ack(first: int, p: Any, version: int) -> bytes:
    body = bytearray(p.packet_id.to_bytes(2, "big"))
    if version == 5 and (p.reason_code or p.properties):
        body.append(p.reason_code)
        if p.properties:
            body += _encode_properties(p.properties)
    return _frame(first, body)


def _enc_subscribe(p: Subscribe, version: int) -> bytes:
    body = bytearray(p.packet_id.to_bytes(2, "big"))
    if version == 5:
        body += _encode_properties(p.properties)
    for topic_filter, opts in p.topics:
        body += _str(topic_filter)
        b = opts.qos
        if version == 5:
            b |= ((0x04 if opts.no_local else 0) | (0x08 if opts.retain_as_published else 0)
                  | (opts.retain_handling << 4))
        body.append(b)
    body += p.rest
    return _frame(0x82, body)


def _enc_suback(p: Suback, version: int) -> bytes:
    body = bytearray(p.packet_id.to_bytes(2, "big"))
    if version == 5:
        body += _encode_properties(p.properties)
    body += bytes(p.reason_codes)
    return _frame(0x90, body)


def _enc_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    body = bytearray(p.packet_id.to_bytes(2, "big"))
    if version == 5:
        body += _encode_properties(p.properties)
    for topic_filter in p.topics:
        body += _str(topic_filter)
    return _frame(0xA2, body)


def _enc_unsuback(p: Unsuback, version: int) -> bytes:
    body = bytearray(p.packet_id.to_bytes(2, "big"))
    if version == 5:
        body += _encode_properties(p.properties)
        body += bytes(p.reason_codes)
    return _frame(0xB0, body)


def _enc_reason(first: int, p: Any, version: int, always_props: bool) -> bytes:
    if version != 5 or (not p.reason_code and not p.properties):
        return bytes((first, 0))
    body = bytearray((p.reason_code,))
    if p.properties or always_props:
        body += _encode_properties(p.properties)
    return _frame(first, body)


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _enc_connect,
    Connack: _enc_connack,
    Publish: _enc_publish,
    Puback: lambda p, v: _enc_ack(0x40, p, v),
    Pubrec: lambda p, v: _enc_ack(0x50, p, v),
    Pubrel: lambda p, v: _enc_ack(0x62, p, v),
    Pubcomp: lambda p, v: _enc_ack(0x70, p, v),
    Subscribe: _enc_subscribe,
    Suback: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    Unsuback: _enc_unsuback,
    Pingreq: lambda p, v: b"\xc0\x00",
    Pingresp: lambda p, v: b"\xd0\x00",
    Disconnect: lambda p, v: _enc_reason(0xE0, p, v, False),
    Auth: lambda p, v: _enc_reason(0xF0, p, v, True),
}


def encode_py(packet: Any, version: int = 4) -> bytes:
    """Serialize ``packet`` for protocol level ``version`` (a CONNECT uses its own level)."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError("not an MQTT packet: %r" % (packet,)) from None
    return encoder(packet, version)
