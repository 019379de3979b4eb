"""Cheap password hashes are checked on the event loop, dear ones in the hashing threads
(mqttd/access/authn.py ``INLINE_MAX``, ``INLINE_TURN_BUDGET``), against a real daemon.

A mosquitto_passwd 2.0 file (101 PBKDF2 rounds, ~70 µs a hash) costs less to hash than to
hand to a thread and back: its checks run on the loop and no hashing thread is ever
started, with the same verdicts and the same cache. Checks asked in one loop turn beyond the
turn's budget go to the threads. A 210,000-round file never hashes on the loop
(tests/test_access_password.py: its storm's pings are answered all along)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

from support import builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.access.authn import (
    BATCH_MAX,
    BATCH_QUEUED,
    HASH_NICE,
    INLINE_MAX,
    INLINE_TURN_BUDGET,
    AuthChain,
)
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
    """The chain itself on a real loop: of 100 checks asked in one callback (one turn), those
    the turn's budget holds are answered on the loop after it, together (batches, their
    hashes side by side), the rest go to the threads; every one answers once,
    with the right verdict, and the next turn has a budget again."""
    provider = PasswordFile(str(_file(tmp_path, 101)))
    assert 0 < provider.inline_cost <= INLINE_MAX

    async def settle(answers: list[AuthResult], n: int) -> None:
        for _ in range(2000):  # bounded: the threads' answers come back on the loop
            if len(answers) >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{len(answers)} of {n} checks answered")

    async def run() -> tuple[int, int, int, int]:
        chain = AuthChain(AuthSettings(max_pending_per_address=0), [provider])
        client = ClientInfo("c", "u", "127.0.0.1:1")
        later: list[AuthResult] = []
        first = [chain.authenticate(client, b"wrong-%d" % i, later.append) for i in range(100)]
        # Every check waits: the cheap ones for the end of the turn, the rest for a thread.
        assert first == [None] * 100 and (chain.on_loop, chain.batches) == (0, 0)
        await settle(later, 100)
        inline, batches = chain.on_loop, chain.batches
        assert chain.authenticate(client, b"wrong-again", later.append) is None
        await settle(later, 101)
        chain.close()
        assert len(later) == 101 and all(r.code == 0x86 for r in later)
        assert chain.batches == batches + 1
        return inline, batches, chain.on_loop - inline, len(first)

    inline, batches, next_turn, asked = asyncio.run(run())
    # As many as fit the budget (at least one), in batches of at most BATCH_MAX (one
    # callback each, the loop free in between); the rest (most) through the threads.
    assert 1 <= inline <= min(INLINE_TURN_BUDGET / provider.inline_cost + 1, BATCH_QUEUED)
    assert batches == -(-inline // BATCH_MAX) and asked - inline > 0
    assert next_turn == 1


def _mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_text("".join(f"{user}:{hash_password(pw, n).encode()}\n" for user, pw, n in [
        ("a", b"pa", 101), ("b", b"pb", 101), ("c", b"pc", 50), ("d", b"pd", 101),
        ("e", b"pe" * 100, 101)]) + "old:$6$" + _sha512_crypt(b"po") + "\n")
    return path


def _sha512_crypt(password: bytes) -> str:
    """A mosquitto 1.x ``$6$`` field: base64 salt $ base64 SHA-512(password + salt)."""
    salt = b"0123456789ab"
    return (base64.b64encode(salt).decode() + "$"
            + base64.b64encode(hashlib.sha512(password + salt).digest()).decode())


#: (user, password) per client: right and wrong passwords of users with 101 and 50 rounds,
#: a key longer than SHA-512's block, a $6$ user, no password, an unknown user (with and
#: without a password), no user name; more than eight, so a batch takes two vectors.
MIXED: list[tuple[str | None, bytes | None]] = [
    ("a", b"pa"), ("b", b"wrong"), ("c", b"pc"), ("d", b"pd"), ("e", b"pe" * 100),
    ("old", b"po"), ("old", b"pO"), ("a", None), ("nobody", b"x"), ("nobody", None),
    (None, b"pa"), ("c", b"pa"), ("b", b"pb"), ("a", b"pa"), ("d", b"")]


def _verdict(result: AuthResult | None) -> tuple[int, bool] | None:
    return None if result is None else (result.code, result.credential is not None)


def test_checks_asked_together_get_the_verdicts_of_checks_asked_alone(
        tmp_path: Path) -> None:
    provider = PasswordFile(str(_mixed_file(tmp_path)))
    clients = [ClientInfo(f"c{k}", user, "127.0.0.1:1") for k, (user, _) in enumerate(MIXED)]
    passwords = [pw for _, pw in MIXED]
    alone = [_verdict(provider.check(c, p)) for c, p in zip(clients, passwords, strict=True)]
    assert alone == [(0, True), (0x86, False), (0, True), (0, True), (0, True),
                     (0, True), (0x86, False), (0x86, False), None, None,
                     None, (0x86, False), (0, True), (0, True), (0x86, False)]
    for n in (1, 2, 3, 4, 5, 8, 9, len(MIXED)):  # one alone, 4 lanes, 8 lanes, two vectors
        together = [_verdict(r) for r in provider.check_many(clients[:n], passwords[:n])]
        assert together == alone[:n], n


def test_a_connect_storm_is_hashed_in_batches_with_the_right_verdicts(tmp_path: Path) -> None:
    """Real clients, their CONNECTs sent at once: each gets its own verdict (the ones hashed
    side by side too), and no hashing thread starts."""
    config = (f'[auth]\npassword_file = "{_mixed_file(tmp_path)}"\n'
              'max_pending_per_address = 0\n\n[mqtt]\nallow_anonymous = false\n')
    # (3.1.1 has no password without a user name: that one is left out)
    mixed = [(user, pw) for user, pw in MIXED if user is not None]
    # 4: bad user name or password (an unknown user too: allow_anonymous = false refuses it)
    expected = [0, 4, 0, 0, 0, 0, 4, 4, 4, 4, 4, 0, 0, 4]
    with checked_broker(config) as b:
        for _ in range(3):
            raws = [RawClient(b) for _ in mixed]
            try:
                for raw, (user, password) in zip(raws, mixed, strict=True):
                    raw.send(B.connect(f"storm-{uid()}", username=user, password=password))
                codes = [raw.expect(Connack).reason_code for raw in raws]
            finally:
                for raw in raws:
                    raw.close()
            assert codes == expected
        assert _hash_threads(b) == 0


def test_the_hashing_threads_take_queued_checks_together(tmp_path: Path) -> None:
    """A dear file (never hashed on the loop): checks queued while a thread hashes are taken
    up to eight at a time and hashed side by side; each still gets its own verdict, once."""
    provider = PasswordFile(str(_file(tmp_path, 20_000)))
    assert provider.inline_cost > INLINE_MAX

    async def run() -> tuple[list[int], int]:
        chain = AuthChain(AuthSettings(max_pending_per_address=0, hash_threads=1), [provider])
        answers: dict[int, list[int]] = {}
        asked = [chain.authenticate(
            ClientInfo(f"c{k}", "u", "127.0.0.1:1"), b"right" if k % 3 else b"wrong",
            lambda r, k=k: answers.setdefault(k, []).append(r.code)) for k in range(20)]
        assert asked == [None] * 20
        for _ in range(2000):  # bounded: 20 hashes of 20,000 rounds
            if len(answers) == 20:
                break
            await asyncio.sleep(0.005)
        workers = chain._workers
        assert workers is not None
        together = workers.together
        chain.close()
        assert all(len(codes) == 1 for codes in answers.values())
        return [answers[k][0] for k in range(20)], together

    codes, together = asyncio.run(run())
    assert codes == [0x86 if k % 3 == 0 else 0 for k in range(20)]
    # The first job may be taken alone; the rest queued meanwhile (all 20 are queued in
    # microseconds, a hash takes milliseconds) go in batches.
    assert together >= 8


def test_checks_queued_cheap_go_to_the_threads_if_a_reload_made_the_file_dear(
        tmp_path: Path) -> None:
    """Checks queued for the end of the turn (a cheap file), then the file reloaded with a
    dear hash before that: the loop does not run those hashes, the threads do, against
    the new file, and each client gets its verdict once."""
    path = _file(tmp_path, 101)
    provider = PasswordFile(str(path))

    async def run() -> tuple[list[int], int, bool]:
        chain = AuthChain(AuthSettings(max_pending_per_address=0), [provider])
        answers: dict[int, list[int]] = {}
        asked = [chain.authenticate(
            ClientInfo(f"c{k}", "u", "127.0.0.1:1"), b"right" if k else b"wrong",
            lambda r, k=k: answers.setdefault(k, []).append(r.code)) for k in range(3)]
        assert asked == [None] * 3
        path.write_text(f"u:{hash_password(b'right', 20_000).encode()}\n")
        provider.reload()  # (in the same callback: before the turn's batch runs)
        assert provider.inline_cost > INLINE_MAX
        for _ in range(2000):  # bounded: 3 hashes of 20,000 rounds in a thread
            if len(answers) == 3:
                break
            await asyncio.sleep(0.005)
        threads = chain._workers is not None
        on_loop = chain.on_loop
        chain.close()
        assert all(len(codes) == 1 for codes in answers.values())
        return [answers[k][0] for k in range(3)], on_loop, threads

    codes, on_loop, threads = asyncio.run(run())
    assert codes == [0x86, 0, 0]
    assert on_loop == 0 and threads


def test_a_failing_answer_does_not_cost_the_rest_of_its_batch_theirs(tmp_path: Path) -> None:
    """One client's continuation raising (a bug past the chain) is logged; the checks
    answered in the same batch after it still get their verdicts."""
    provider = PasswordFile(str(_file(tmp_path, 101)))

    async def run() -> dict[int, int]:
        chain = AuthChain(AuthSettings(max_pending_per_address=0), [provider])
        answers: dict[int, int] = {}

        def done(k: int, result: AuthResult) -> None:
            answers[k] = result.code
            if k == 0:
                raise RuntimeError("a bug in the first client's continuation")

        for k in range(4):
            assert chain.authenticate(ClientInfo(f"c{k}", "u", "127.0.0.1:1"), b"right",
                                      lambda r, k=k: done(k, r)) is None
        for _ in range(200):  # bounded: one batch, the next loop turn
            if len(answers) == 4:
                break
            await asyncio.sleep(0.005)
        chain.close()
        return answers

    assert asyncio.run(run()) == {0: 0, 1: 0, 2: 0, 3: 0}
