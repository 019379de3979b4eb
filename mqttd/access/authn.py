"""The authentication chain (EMQX's authn chain, mosquitto's password and auth plugins).

Providers are asked in order; each answers allow (with what it grants), deny (with a
reason code) or ignore (``None``). The first that does not ignore decides; when all
ignore, the broker applies ``allow_anonymous`` (``core/broker.py``). Before any provider,
the banned table (and flapping detection) may refuse the client outright.

Providers come in three kinds, by what their check costs:

* plain (``kind = "sync"``): answered on the loop, at once (a table lookup);
* ``"blocking"``: CPU-bound work such as PBKDF2, run in a small thread pool so the event
  loop never stalls (``hashlib`` releases the GIL while it hashes); except a check whose
  provider says it is cheap (``inline_cost``, seconds, at most ``INLINE_MAX``: mosquitto_passwd
  2.0's 101 rounds are ~40-60 µs), run on the loop while the loop turn's inline budget
  (``INLINE_TURN_BUDGET``) lasts: two thread hand-offs cost more than such a hash; a
  provider with ``check_many`` gets the turn's checks together right after the turn
  (``_run_batch``), so it can hash them side by side;
* ``"async"``: a coroutine (an HTTP call), awaited on the loop.

A chain of plain providers answers at once, so a CONNECT completes in the same loop turn;
otherwise the chain runs as one task and the channel waits (``ChannelState.AUTHENTICATING``).
Successful blocking checks are remembered for ``cache_ttl`` seconds, keyed by the user
name and a keyed hash of the password (never the password itself).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar, cast, runtime_checkable

from ..config import AccessSpec, AuthSettings
from ..core.services import AuthResult, AuthStep, ClientInfo, EnhancedAuth

log = logging.getLogger("mqttd.access")

T = TypeVar("T")

__all__ = ["AccessError", "AuthChain", "Provider", "register_provider"]


class AccessError(Exception):
    """A provider or source cannot be built from its configuration; ``errors`` holds one
    line each, prefixed with where it was configured (``auth.providers[0].path: ...``)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Provider(Protocol):
    """One authentication provider."""

    #: "sync", "blocking" (run in the hashing threads) or "async" (a coroutine).
    kind: str
    #: For logs and ``mqttd ctl``: the type and what it reads (a file, a URL).
    description: str

    def check(self, client: ClientInfo, password: bytes | None
              ) -> AuthResult | None | Awaitable[AuthResult | None]:
        """allow / deny (an AuthResult) or ignore (None); a coroutine for "async"."""
        ...

    def reload(self) -> None:
        """Re-read what the provider reads (a file); keep the old data if the new is bad
        (raise AccessError to say why)."""
        ...

    def close(self) -> Awaitable[None] | None:
        """Release what the provider holds. What can only be closed on the event loop (an
        HTTP client's pooled connections) comes back as an awaitable (a task already
        running), which ``AuthChain.wait_closed()`` awaits."""
        ...


@runtime_checkable
class EnhancedProvider(Provider, Protocol):
    """A provider that also offers MQTT 5 enhanced authentication methods (SCRAM): a
    CONNECT naming one of ``methods`` as its Authentication Method is decided by an
    exchange from ``exchange(method)`` instead of ``check``."""

    methods: tuple[str, ...]

    def exchange(self, method: str) -> EnhancedAuth: ...


#: Provider factories by configured type: ``factory(spec) -> Provider`` (raise AccessError).
_PROVIDERS: dict[str, Callable[[AccessSpec], Provider]] = {}


def register_provider(type_name: str, factory: Callable[[AccessSpec], Provider]) -> None:
    """Make ``type = "<type_name>"`` in ``[[auth.providers]]`` build with ``factory``."""
    _PROVIDERS[type_name] = factory


def build_each(specs: list[AccessSpec], factories: Mapping[str, Callable[[AccessSpec], T]],
               noun: str) -> list[T]:
    """Build every configured entry of a chain with its type's factory, or AccessError
    listing every problem (an unknown type, each factory's own lines)."""
    errors: list[str] = []
    built: list[T] = []
    for spec in specs:
        factory = factories.get(spec.type)
        if factory is None:
            errors.append(f"{spec.path}.type: unknown {noun} {spec.type!r} (known: "
                          f"{', '.join(sorted(factories))})")
            continue
        try:
            built.append(factory(spec))
        except AccessError as err:
            errors += err.errors
    if errors:
        raise AccessError(errors)
    return built


