"""The broker's log: where it goes and how it looks (``[log]``, docs/OPERATIONS.md "Logs").

Built on the standard library's :mod:`logging` (``logging.config.dictConfig`` and the
handlers of :mod:`logging.handlers`): text or JSON lines to standard error or a file
(``WatchedFileHandler``, or ``RotatingFileHandler`` when ``max_size`` is set), optionally to
syslog too. A leaf module: the command line configures it before the broker exists, the
server reopens its files on SIGHUP.

Structured fields: a record logged with ``extra={"fields": {...}}`` carries them into the
JSON line (the text line already says them in its message).
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import os
import socket
import sys
import time
from typing import Any

__all__ = ["CONNECTIONS", "JsonFormatter", "TextFormatter", "apply", "build", "configure",
           "configure_early", "log_path", "reopen", "set_node_tag"]

#: The logger of the connect and disconnect lines (``[log] connection_messages``).
CONNECTIONS = "mqttd.clients"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Syslog stamps the time and host itself.
SYSLOG_FORMAT = "mqttd[%(process)d]: %(levelname)s %(name)s: %(message)s"
#: The node a worker of ``mqttd start --workers N`` names in each of its lines (its lines
#: and its siblings' go to one place); "" for a single process.
_node_tag = ""


def set_node_tag(node: str) -> None:
    """Name ``node`` in every line from the next :func:`configure`/:func:`build` on: the
    text formats get ``[node]`` before the logger's name, JSON a ``node`` field."""
    global _node_tag
    _node_tag = node


def _tagged(fmt: str) -> str:
    if not _node_tag:
        return fmt
    # a % in a node name must not be read as a format field
    return fmt.replace(" %(name)s", " [" + _node_tag.replace("%", "%%") + "] %(name)s", 1)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT's lines (``[tag]`` before the logger's name when a worker names its
    node), byte for byte as ``logging.Formatter`` writes them, for less: the date and time
    of one second are formatted once (``localtime`` + ``strftime`` are ~1 µs, and a broker
    writes two lines per client, thousands a second), and a record without an exception or
    a stack is put together in one %-operation."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(TEXT_FORMAT if not tag else TEXT_FORMAT.replace(
            " %(name)s", " [" + tag.replace("%", "%%") + "] %(name)s", 1))
        self._tag = "[" + tag + "] " if tag else ""
        #: (second, its "YYYY-mm-dd HH:MM:SS"): one tuple, so a thread never reads the
        #: stamp of one second with another's number.
        self._stamp: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime(self.default_time_format,
                                                         self.converter(second)))
        return "%s,%03d" % (stamp[1], record.msecs)  # (default_msec_format)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = message = record.getMessage()
        record.asctime = asctime = self.formatTime(record)
        return "%s %s %s%s: %s" % (asctime, record.levelname, self._tag, record.name, message)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC, milliseconds), level, logger, message,
    then the record's structured ``fields`` and, for an exception, its traceback."""

    #: (second, its "YYYY-mm-ddTHH:MM:SS"), formatted once per second (see TextFormatter).
    _stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                         time.gmtime(second)))
        out: dict[str, object] = {
            "time": stamp[1] + ".%03dZ" % record.msecs,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _node_tag:
            out["node"] = _node_tag
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_path(file: str, data_dir: str) -> str:
    """The log file's absolute path: relative names are in the data directory."""
    path = os.path.expanduser(file)
    if not os.path.isabs(path):
        path = os.path.join(os.path.abspath(os.path.expanduser(data_dir or ".")), path)
    return path


def _syslog_address(address: str) -> str | tuple[str, int]:
    """A Unix socket path, or ``host:port`` (UDP)."""
    if address.startswith("/"):
        return address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"log.syslog_address: {address!r} is neither a socket path nor "
                         "host:port")
    return host, int(port)


def configure_early(level: str = "info") -> None:
    """Text lines with timestamps on standard error, before the configuration is read (so
    that a start-up error is stamped too)."""
    configure(level=level)


