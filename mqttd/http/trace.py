"""Traces over HTTP: file traces in the data directory (started, stopped, downloaded) and
live traces streamed as server-sent events (``text/event-stream``).

A live stream is a trace sink like ``mqttd ctl trace``'s: the broker's loop calls
:meth:`EventStream.write` from the packet path, which only appends the encoded event to a
buffer bounded in bytes and wakes the stream's own task. That task writes to the HTTP
response and waits there when the reader is slow; meanwhile the buffer fills, and past
``STREAM_BUFFER_LIMIT`` events are dropped and counted, and a ``dropped`` event says how
many once there is room again. So a slow or stuck reader costs MQTT one append per
packet, never a wait.

Events (each ``data:`` is one JSON object):

* ``start``: what is traced (``type``, ``target``, ``payload_limit``, ``connected`` (the
  client's peer, or null));
* ``trace``: one packet or message, the object a JSON Lines trace file holds;
* ``dropped``: ``{"dropped": N, "message": ...}``, events lost to a slow reader;
* ``node_end``: ``{"node", "reason"}``, in a cluster: one node's part ended by itself (the
  others go on);
* ``end``: ``{"reason": ...}``, the trace was stopped (then the response ends).

In a cluster every node up runs the trace for the stream (:class:`NodeStream` marks this
node's events, the others' arrive over NATS): each ``trace`` event has its ``node``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .respond import ApiError, dumps

if TYPE_CHECKING:
    from ..mgmt.trace import Traces

__all__ = ["KEEPALIVE_SECONDS", "STREAM_BUFFER_LIMIT", "TRACE_DIR", "EventStream",
           "NodeStream", "TraceFiles", "sse"]

#: Bytes of events a live stream holds for a slow reader before it drops events.
STREAM_BUFFER_LIMIT = 1024 * 1024
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: How often a waiting stream checks that its reader is still connected.
_GONE_CHECK_SECONDS = 1.0
#: Directory under the data directory where traces started over HTTP write.
TRACE_DIR = "trace"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON has no raw line breaks, so ``data`` is one line."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


class EventStream:
    """A trace sink that streams to one HTTP response, never blocking the broker."""

    #: Shown by ``trace list`` as a live trace.
    live = True

    def __init__(self, destination: str, limit: int = STREAM_BUFFER_LIMIT) -> None:
        self.destination = destination
        self.json = True
        self.limit = limit
        self.dropped = 0
        self._buffer: deque[bytes] = deque()
        self._size = 0
        self._wake = asyncio.Event()
        self.ended = False
        self.reason: str | None = None
        #: The response's transport, to abort when the listener closes on a stuck reader.
        self.transport: asyncio.Transport | None = None

    # --- the Sink side, called on the broker's packet path -----------------------------------

    def write(self, text: str, event: dict[str, Any]) -> None:
        if self.ended:
            return
        data = sse("trace", event)
        if self._size + len(data) > self.limit:
            self.dropped += 1
            return
        if self.dropped:
            self._push(sse("dropped", {"dropped": self.dropped, "message": (
                f"{self.dropped} trace events dropped: the reader is not keeping up")}))
            self.dropped = 0
        self._push(data)

    def close(self, reason: str | None) -> None:
        if not self.ended:
            self.ended = True
            self.reason = reason
            self._wake.set()

    def note(self, event: str, data: Any) -> None:
        """An event other than a trace line (``node_end``), never dropped."""
        if not self.ended:
            self._push(sse(event, data))

    def _push(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        self._wake.set()

    # --- the response side, in the request's own task -----------------------------------

    async def pump(self, request: web.Request, resp: web.StreamResponse) -> None:
        """Write events until the trace ends or the reader goes away."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            if not self._buffer and not self.ended:
                try:
                    await asyncio.wait_for(self._wake.wait(), _GONE_CHECK_SECONDS)
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        return  # the reader went away
                    if loop.time() - idle_since >= KEEPALIVE_SECONDS:
                        await resp.write(b": keepalive\n\n")
                        idle_since = loop.time()
                    continue
            self._wake.clear()
            if self._buffer:
                chunk = b"".join(self._buffer)
                self._buffer.clear()
                self._size = 0
                # waits while the socket's buffer is full: only this task waits
                await resp.write(chunk)
                idle_since = loop.time()
            elif self.ended:
                await resp.write(sse("end", {"reason": self.reason}))
                return


class NodeStream:
    """This node's events of a cluster-wide stream, each marked with its ``node`` as the
    other nodes' are."""

    live = True

    def __init__(self, stream: EventStream, node: str) -> None:
        self.stream = stream
        self.node = node
        self.json = True
        self.destination = stream.destination

    def write(self, text: str, event: dict[str, Any]) -> None:
        self.stream.write(text, dict(event, node=self.node))

    def close(self, reason: str | None) -> None:
        self.stream.close(reason)


class TraceFiles:
    """File traces started over HTTP: ``<data_dir>/trace/<name>.log``, so a request can
    never name a path outside that directory."""

    def __init__(self, data_dir: str | None) -> None:
        self.dir = os.path.join(os.path.abspath(data_dir), TRACE_DIR) if data_dir else None

    def path(self, name: str) -> str:
        """The file of a trace name; 400 for a name that is not a plain file name, 503
        without a data directory."""
        if not _NAME.fullmatch(name) or name.endswith("."):
            raise ApiError(400, "bad_argument", f"trace name {name!r}: 1 to 64 letters, "
                           "digits, '_', '.' or '-', not starting with '.' or '-'")
        if self.dir is None:
            raise ApiError(503, "no_data_dir", "file traces need a data directory")
        return os.path.join(self.dir, name + ".log")

    def create_path(self, name: str) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return path

    def all(self, traces: Traces) -> list[dict[str, Any]]:
        """Every trace file: name, size, modified (Unix time), running (written to now)."""
        if self.dir is None or not os.path.isdir(self.dir):
            return []
        running = {t["destination"] for t in traces.all()}
        rows = []
        for entry in sorted(os.scandir(self.dir), key=lambda e: e.name):
            if not entry.name.endswith(".log") or not entry.is_file():
                continue
            st = entry.stat()
            rows.append({"name": entry.name[:-4], "size": st.st_size,
                         "modified": round(st.st_mtime, 3),
                         "running": entry.path in running})
        return rows

    @staticmethod
    def default_name(kind: str, target: str) -> str:
        """A file name made from what is traced (characters a name may not hold as ``_``)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)[:48].rstrip(".") or "_"
        return f"{kind}-{safe}"
