"""What a ctl command handler writes its answer to: text, key/value blocks, tables, JSON.

A :class:`Context` is one ``mqttd ctl`` connection as a handler sees it: the
management facade to ask (``mgmt``), the command table (for ``help``), and
the frames of :mod:`mqttd.ctl.protocol` to answer with. Human output follows
emqx_ctl; ``--json`` sends the same data as JSON.

Listings are written page by page (:meth:`Context.table`): a page ends after
``PAGE_ROWS`` rows or ``PAGE_SECONDS``, then the socket drains and the loop
serves others, so listing 100,000 clients never stalls the broker and never
buffers the whole answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..mgmt.listing import SLICE_SECONDS, json_default
from . import protocol as P

if TYPE_CHECKING:
    from ..mgmt.api import Management
    from .table import CommandTable

__all__ = ["PAGE_ROWS", "PAGE_SECONDS", "Col", "Context", "human", "json_default"]

#: A page ends after this many rows or this much time, whichever comes first.
PAGE_ROWS = 500
PAGE_SECONDS = SLICE_SECONDS

T = TypeVar("T")


@dataclass(slots=True)
class Col:
    """A table column: the row key it shows, its header, and how a value is printed."""

    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    justify: str = "left"

    def cell(self, row: dict[str, Any]) -> str:
        """This column's text for ``row``."""
        value = row.get(self.key)
        if self.fmt is not None:
            return self.fmt(value)
        return human(value)


def human(value: Any) -> str:
    """A value as ``mqttd ctl`` prints it for people."""
    if value is None:
        return "-"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class Context:
    """One ctl connection as a handler sees it: whom to ask, and how to answer."""

    def __init__(self, mgmt: Management, commands: CommandTable[Context],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter, json_mode: bool,
                 width: int, cwd: str = "/") -> None:
        self.mgmt = mgmt
        self.commands = commands
        self.reader = reader
        self.writer = writer
        self.json = json_mode
        self.width = width
        #: The client's working directory: relative paths it names are relative to it.
        self.cwd = cwd
        self.code = 0

    # --- frames ---------------------------------------------------------------------------

    def frame(self, frame: dict[str, Any]) -> None:
        """Send one protocol frame (nothing once the client has gone)."""
        if not self.writer.is_closing():
            self.writer.write(P.encode(frame))

    def out(self, text: str) -> None:
        """Text for stdout (a newline is added if missing)."""
        self.frame({"t": "out", "s": text if text.endswith("\n") else text + "\n"})

    def err(self, text: str) -> None:
        """Text for stderr (a newline is added if missing)."""
        self.frame({"t": "err", "s": text if text.endswith("\n") else text + "\n"})

    def emit_json(self, value: Any) -> None:
        """One JSON document on stdout."""
        self.frame({"t": "out", "s": json.dumps(value, indent=2, default=json_default,
                                                ensure_ascii=False) + "\n"})

    async def flush(self) -> None:
        """Let the socket drain and the event loop run other work."""
        await self.writer.drain()
        await asyncio.sleep(0)

    # --- shapes ---------------------------------------------------------------------------

    def error(self, message: str, code: int, reason: str,
              usage: list[str] | None = None) -> int:
        """An error in the one form of every ``mqttd ctl`` error (docs/CTL.md "Errors"):
        ``mqttd ctl: <message>`` and the usage lines on stderr, or with --json
        ``{"error": {"code", "reason", "message"[, "usage"]}}`` on stdout; returns ``code``."""
        if self.json:
            error: dict[str, Any] = {"code": code, "reason": reason, "message": message}
            if usage:
                error["usage"] = usage
            self.emit_json({"error": error})
        else:
            lines = [f"mqttd ctl: {message}"]
            if usage:
                lines += ["Usage:"] + ["  " + line for line in usage]
            self.err("\n".join(lines))
        return code

    def result(self, text: str, data: Any) -> None:
        """A one-line result (``ok``) for people, ``data`` in --json mode."""
        if self.json:
            self.emit_json(data)
        else:
            self.out(text)

    def kv(self, pairs: list[tuple[str, Any]], data: Any = None, *, width: int = 0,
           title: str | None = None) -> None:
        """emqx_ctl's ``~-Ns: ~s`` lines, or ``data`` (default: the pairs as an object)."""
        if self.json:
            self.emit_json(data if data is not None else dict(pairs))
            return
        w = width or max((len(k) for k, _ in pairs), default=0) + 1
        lines = [title] if title else []
        lines += [f"{k:<{w}}: {human(v)}" for k, v in pairs]
        self.out("\n".join(lines))

    async def table(self, columns: list[Col], items: Iterable[T],
                    row: Callable[[T], dict[str, Any] | None], *,
                    footer: Callable[[int], str] | None = None,
                    line: Callable[[dict[str, Any]], str] | None = None) -> int:
        """Stream ``row(item)`` for each item, page by page; returns the number of rows.

        ``items`` must be a snapshot (a list, as a management Listing holds), never a
        live dict view: the loop runs other work between pages. ``row`` may return None
        to skip an item that went away meanwhile. Human mode sends the columns' cells
        (or, with ``line``, one text line per row), --json the whole row dicts as one
        JSON array.
        """
        # time.monotonic, not loop.time(): uvloop's clock is cached at the start of a loop
        # iteration and does not move while a page is being built.
        clock = time.monotonic
        if self.json:
            self.frame({"t": "out", "s": "["})
        elif line is None:
            self.frame({"t": "table", "columns": [{"header": c.header, "justify": c.justify}
                                                  for c in columns]})
        n = 0
        it = iter(items)
        done = False
        while not done:
            deadline = clock() + PAGE_SECONDS
            page: list[Any] = []
            for _ in range(PAGE_ROWS):
                try:
                    item = next(it)
                except StopIteration:
                    done = True
                    break
                r = row(item)
                if r is None:
                    continue
                if self.json:
                    page.append(json.dumps(r, default=json_default, ensure_ascii=False))
                elif line is not None:
                    page.append(line(r))
                else:
                    page.append([c.cell(r) for c in columns])
                if clock() >= deadline:
                    break
            if page:
                if self.json:
                    self.frame({"t": "out", "s": ("\n  " if n == 0 else ",\n  ")
                                + ",\n  ".join(page)})
                elif line is not None:
                    self.frame({"t": "out", "s": "\n".join(page) + "\n"})
                else:
                    self.frame({"t": "rows", "rows": page})
                n += len(page)
            await self.flush()
        if self.json:
            self.frame({"t": "out", "s": "\n]\n" if n else "]\n"})
        elif line is None:
            self.frame({"t": "table_end", "footer": footer(n) if footer else ""})
        elif footer is not None:
            self.out(footer(n))
        return n

    # --- live streams ---------------------------------------------------------------------

    def follow(self) -> None:
        """Tell the client a live stream starts (it stops timing out)."""
        self.frame({"t": "follow"})

    async def until_closed(self, *others: asyncio.Future[Any]) -> bool:
        """Wait until the client goes away (True) or one of ``others`` completes (False)."""
        eof = asyncio.ensure_future(self.reader.read(1 << 16))
        try:
            done, _ = await asyncio.wait({eof, *others}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not eof.done():
                eof.cancel()
        return eof in done