def configure(*, level: str = "info", format: str = "text", file: str = "",  # noqa: A002
              data_dir: str = "", max_size: int = 0, rotate: int = 5, syslog: bool = False,
              syslog_address: str = "/dev/log", syslog_facility: str = "daemon",
              connection_messages: bool = True) -> None:
    """Replace the root logger's handlers as ``[log]`` says; ValueError (one line naming the
    key) when a destination cannot be opened."""
    apply(build(level=level, format=format, file=file, data_dir=data_dir, max_size=max_size,
                rotate=rotate, syslog=syslog, syslog_address=syslog_address,
                syslog_facility=syslog_facility, connection_messages=connection_messages))


def build(*, level: str = "info", format: str = "text", file: str = "",  # noqa: A002
          data_dir: str = "", max_size: int = 0, rotate: int = 5, syslog: bool = False,
          syslog_address: str = "/dev/log", syslog_facility: str = "daemon",
          connection_messages: bool = True) -> dict[str, Any]:
    """The ``dictConfig`` document ``[log]`` stands for, its destinations checked (ValueError,
    one line naming the key): a configuration reload checks it before changing anything,
    then hands it to :func:`apply`."""
    formatter: dict[str, Any] = ({"()": JsonFormatter} if format == "json"
                                 else {"()": TextFormatter, "tag": _node_tag})
    handlers: dict[str, dict[str, Any]] = {}  # dictConfig's schema
    if file:
        path = log_path(file, data_dir)
        try:  # fail here, with the key's name, rather than inside dictConfig
            # 0700 as the data directory itself (``mqttd start`` creates it so).
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise ValueError(f"log.file: cannot open {path}: {err.strerror or err}") from None
        if max_size:
            handlers["file"] = {"class": "logging.handlers.RotatingFileHandler",
                                "filename": path, "maxBytes": max_size, "backupCount": rotate,
                                "encoding": "utf-8", "formatter": "main"}
        else:  # rotated by logrotate & co: reopened when the file is moved (and on SIGHUP)
            handlers["file"] = {"class": "logging.handlers.WatchedFileHandler",
                                "filename": path, "encoding": "utf-8", "formatter": "main"}
    else:
        handlers["stderr"] = {"class": "logging.StreamHandler", "stream": sys.stderr,
                              "formatter": "main"}
    if syslog:
        address = _syslog_address(syslog_address)
        if isinstance(address, str) and not os.path.exists(address):
            raise ValueError(f"log.syslog_address: no syslog socket at {address}")
        handlers["syslog"] = {
            "class": "logging.handlers.SysLogHandler", "address": address,
            "facility": syslog_facility,
            "socktype": socket.SOCK_DGRAM,
            "formatter": "main" if format == "json" else "syslog"}
    config: dict[str, Any] = {  # dictConfig's schema
        "version": 1,
        # Every module's logger exists already (created at import): keep them working.
        "disable_existing_loggers": False,
        "formatters": {"main": formatter, "syslog": {"format": _tagged(SYSLOG_FORMAT)}},
        "handlers": handlers,
        "root": {"level": level.upper(), "handlers": list(handlers)},
        "loggers": {CONNECTIONS: {"level": "NOTSET" if connection_messages else "WARNING"}},
    }
    return config


def apply(config: dict[str, Any]) -> None:
    """Replace the root logger's handlers by ``config`` (from :func:`build`); the old files
    are closed, the new ones opened. ValueError (one line) when that fails."""
    try:
        logging.config.dictConfig(config)
    except (ValueError, OSError) as err:
        cause = err.__cause__ or err
        raise ValueError(f"log: {cause}") from None
    if not any(h in config["handlers"] for h in ("file", "syslog")):
        return
    # Python's own warnings (and uncaught exceptions' tracebacks, written by the default
    # excepthook to stderr) would be lost to a daemon's stderr otherwise.
    logging.captureWarnings(True)


def reopen() -> list[str]:
    """Reopen every log file (SIGHUP, after an external rotation); returns their paths."""
    done = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            stream = open(handler.baseFilename, "a", encoding=handler.encoding)  # noqa: SIM115
            old = handler.setStream(stream)
            if old is not None:
                old.close()
            done.append(handler.baseFilename)
    return done
