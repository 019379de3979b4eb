"""The control socket: ``<data_dir>/mqttd.sock`` serving the command registry.

The data directory is 0700 and the socket 0600, so only the daemon's user can
talk to it. The daemon holds an exclusive ``flock`` on ``mqttd.pid`` for its
whole life: a second daemon on the same directory fails clearly, and a socket
file found at start can only be stale, so it is replaced.

Each connection carries one command (see :mod:`mqttd.ctl.protocol`). Listings
are written page by page, yielding to the event loop between pages and waiting
for the socket to drain, so a listing of 100,000 clients never stalls the
broker and never buffers the whole answer.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import __version__
from . import protocol as P
from .table import CtlError, Registry, UsageError

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("mqttd.ctl")

#: A page ends after this many rows or this much time, whichever comes first.
PAGE_ROWS = 500
PAGE_SECONDS = 0.004

#: Longest path a Unix socket address can hold (sun_path is 108 bytes on Linux).
_SUN_PATH_MAX = 107


class ControlSocketError(Exception):
    """The control socket cannot be served (data directory, lock or bind problem)."""


@dataclass(slots=True)
class Col:
    """A table column: the row key it shows, its header, and how a value is printed."""

    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    justify: str = "left"

    def cell(self, row: dict[str, Any]) -> str:
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


def json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class Context:
    """What a command handler writes to: text, key/value blocks, tables, JSON."""

    def __init__(self, ctl: CtlServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, json_mode: bool, width: int,
                 cwd: str = "/") -> None:
        self.ctl = ctl
        self.server = ctl.server
        self.node = ctl.server.node
        self.registry = ctl.registry
        self.reader = reader
        self.writer = writer
        self.json = json_mode
        self.width = width
        #: The client's working directory: relative paths it names are relative to it.
        self.cwd = cwd
        self.code = 0

    # --- frames ---------------------------------------------------------------------------

    def frame(self, frame: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(P.encode(frame))

    def out(self, text: str) -> None:
        """Text for stdout (a newline is added if missing)."""
        self.frame({"t": "out", "s": text if text.endswith("\n") else text + "\n"})

    def err(self, text: str) -> None:
        self.frame({"t": "err", "s": text if text.endswith("\n") else text + "\n"})

    def emit_json(self, value: Any) -> None:
        self.frame({"t": "out", "s": json.dumps(value, indent=2, default=json_default,
                                                ensure_ascii=False) + "\n"})

    async def flush(self) -> None:
        """Let the socket drain and the event loop run other work."""
        await self.writer.drain()
        await asyncio.sleep(0)

    # --- shapes ---------------------------------------------------------------------------

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

    async def table(self, columns: list[Col], items: Iterable[Any],
                    row: Callable[[Any], dict[str, Any] | None], *,
                    footer: Callable[[int], str] | None = None,
                    line: Callable[[dict[str, Any]], str] | None = None) -> int:
        """Stream ``row(item)`` for each item, page by page; returns the number of rows.

        ``items`` must be a snapshot (a list), never a live dict view: the loop runs
        other work between pages. ``row`` may return None to skip an item that went
        away meanwhile. Human mode sends the columns' cells (or, with ``line``, one
        text line per row), --json the whole row dicts as one JSON array.
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


