"""Where trace lines go: a file, or a live ``mqttd ctl trace`` stream that never blocks."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

log = logging.getLogger("mqttd.trace")

#: A live stream whose socket holds more than this unsent drops lines (and says so).
LIVE_BUFFER_LIMIT = 4 * 1024 * 1024
#: Seconds between flushes of a file trace's buffer.
FILE_FLUSH_INTERVAL = 0.2


class Sink(Protocol):
    """Where a trace's lines go."""

    json: bool
    destination: str

    def write(self, text: str, event: dict[str, Any]) -> None: ...

    def close(self, reason: str | None) -> None: ...


class FileSink:
    """Append lines to a file, flushed every ``FILE_FLUSH_INTERVAL`` seconds."""

    def __init__(self, path: str, *, json_lines: bool = False) -> None:
        self.destination = path
        self.json = json_lines
        self._file = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._flush_handle: asyncio.TimerHandle | None = None

    def write(self, text: str, event: dict[str, Any]) -> None:
        self._file.write((json.dumps(event, ensure_ascii=False) if self.json else text) + "\n")
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                FILE_FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        try:
            self._file.flush()
        except OSError as err:
            log.warning("trace file %s: %s", self.destination, err)

    def close(self, reason: str | None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        try:
            self._file.close()
        except OSError as err:
            log.warning("trace file %s: %s", self.destination, err)


class LiveSink:
    """Stream lines to a ``mqttd ctl trace`` connection; never blocks the broker.

    When the client reads too slowly its socket buffer grows; past
    ``LIVE_BUFFER_LIMIT`` lines are dropped and the next line that fits says how many.
    """

    destination = "mqttd ctl"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.json = ctx.json
        self.dropped = 0
        self.ended: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def write(self, text: str, event: dict[str, Any]) -> None:
        writer = self.ctx.writer
        if writer.is_closing():
            raise ConnectionError("mqttd ctl went away")
        if writer.transport.get_write_buffer_size() > LIVE_BUFFER_LIMIT:
            self.dropped += 1
            return
        if self.dropped:
            self.ctx.err(f"[{self.dropped} trace lines dropped: mqttd ctl is not reading "
                         "fast enough]")
            self.dropped = 0
        self.ctx.frame({"t": "out", "s": (json.dumps(event, ensure_ascii=False) if self.json
                                          else text) + "\n"})

    def close(self, reason: str | None) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)
