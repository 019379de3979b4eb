"""Builds the access chains from the settings (what the node wires into the broker)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from .authn import AccessError, AuthChain, build_providers
from .authz import AuthzChain, build_sources

__all__ = ["Access", "AccessError", "build_access"]


@dataclass(slots=True)
class Access:
    """The node's access control: the two chains (authz None when no source is set)."""

    authn: AuthChain
    authz: AuthzChain | None

    def reload(self) -> None:
        """Re-read every password file, ACL file and other source (AccessError: why not)."""
        self.authn.reload()
        if self.authz is not None:
            self.authz.reload()

    def close(self) -> None:
        self.authn.close()


def build_access(settings: Settings) -> Access:
    """Both chains, or AccessError listing every problem of every provider and source."""
    errors: list[str] = []
    providers = sources = None
    try:
        providers = build_providers(settings.auth.providers)
    except AccessError as err:
        errors += err.errors
    try:
        sources = build_sources(settings.authz.sources)
    except AccessError as err:
        errors += err.errors
    if errors or providers is None or sources is None:
        raise AccessError(errors)
    authz = AuthzChain(settings.authz, sources) if sources else None
    return Access(AuthChain(settings.auth, providers), authz)
