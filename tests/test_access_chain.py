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


class Decides:
    """A sync provider with an answer for user ``known``."""

    kind = "sync"
    description = "test"

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        return AuthResult(0) if client.username == "known" else None

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_answer_before_any_wait_is_returned_not_called_back() -> None:
    """A sync provider deciding ahead of a hashing one: the answer comes back at once (a
    ``done`` call before authenticate() returned was lost by the channel, which then waited
    for ever)."""
    provider = Blocking()
    provider.release.set()
    chain = AuthChain(AuthSettings(), [Decides(), provider])  # type: ignore[list-item]
    called: list[AuthResult] = []

    async def body() -> AuthResult | None:
        return chain.authenticate(client(0)._replace(username="known"), b"x", called.append)

    result = asyncio.run(body())
    chain.close()
    assert result is not None and result.code == 0 and called == [] and provider.calls == 0


def test_a_user_name_nobody_knows_is_not_taken_on_trust() -> None:
    """Providers asked, none knew the user name: refused even where anonymous clients are
    let in (admitted, it would carry that user's ACL rights without proof)."""
    from core_util import World

    world = World(allow_anonymous=True)
    world.broker.authenticator = AuthChain(AuthSettings(), [Decides()])  # type: ignore[list-item]
    known = world.broker.authenticate(ClientInfo("a", "known", "p"), b"x", lambda r: None)
    stranger = world.broker.authenticate(ClientInfo("b", "alice", "p"), b"x", lambda r: None)
    anonymous = world.broker.authenticate(ClientInfo("c", None, "p"), None, lambda r: None)
    assert known is not None and known.code == 0
    assert stranger is not None and stranger.code == 0x86
    assert anonymous is not None and anonymous.code == 0


class Thinking:
    """An authenticator still deciding (a slow remote provider): never answers."""

    def authenticate(self, client: ClientInfo, password: bytes | None, done: Any,
                     wanted: Any = None) -> None:
        return None


def test_what_a_client_sends_before_connack_is_bounded_in_bytes() -> None:
    """While its CONNECT is being authenticated a client may send on, but not a gigabyte:
    past one maximum packet size of held payload the connection is closed."""
    from core_util import World

    from mqttd.core.channel import AUTHENTICATING, Channel
    from mqttd.mqtt.packets import Connect, Publish

    world = World(max_packet_size=100_000)
    world.broker.authenticator = Thinking()  # type: ignore[assignment]
    ch = Channel(world.broker, world.zone, "127.0.0.1:1")
    ch.handle_in(Connect("MQTT", 5, True, 60, "c", None, "u", b"p", {}))
    assert ch.state == AUTHENTICATING
    for _ in range(3):
        ch.handle_in(Publish("t", b"x" * 40_000, 0, False, False, 0, {}))
    assert not ch.closing  # 120 KB held: over the budget only from here on
    ch.handle_in(Publish("t", b"x" * 40_000, 0, False, False, 0, {}))
    assert ch.closing and ch.close_detail == "too much sent before CONNACK"


def test_a_client_acl_grants_a_wildcard_subscription_only_by_containment() -> None:
    """A token's ``sub: ["dev/1/+"]`` grants subscribing to dev/1/x and dev/1/+, not to
    dev/1/# (the ``#`` is a wildcard, not a level called "#" that ``+`` would match)."""
    from mqttd.access.client_acl import parse_acl

    acl = parse_acl({"sub": ["dev/1/+"], "pub": []}, "c", "u")
    assert acl("subscribe", "dev/1/x") is True
    assert acl("subscribe", "dev/1/+") is True
    assert acl("subscribe", "dev/1/#") is False
    assert acl("deliver", "dev/1/x") is True
    assert acl("subscribe", "$share/g/dev/1/+") is True


def test_a_queued_check_whose_client_left_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """One hashing thread busy; two more checks queued behind it; their clients leave
    (``wanted`` False) before a thread takes them: no hash for them, no answer, and their
    slots in the bound on checks in progress are given back."""
    provider = Blocking()
    chain = AuthChain(AuthSettings(cache_ttl=0, hash_threads=1), [provider])  # type: ignore[list-item]
    done: list[int] = []
    gone = {1: False, 2: False}

    async def body() -> None:
        assert chain.authenticate(client(0), b"right", lambda r: done.append(0)) is None
        for i in (1, 2):
            assert chain.authenticate(client(i), b"right", lambda r, i=i: done.append(i),
                                      lambda i=i: not gone[i]) is None
        await asyncio.sleep(0.05)
        gone[1] = gone[2] = True  # the two clients closed while the thread was busy
        provider.release.set()
        for _ in range(100):
            if done and chain.abandoned == 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(body())
    chain.close()
    assert done == [0]
    assert provider.calls == 1 and chain.abandoned == 2
    assert chain._pending == 0


def test_one_address_cannot_take_every_place_in_the_bound() -> None:
    """[auth] max_pending_per_address: past it, that address's checks are refused busy
    (0x89) while other addresses' still queue; the places come back as checks finish."""
    provider = Blocking()
    chain = AuthChain(AuthSettings(cache_ttl=0, max_pending_per_address=2),
                      [provider])  # type: ignore[list-item]
    done: list[AuthResult] = []

    def from_host(n: int, host: str) -> ClientInfo:
        return ClientInfo(f"c{n}", f"user{n}", f"{host}:{1000 + n}")

    async def body() -> None:
        same = [chain.authenticate(from_host(i, "10.0.0.1"), b"right", done.append)
                for i in range(3)]
        assert same[:2] == [None, None]
        assert same[2] is not None and same[2].code == 0x89
        assert "from this address" in same[2].reason
        assert chain.authenticate(from_host(9, "10.0.0.2"), b"right", done.append) is None
        provider.release.set()
        for _ in range(200):
            if len(done) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(done) == 3
        # every place was given back: the address may have two checks in progress again
        again = [chain.authenticate(from_host(i, "10.0.0.1"), b"right", done.append)
                 for i in range(2)]
        assert all(a is None for a in again)
        for _ in range(200):
            if len(done) == 5:
                break
            await asyncio.sleep(0.01)

    asyncio.run(body())
    chain.close()
    assert [r.code for r in done] == [0] * 5
