"""The banned table (EMQX's banned API): list, add, delete.

A ban is keyed by what it applies to (``as``: clientid, username or peerhost) and the
value (``who``: a client id, a user name, an IP address or CIDR network). Adding one
kicks the connected clients it covers at once; it ends at ``until`` (an absolute time,
or ``duration`` seconds from now) or never.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..access.banned import Ban
from .errors import Failed, InvalidArgument, NotFound, Unavailable
from .listing import Listing, Row, iso

if TYPE_CHECKING:
    from ..access.banned import BannedTable
    from ..access.build import Access

__all__ = ["Banned", "ban_row", "parse_duration", "parse_until"]

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def ban_row(ban: Ban) -> Row:
    """A ban as front ends show it: EMQX's keys, times in RFC 3339 (``until`` None:
    never ends)."""
    return {"as": ban.kind, "who": ban.who, "by": ban.by, "reason": ban.reason,
            "at": iso(ban.at), "until": iso(ban.until) if ban.until is not None else None}


def parse_duration(text: str | float) -> float:
    """Seconds from a number or ``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"7d"``."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION.fullmatch(text)
        if m is None:
            raise InvalidArgument(f"not a duration: {text!r} (use seconds or e.g. \"30s\", "
                                  "\"15m\", \"2h\", \"7d\")")
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if seconds <= 0:
        raise InvalidArgument(f"the duration must be positive, not {text!r}")
    return seconds


def parse_until(text: str | float, now: float) -> float:
    """Epoch seconds from a number or an ISO 8601 date or time (local time unless it
    names its offset); it must lie in the future."""
    if isinstance(text, (int, float)):
        until = float(text)
    else:
        try:
            until = float(text)
        except ValueError:
            try:
                when = datetime.datetime.fromisoformat(text.strip())
            except ValueError:
                raise InvalidArgument(f"not a time: {text!r} (use e.g. 2026-12-31, "
                                      "\"2026-12-31 18:00\", 2026-12-31T18:00:00+01:00 or "
                                      "epoch seconds)") from None
            until = when.timestamp()  # naive: local time
    if until <= now:
        raise InvalidArgument(f"the time {text!r} is not in the future")
    return until


class Banned:
    """The node's banned table, once the node has started (Unavailable before)."""

    def __init__(self, access: Callable[[], Access | None]) -> None:
        self._access = access

    def _table(self) -> BannedTable:
        access = self._access()
        if access is None:
            raise Unavailable("the banned table is not loaded (the node has not started)")
        return access.banned

    def all(self) -> Listing[Ban]:
        """Every ban in force, oldest first."""
        return Listing(self._table().all(), ban_row)

    def get(self, kind: str, who: str) -> Row:
        """One ban; NotFound("ban") if there is none in force."""
        try:
            ban = self._table().get(kind, who)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        if ban is None:
            raise NotFound("ban", f"{kind} {who}")
        return ban_row(ban)

    def add(self, kind: str, who: str, *, by: str, reason: str = "",
            until: str | float | None = None, duration: str | float | None = None) -> Row:
        """Ban ``who`` (replacing its ban if it has one) until ``until`` or for ``duration``
        (neither: for good); the clients it covers are kicked (``kicked`` lists them).
        InvalidArgument for a bad value; Failed if the table cannot be written (then
        nothing changed)."""
        table = self._table()
        if until is not None and duration is not None:
            raise InvalidArgument("give an end time or a duration, not both")
        end: float | None = None
        if duration is not None:
            end = table.clock() + parse_duration(duration)
        elif until is not None:
            end = parse_until(until, table.clock())
        try:
            ban, kicked = table.add(kind, who, by=by, reason=reason, until=end)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        except OSError as err:
            raise Failed(f"cannot write the banned table: {err.strerror or err}",
                         err.strerror or str(err)) from None
        row = ban_row(ban)
        row["kicked"] = kicked
        return row

    def delete(self, kind: str, who: str) -> Row:
        """Lift a ban; NotFound("ban") if there is none in force."""
        try:
            ban = self._table().delete(kind, who)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        except OSError as err:
            raise Failed(f"cannot write the banned table: {err.strerror or err}",
                         err.strerror or str(err)) from None
        if ban is None:
            raise NotFound("ban", f"{kind} {who}")
        return {"as": ban.kind, "who": ban.who, "deleted": True}
