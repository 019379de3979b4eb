"""Shared fixtures: one ``codec`` fixture per implementation, and the Hypothesis profiles.

The ``c`` parameter imports ``mqttd._speedups._codec`` directly (not through the
facade), so a missing or broken build fails the ``c`` tests instead of quietly
testing the pure-Python codec twice. The only allowed skip is the ``c`` side
when ``MQTTD_NO_EXTENSIONS`` is set (mqttd._accel.NO_EXTENSIONS).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings

import mqttd._accel as accel
from mqttd.mqtt._codec_py import ParserPy, encode_py

NO_EXTENSIONS_REASON = (
    "MQTTD_NO_EXTENSIONS is set: the compiled implementations are deliberately not used"
)

# Deterministic, moderate and quick by default (the machine is shared); HYPOTHESIS_PROFILE=dev
# digs deeper. No example database: the checkout is shared and .hypothesis/ would leak into it.
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=500, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    # When a Hypothesis test fails, its pytest plugin imports libcst to write a patch, and
    # libcst's import warns about mypy_extensions.TypedDict; with filterwarnings=error that
    # turned every Hypothesis failure into an INTERNALERROR that hid the falsifying example.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


class Codec(NamedTuple):
    """One codec implementation: its ``Parser`` class and ``encode`` function."""

    name: str
    Parser: Any
    encode: Any


def load_codec(name: str) -> Codec:
    if name == "py":
        return Codec("py", ParserPy, encode_py)
    # Imported directly: a missing build must fail here, never fall back to Python.
    from mqttd._speedups import _codec

    return Codec("c", _codec.Parser, _codec.encode)


_C_PARAM = pytest.param(
    "c", marks=pytest.mark.skipif(accel.NO_EXTENSIONS, reason=NO_EXTENSIONS_REASON))


@pytest.fixture(scope="session", params=["py", _C_PARAM])
def codec(request: pytest.FixtureRequest) -> Codec:
    """Each codec implementation in turn: ``py`` (the reference) and ``c`` (Cython)."""
    return load_codec(request.param)


@pytest.fixture(scope="session")
def codec_py() -> Codec:
    return load_codec("py")


@pytest.fixture(scope="session")
def codec_c() -> Codec:
    """The compiled codec, for tests that compare it with the reference."""
    if accel.NO_EXTENSIONS:
        pytest.skip(NO_EXTENSIONS_REASON)
    return load_codec("c")
