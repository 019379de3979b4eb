"""Builds the access chains from the settings (what the node wires into the broker)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import AccessSpec, Settings
from . import http, jwt, password_file  # noqa: F401  (imported: register their provider types)
from .acl_file import AclFile  # noqa: F401  (imported: registers its source type)
from .authn import AccessError, AuthChain, Gate, build_providers
from .authz import AuthzChain, build_sources
from .banned import BANNED_FILE, BannedTable, kick_banned
from .flapping import Flapping
from .scram import ScramFile  # noqa: F401  (imported: registers its provider type)
from .users import BuiltinUsers, UserTable

if TYPE_CHECKING:
    from ..core.registry import Registry
    from ..core.services import Timers
    from ..metrics import Metrics

__all__ = ["Access", "AccessError", "build_access"]


@dataclass(slots=True)
class Access:
    """The node's access control: the two chains (authz None when there is neither a
    source nor a provider that attaches client ACLs)."""

    authn: AuthChain
    authz: AuthzChain | None
    #: The banned table (the chain's first gate) and flapping detection (None: off).
    banned: BannedTable = field(default_factory=BannedTable)
    flapping: Flapping | None = None
    #: The built-in user table (None: no store to keep it in).
    users: UserTable | None = None

    def start(self, registry: Registry, metrics: Metrics, timers: Timers) -> None:
        """On the running node: a new ban kicks the clients it covers, ended bans are
        swept, refusals and flapping are counted."""
        banned = self.banned
        banned.metrics = metrics
        banned.on_ban = lambda ban: kick_banned(registry, ban)
        banned.start(timers)
        if self.flapping is not None:
            self.flapping.metrics = metrics

    def reload(self) -> None:
        """Re-read every password file, ACL file and other source (AccessError: why not)."""
        self.authn.reload()
        if self.authz is not None:
            self.authz.reload()

    def close(self) -> None:
        self.authn.close()
        self.banned.close()

    async def aclose(self) -> None:
        """close(), then wait for what closes on the event loop (HTTP connections)."""
        self.close()
        await self.authn.wait_closed()


def build_access(settings: Settings, users: UserTable | None = None,
                 banned: BannedTable | None = None) -> Access:
    """Both chains, or AccessError listing every problem of every provider and source.
    ``users``: the store's user table, for ``builtin`` providers (None: durability off).
    ``banned``: the running node's banned table, kept when a configuration reload builds
    the chains again (None: read it from the data directory)."""
    errors: list[str] = []
    providers = sources = None
    if banned is None:
        data_dir = settings.data_dir
        banned = BannedTable(os.path.join(data_dir, BANNED_FILE) if data_dir else None)
        try:
            banned.load()
        except AccessError as err:
            errors += err.errors
    # A listener's password_file / acl_file: asked first, for that listener's clients only.
    own_auth = [(lst.name, AccessSpec("password_file", {"path": lst.password_file},
                                      f"listeners.{lst.name}.password_file"))
                for lst in settings.listeners if lst.password_file]
    own_authz = [(lst.name, AccessSpec("acl_file", {"path": lst.acl_file},
                                       f"listeners.{lst.name}.acl_file"))
                 for lst in settings.listeners if lst.acl_file]
    auth_scopes: list[str | None] = [name for name, _ in own_auth]
    auth_scopes += [None] * len(settings.auth.providers)
    authz_scopes: list[str | None] = [name for name, _ in own_authz]
    authz_scopes += [None] * len(settings.authz.sources)
    try:
        providers = build_providers([spec for _, spec in own_auth] + settings.auth.providers)
    except AccessError as err:
        errors += err.errors
    try:
        sources = build_sources([spec for _, spec in own_authz] + settings.authz.sources)
    except AccessError as err:
        errors += err.errors
    for i, provider in enumerate(providers or ()):
        if isinstance(provider, BuiltinUsers):
            if users is None:
                errors.append(f"auth.providers[{i}]: type builtin keeps its users in the "
                              "store, and there is none ([store] durability is off, or no "
                              "data directory)")
            else:
                provider.table = users
    if errors or providers is None or sources is None:
        raise AccessError(errors)
    authz = None
    if sources:
        authz = AuthzChain(settings.authz, sources, authz_scopes)
    elif any(getattr(p, "attaches_acl", False) for p in providers):
        # A provider may attach a client ACL (a JWT's acl claim, an HTTP server's answer):
        # it is enforced even without sources. What it does not decide is allowed, as
        # everything is without an authorization chain.
        authz = AuthzChain(dataclasses.replace(settings.authz, no_match="allow"), [])
    flapping = Flapping(settings.flapping, banned) if settings.flapping.enable else None
    gates: list[Gate] = [banned] if flapping is None else [banned, flapping]
    chain = AuthChain(settings.auth, providers, gates, auth_scopes)
    if users is not None:
        users.on_change = chain.forget_user
    return Access(chain, authz, banned, flapping, users)
