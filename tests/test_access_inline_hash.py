"""Cheap password hashes are checked on the event loop, dear ones in the hashing threads
(mqttd/access/authn.py ``INLINE_MAX``, ``INLINE_TURN_BUDGET``), against a real daemon.

A mosquitto_passwd 2.0 file (101 PBKDF2 rounds, ~70 µs a hash) costs less to hash than to
hand to a thread and back: its checks run on the loop and no hashing thread is ever
started, with the same verdicts and the same cache. Checks asked in one loop turn beyond the
turn's budget go to the threads. A 210,000-round file never hashes on the loop
(tests/test_access_password.py: its storm's pings are answered all along)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.access.authn import HASH_NICE, INLINE_MAX, INLINE_TURN_BUDGET, AuthChain
from mqttd.access.password_file import PasswordFile, hash_password
from mqttd.config import AuthSettings
from mqttd.core.services import AuthResult, ClientInfo
from mqttd.mqtt.packets import Connack

HASHED = "hashed the password of 'u'"


def _file(tmp_path: Path, iterations: int) -> Path:
    path = tmp_path / "passwd"
    path.write_text(f"u:{hash_password(b'right', iterations).encode()}\n")
    return path


def _hash_threads(b: BrokerProcess) -> int:
    """How many hashing threads the daemon runs: they alone run niced (authn.HASH_NICE; the
    OS does not know Python's thread names)."""
    n = 0
    for task in Path(f"/proc/{b.proc.pid}/task").iterdir():
        try:
            stat_line = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # the command name (field 2) may hold spaces: count from after its ')'
        if int(stat_line.rsplit(")", 1)[1].split()[16]) == HASH_NICE:
            n += 1
    return n


def _connect(b: BrokerProcess, password: bytes) -> int:
    with RawClient(b) as c:
        c.send(B.connect(f"inline-{uid()}", username="u", password=password))
        return c.expect(Connack).reason_code


def test_a_cheap_file_is_checked_on_the_loop_with_the_same_verdicts_and_cache(
        tmp_path: Path) -> None:
    config = (f'[auth]\npassword_file = "{_file(tmp_path, 101)}"\n\n'
              '[mqtt]\nallow_anonymous = false\n')
    with checked_broker(config) as b:  # (at debug: each hash is logged)
        assert _connect(b, b"right") == 0
        assert _connect(b, b"right") == 0  # remembered: not hashed again
        assert b.log().count(HASHED) == 1
        assert _connect(b, b"wrong") == 4  # 3.1.1: bad user name or password
        assert _connect(b, b"wrong") == 4  # a failure is never remembered
        assert b.log().count(HASHED) == 3
        assert _hash_threads(b) == 0


def test_checks_past_the_turns_budget_go_to_the_threads(tmp_path: Path) -> None:
    """The chain itself on a real loop: 100 checks asked in one callback (one turn) run on
    the loop only while the turn's budget lasts, the rest go to the threads and answer
    later; the next turn has a budget again."""
    provider = PasswordFile(str(_file(tmp_path, 101)))
    assert 0 < provider.inline_cost <= INLINE_MAX

    async def run() -> tuple[int, int, int, int]:
        chain = AuthChain(AuthSettings(max_pending_per_address=0), [provider])
        client = ClientInfo("c", "u", "127.0.0.1:1")
        later: list[AuthResult] = []
        first = [chain.authenticate(client, b"wrong-%d" % i, later.append) for i in range(100)]
        for _ in range(2000):  # bounded: the threads' answers come back on the loop
            if len(later) == sum(r is None for r in first):
                break
            await asyncio.sleep(0.005)
        second = [chain.authenticate(client, b"wrong-again", later.append)]
        chain.close()
        inline = [r for r in first if r is not None]
        assert all(r.code == 0x86 for r in inline + later)
        return len(inline), len(later), sum(r is not None for r in second), len(first)

    inline, threaded, next_turn, asked = asyncio.run(run())
    assert inline + threaded == asked
    # As many as fit the budget (at least one), the rest (most) through the threads.
    assert 1 <= inline <= INLINE_TURN_BUDGET / provider.inline_cost + 1
    assert threaded >= asked - inline and threaded > 0
    assert next_turn == 1