def build_providers(specs: list[AccessSpec]) -> list[Provider]:
    """Every configured provider, or AccessError listing every problem."""
    return build_each(specs, _PROVIDERS, "provider")


class Gate(Protocol):
    """Asked before any provider (the banned table, flapping detection): a refusal, or
    None to go on."""

    def admit(self, client: ClientInfo) -> AuthResult | None: ...


class AuthChain:
    """The :class:`~mqttd.core.services.Authenticator` the broker is given."""

    def __init__(self, settings: AuthSettings, providers: list[Provider],
                 gates: list[Gate] | None = None,
                 scopes: list[str | None] | None = None) -> None:
        self.settings = settings
        self.providers = providers
        #: Per provider: the one listener whose clients it is asked about (a listener's
        #: password_file), or None (every client).
        self.scopes = scopes if scopes is not None else [None] * len(providers)
        self.gates = gates or []
        self._inline = all(p.kind == "sync" for p in providers)
        self._workers: HashWorkers | None = None
        self._cache: dict[tuple[int, str | None, bytes], tuple[AuthResult, float]] = {}
        self._cache_key = os.urandom(32)
        #: Advanced when cached verdicts are forgotten: a check that started before must
        #: not put its (possibly stale) success back.
        self._epoch = 0
        #: Remote (async) checks running; their count and the hashing jobs' in _pending.
        self._tasks: set[asyncio.Future[AuthResult | None]] = set()
        #: Remote checks whose client may leave, and the timer that asks (``_watch``).
        self._watched: dict[asyncio.Future[AuthResult | None], Callable[[], bool]] = {}
        self._watch_handle: asyncio.TimerHandle | None = None
        self._pending = 0
        #: Seconds of blocking checks run on the loop in this turn (``_inline_ok``), and
        #: whether the reset at the next turn is scheduled.
        self._turn_spent = 0.0
        self._turn_reset = False
        #: Per provider: its ``check_many`` (checks of one turn asked together, their
        #: hashes computed side by side) or None.
        self._many: list[Callable[[list[ClientInfo], list[bytes | None]],
                                  list[AuthResult | None]] | None] = [
            getattr(p, "check_many", None) for p in providers]
        #: The inline checks of this turn waiting for ``_run_batch``: (provider index,
        #: client, password, done, wanted, epoch).
        self._batch: list[_Batched] = []
        self._batch_due = False
        #: Blocking checks run on the loop, and in how many batches (``ctl``-free stats,
        #: read by tests and benchmarks).
        self.on_loop = 0
        self.batches = 0
        #: Checks in progress per client address (only addresses with one or more).
        self._by_address: dict[str, int] = {}
        #: The per-address bound (0: none, and no per-address counts are kept at all).
        self._per_address = settings.max_pending_per_address
        self._busy_logged = -10.0
        self._address_logged = -10.0
        #: Queued checks skipped because their client had gone (``wanted``).
        self.abandoned = 0
        #: What close() started and wait_closed() awaits (HTTP sessions closing).
        self._closing: list[Awaitable[None]] = []
        #: Enhanced authentication method -> the first provider offering it.
        self._methods: dict[str, EnhancedProvider] = {}
        for provider in providers:
            if isinstance(provider, EnhancedProvider):
                for method in provider.methods:
                    self._methods.setdefault(method, provider)

    def authenticate(self, client: ClientInfo, password: bytes | None,
                     done: Callable[[AuthResult], None],
                     wanted: Callable[[], bool] | None = None) -> AuthResult | None:
        for gate in self.gates:
            refused = gate.admit(client)
            if refused is not None:
                return refused
        if not self.providers:
            return _IGNORED
        if self._inline:
            return self._decide_inline(client, password)
        if self._pending >= MAX_PENDING:
            # A connect storm (or an attack with wrong passwords) must not queue hashing
            # work without end: past this many checks in progress, refuse at once.
            self._warn_busy()
            return _BUSY
        per_address = self._per_address
        if not per_address:  # no bound: no address to work out, no count to keep
            self._pending += 1
            result = self._step(0, client, password, done, wanted)
            if result is not None:
                self._pending -= 1  # answered without waiting: ``done`` not called
            return result
        host = client.peerhost
        held = self._by_address.get(host, 0)
        if held >= per_address:
            # One address must not take every place in the bound above from the others.
            self._warn_address(host, held)
            return _BUSY_ADDRESS
        self._pending += 1
        self._by_address[host] = held + 1
        result = self._step(0, client, password, self._releasing(host, done), wanted)
        if result is not None:
            self._pending -= 1  # answered without waiting: returned, ``done`` not called
            self._unhold(host)
        return result

    def _releasing(self, host: str, done: Callable[[AuthResult], None]
                   ) -> Callable[[AuthResult], None]:
        def release_then(result: AuthResult) -> None:
            self._unhold(host)
            done(result)
        return release_then

    def _unhold(self, host: str) -> None:
        left = self._by_address.get(host, 0) - 1
        if left > 0:
            self._by_address[host] = left
        else:
            self._by_address.pop(host, None)

    def _release(self, client: ClientInfo) -> None:
        """A check that never calls its ``done`` ended: free its places."""
        self._pending -= 1
        if self._per_address:
            self._unhold(client.peerhost)

    def _warn_address(self, host: str, held: int) -> None:
        now = time.monotonic()
        if now - self._address_logged >= 10.0:
            self._address_logged = now
            log.warning("%d authentications from %s in progress: refusing its new connections "
                        "with 0x89 (server busy) until some finish ([auth] "
                        "max_pending_per_address; logged at most every 10 s)", held, host)

    # The chain off the loop is driven by callbacks, not a coroutine per CONNECT: a task
    # and asyncio.wrap_future cost more than the PBKDF2 of mosquitto_passwd's 101 rounds.

    def _step(self, i: int, client: ClientInfo, password: bytes | None,
              done: Callable[[AuthResult], None],
              wanted: Callable[[], bool] | None = None) -> AuthResult | None:
        """Ask providers from the ``i``-th on. Returns the answer when it came without
        waiting; None when a provider must be waited for (it answers via ``_answered``,
        which calls ``done``)."""
        providers = self.providers
        scopes = self.scopes
        while i < len(providers):
            provider = providers[i]
            scope = scopes[i]
            if scope is not None and scope != client.listener:
                i += 1
                continue
            kind = provider.kind
            if kind == "blocking":
                key = self._key(i, client, password)
                if key is not None:
                    # Remembered per provider: a success of this provider never skips the
                    # ones before it (they may judge the client id, the listener, a token).
                    hit = self._cache.get(key)
                    if hit is not None and hit[1] > time.monotonic():
                        return hit[0]
                many = self._many[i]
                # (a batch queue already BATCH_QUEUED long: the threads, not a longer queue)
                if (many is None or len(self._batch) < BATCH_QUEUED) \
                        and self._inline_ok(provider):
                    if many is not None:
                        # Answered at the end of the turn, with the turn's other checks:
                        # their hashes side by side cost a third of one after another.
                        self._batch.append((i, client, password, done, wanted, self._epoch))
                        if not self._batch_due:
                            self._batch_due = True
                            asyncio.get_running_loop().call_soon(self._run_batch)
                        return None
                    self.on_loop += 1
                    try:
                        answer = provider.check(client, password)
                    except Exception as exc:  # a provider's bug refuses this client only
                        return self._failed(i, client, exc)
                    if answer is None:
                        i += 1
                        continue
                    result = cast("AuthResult", answer)  # blocking: a sync check
                    if not result.code and key is not None:
                        self._remember(key, result)
                    return result
                loop = asyncio.get_running_loop()
                self._workers_for(loop).submit(
                    provider.check, client, password,  # type: ignore[arg-type]  # blocking: sync
                    functools.partial(self._answered, i, client, password, done,
                                      epoch=self._epoch, wanted=wanted), wanted,
                    self._many[i])
                return None
            try:
                answer = provider.check(client, password)
            except Exception as exc:  # a provider's bug refuses this client only
                return self._failed(i, client, exc)
            if kind == "async":
                task = asyncio.ensure_future(answer)  # type: ignore[arg-type]
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._resume, i, client, password,
                                                         done, wanted))
                if wanted is not None:
                    self._watch(task, wanted)
                return None
            if answer is not None:
                return answer  # type: ignore[return-value]  # a sync provider's answer
            i += 1
        return _UNKNOWN

    def _inline_ok(self, provider: Provider) -> bool:
        """Whether ``provider``'s blocking check may run on the loop now: it says it is
        cheap, and this loop turn's inline budget has room for it (then counted against
        it). The budget counts each check's estimate, not its wall time: a hash whose
        thread was preempted (a busy machine) did not cost the loop more of its own work,
        and sending the rest of the turn's checks to the threads would add hand-offs."""
        cost = getattr(provider, "inline_cost", 0.0)
        spent = self._turn_spent + cost
        if not cost or cost > INLINE_MAX or spent > INLINE_TURN_BUDGET:
            return False
        self._turn_spent = spent
        if not self._turn_reset:
            self._turn_reset = True
            asyncio.get_running_loop().call_soon(self._new_turn)
        return True

    def _new_turn(self) -> None:
        self._turn_spent = 0.0
        self._turn_reset = False

    def _run_batch(self) -> None:
        """The checks ``_step`` put off in this turn, asked of their providers together
        (``check_many``); each answer then goes on as a thread's would (``_answered``).
        At most ``BATCH_MAX`` a callback: the rest wait for the next, so what else the
        loop has to do (a PINGREQ, a PUBLISH) gets in between (each answer also costs
        its CONNACK, ~50 µs)."""
        batch = self._batch
        self._batch = batch[BATCH_MAX:]
        del batch[BATCH_MAX:]
        self._batch_due = bool(self._batch)
        if self._batch_due:
            asyncio.get_running_loop().call_soon(self._run_batch)
        by_provider: dict[int, list[_Batched]] = {}
        for job in batch:
            wanted = job[4]
            if wanted is not None and not wanted():  # its client left: no hash for it
                self._release(job[1])
                self.abandoned += 1
                continue
            by_provider.setdefault(job[0], []).append(job)
        for i, jobs in by_provider.items():
            many = self._many[i]
            assert many is not None  # (only such providers' checks are batched)
            provider = self.providers[i]
            if getattr(provider, "inline_cost", 0.0) > INLINE_MAX:
                # Reloaded since these were queued, and dear now: the threads hash them.
                workers = self._workers_for(asyncio.get_running_loop())
                for _, client, password, done, wanted, epoch in jobs:
                    workers.submit(provider.check, client, password,  # type: ignore[arg-type]
                                   functools.partial(self._answered, i, client, password,
                                                     done, epoch=epoch, wanted=wanted),
                                   wanted, many)
                continue
            self.on_loop += len(jobs)
            self.batches += 1
            answers: list[AuthResult | None] | None = None
            error: Exception | None = None
            try:
                answers = many([job[1] for job in jobs], [job[2] for job in jobs])
                if len(answers) != len(jobs):
                    raise RuntimeError(f"check_many answered {len(answers)} of {len(jobs)}")
            except Exception as exc:  # a provider's bug refuses these clients only
                answers, error = None, exc
            for k, (_, client, password, done, wanted, epoch) in enumerate(jobs):
                try:  # (one answer's failure must not leave the others unanswered)
                    self._answered(i, client, password, done,
                                   None if answers is None else answers[k], error,
                                   epoch=epoch, wanted=wanted)
                except Exception:
                    log.exception("answering the authentication of %s failed",
                                  client.client_id)

    def _failed(self, i: int, client: ClientInfo, exc: BaseException) -> AuthResult:
        log.error("authentication of %s failed in %s: %s", client.client_id,
                  self.providers[i].description, type(exc).__name__)
        return AuthResult(0x80, reason="authentication error")

    def _watch(self, task: asyncio.Future[AuthResult | None], wanted: Callable[[], bool]
               ) -> None:
        """Cancel ``task`` once its client has gone (``wanted()`` False): a remote check
        nobody waits for must not hold a connection to the server, a place in the pending
        bound and its address's share until its timeout. One timer for all such checks
        asks every ``WATCH_INTERVAL`` (the channel learns of a lost socket at once, but
        has no way to reach the chain; a poll of a flag per pending check is cheap)."""
        self._watched[task] = wanted
        if self._watch_handle is None:
            self._watch_handle = asyncio.get_running_loop().call_later(
                WATCH_INTERVAL, self._poll_watched)

    def _poll_watched(self) -> None:
        self._watch_handle = None
        watched = self._watched
        for task, wanted in list(watched.items()):
            if task.done():
                del watched[task]
            elif not wanted():
                del watched[task]
                self.abandoned += 1
                task.cancel()  # _resume releases its place
        if watched:
            self._watch_handle = asyncio.get_running_loop().call_later(
                WATCH_INTERVAL, self._poll_watched)

    def _resume(self, i: int, client: ClientInfo, password: bytes | None,
                done: Callable[[AuthResult], None], wanted: Callable[[], bool] | None,
                future: asyncio.Future[AuthResult | None]) -> None:
        """An async provider's check finished."""
        self._tasks.discard(future)
        self._watched.pop(future, None)
        if future.cancelled():
            self._release(client)
            return  # closing, or its client left: nobody waits for the answer any more
        exc = future.exception()
        self._answered(i, client, password, done, None if exc else future.result(), exc,
                       wanted=wanted)

    def _answered(self, i: int, client: ClientInfo, password: bytes | None,
                  done: Callable[[AuthResult], None], result: AuthResult | None,
                  exc: BaseException | None, *, epoch: int = -1,
                  wanted: Callable[[], bool] | None = None) -> None:
        """Provider ``i`` answered (on the loop's thread)."""
        if exc is ABANDONED:  # the client left before its check started: nobody waits
            self._release(client)
            self.abandoned += 1
            return
        if exc is not None:
            self._finish(self._failed(i, client, exc), done)
            return
        if result is None:
            later = self._step(i + 1, client, password, done, wanted)
            if later is not None:
                self._finish(later, done)
            return
        # Only what costs a hash is remembered: a token's expiry and claims, or a remote
        # server's per-client answer, must be judged every time.
        if not result.code and self.providers[i].kind == "blocking" and epoch == self._epoch:
            key = self._key(i, client, password)
            if key is not None:
                self._remember(key, result)
        self._finish(result, done)

    def _finish(self, result: AuthResult, done: Callable[[AuthResult], None]) -> None:
        self._pending -= 1
        done(result)

    def enhanced_auth(self, method: str, client: ClientInfo, *, reauth: bool = False
                      ) -> EnhancedAuth | None:
        """An exchange for ``method`` from the provider offering it (None: none does).
        At CONNECT the gates are asked as for a password, at the exchange's first step."""
        provider = self._methods.get(method)
        if provider is None:
            return None
        exchange = provider.exchange(method)
        return exchange if reauth or not self.gates else _Gated(exchange, self.gates)

    def _warn_busy(self) -> None:
        now = time.monotonic()
        if now - self._busy_logged >= 10.0:
            self._busy_logged = now
            log.warning("%d authentications in progress: refusing new connections with 0x89 "
                        "(server busy) until some finish (logged at most every 10 s)",
                        self._pending)

    def _decide_inline(self, client: ClientInfo, password: bytes | None) -> AuthResult:
        scopes = self.scopes
        for i, provider in enumerate(self.providers):
            scope = scopes[i]
            if scope is not None and scope != client.listener:
                continue
            try:
                result = provider.check(client, password)
            except Exception as exc:  # a provider's bug refuses this client only
                return self._failed(i, client, exc)
            if result is not None:
                return result  # type: ignore[return-value]  # sync providers only here
        return _UNKNOWN

    def _key(self, i: int, client: ClientInfo, password: bytes | None
             ) -> tuple[int, str | None, bytes] | None:
        if password is None or self.settings.cache_ttl <= 0:
            return None
        # Keyed BLAKE2s (a MAC by design, RFC 7693) under the node's random key: 0.8 µs a
        # CONNECT against ~3 µs for an HMAC-SHA256 through OpenSSL 3 (its EVP fetch).
        return i, client.username, hashlib.blake2s(password, key=self._cache_key).digest()

    def _remember(self, key: tuple[int, str | None, bytes], result: AuthResult) -> None:
        cache = self._cache
        if len(cache) >= 10_000:  # bounded: a flood of distinct passwords cannot grow it
            cache.clear()
        cache[key] = (result, time.monotonic() + self.settings.cache_ttl)

    def _workers_for(self, loop: asyncio.AbstractEventLoop) -> HashWorkers:
        if self._workers is None:
            self._workers = HashWorkers(self.settings.hash_threads, loop)
        return self._workers

    def forget_user(self, username: str) -> None:
        """Forget the cached verdicts about ``username`` (its password changed, or it was
        deleted: an old password must not keep working until the cache entry ends)."""
        self._epoch += 1
        for key in [k for k in self._cache if k[1] == username]:
            del self._cache[key]

    def reload(self) -> None:
        """Re-read every provider's files; forget cached successes. A provider that cannot
        reload keeps its old data; AccessError then lists every such provider's problems
        (the others are reloaded all the same)."""
        errors: list[str] = []
        for provider in self.providers:
            try:
                provider.reload()
            except AccessError as err:
                errors += err.errors
        self._epoch += 1
        self._cache.clear()
        if errors:
            raise AccessError(errors)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        self._watched.clear()
        for provider in self.providers:
            closing = provider.close()
            if closing is not None:
                self._closing.append(closing)
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    async def wait_closed(self) -> None:
        """After close(): until what providers close on the loop has closed."""
        closing, self._closing = self._closing, []
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)


