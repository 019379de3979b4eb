"""What every listing shares: row dicts, snapshots to page over, times, bounded scans.

A listing of a large table (100,000 clients) must never stall the event loop,
so management never builds all rows at once: it hands back a
:class:`Listing`, a snapshot of the items taken now plus the function that
turns one item into its row, and the front end builds rows page by page,
yielding between pages. Scans that must look at every item before answering
(retained messages matching a wildcard) yield on their own, see :func:`scan`.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["SLICE_SECONDS", "Listing", "Row", "iso", "json_default", "same", "scan"]

#: A row as front ends show it and ``--json`` prints it. Values are JSON-ready except
#: bytes, sets and tuples, which front ends encode; ``Any`` because rows mix kinds.
Row = dict[str, Any]

def json_default(value: Any) -> Any:
    """What ``json.dumps`` cannot encode in a row by itself (every front end encodes rows
    this way: ctl --json, the HTTP API, cluster-wide answers): bytes as text, sets and
    tuples as lists, anything else as its str()."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


#: Longest a scan (or a front end's page) runs before it lets the loop serve others.
SLICE_SECONDS = 0.004

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """A snapshot of items and how to show one: page over ``items``, calling ``row``.

    ``items`` is taken when the listing is made (a list, or a generator over one),
    never a live view, so the loop may run other work between pages. ``row``
    returns None for an item that went away meanwhile; skip it.
    """

    items: Iterable[T]
    row: Callable[[T], Row | None]

    def rows(self) -> Iterator[Row]:
        """Every row at once, without yielding (small tables, tests)."""
        row = self.row
        for item in self.items:
            r = row(item)
            if r is not None:
                yield r


def same(row: Row) -> Row:
    """The row function of a listing whose items are rows already."""
    return row


def iso(t: float | None) -> str | None:
    """Epoch seconds as RFC 3339 local time with offset (None/0 stays None)."""
    if not t:
        return None
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


async def scan(items: Iterable[T], fn: Callable[[T], None]) -> None:
    """``fn(item)`` for each item, yielding to the loop every few milliseconds."""
    clock = time.monotonic  # uvloop's loop.time() does not move within one callback
    deadline = clock() + SLICE_SECONDS
    for i, item in enumerate(items):
        fn(item)
        if i % 64 == 63 and clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + SLICE_SECONDS
