"""The keys of a JSON Web Key Set (RFC 7517) served at a URL, for the ``jwt`` provider's
``jwks_url`` (EMQX's JWKS endpoint option): an identity provider publishes its signing keys
there and rotates them without telling mqttd.

The set is fetched with aiohttp on the event loop at the first check, kept, fetched again
every ``jwks_refresh`` (in the background: checks go on with the keys in hand) and when a
token names a ``kid`` the set does not hold, at most once every ``jwks_min_interval`` (a
stream of tokens with made-up key ids must not become a stream of requests). Concurrent
checks that need a fetch share one request. A failed fetch keeps the keys in hand and is
logged at warning with the URL and what went wrong (never a token), at most one line every
few seconds.

Keys are parsed by PyJWT (``PyJWK``). Left out, with a warning: symmetric keys (``oct``: a
secret published over HTTP is no secret), keys marked ``"use": "enc"``, RSA keys under
2048 bits, and key types PyJWT cannot use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .httpclient import close_session, open_session

log = logging.getLogger("mqttd.access")

__all__ = ["JwksKeys"]

#: Largest set read from the server (a set of a few keys is a few KiB).
_MAX_BODY = 1024 * 1024
#: Seconds between two warnings about failed fetches.
_WARN_EVERY = 5.0
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _family(key: Any) -> tuple[str, ...]:
    """The algorithms a key can verify (a token's header must not pick another: PyJWT
    would be handed a key of the wrong type)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVES.get(key.curve.name)
        return (alg,) if alg else ()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ("EdDSA",)
    return ()


class JwksKeys:
    """The key set at ``url``: :meth:`pick` a key by ``kid``, :meth:`fetch` when it is
    missing, :meth:`maybe_refresh` on every check."""

    def __init__(self, url: str, refresh: float, min_interval: float, timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.refresh = refresh
        self.min_interval = min_interval
        self.timeout = timeout
        self.ssl = ssl_context
        #: kid -> (key object, the algorithms it may verify: the JWK's ``alg``, else the
        #: key type's family).
        self.keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        #: Whether a fetch ever succeeded (until then a token cannot be judged).
        self.loaded = False
        #: Monotonic time of the last fetch started (0: none yet).
        self._fetched_at = 0.0
        self._fetching: asyncio.Future[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warned = 0.0
        self._skipped = 0
        #: Fetches done (for tests and logs).
        self.fetches = 0

    def pick(self, kid: str | None) -> tuple[Any, tuple[str, ...]] | None:
        """The key for ``kid``; a token without a kid may use the set's only key."""
        entry = self.keys.get(kid)
        if entry is None and kid is None and len(self.keys) == 1:
            entry = next(iter(self.keys.values()))
        return entry

    def stale(self) -> bool:
        return time.monotonic() - self._fetched_at >= self.refresh

    def maybe_refresh(self) -> None:
        """Start a background fetch when the set is older than ``refresh``."""
        if self._fetching is None and self.stale():
            self._start()

    async def fetch(self) -> None:
        """Fetch now unless a fetch ran within ``min_interval`` (then return at once) or
        is running (then wait for it)."""
        if self._fetching is None:
            if self._fetched_at and time.monotonic() - self._fetched_at < self.min_interval:
                return
            self._start()
        assert self._fetching is not None
        await asyncio.shield(self._fetching)

    def forget(self) -> None:
        """Fetch again at the next check (a reload of the chain)."""
        self._fetched_at = 0.0

    def _start(self) -> None:
        self._fetched_at = time.monotonic()
        task = asyncio.ensure_future(self._fetch())
        self._fetching = task
        task.add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Future[None]) -> None:
        self._fetching = None
        if not task.cancelled() and task.exception() is not None:
            self._warn(f"failed: {type(task.exception()).__name__}")

    async def _fetch(self) -> None:
        session = self._session = open_session(self._session, 2, self.ssl, self.timeout)
        self.fetches += 1
        try:
            async with session.get(self.url, allow_redirects=False) as resp:
                if resp.status != 200:
                    self._warn(f"answered {resp.status}")
                    return
                raw = await resp.content.read(_MAX_BODY + 1)
        except TimeoutError:
            self._warn(f"no answer within {self.timeout:g}s")
            return
        except (aiohttp.ClientError, OSError) as err:
            self._warn(f"failed: {type(err).__name__}")
            return
        if len(raw) > _MAX_BODY:
            self._warn(f"answered more than {_MAX_BODY} bytes")
            return
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._warn("answered something that is not JSON")
            return
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            self._warn('answered JSON without a "keys" list')
            return
        keys = self._parse(data["keys"])
        if not keys:
            self._warn("holds no usable signing key; keeping the keys in hand")
            return
        if not self.loaded or set(keys) != set(self.keys):
            log.info("jwt: %d keys from %s (kid %s)", len(keys), self.url,
                     ", ".join(sorted(str(k) for k in keys)))
        self.keys = keys
        self.loaded = True

    def _parse(self, entries: list[Any]) -> dict[str | None, tuple[Any, tuple[str, ...]]]:
        keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self._skip(i, None, "not a JSON object")
                continue
            kid = entry.get("kid")
            kid = kid if isinstance(kid, str) else None
            if entry.get("kty") == "oct":
                self._skip(i, kid, "a symmetric (oct) key is never taken from a URL")
                continue
            if entry.get("use") not in (None, "sig"):
                self._skip(i, kid, f"use {entry.get('use')!r} is not sig")
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as err:
                self._skip(i, kid, f"not a usable key ({type(err).__name__})")
                continue
            key = jwk.key
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
                self._skip(i, kid, f"a {key.key_size}-bit RSA key is too weak (at least 2048)")
                continue
            family = _family(key)
            alg = entry.get("alg")
            if isinstance(alg, str):
                if alg not in family:
                    self._skip(i, kid, f"alg {alg!r} does not fit the key")
                    continue
                family = (alg,)
            if not family:
                self._skip(i, kid, f"unsupported key type {type(key).__name__}")
                continue
            keys[kid] = (key, family)
        return keys

    def _skip(self, i: int, kid: str | None, why: str) -> None:
        log.warning("jwt: %s: key %d%s left out: %s", self.url, i,
                    f" (kid {kid})" if kid else "", why)

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if self._warned and now - self._warned < _WARN_EVERY:
            self._skipped += 1
            return
        more = f" ({self._skipped} more since the last such line)" if self._skipped else ""
        self._warned, self._skipped = now, 0
        log.warning("jwt: JWKS %s %s%s", self.url, what, more)

    def close(self) -> Awaitable[None] | None:
        """Stop a fetch in progress and close the client session (a task on the running
        loop, as the http provider's close)."""
        if self._fetching is not None:
            self._fetching.cancel()
            self._fetching = None
        session, self._session = self._session, None
        return close_session(session)
