"""``encode_publish``: a PUBLISH encoded from its fields, without a ``Publish`` object.

The broker's QoS 0 delivery path calls it once per message, so both codecs must give
exactly the bytes ``encode(Publish(...))`` gives, including the shapes the compiled fast
path hands over to the reference (large properties, non-exact types) and the errors.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st
from support import builder as B
from test_codec_properties import PACKET_ID, TOPIC, properties

from mqttd import _accel as accel
from mqttd.mqtt._codec_py import encode_publish as encode_publish_py, encode_py
from mqttd.mqtt.packets import Publish


class _NoC:
    """MQTTD_NO_EXTENSIONS: the compiled side is left out, the reference is still checked."""

    encode_publish = staticmethod(encode_publish_py)
    encode = staticmethod(encode_py)


def _c() -> Any:
    if accel.NO_EXTENSIONS:
        return _NoC
    # Imported directly: a missing build must fail here, never fall back to Python.
    from mqttd._speedups import _codec

    return _codec


@st.composite
def publish_fields(draw: Any) -> tuple[Any, ...]:
    qos = draw(st.integers(0, 2))
    return (draw(TOPIC), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
            draw(st.booleans()) if qos else False, draw(PACKET_ID) if qos else 0,
            draw(properties(B.PUBLISH)))


@given(publish_fields())
def test_py_and_c_equal_encode_of_publish(fields: tuple[Any, ...]) -> None:
    c = _c()
    for version in (3, 4, 5):
        want = encode_py(Publish(*fields), version)
        assert encode_publish_py(*fields, version) == want
        assert c.encode_publish(*fields, version) == want
        assert c.encode(Publish(*fields), version) == want


@pytest.mark.parametrize("version", [4, 5])
def test_fixed_examples(version: int) -> None:
    c = _c()
    cases = [
        ("a/b", b"x" * 64, 0, False, False, 0, {}),
        ("a/b", b"", 1, True, True, 7, {"message_expiry_interval": 30,
                                        "user_property": [("k", "v")]}),
        ("t", b"y" * 70000, 0, True, False, 0, {"content_type": "text/plain"}),  # big body
        ("t", bytearray(b"z"), 0, 0, 0, 0, {}),  # not exact bytes: the reference takes it
        ("\u00e9/\u4e2d", b"p", 2, False, False, 0xFFFF, {"payload_format_indicator": 1}),
    ]
    for fields in cases:
        want = encode_py(Publish(*fields), version)
        assert encode_publish_py(*fields, version) == want
        assert c.encode_publish(*fields, version) == want


def test_errors_match() -> None:
    c = _c()
    bad = [("t" * 70000, b"", 0, False, False, 0, {}),  # topic longer than 65535 bytes
           ("t", b"", 0, False, False, 0, {"no_such_property": 1})]
    for fields in bad:
        for version in (4, 5):
            try:
                want: Any = encode_py(Publish(*fields), version)
            except Exception as err:  # noqa: BLE001 - the same exception type either way
                want = type(err)
            for fn in (encode_publish_py, c.encode_publish):
                try:
                    got: Any = fn(*fields, version)
                except Exception as err:  # noqa: BLE001
                    got = type(err)
                assert got == want
