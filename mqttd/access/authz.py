"""The authorization chain (EMQX's authz sources, mosquitto's ACL file and plugins).

For a client, action ("publish", "subscribe", or "deliver" for a message about to be sent
to it) and topic, the chain asks in order: the client ACL an authentication provider
attached (``ClientInfo.acl``), then each configured source. Each answers allow (True),
deny (False) or no match (None); the first answer decides, and ``no_match`` decides when
none answers. Superusers never get here (the broker skips the chain for them).

Decisions are cached per client (``cache_size`` entries, ``cache_ttl`` seconds), so a
client publishing to the same topics pays a dict lookup; ``reload()`` re-reads every
source and drops every cached decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..config import AccessSpec, AuthzSettings
from ..core.services import ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError, build_each

log = logging.getLogger("mqttd.access")

_monotonic = time.monotonic
_NOT_AUTHORIZED = int(RC.NOT_AUTHORIZED)  # a plain int: an enum member costs a lookup

__all__ = ["AuthzChain", "Source", "register_source"]


class Source(Protocol):
    """One authorization source."""

    description: str

    def check(self, client: ClientInfo, action: str, topic: str) -> bool | None:
        """True allow, False deny, None no match."""
        ...

    def reload(self) -> None:
        """Re-read the source; keep the old rules if the new ones are bad (AccessError)."""
        ...


#: Source factories by configured type: ``factory(spec) -> Source`` (raise AccessError).
_SOURCES: dict[str, Callable[[AccessSpec], Source]] = {}

#: A client ACL attached by an authentication provider: a callable with a source's check.
ClientAcl = Callable[[str, str], bool | None]


def register_source(type_name: str, factory: Callable[[AccessSpec], Source]) -> None:
    """Make ``type = "<type_name>"`` in ``[[authz.sources]]`` build with ``factory``."""
    _SOURCES[type_name] = factory


def build_sources(specs: list[AccessSpec]) -> list[Source]:
    """Every configured source, or AccessError listing every problem."""
    return build_each(specs, _SOURCES, "source")


class AuthzChain:
    """The :class:`~mqttd.core.services.Authorizer` the broker is given."""

    def __init__(self, settings: AuthzSettings, sources: list[Source],
                 scopes: list[str | None] | None = None) -> None:
        self.settings = settings
        self.sources = sources
        self._no_match = settings.no_match == "allow"
        #: Per source: the one listener whose clients it judges (a listener's acl_file),
        #: or None (every client). A client no source judges is authorized as without a
        #: chain (as mosquitto's listener without an acl_file): its client ACL, else allow.
        self.scopes = scopes if scopes is not None else [None] * len(sources)
        self._scoped = any(s is not None for s in self.scopes)
        self._global = not self.sources or any(s is None for s in self.scopes)
        self._listeners = {s for s in self.scopes if s is not None}
        #: client id -> {(action, topic): (allowed, expires)}
        self._cache: dict[str, dict[tuple[str, str], tuple[bool, float]]] = {}

    def delivery_check(self, client: ClientInfo) -> Callable[[ClientInfo, str, str], int] | None:
        """:meth:`check`, or None when nothing could refuse ``client`` a delivery: no source,
        no client ACL, and no_match allows (the chain a JWT or HTTP provider brings without
        ``[authz]``, for a client whose login attached no ACL)."""
        if callable(client.acl):
            return self.check
        if not self.sources and self._no_match:
            return None
        if not self._global and client.listener not in self._listeners:
            return None  # no source judges this listener's clients
        return self.check

    @property
    def disconnect_on_deny(self) -> bool:
        """``deny_action = "disconnect"``: a denied publish/subscribe closes the client."""
        return self.settings.deny_action == "disconnect"

    def check(self, client: ClientInfo, action: str, topic: str) -> int:
        # A cached decision is the common case (every delivery asks): answered here,
        # without the call into allowed() and its settings lookups.
        entries = self._cache.get(client.client_id)
        if entries is not None:
            hit = entries.get((action, topic))
            if hit is not None and hit[1] > _monotonic():
                return 0 if hit[0] else _NOT_AUTHORIZED
        return 0 if self.allowed(client, action, topic) else _NOT_AUTHORIZED

    def allowed(self, client: ClientInfo, action: str, topic: str) -> bool:
        """The decision, from the client's cache or the chain."""
        settings = self.settings
        size = settings.cache_size
        now = time.monotonic()
        entries = None
        if size:
            entries = self._cache.get(client.client_id)
            if entries is not None:
                hit = entries.get((action, topic))
                if hit is not None and hit[1] > now:
                    return hit[0]
        decision = self._decide(client, action, topic)
        if size:
            if entries is None:
                entries = self._cache[client.client_id] = {}
            elif len(entries) >= size:
                entries.pop(next(iter(entries)))  # oldest first: dicts keep insertion order
            expires = now + settings.cache_ttl
            token_end = getattr(client.acl, "expires", None)
            if token_end is not None:
                # A token's ACL ends at its exp: no cached "allow" outlives it.
                expires = min(expires, now + (token_end - time.time()))
            entries[(action, topic)] = (decision, expires)
        return decision

    def _decide(self, client: ClientInfo, action: str, topic: str) -> bool:
        acl = client.acl
        if callable(acl):
            verdict = acl(action, topic)
            if verdict is not None:
                return bool(verdict)
        if self._scoped:
            return self._decide_scoped(client, action, topic)
        for source in self.sources:
            verdict = source.check(client, action, topic)
            if verdict is not None:
                return verdict
        return self._no_match

    def _decide_scoped(self, client: ClientInfo, action: str, topic: str) -> bool:
        listener = client.listener
        for source, scope in zip(self.sources, self.scopes, strict=True):
            if scope is not None and scope != listener:
                continue
            verdict = source.check(client, action, topic)
            if verdict is not None:
                return verdict
        if not self._global and listener not in self._listeners:
            return True
        return self._no_match

    def explain(self, client: ClientInfo, action: str, topic: str) -> tuple[bool, str]:
        """The decision the chain makes now (no cache, no hook) and who made it: for
        ``mqttd ctl acl check``. A source with an ``explain`` method names its rule."""
        if client.superuser:
            return True, "superuser (authorization is skipped)"
        acl = client.acl
        if callable(acl):
            verdict = acl(action, topic)
            if verdict is not None:
                return bool(verdict), "the client ACL its authentication attached"
        listener = client.listener
        for source, scope in zip(self.sources, self.scopes, strict=True):
            if scope is not None and scope != listener:
                continue
            explain = getattr(source, "explain", None)
            if explain is not None:
                verdict, why = explain(client, action, topic)
            else:
                verdict, why = source.check(client, action, topic), source.description
            if verdict is not None:
                return verdict, why
        if not self._global and listener not in self._listeners:
            return True, f"no source judges clients of listener {listener} (allowed)"
        return self._no_match, f"no source matched: no_match = {self.settings.no_match}"

    def forget(self, client_id: str) -> None:
        """Drop one client's cached decisions (it disconnected, or its ACL changed)."""
        self._cache.pop(client_id, None)

    def reload(self) -> None:
        """Re-read every source; every cached decision goes. A source that cannot reload
        keeps its old rules; AccessError then lists every such source's problems (the
        others are reloaded all the same)."""
        errors: list[str] = []
        for source in self.sources:
            try:
                source.reload()
            except AccessError as err:
                errors += err.errors
        self._cache.clear()
        if errors:
            raise AccessError(errors)
