"""The compiled parser reuses the last PUBLISH's topic str when the next one has the same
bytes (mqttd/_speedups/_codec.pyx, ``Parser._topic``): a stream of PUBLISH packets whose
topics repeat, differ by a byte, carry wildcards, U+0000, non-ASCII or invalid UTF-8 must
parse to exactly what the reference parser gives, packet by packet and error by error.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st
from support import builder as B

from mqttd.mqtt.errors import PacketError

#: Topic bytes: the same ones again, neighbours of equal length, and the bad ones.
TOPICS = [b"a/b", b"a/c", b"b/b", b"a/+", b"a/#", b"a\x00", b"a/\xff", "\u00e9/b".encode(),
          "a/\u20ac".encode(), b"", b"x" * 256, b"x" * 257, b"x" * 255 + b"y", b"sensor/1/t"]


def _wire(topic: bytes, qos: int, version: int) -> bytes:
    return B.publish(topic, b"p", qos=qos, packet_id=7 if qos else None,
                     properties=b"\x00" if version == 5 else b"")


def _parse(codec: Any, version: int, chunks: list[bytes]) -> list[Any]:
    """Every chunk fed to one parser: each feed's packets, or its error (code, message)."""
    parser = codec.Parser(version=version)
    got: list[Any] = []
    for chunk in chunks:
        try:
            got.append(parser.feed(chunk))
        except PacketError as err:
            got.append((err.reason_code, err.message, err.packets))
            parser = codec.Parser(version=version)  # (the connection closes)
    return got


@given(stream=st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 1)),
                       min_size=1, max_size=30),
       version=st.sampled_from([4, 5]), together=st.integers(1, 4))
def test_repeated_topics_parse_as_the_reference(codec: Any, codec_py: Any,
                                                stream: list[tuple[bytes, int]],
                                                version: int, together: int) -> None:
    wires = [_wire(topic, qos, version) for topic, qos in stream]
    # ``together`` packets per read, so reuse happens within a read and across reads.
    chunks = [b"".join(wires[i:i + together]) for i in range(0, len(wires), together)]
    assert _parse(codec, version, chunks) == _parse(codec_py, version, chunks)


def test_same_topic_is_one_str_and_a_changed_byte_is_not(codec: Any) -> None:
    parser = codec.Parser(version=4)
    first, again, other = parser.feed(_wire(b"a/b", 0, 4) * 2 + _wire(b"a/c", 0, 4))
    assert (first.topic, again.topic, other.topic) == ("a/b", "a/b", "a/c")
    if codec.name == "c":  # the compiled one reuses the str itself
        assert first.topic is again.topic