class CtlServer:
    """Serves the registry on ``<data_dir>/mqttd.sock`` for one :class:`~mqttd.server.Server`."""

    def __init__(self, server: Server, registry: Registry | None = None) -> None:
        self.server = server
        self.data_dir = os.path.abspath(server.settings.data_dir)
        self.path = os.path.join(self.data_dir, P.SOCKET_NAME)
        self.pid_path = os.path.join(self.data_dir, P.PID_NAME)
        if registry is None:
            from .commands import build_registry

            registry = build_registry()
        self.registry = registry
        self.started_at = time.time()
        self._unix: asyncio.base_events.Server | None = None
        self._pid_fd: int | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        from .commands import LoopMonitor

        self.monitor = LoopMonitor()

    # --- start / stop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the data directory, take the lock, replace a stale socket and listen."""
        prepare_data_dir(self.data_dir)
        self._pid_fd = lock_pid_file(self.pid_path, self.data_dir)
        try:
            sock = bind_socket(self.path)
            self._unix = await asyncio.start_unix_server(self._handle, sock=sock,
                                                         limit=P.MAX_REQUEST)
        except BaseException:
            self._release_pid()
            raise
        self.monitor.start(asyncio.get_running_loop())
        log.info("control socket %s (mqttd ctl --data-dir %s)", self.path, self.data_dir)

    async def close(self) -> None:
        """Stop accepting, end live traces, give running commands a moment, clean up."""
        if self._unix is not None:
            self._unix.close()
        self.server.node.trace.close("mqttd is stopping")
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.monitor.stop()
        if self._unix is not None:
            self._unix = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._release_pid()

    def _release_pid(self) -> None:
        if self._pid_fd is not None:
            try:
                os.unlink(self.pid_path)
            except OSError:
                pass
            os.close(self._pid_fd)
            self._pid_fd = None

    # --- one connection ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (Ctrl-C, a closed pipe): nothing to tell it
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = {"t": "hello", "v": P.VERSION, "version": __version__,
                 "node": self.server.settings.node}
        try:
            line = await asyncio.wait_for(reader.readline(), 10.0)
            request = json.loads(line)
            if not isinstance(request, dict) or request.get("proto") != P.PROTOCOL:
                raise ValueError("not an mqttd ctl request")
        except (TimeoutError, ValueError, asyncio.LimitOverrunError) as err:
            writer.write(P.encode(hello))
            writer.write(P.encode({"t": "err", "s": f"bad request: {err}\n"}))
            writer.write(P.encode({"t": "exit", "code": P.EXIT_FAILED}))
            await writer.drain()
            return
        writer.write(P.encode(hello))
        if request.get("v") not in P.SUPPORTED:
            writer.write(P.encode({"t": "err", "s": (
                f"control protocol v{request.get('v')} is not supported by this mqttd "
                f"{__version__} (it speaks v{P.VERSION}); use the mqttd ctl of the same "
                "version\n")}))
            writer.write(P.encode({"t": "exit", "code": P.EXIT_FAILED}))
            await writer.drain()
            return
        argv = [str(a) for a in request.get("argv") or []]
        cwd = request.get("cwd")
        ctx = Context(self, reader, writer, bool(request.get("json")),
                      int(request.get("width") or 100),
                      cwd if isinstance(cwd, str) and os.path.isabs(cwd) else "/")
        code = await self.run(ctx, argv)
        ctx.frame({"t": "exit", "code": code})
        await writer.drain()

    async def run(self, ctx: Context, argv: list[str]) -> int:
        """Dispatch ``argv``: the handler's exit code, 2 on bad arguments, 1 on failure."""
        try:
            cmd, args = self.registry.lookup(argv)
            log.debug("ctl: %s", " ".join(argv))
            await cmd.handler(ctx, args)
            return ctx.code
        except UsageError as err:
            ctx.err(usage_message(self.registry, err))
            return err.code
        except CtlError as err:
            ctx.err(err.message)
            return err.code
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # a handler crash is reported, never kills the daemon
            log.warning("ctl command %r failed", " ".join(argv), exc_info=True)
            ctx.err(f"command failed: {type(err).__name__}: {err}")
            return P.EXIT_FAILED


def usage_message(registry: Registry, err: UsageError) -> str:
    """``mqttd ctl: <problem>`` and the usage lines of the command concerned."""
    lines = [f"mqttd ctl: {err.message}"]
    if err.noun:
        lines += ["Usage:"] + ["  " + line for line in registry.usage_lines(err.noun)]
    return "\n".join(lines)


# --- the data directory, the pid lock and the socket ------------------------------------------

def prepare_data_dir(path: str) -> None:
    """Create the data directory 0700, or tighten it to 0700; it must be ours."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as err:
        raise ControlSocketError(f"cannot create data directory {path}: "
                                 f"{err.strerror or err}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"data directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ControlSocketError(f"data directory {path} belongs to uid {st.st_uid}, "
                                 f"not to this user (uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("data directory %s was mode %04o: now 0700 (it holds the control "
                    "socket)", path, mode)


def lock_pid_file(pid_path: str, data_dir: str) -> int:
    """Lock ``pid_path`` for the life of the process and write our pid; returns the fd."""
    fd = os.open(pid_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            other = os.read(fd, 32).decode().strip() or "?"
        except OSError:
            other = "?"
        os.close(fd)
        raise ControlSocketError(f"another mqttd (pid {other}) is running with data "
                                 f"directory {data_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def bind_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` (mode 0600), replacing a stale socket file.

    Only called with the pid lock held, so a socket file already there belongs to
    no running daemon.
    """
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlSocketError(f"control socket path {path} is longer than "
                                 f"{_SUN_PATH_MAX} bytes: use a shorter --data-dir")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket: not replacing it")
        os.unlink(path)
        log.info("replaced stale control socket %s", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never visible to others, not even between bind and chmod
    try:
        sock.bind(path)
    except OSError as err:
        sock.close()
        raise ControlSocketError(f"cannot bind control socket {path}: "
                                 f"{err.strerror or err}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock
