"""The MQTT codec facade: picks the compiled parser/encoder when available.

``ParserPy``/``encode_py`` always exist; ``ParserC``/``encode_c`` only when the
Cython build loaded; ``Parser``/``encode`` are the best available. No logic
lives here.
"""

from __future__ import annotations

from .._accel import use_c
from ._codec_py import (
    MAX_PACKET_SIZE,
    SUBSCRIBE_LAZY_BYTES,
    ParserPy,
    decode_filters as decode_filters_py,
    encode_publish as encode_publish_py,
    encode_py,
)
from .errors import PacketError

__all__ = ["MAX_PACKET_SIZE", "SUBSCRIBE_LAZY_BYTES", "Parser", "ParserPy", "PacketError",
           "decode_filters", "decode_filters_py", "encode", "encode_publish", "encode_publish_py",
           "encode_py"]

if use_c("codec"):
    from .._speedups._codec import (
        Parser as ParserC,
        decode_filters as decode_filters_c,
        encode as encode_c,
        encode_publish as encode_publish_c,
    )

    Parser = ParserC
    decode_filters = decode_filters_c
    encode = encode_c
    encode_publish = encode_publish_c
    __all__ += ["ParserC", "decode_filters_c", "encode_c", "encode_publish_c"]
else:
    Parser = ParserPy  # type: ignore[assignment,misc]
    decode_filters = decode_filters_py
    encode = encode_py
    encode_publish = encode_publish_py
