"""Type stub for the compiled codec (mqttd/_speedups/_codec.pyx); see mqttd/mqtt/_codec_py.py."""

from typing import Any, Final

from ..mqtt.packets import Packet

MAX_PACKET_SIZE: Final[int]

class Parser:
    """Incremental MQTT parser (the compiled twin of ``ParserPy``)."""

    version: int
    def __init__(self, max_packet_size: int = ..., version: int = 0) -> None: ...
    @property
    def max_packet_size(self) -> int: ...
    @max_packet_size.setter
    def max_packet_size(self, value: int) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]: ...

def encode(packet: Packet | Any, version: int = 4) -> bytes: ...
def encode_publish(topic: str, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int, properties: dict[str, Any], version: int) -> bytes: ...
