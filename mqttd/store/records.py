"""The operation log's record payload facade: the compiled encoder when available.

``encode_py`` always exists; ``encode_c`` only when the Cython build loaded; ``encode`` is
the best available. ``decode`` (formats 1 and 2) is the reference's: it runs at start
only. The format is described in ``mqttd/store/_records_py.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from .._accel import use_c
from ._records_py import FORMAT, decode, encode_py
from .base import Op

__all__ = ["FORMAT", "decode", "encode", "encode_py"]

encode: Callable[[list[Op]], bytes]
if use_c("records"):
    from .._speedups._records import encode as encode_c

    encode = encode_c
    __all__ += ["encode_c"]
else:
    encode = encode_py
