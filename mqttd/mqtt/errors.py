"""The one error type the codec raises, carrying the reason code a server answers with."""

from __future__ import annotations

from typing import Any

MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_PROTOCOL_VERSION = 0x84
PACKET_TOO_LARGE = 0x95


class PacketError(Exception):
    """A packet that the standards say must be rejected.

    ``reason_code`` is the MQTT 5 reason code a server answers with: 0x81
    (malformed: cannot be parsed), 0x82 (protocol error: parsed, but not
    allowed), 0x84 (unsupported protocol name or level in CONNECT) or 0x95
    (packet too large, decided from the fixed header alone). On 3.1/3.1.1 the
    connection is simply closed. ``packets`` holds the packets that parsed
    completely before the bad one, in order, so none of them is lost.
    """

    def __init__(self, reason_code: int, message: str, packets: list[Any] | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.packets: list[Any] = packets if packets is not None else []

    def __reduce__(self) -> tuple[Any, ...]:
        return (PacketError, (self.reason_code, self.message, self.packets))

    def __repr__(self) -> str:
        return f"PacketError(0x{self.reason_code:02X}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PacketError):
            return NotImplemented
        return (self.reason_code, self.message) == (other.reason_code, other.message)

    __hash__ = Exception.__hash__
