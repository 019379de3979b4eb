"""What a management query or action raises, for front ends to word in their own way.

Each error carries a ``reason``, a short EMQX-style word (``not_found``,
``not_running``, ``already_existed``, ...), and a readable ``message``. A front
end either shows the message or builds its own sentence around the reason (the
ctl keeps emqx_ctl's wording, an HTTP API would pick a status code).
"""

from __future__ import annotations

__all__ = ["Conflict", "Failed", "InvalidArgument", "MgmtError", "NotFound", "Unavailable"]


class MgmtError(Exception):
    """A management call that could not be done; nothing was changed unless it says so."""

    reason = "failed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class NotFound(MgmtError):
    """The named thing does not exist; ``what`` says which kind (client, session, ...)."""

    reason = "not_found"

    def __init__(self, what: str, key: str) -> None:
        super().__init__(f"{what} {key!r} not found")
        self.what = what
        self.key = key


class InvalidArgument(MgmtError):
    """An argument the call cannot accept (a bad topic filter, an unknown level, ...)."""

    reason = "bad_argument"


class Conflict(MgmtError):
    """The thing exists but its state forbids the action (``not_running``,
    ``already_existed``)."""


class Unavailable(MgmtError):
    """This node lacks the service the call needs (e.g. no plugin manager)."""

    reason = "unavailable"


class Failed(MgmtError):
    """The action was tried and failed; ``reason`` is the cause as the system gave it."""
