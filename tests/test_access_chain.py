"""The authentication chain itself (mqttd/access/authn.py): order, gates, blocking providers
off the loop, the cache of successes and the bound on checks in progress."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from mqttd.access import authn
from mqttd.access.authn import AuthChain
from mqttd.config import AuthSettings
from mqttd.core.services import AuthResult, ClientInfo


class Blocking:
    """A provider whose check waits for the test to let it finish (in the hashing threads)."""

    kind = "blocking"
    description = "test"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.threads: set[str] = set()

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        assert self.release.wait(5)
        return AuthResult(0) if password == b"right" else AuthResult(0x86, reason="wrong")

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


class Ignores:
    kind = "sync"
    description = "test"

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        return None

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


def client(n: int) -> ClientInfo:
    return ClientInfo(f"c{n}", f"user{n}", "127.0.0.1:1")


def test_blocking_checks_run_off_the_loop_and_are_bounded(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(authn, "MAX_PENDING", 2)
    provider = Blocking()
    chain = AuthChain(AuthSettings(cache_ttl=0), [Ignores(), provider])  # type: ignore[list-item]
    done: list[tuple[int, AuthResult]] = []

    async def body() -> None:
        answers = [chain.authenticate(client(i), b"right" if i else b"bad",
                                      lambda r, i=i: done.append((i, r))) for i in range(3)]
        assert answers[:2] == [None, None]  # both wait for their hashing thread
        assert answers[2] is not None and answers[2].code == 0x89  # over the bound: busy
        await asyncio.sleep(0.05)
        assert done == []  # the loop went on while the threads were busy
        provider.release.set()
        for _ in range(100):
            if len(done) == 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(body())
    chain.close()
    assert sorted((i, r.code) for i, r in done) == [(0, 0x86), (1, 0)]
    assert provider.threads and all(t.startswith("mqttd-auth") for t in provider.threads)


def test_successes_are_remembered_by_user_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = Blocking()
    provider.release.set()
    chain = AuthChain(AuthSettings(cache_ttl=60), [provider])  # type: ignore[list-item]
    results: list[Any] = []

    async def once(password: bytes) -> AuthResult:
        fut: asyncio.Future[AuthResult] = asyncio.get_running_loop().create_future()
        now = chain.authenticate(client(1), password, fut.set_result)
        return now if now is not None else await fut

    async def body() -> None:
        results.append(await once(b"right"))
        results.append(await once(b"right"))  # cached: no second hash
        results.append(await once(b"wrong"))  # a different password is checked again

    asyncio.run(body())
    chain.close()
    assert [r.code for r in results] == [0, 0, 0x86]
    assert provider.calls == 2
