"""Type stub for the compiled PBKDF2 (``_kdf.pyx``); mirrors ``mqttd.access._kdf_py``."""

__all__ = ["pbkdf2_sha512"]

def pbkdf2_sha512(password: bytes, salt: bytes, iterations: int, dklen: int = 64) -> bytes: ...
