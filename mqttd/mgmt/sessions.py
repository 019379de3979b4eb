"""Sessions, connected or held offline (EMQX's emqx_mgmt sessions): list, show, clean."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .errors import InvalidArgument, NotFound
from .listing import Listing, Row, iso

if TYPE_CHECKING:
    from ..core.registry import Registry
    from ..core.session import Session

__all__ = ["SESSION_KINDS", "Sessions", "session_row"]

#: What ``Sessions.all`` can narrow to.
SESSION_KINDS = ("persistent", "transient")


def session_row(session: Session) -> Row:
    """A session's row: its counters, whether connected or persistent, when it expires."""
    row: Row = dict(session.info())
    row["created_at"] = iso(session.created_at)
    row["connected"] = session.channel is not None
    row["persistent"] = bool(session.persistent)
    # asyncio's handles know their deadline; the core's TimerHandle seam need not.
    when = getattr(session.expire_handle, "when", None)
    if when is not None and session.channel is None:
        row["expires_in"] = round(max(0.0, when() - asyncio.get_running_loop().time()), 1)
    return row


class Sessions:
    """The node's sessions, by client id."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def all(self, kind: str | None = None) -> Listing[Session]:
        """Every session, or only ``persistent`` / ``transient`` ones (a snapshot)."""
        sessions = list(self.registry.sessions.values())
        if kind is not None:
            if kind not in SESSION_KINDS:
                raise InvalidArgument(f"{kind!r} is not one of {', '.join(SESSION_KINDS)}")
            want = kind == "persistent"
            sessions = [s for s in sessions if bool(s.persistent) == want]
        return Listing(sessions, session_row)

    def exists(self, client_id: str) -> bool:
        """Whether a session (connected or not) is held for ``client_id``."""
        return client_id in self.registry.sessions

    def get(self, client_id: str) -> Row:
        """One session's row; NotFound("session")."""
        session = self.registry.sessions.get(client_id)
        if session is None:
            raise NotFound("session", client_id)
        return session_row(session)

    def clean(self, client_id: str) -> Row:
        """Discard a session, kicking its client first if connected; NotFound("session")."""
        if client_id not in self.registry.sessions:
            raise NotFound("session", client_id)
        self.registry.clean_session(client_id)
        return {"clientid": client_id, "cleaned": True}
