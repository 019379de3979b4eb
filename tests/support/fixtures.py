"""The end-to-end tests' pytest plugin: ``clients`` (paho), ``raws`` (raw sockets) and a log
check after every test.

A test module loads it with ``pytest_plugins = ["support.fixtures"]`` and defines its own
``broker`` fixture (usually ``broker = broker_fixture(...)``). It is imported as a plugin
after the modules that use it may have imported ``support``, so it opts out of assertion
rewriting (its asserts carry their messages): PYTEST_DONT_REWRITE
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .clients import Clients
from .process import BrokerProcess
from .raw import RawClient


@pytest.fixture(autouse=True)
def check_broker_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, every broker it used must have logged no traceback so far (so the
    failure points at the test that caused it, not at the module's teardown)."""
    yield
    if __name__ not in getattr(request.module, "pytest_plugins", ()):
        return  # a plugin's autouse fixture reaches every module; only ours are checked
    for name in request.fixturenames:
        if "broker" in name:
            value = request.getfixturevalue(name)
            if isinstance(value, BrokerProcess):
                assert "Traceback" not in value.log(), value.log()


@pytest.fixture
def clients(broker: BrokerProcess) -> Iterator[Clients]:
    """paho clients for the module's ``broker``; all stopped after the test."""
    made = Clients(broker)
    yield made
    made.close_all()


@pytest.fixture
def raws() -> Iterator[Callable[..., RawClient]]:
    """Raw socket clients, ``raws(broker, version, port=...)``; all closed after the test."""
    made: list[RawClient] = []

    def make(broker: BrokerProcess, version: int = 4, **kwargs: Any) -> RawClient:
        r = RawClient(broker, version, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
