"""PBKDF2-HMAC-SHA512: the compiled kernel (``_speedups/_kdf.pyx``) against the reference
(``hashlib.pbkdf2_hmac``). A real broker checking password files through it:
tests/test_access_password.py."""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings, strategies as st

from mqttd import _accel
from mqttd.access import kdf
from mqttd.access._kdf_py import pbkdf2_sha512_py
from mqttd.access.password_file import PasswordHash, hash_password, parse_hash

_NO_C_REASON = "MQTTD_NO_EXTENSIONS is set: the compiled kernel is deliberately not used"
Kdf = Callable[..., bytes]


def _compiled() -> Kdf:
    return importlib.import_module("mqttd._speedups._kdf").pbkdf2_sha512  # type: ignore[no-any-return]


@pytest.fixture(params=["py", "c"])
def derive(request: pytest.FixtureRequest) -> Kdf:
    if request.param == "py":
        return pbkdf2_sha512_py
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    return _compiled()


def test_facade_uses_the_compiled_kernel() -> None:
    assert kdf.pbkdf2_sha512 is (pbkdf2_sha512_py if _accel.NO_EXTENSIONS else _compiled())


# RFC 8018 has no SHA-512 vectors; these are the widely published ones (the RFC 6070 inputs
# with HMAC-SHA512), so a shared mistake of both implementations cannot pass.
VECTORS = [
    (b"password", b"salt", 1,
     "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501"
     "bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"),
    (b"password", b"salt", 2,
     "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53cf76cab2868a39b9f"
     "7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"),
    (b"password", b"salt", 4096,
     "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5143f30602641b3d5"
     "5cd335988cb36b84376060ecd532e039b742a239434af2d5"),
]


@pytest.mark.parametrize(("password", "salt", "iterations", "expected"), VECTORS)
def test_published_vectors(derive: Kdf, password: bytes, salt: bytes, iterations: int,
                           expected: str) -> None:
    assert derive(password, salt, iterations).hex() == expected


@settings(max_examples=300, deadline=None)
@given(password=st.binary(max_size=300), salt=st.binary(max_size=200),
       iterations=st.integers(1, 40), dklen=st.integers(1, 200))
def test_same_bytes_as_hashlib(password: bytes, salt: bytes, iterations: int,
                               dklen: int) -> None:
    # Keys around SHA-512's 128-byte block (hashed first when longer), several output
    # blocks and partial last blocks.
    expected = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)
    assert pbkdf2_sha512_py(password, salt, iterations, dklen) == expected
    if not _accel.NO_EXTENSIONS:
        assert _compiled()(password, salt, iterations, dklen) == expected


@pytest.mark.parametrize(("iterations", "dklen", "error"), [
    (0, 64, ValueError), (-1, 64, ValueError), (1, 0, ValueError), (1, -5, ValueError),
    (2**32, 64, OverflowError)])
def test_same_errors_as_hashlib(derive: Kdf, iterations: int, dklen: int,
                                error: type[Exception]) -> None:
    with pytest.raises(error):
        hashlib.pbkdf2_hmac("sha512", b"pw", b"salt", iterations, dklen)
    with pytest.raises(error):
        derive(b"pw", b"salt", iterations, dklen)


def test_other_threads_run_while_it_hashes(derive: Kdf) -> None:
    """The GIL is let go while hashing (the chain's hashing threads rely on it): a thread
    counting meanwhile gets to run (a count, not a time, is asserted)."""
    stop = threading.Event()
    counted = [0]

    def count() -> None:
        while not stop.is_set():
            counted[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        before = counted[0]
        for _ in range(5):
            derive(b"pw", b"salt", 200_000)
            if counted[0] > before:
                break
    finally:
        stop.set()
        t.join()
    assert counted[0] > before


def test_mosquitto_passwd_entry_verifies() -> None:
    """An entry as mosquitto_passwd 2.0 writes it ($7$, 101 rounds): right and wrong
    password, through the facade the provider uses."""
    entry = hash_password(b"s3cret", iterations=101)
    again = parse_hash(entry.encode())
    assert isinstance(again, PasswordHash)
    assert again.verify(b"s3cret")
    assert not again.verify(b"s3cret ")
    assert again.digest == hashlib.pbkdf2_hmac("sha512", b"s3cret", again.salt, 101)


def _many_twins() -> list[Callable[..., list[bytes]]]:
    twins: list[Callable[..., list[bytes]]] = [kdf.pbkdf2_sha512_many_py]
    if not _accel.NO_EXTENSIONS:
        twins.append(importlib.import_module("mqttd._speedups._kdf").pbkdf2_sha512_many)
    return twins


@settings(max_examples=120, deadline=None)
@given(pairs=st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=40)),
                      max_size=19),
       iterations=st.integers(1, 30))
def test_many_at_once_give_each_ones_bytes(pairs: list[tuple[bytes, bytes]],
                                           iterations: int) -> None:
    """Hashed side by side (4 lanes for 2-4 passwords, 8 for 5-8, more in several vectors;
    one alone on the scalar loop): every key as hashlib makes it alone, in order, with keys
    longer than SHA-512's block and salts of any length among them."""
    passwords = [p for p, _ in pairs]
    salts = [s for _, s in pairs]
    expected = [hashlib.pbkdf2_hmac("sha512", p, s, iterations) for p, s in pairs]
    for many in _many_twins():
        assert many(passwords, salts, iterations) == expected


def test_many_at_once_mosquitto_rounds_and_errors() -> None:
    passwords = [b"pw-%d" % i for i in range(11)]
    salts = [bytes([i]) * 12 for i in range(11)]
    expected = [hashlib.pbkdf2_hmac("sha512", p, s, 101) for p, s in zip(passwords, salts,
                                                                        strict=True)]
    for many in _many_twins():
        for n in range(12):
            assert many(passwords[:n], salts[:n], 101) == expected[:n]
        with pytest.raises(ValueError):
            many(passwords, salts[:3], 101)
        with pytest.raises(ValueError):
            many(passwords, salts, 0)
