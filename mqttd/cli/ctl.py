"""``mqttd ctl``: the client of the daemon's control socket (emqx_ctl's role).

It knows no command: it sends the words it was given to
``<data_dir>/mqttd.sock`` and renders what comes back (text, tables, JSON),
so ``mqttd ctl help`` and the daemon cannot disagree. Arguments of built-in
commands are checked here first against the same command table, so a typo exits 2
with the usage lines even when the daemon is down.

Options, anywhere before ``--``: ``--data-dir DIR`` (else ``-c/--config FILE``'s
``node.data_dir``, else ``$MQTTD_DATA_DIR``, else the default data directory, as
``mqttd start`` places it), ``--json``, ``--timeout SECONDS``, ``-h/--help``.

Exit codes: 0 ok, 1 failed, 2 bad arguments, 69 daemon not running.

Errors, wherever they arise (here or in the daemon), come in one form: ``mqttd ctl: what``
on stderr (with the usage lines after a usage error), or with ``--json`` one JSON object
on stdout, ``{"error": {"code": <exit code>, "reason": <word>, "message": <what>}}``
(docs/CTL.md "Errors").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..config import ConfigError, default_data_dir, load_settings
from ..ctl import protocol as P

if TYPE_CHECKING:
    from ..ctl.table import CommandTable

DEFAULT_TIMEOUT = 60.0
#: Rows a table collects before it fixes its column widths and starts printing.
FIRST_PAGE = 200
#: Widest a column gets from its content (longer cells are cut with an ellipsis).
MAX_COLUMN = 60


class Options:
    """The global options of ``mqttd ctl`` and the command words left."""

    def __init__(self) -> None:
        self.data_dir: str | None = None
        self.config: str | None = None
        self.json = False
        self.timeout = DEFAULT_TIMEOUT
        self.help = False
        self.argv: list[str] = []


class _Usage(Exception):
    pass


def fail(message: str, code: int, reason: str, as_json: bool,
         usage: list[str] | None = None) -> int:
    """Report an error in the one form every ``mqttd ctl`` error takes; returns ``code``."""
    if as_json:
        error: dict[str, Any] = {"code": code, "reason": reason, "message": message}
        if usage:
            error["usage"] = usage
        print(json.dumps({"error": error}, indent=2, ensure_ascii=False))
    else:
        lines = [f"mqttd ctl: {message}"]
        if usage:
            lines += ["Usage:"] + ["  " + line for line in usage]
        print("\n".join(lines), file=sys.stderr)
    return code


def _wants_json(args: list[str]) -> bool:
    """--json among the options (before ``--``), for errors found before they are parsed."""
    return "--json" in args[:args.index("--")] if "--" in args else "--json" in args


def parse_options(args: list[str]) -> Options:
    """Take the global options out of ``args`` (anywhere before ``--``)."""
    o = Options()
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            o.argv += args[i - 1:]  # the command sees the "--" too
            break
        name, eq, value = word.partition("=")
        if name in ("--data-dir", "--config", "-c", "--timeout"):
            if not eq:
                if i >= len(args):
                    raise _Usage(f"{name} needs a value")
                value = args[i]
                i += 1
            if name == "--data-dir":
                o.data_dir = value
            elif name == "--timeout":
                try:
                    o.timeout = float(value)
                except ValueError:
                    o.timeout = float("nan")
                if not 0 < o.timeout < float("inf"):  # 0 would mean "never wait" to a socket
                    raise _Usage(f"--timeout must be a positive number of seconds, not "
                                 f"{value!r}")
            else:
                o.config = value
        elif word == "--json":
            o.json = True
        elif word in ("-h", "--help"):
            o.help = True
        else:
            o.argv.append(word)
    return o


#: Commands whose <Password> may come from standard input instead of the command line.
_PASSWORD_COMMANDS = (["users", "add"], ["users", "passwd"])
PASSWORD_STDIN = "--password-stdin"


def password_from_stdin(argv: list[str]) -> list[str]:
    """``users add|passwd <Username> --password-stdin``: the password read from the first
    line of standard input and put where the command takes it (an argument is seen by
    every user of the machine in the process list while the command runs)."""
    if PASSWORD_STDIN not in argv or argv[:2] not in _PASSWORD_COMMANDS:
        return argv
    rest = [w for w in argv if w != PASSWORD_STDIN]
    if len(rest) < 3 or rest[2].startswith("--"):
        raise _Usage(f"{' '.join(argv[:2])} <Username> {PASSWORD_STDIN}: the user name "
                     "comes first")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _Usage(f"{PASSWORD_STDIN}: no password on standard input")
    return rest[:3] + [password] + rest[3:]


def socket_path(o: Options) -> str:
    """Where ``mqttd start`` put the control socket for these options."""
    data_dir = o.data_dir
    if data_dir is None and o.config is not None:
        try:
            data_dir = load_settings(o.config).data_dir or None
        except ConfigError as err:
            raise _Usage("\n".join(err.errors)) from None
    if data_dir is None:
        data_dir = default_data_dir()
    return os.path.join(os.path.abspath(os.path.expanduser(data_dir)), P.SOCKET_NAME)


def main(args: list[str]) -> int:
    """Run ``mqttd ctl`` with ``args``; returns the exit code."""
    try:
        o = parse_options(args)
    except _Usage as err:
        return fail(str(err), P.EXIT_USAGE, "usage", _wants_json(args))
    argv = o.argv
    if o.help or not argv:
        argv = ["help"] + argv[:1]
    try:
        argv = password_from_stdin(argv)
    except _Usage as err:
        return fail(str(err), P.EXIT_USAGE, "usage", o.json)
    from ..ctl.commands import build_table
    from ..ctl.table import UsageError

    local = build_table()
    if local.has_noun(argv[0]):
        try:
            local.lookup(argv)
        except UsageError as err:
            return fail(err.message, P.EXIT_USAGE, "usage", o.json,
                        local.usage_lines(err.noun) if err.noun else None)
    try:
        path = socket_path(o)
    except _Usage as err:
        return fail(str(err), P.EXIT_USAGE, "usage", o.json)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(o.timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        if argv[0] == "help":  # help works without a daemon: the same command table
            return _local_help(local, argv, o.json)
        if not local.has_noun(argv[0]):
            # A usage error whether or not a daemon runs (one would say the same, unless
            # a plugin of it added the command).
            try:
                local.lookup(argv)
            except UsageError as err:
                return fail(f"{err.message} (mqttd is not running, so commands added by "
                            "plugins are unknown)", P.EXIT_USAGE, "usage", o.json)
        return fail(f"cannot connect to {path}: is mqttd running?", P.EXIT_UNAVAILABLE,
                    "not_running", o.json)
    except OSError as err:
        sock.close()
        return fail(f"cannot connect to {path}: {err.strerror or err}", P.EXIT_FAILED,
                    "failed", o.json)
    try:
        return _converse(sock, argv, o)
    finally:
        sock.close()


def _local_help(table: CommandTable[Any], argv: list[str], as_json: bool) -> int:
    noun = argv[1] if len(argv) > 1 else None
    if noun is not None and not table.has_noun(noun):
        return fail(f"unknown command {noun!r} (mqttd is not running, so commands added by "
                    "plugins are unknown)", P.EXIT_USAGE, "usage", as_json)
    if as_json:
        data = [d for d in table.help_data() if noun is None or d["command"] == noun]
        print(json.dumps(data, indent=2))
    elif noun is not None:
        print("\n".join(table.usage_lines(noun)))
    else:
        sys.stdout.write(table.help_text())
    return P.EXIT_OK


def _converse(sock: socket.socket, argv: list[str], o: Options) -> int:
    width = shutil.get_terminal_size((100, 24)).columns
    request = {"proto": P.PROTOCOL, "v": P.VERSION, "argv": argv, "json": o.json,
               "width": width, "cwd": os.getcwd()}
    renderer = Renderer(sys.stdout, sys.stderr)
    following = False
    try:
        sock.sendall(P.encode(request))
        stream = sock.makefile("rb")
        first = True
        while True:
            line = stream.readline()
            if not line:
                renderer.finish()
                return fail("the connection to mqttd closed before the command finished",
                            P.EXIT_FAILED, "failed", o.json)
            frame = json.loads(line)
            kind = frame.get("t")
            if first:
                first = False
                if kind != "hello" or frame.get("v") != P.VERSION:
                    return fail(f"the daemon speaks control protocol v{frame.get('v')}, "
                                f"this mqttd ctl speaks v{P.VERSION} (daemon: mqttd "
                                f"{frame.get('version', '?')}); use the mqttd ctl of the same "
                                "version", P.EXIT_FAILED, "version_mismatch", o.json)
                continue
            if kind == "exit":
                renderer.finish()
                return int(frame.get("code", 0))
            if kind == "follow":
                following = True
                sock.settimeout(None)
                continue
            renderer.handle(frame)
    except TimeoutError:
        renderer.finish()
        return fail(f"no answer from mqttd within {o.timeout:g}s", P.EXIT_FAILED, "timeout",
                    o.json)
    except KeyboardInterrupt:
        renderer.finish()
        return P.EXIT_OK if following else 128 + signal.SIGINT
    except BrokenPipeError:
        # stdout closed early (| head): stop quietly, as the shell expects.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (ConnectionError, ValueError) as err:
        renderer.finish()
        return fail(f"lost the connection to mqttd: {err}", P.EXIT_FAILED, "failed", o.json)


class Renderer:
    """Writes response frames: text as is, tables through rich, page by page."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.table: TableWriter | None = None

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "out":
            self.out.write(frame["s"])
            self.out.flush()
        elif kind == "err":
            self.out.flush()
            self.err.write(frame["s"])
            self.err.flush()
        elif kind == "table":
            self.table = TableWriter(self.out, frame["columns"])
        elif kind == "rows" and self.table is not None:
            self.table.add(frame["rows"])
        elif kind == "table_end" and self.table is not None:
            self.table.finish()
            self.table = None
            footer = frame.get("footer")
            if footer:
                self.out.write(footer + "\n")
                self.out.flush()

    def finish(self) -> None:
        if self.table is not None:
            self.table.finish()
            self.table = None


