"""PBKDF2-HMAC-SHA512, the reference: ``hashlib`` (OpenSSL's PKCS5_PBKDF2_HMAC).

The compiled twin (``mqttd/_speedups/_kdf.pyx``) gives the same bytes for ~60 % of the CPU;
this one is what ``MQTTD_NO_EXTENSIONS`` or a build without OpenSSL's headers runs.
"""

from __future__ import annotations

import hashlib

__all__ = ["pbkdf2_sha512_many_py", "pbkdf2_sha512_py"]


def pbkdf2_sha512_py(password: bytes, salt: bytes, iterations: int, dklen: int = 64) -> bytes:
    """``hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)``."""
    return hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)


def pbkdf2_sha512_many_py(passwords: list[bytes], salts: list[bytes], iterations: int
                          ) -> list[bytes]:
    """The 64-byte keys of several passwords with one iteration count (the compiled twin
    hashes them side by side; here one after another)."""
    if len(passwords) != len(salts):
        raise ValueError("as many salts as passwords")
    return [hashlib.pbkdf2_hmac("sha512", p, s, iterations)
            for p, s in zip(passwords, salts, strict=True)]
