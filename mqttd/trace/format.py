"""How traces print packets and messages (EMQX's emqx_packet:format), secrets masked.

Passwords never reach a sink: CONNECT's password and any MQTT 5 authentication
data are printed as ``******``. Payloads are text when they are UTF-8, else hex
(``hex:00ff``), cut at the trace's payload limit.
"""

from __future__ import annotations

import codecs
import datetime
import time
from typing import Any

from ..core.message import Message
from ..mqtt.packets import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PACKET_NAMES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
)

MASK = "******"
#: Properties whose value is a secret.
_SECRET_PROPS = frozenset({"authentication_data"})
#: Default payload limit when the settings do not say.
DEFAULT_PAYLOAD_LIMIT = 256


def format_bytes(data: bytes | bytearray | None, limit: int) -> str:
    """Bytes as an operator reads them: the text when they are UTF-8 (tabs and line breaks
    shown as ``\\t``, ``\\n``, ``\\r``, so a trace stays one line a message), else
    ``hex:`` and their hex digits; cut at ``limit`` bytes with the full size noted."""
    if data is None:
        return "undefined"
    cut = len(data) > limit
    part = bytes(data[:limit]) if cut else bytes(data)
    text = _text(part, final=not cut)
    shown = text if text is not None else "hex:" + part.hex()
    return f"{shown}...({len(data)} bytes)" if cut else shown


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _text(data: bytes, final: bool) -> str | None:
    """``data`` as printable text, or None (not UTF-8, or control characters). A cut
    (``final`` False) may end inside a character: that part is left out."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final)
    except UnicodeDecodeError:
        return None
    text = text.translate(_ESCAPES)
    return text if text.isprintable() else None


def _bool(value: Any) -> str:
    return "true" if value else "false"


def _value(value: Any, limit: int) -> str:
    if isinstance(value, (bytes, bytearray)):
        return format_bytes(value, limit)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value, tuple) and isinstance(value[0], str):
            return f"{value[0]}={_value(value[1], limit)}"  # a user property: name=value
        return "[" + ", ".join(_value(v, limit) for v in value) + "]"
    return str(value)


def format_properties(props: dict[str, Any], limit: int) -> str:
    """MQTT 5 properties as ``{name=value, ...}`` (user properties as ``[k=v, ...]``),
    secrets masked."""
    parts = []
    for key, value in props.items():
        if key in _SECRET_PROPS:
            parts.append(f"{key}={MASK}")
        else:
            parts.append(f"{key}={_value(value, limit)}")
    return "{" + ", ".join(parts) + "}"


def _rc(code: int) -> str:
    return f"0x{code:02X}"


def format_packet(p: Any, limit: int = DEFAULT_PAYLOAD_LIMIT) -> str:
    """One packet on one line, e.g. ``PUBLISH(Q1, R0, D0, Topic=t, PacketId=1, Payload=hi)``.

    The ``Q/R/D`` triple is the fixed header's QoS, RETAIN and DUP flags.
    """
    t = p.packet_type
    name = PACKET_NAMES.get(t, str(t))
    if t == PUBLISH:
        head = f"Q{p.qos}, R{int(p.retain)}, D{int(p.dup)}"
    elif t in (PUBREL, SUBSCRIBE, UNSUBSCRIBE):
        head = "Q1, R0, D0"
    else:
        head = "Q0, R0, D0"
    f: list[str] = []
    if t == CONNECT:
        f += [f"ClientId={p.client_id}", f"ProtoVer={p.proto_level}",
              f"CleanStart={_bool(p.clean_start)}", f"KeepAlive={p.keepalive}"]
        if p.username is not None:
            f.append(f"Username={p.username}")
        if p.password is not None:
            f.append(f"Password={MASK}")
        if p.will is not None:
            w = p.will
            will = (f"Will(Q{w.qos}, R{int(w.retain)}, Topic={w.topic}, "
                    f"Payload={format_bytes(w.payload, limit)}")
            if w.properties:
                will += f", Properties={format_properties(w.properties, limit)}"
            f.append(will + ")")
    elif t == CONNACK:
        f += [f"SessionPresent={_bool(p.session_present)}", f"ReasonCode={_rc(p.reason_code)}"]
    elif t == PUBLISH:
        f.append(f"Topic={p.topic}")
        if p.qos:
            f.append(f"PacketId={p.packet_id}")
        f.append(f"Payload={format_bytes(p.payload, limit)}")
    elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        f += [f"PacketId={p.packet_id}", f"ReasonCode={_rc(p.reason_code)}"]
    elif t == SUBSCRIBE:
        filters = []
        for topic_filter, o in p.topics:
            opts = [f"Q{o.qos}"]
            if o.no_local:
                opts.append("NL")
            if o.retain_as_published:
                opts.append("RAP")
            if o.retain_handling:
                opts.append(f"RH{o.retain_handling}")
            filters.append(f"{topic_filter}({', '.join(opts)})")
        f += [f"PacketId={p.packet_id}", f"TopicFilters=[{', '.join(filters)}]"]
    elif t == UNSUBSCRIBE:
        f += [f"PacketId={p.packet_id}", f"TopicFilters=[{', '.join(p.topics)}]"]
    elif t in (SUBACK, UNSUBACK):
        f.append(f"PacketId={p.packet_id}")
        if p.reason_codes or t == SUBACK:
            f.append(f"ReasonCodes=[{', '.join(_rc(c) for c in p.reason_codes)}]")
    elif t in (DISCONNECT, AUTH):
        f.append(f"ReasonCode={_rc(p.reason_code)}")
    props = getattr(p, "properties", None)
    if props:
        f.append(f"Properties={format_properties(props, limit)}")
    return f"{name}({head}{', ' if f else ''}{', '.join(f)})"


def format_message(msg: Message, limit: int) -> str:
    """A published message, in the PUBLISH format (without a packet id)."""
    text = (f"PUBLISH(Q{msg.qos}, R{int(msg.retain)}, Topic={msg.topic}, "
            f"Payload={format_bytes(msg.payload, limit)}")
    if msg.properties:
        text += f", Properties={format_properties(msg.properties, limit)}"
    return text + ")"


def timestamp(t: float) -> str:
    """Local time with milliseconds, as trace lines start."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def iso_time(t: float) -> str:
    """RFC 3339 local time with offset and milliseconds, for JSON."""
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")
