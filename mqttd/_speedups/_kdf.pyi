"""Type stub for the compiled PBKDF2 (``_kdf.pyx``); mirrors ``mqttd.access._kdf_py``."""

__all__ = ["pbkdf2_sha512", "pbkdf2_sha512_many"]

def pbkdf2_sha512(password: bytes, salt: bytes, iterations: int, dklen: int = 64) -> bytes: ...
def pbkdf2_sha512_many(passwords: list[bytes], salts: list[bytes], iterations: int
                       ) -> list[bytes]: ...
