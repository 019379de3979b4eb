"""How traces print packets and messages (EMQX's emqx_packet:format), secrets masked.

Passwords never reach a sink: CONNECT's password and any MQTT 5 authentication
data are printed as ``******``. Payloads are cut at the trace's payload limit.
"""

from __future__ import annotations

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
    """``b'...'``, cut at ``limit`` bytes with the full size noted."""
    if data is None:
        return "undefined"
    if len(data) <= limit:
        return repr(bytes(data))
    return f"{bytes(data[:limit])!r}...({len(data)} bytes)"


def _bool(value: Any) -> str:
    return "true" if value else "false"


def format_properties(props: dict[str, Any], limit: int) -> str:
    parts = []
    for key, value in props.items():
        if key in _SECRET_PROPS:
            parts.append(f"{key}={MASK}")
        elif isinstance(value, (bytes, bytearray)):
            parts.append(f"{key}={format_bytes(value, limit)}")
        else:
            parts.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    return "{" + ", ".join(parts) + "}"


def _rc(code: int) -> str:
    return f"0x{code:02X}"


def format_packet(p: Any, limit: int = DEFAULT_PAYLOAD_LIMIT) -> str:
    """One packet on one line, e.g. ``PUBLISH(Q1, R0, D0, Topic=t, PacketId=1, Payload=b'hi')``.

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