class TableWriter:
    """A table streamed in pages, laid out like rich's ``SIMPLE_HEAD`` box: the first
    ``FIRST_PAGE`` rows fix the column widths, later pages reuse them.

    Rows are formatted here rather than by ``rich.table.Table``, which needs every row
    before it can print and spends about a millisecond per row: a listing of 100,000
    clients must start at once and finish in seconds. rich styles the header on a
    terminal (``NO_COLOR`` is honoured).
    """

    SEP = "   "

    def __init__(self, out: TextIO, columns: list[dict[str, str]]) -> None:
        self.out = out
        self.columns = columns
        self.rows: list[list[str]] = []
        self.widths: list[int] | None = None
        self.header_done = False
        self.tty = out.isatty()

    def add(self, rows: list[list[str]]) -> None:
        self.rows.extend(rows)
        if self.widths is not None or len(self.rows) >= FIRST_PAGE:
            self._print()

    def finish(self) -> None:
        if self.rows or not self.header_done:
            self._print()

    def _layout(self) -> list[int]:
        widths = [min(MAX_COLUMN, max([len(c["header"])]
                                      + [len(r[i]) for r in self.rows if i < len(r)]))
                  for i, c in enumerate(self.columns)]
        if self.tty:  # fit the terminal: narrow the widest columns first
            room = shutil.get_terminal_size((100, 24)).columns - len(self.SEP) * (
                len(widths) - 1)
            while sum(widths) > room and max(widths, default=0) > 4:
                widths[widths.index(max(widths))] -= 1
        return widths

    def _line(self, cells: list[str]) -> str:
        assert self.widths is not None
        parts = []
        for cell, c, w in zip(cells, self.columns, self.widths, strict=False):
            if len(cell) > w:
                cell = cell[:w - 1] + "\u2026"
            parts.append(cell.rjust(w) if c.get("justify") == "right" else cell.ljust(w))
        return self.SEP.join(parts).rstrip()

    def _print(self) -> None:
        if self.widths is None:
            self.widths = self._layout()
        out = self.out
        if not self.header_done:
            self.header_done = True
            header = self._line([c["header"] for c in self.columns])
            rule = "\u2500" * (sum(self.widths) + len(self.SEP) * (len(self.widths) - 1))
            if self.tty and not os.environ.get("NO_COLOR"):
                from rich.console import Console
                from rich.text import Text

                console = Console(file=out, highlight=False, soft_wrap=True)
                console.print(Text(header, style="bold"))
            else:
                out.write(header + "\n")
            out.write(rule + "\n")
        if self.rows:
            out.write("\n".join(self._line(r) for r in self.rows) + "\n")
        out.flush()
        self.rows = []
