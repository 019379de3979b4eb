"""MQTT 3.1.1 packets for the load generator, encoded by hand.

Independent of mqttd's codec on purpose: a bug shared by the broker's encoder
and decoder cannot make the benchmark pass. Only what the generator sends:
SUBSCRIBE (one filter per packet) and PUBLISH templates whose payload head the
engine patches at send time (see ``_loadgen.pyx``).
"""

from __future__ import annotations

import struct

#: The payload head the engine patches: publisher index u32, sequence u64, send time u64.
PAYLOAD_HEAD = 20


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 128 if n else b)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def payload(size: int) -> bytes:
    """A payload of ``size`` bytes: a zeroed head for the engine, then printable padding."""
    if size < PAYLOAD_HEAD:
        raise ValueError(f"payload must be at least {PAYLOAD_HEAD} bytes")
    return bytes(PAYLOAD_HEAD) + b"x" * (size - PAYLOAD_HEAD)


def publish(topic: str, size: int, qos: int = 0) -> bytes:
    """A PUBLISH template (packet id 0 at QoS 1, patched at send time)."""
    body = _str(topic) + (b"\x00\x00" if qos else b"") + payload(size)
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def subscribe(packet_id: int, topic_filter: str, qos: int = 0) -> bytes:
    """A SUBSCRIBE with one filter."""
    body = struct.pack("!H", packet_id) + _str(topic_filter) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def subscribe_many(filters: list[str], qos: int = 0) -> bytes:
    """One SUBSCRIBE per filter, back to back (packet ids 1..65535, cycling)."""
    return b"".join(subscribe(i % 65535 + 1, f, qos) for i, f in enumerate(filters))
