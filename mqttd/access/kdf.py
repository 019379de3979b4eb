"""The PBKDF2-HMAC-SHA512 facade: picks the compiled one when available.

``pbkdf2_sha512_py`` always exists; ``pbkdf2_sha512_c`` only when the Cython build
loaded; ``pbkdf2_sha512`` is the best available. No logic lives here: see
``mqttd/access/_kdf_py.py``.
"""

from __future__ import annotations

from .._accel import use_c
from ._kdf_py import pbkdf2_sha512_many_py, pbkdf2_sha512_py

__all__ = ["pbkdf2_sha512", "pbkdf2_sha512_many", "pbkdf2_sha512_many_py", "pbkdf2_sha512_py"]

if use_c("kdf"):
    from .._speedups._kdf import (
        pbkdf2_sha512 as pbkdf2_sha512_c,
        pbkdf2_sha512_many as pbkdf2_sha512_many_c,
    )

    pbkdf2_sha512 = pbkdf2_sha512_c
    pbkdf2_sha512_many = pbkdf2_sha512_many_c
    __all__ += ["pbkdf2_sha512_c", "pbkdf2_sha512_many_c"]
else:
    pbkdf2_sha512 = pbkdf2_sha512_py
    pbkdf2_sha512_many = pbkdf2_sha512_many_py
