"""systemd's service notification protocol (``sd_notify``), with the standard library only.

Under a unit with ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a Unix datagram socket
(a path, or an abstract name written with a leading ``@``). The broker sends ``READY=1``
once its listeners are up, ``STOPPING=1`` when it starts shutting down and, with
``WatchdogSec=`` set (``$WATCHDOG_USEC``), ``WATCHDOG=1`` every half of that time from its
event loop: a loop that stops turning stops the pings, and systemd restarts the service.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing. A failed send
is logged once and never stops the broker: notification is a courtesy to the supervisor.
A leaf module: it imports nothing of mqttd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("mqttd.sdnotify")


class Notifier:
    """Sends state changes to systemd's notification socket."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        #: The socket's address as ``connect`` takes it ("\\0name" for an abstract one).
        self.address = address
        #: Microseconds systemd waits for a ping before it acts (0: no watchdog).
        self.watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment asks for (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
        and ``WATCHDOG_PID``: the watchdog is ours only if the pid, when given, is ours)."""
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if path.startswith("@"):
            address = "\0" + path[1:]  # Linux abstract namespace
        elif path.startswith("/"):
            address = path
        usec = 0
        try:
            usec = max(0, int(env.get("WATCHDOG_USEC", "0")))
            pid = env.get("WATCHDOG_PID")
            if pid is not None and int(pid) != os.getpid():
                usec = 0
        except ValueError:
            usec = 0
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the watchdog time, as systemd advises), or None."""
        if self.address is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False if not sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall("\n".join(fields).encode())
        except OSError as err:
            if not self._failed:  # once: a missing socket would otherwise log every ping
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"),
                            err.strerror or err)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """The service is up: its listeners accept clients."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []),
                         f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "") -> bool:
        """The service is shutting down."""
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """The service is alive."""
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping every :attr:`watchdog_interval` seconds, forever (cancel it to stop); returns
        at once without a watchdog."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
