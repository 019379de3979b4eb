"""The control socket: ``<data_dir>/mqttd.sock`` serving the command table.

The data directory is 0700 and the socket 0600, so only the daemon's user can
talk to it. The daemon holds an exclusive ``flock`` on ``mqttd.pid`` for its
whole life: a second daemon on the same directory fails clearly, and a socket
file found at start can only be stale, so it is replaced.

Each connection carries one command (see :mod:`mqttd.ctl.protocol`): this
module reads the request, looks the command up in the table it was given and
runs its handler with a :class:`~mqttd.ctl.context.Context`, which is where
answers (and paged listings) are written. It knows no command itself: the
caller builds the table (:func:`mqttd.ctl.commands.build_table`).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..mgmt.errors import InvalidArgument, MgmtError
from . import protocol as P
from .context import Context
from .table import CommandTable, CtlError, Param, UsageError

if TYPE_CHECKING:
    from ..mgmt.api import Management

log = logging.getLogger("mqttd.ctl")

#: Longest path a Unix socket address can hold (sun_path is 108 bytes on Linux).
_SUN_PATH_MAX = 107


class ControlSocketError(Exception):
    """The control socket cannot be served (data directory, lock or bind problem)."""


class CtlServer:
    """Serves a command table on ``<data_dir>/mqttd.sock``, its handlers asking ``mgmt``."""

    def __init__(self, mgmt: Management, data_dir: str, table: CommandTable[Context]) -> None:
        self.mgmt = mgmt
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, P.SOCKET_NAME)
        self.pid_path = os.path.join(self.data_dir, P.PID_NAME)
        self.table = table
        self._unix: asyncio.base_events.Server | None = None
        self._pid_fd: int | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

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
        log.info("control socket %s (mqttd ctl --data-dir %s)", self.path, self.data_dir)

    async def close(self) -> None:
        """Stop accepting, end live traces, give running commands a moment, clean up."""
        if self._unix is not None:
            self._unix.close()
        self.mgmt.trace.stop_all("mqttd is stopping")  # a live trace's command ends with it
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
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
                 "node": self.mgmt.node_name}
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
        ctx = Context(self.mgmt, self.table, reader, writer, bool(request.get("json")),
                      int(request.get("width") or 100),
                      cwd if isinstance(cwd, str) and os.path.isabs(cwd) else "/")
        code = await self.run(ctx, argv)
        ctx.frame({"t": "exit", "code": code})
        await writer.drain()

    async def run(self, ctx: Context, argv: list[str]) -> int:
        """Dispatch ``argv``: the handler's exit code, 2 on bad arguments, 1 on failure."""
        noun: str | None = None
        shown = argv[:1] + ["..."] if len(argv) > 1 else argv  # until parsed: no arguments
        try:
            cmd, args = self.table.lookup(argv)
            noun = cmd.noun
            shown = _redacted(argv, cmd.params, args.pos)
            log.debug("ctl: %s", " ".join(shown))
            await cmd.handler(ctx, args)
            return ctx.code
        except UsageError as err:
            return ctx.error(err.message, err.code, err.reason, self._usage(err.noun))
        except CtlError as err:
            return ctx.error(err.message, err.code, err.reason)
        except InvalidArgument as err:  # management refused an argument the parser let by
            return ctx.error(err.message, P.EXIT_USAGE, "usage", self._usage(noun))
        except MgmtError as err:  # one the command did not word itself
            return ctx.error(err.message, P.EXIT_FAILED, err.reason)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # a handler crash is reported, never kills the daemon
            log.warning("ctl command %r failed", " ".join(shown), exc_info=True)
            return ctx.error(f"command failed: {type(err).__name__}: {err}", P.EXIT_FAILED,
                             "internal_error")

    def _usage(self, noun: str | None) -> list[str] | None:
        return self.table.usage_lines(noun) if noun else None


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


#: Positional parameters whose values are never logged.
_SECRETS = frozenset({"Password"})


def _redacted(argv: list[str], params: list[Param], pos: list[Any]) -> list[str]:
    """``argv`` with the values of secret parameters (a user's password) masked."""
    secrets = {value for param, value in zip(params, pos, strict=False)
               if param.name in _SECRETS and isinstance(value, str)}
    return ["******" if word in secrets else word for word in argv] if secrets else argv