#: A check put off to the end of its turn (``AuthChain._run_batch``).
_Batched = tuple[int, ClientInfo, "bytes | None", Callable[[AuthResult], None],
                 "Callable[[], bool] | None", int]

#: A blocking check for the hashing threads: the check, its arguments, where the answer goes,
#: whether it is still wanted, and the provider's check_many (or None).
_Check = Callable[[ClientInfo, bytes | None], "AuthResult | None"]
_Many = Callable[[list[ClientInfo], list[bytes | None]], list["AuthResult | None"]]
_Job = tuple[_Check, ClientInfo, bytes | None,
             Callable[[AuthResult | None, BaseException | None], None],
             "Callable[[], bool] | None", "_Many | None"]


class _Abandoned(Exception):
    """A queued check skipped: its client went away before the check started."""


ABANDONED = _Abandoned()


#: Niceness of the hashing threads (Linux: per thread), relative to the default 0.
HASH_NICE = 10


class HashWorkers:
    """Threads that run blocking checks (password hashing) off the event loop.

    Lighter than a ThreadPoolExecutor per check: a C queue in, one
    ``call_soon_threadsafe`` out, no Future, lock or condition per CONNECT (on one core
    those cost more than the 101 PBKDF2 rounds of a mosquitto_passwd 2.0 file).
    ``hashlib`` releases the GIL while it hashes, so the loop runs meanwhile.
    """

    def __init__(self, threads: int, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop = loop
        #: Checks run together with others (a statistic: batches of two or more).
        self.together = 0
        self._threads = [threading.Thread(target=self._work, name=f"mqttd-auth-{n}",
                                          daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, check: _Check, client: ClientInfo,
               password: bytes | None,
               answered: Callable[[AuthResult | None, BaseException | None], None],
               wanted: Callable[[], bool] | None = None, many: _Many | None = None) -> None:
        """Run ``check(client, password)`` in a thread; ``answered(result, error)`` on the
        loop's thread (error ABANDONED, without the check, if ``wanted()`` is False by
        the time a thread takes the job). With ``many`` (the provider's ``check_many``), a
        thread takes up to ``THREAD_BATCH`` such jobs queued meanwhile and checks them
        together (their hashes side by side)."""
        self._queue.put((check, client, password, answered, wanted, many))

    def _work(self) -> None:
        # Below the event loop's thread in the scheduler: where they share a core, a
        # hash never keeps the loop (every connected client's traffic) waiting for its
        # time slice; hashing only gets what the loop leaves.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
        except (AttributeError, OSError):  # not Linux, or not allowed: same priority
            pass
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        while True:
            job = get()
            if job is None:
                return
            jobs = [job]
            stop = False
            if job[5] is not None:  # batchable: take what else waits, up to a batch
                while len(jobs) < THREAD_BATCH:
                    try:
                        more = get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True  # closing: after these
                        break
                    jobs.append(more)
            if not self._run(jobs) or stop:
                return

    def _run(self, jobs: list[_Job]) -> bool:
        """Check ``jobs`` and hand each answer to the loop; False once the loop is gone."""
        answers: list[tuple[_Job, AuthResult | None, BaseException | None]] = []
        together: dict[_Many, list[_Job]] = {}
        for job in jobs:
            check, client, password, _, wanted, many = job
            if wanted is not None and not wanted():
                answers.append((job, None, ABANDONED))  # a PBKDF2 nobody waits for
            elif many is not None:
                together.setdefault(many, []).append(job)
            else:
                answers.append(self._one(job))
        for many, group in together.items():
            if len(group) == 1:
                answers.append(self._one(group[0]))
                continue
            self.together += len(group)  # (a statistic: two threads may race on it)
            try:
                results = many([job[1] for job in group], [job[2] for job in group])
                answers += [(job, result, None)
                            for job, result in zip(group, results, strict=True)]
            except Exception as exc:  # handed to the loop, which logs it and refuses
                answers += [(job, None, exc) for job in group]
        loop = self._loop
        for job, result, error in answers:
            try:
                loop.call_soon_threadsafe(job[3], result, error)
            except RuntimeError:  # the loop is closed: the broker is gone
                return False
        return True

    @staticmethod
    def _one(job: _Job) -> tuple[_Job, AuthResult | None, BaseException | None]:
        try:
            return job, job[0](job[1], job[2]), None
        except Exception as exc:  # handed to the loop, which logs it and refuses
            return job, None, exc

    def close(self) -> None:
        """Stop the threads once the jobs queued before are done (not waited for)."""
        for _ in self._threads:
            self._queue.put(None)


#: No provider configured: allow_anonymous decides.
_IGNORED = AuthResult(0, decided=False)
#: Providers were asked and every one ignored the client.
_UNKNOWN = AuthResult(0, decided=False, asked=True)

#: A blocking check estimated to cost at most this many seconds (``inline_cost``) may run
#: on the loop; dearer ones always go to the hashing threads.
INLINE_MAX = 0.0005
#: Seconds of inline checks per loop turn at most (a storm of CONNECTs read in one turn; each
#: counted as its provider's ``inline_cost``): past it the turn's further checks go to the
#: threads, so the loop stands still no longer.
INLINE_TURN_BUDGET = 0.002

#: Checks ``AuthChain._run_batch`` answers in one callback at most (two vectors of eight).
BATCH_MAX = 16
#: Checks waiting for ``_run_batch`` at most: past it a cheap check goes to the threads
#: (the turn's budget lets in more than a callback answers; the queue must not grow).
BATCH_QUEUED = 2 * BATCH_MAX
#: Queued checks a hashing thread takes at once at most (one vector of eight): a dear hash
#: (210,000 rounds, ~70 ms) makes a queue in a storm, and eight side by side cost ~3 alone.
THREAD_BATCH = 8

#: Seconds between two looks at whether the clients of remote checks are still there.
WATCH_INTERVAL = 0.25

#: Authentications (hashing, remote calls) in progress at most; more are refused with 0x89
#: (server busy), which MQTT 5 clients take as "retry later".
MAX_PENDING = 1024
_BUSY = AuthResult(0x89, reason="server busy: too many authentications in progress")
_BUSY_ADDRESS = AuthResult(0x89, reason="server busy: too many authentications in progress "
                           "from this address")


class _Gated:
    """An exchange whose client the gates (banned, flapping) admit first, once its first
    step has named the user (a SCRAM client-first does): a ban on that user name holds
    even when the CONNECT carried no User Name."""

    __slots__ = ("exchange", "gates")

    def __init__(self, exchange: EnhancedAuth, gates: list[Gate]) -> None:
        self.exchange = exchange
        self.gates = gates

    def start(self, client: ClientInfo, data: bytes | None) -> AuthStep:
        step = self.exchange.start(client, data)
        if step.username is not None and step.username != client.username:
            client = client._replace(username=step.username)
        for gate in self.gates:
            refused = gate.admit(client)
            if refused is not None:
                return AuthStep(result=refused)
        return step

    def next(self, data: bytes | None) -> AuthStep:
        return self.exchange.next(data)
