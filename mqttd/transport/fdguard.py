"""Keep file descriptors in reserve, so running out of them never locks the operator out.

Every accepted client costs a descriptor. When the process reaches RLIMIT_NOFILE, libuv (under
uvloop) accepts and drops new sockets silently, and the control socket can accept nothing:
``mqttd ctl status`` fails exactly when the operator needs to look. The guard makes the
listeners refuse clients (counted in ``connections.refused.max_fds``, logged) while fewer
than ``reserve`` descriptors are left, so the control socket, the store, log files and the
refusals themselves always have some. It recovers by itself: as clients leave, new ones are
admitted again.

Counting ``/proc/self/fd`` costs a directory read, so the guard estimates (descriptors open
at start + live connections) and counts for real only when the estimate comes near the limit.

``presize_fd_table`` grows the kernel's descriptor table once at start: in a process with more
than one thread (the store's writer, libuv's workers) Linux waits for an RCU grace period
(``synchronize_rcu`` in ``expand_fdtable``) each time the table doubles, and the thread whose
``accept4`` needed the room sleeps 7-16 ms meanwhile: the event loop, at the 256th, 512th, ...
16,384th client of a connect storm (issue 17: the storm's 18-25 ms pings; mosquitto, one
thread, never waits). A table never shrinks, so one growth at start covers the whole run.
"""

from __future__ import annotations

import fcntl
import os
import resource

__all__ = ["FD_TABLE_MAX", "FdGuard", "presize_fd_table"]

#: Descriptor slots the table is grown to at most at start (``presize_fd_table``): the kernel
#: keeps ~8.3 bytes per slot (2.1 MiB here), whether used or not; past it each doubling
#: (at 262,144 and 524,288 clients) stalls the loop once more.
FD_TABLE_MAX = 1 << 18


def presize_fd_table(limit: int | None = None) -> int:
    """Grow this process's descriptor table to hold ``limit`` descriptors (default: the
    soft RLIMIT_NOFILE, at most ``FD_TABLE_MAX``) by placing a duplicate at the top and
    closing it; the size asked for, or 0 when nothing was done (no room, not Linux)."""
    if limit is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = FD_TABLE_MAX if soft == resource.RLIM_INFINITY else min(soft, FD_TABLE_MAX)
    if limit < 2:
        return 0
    probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # F_DUPFD takes the lowest free descriptor >= its argument: unlike dup2 it never
        # closes a descriptor that happens to be open up there.
        os.close(fcntl.fcntl(probe, fcntl.F_DUPFD_CLOEXEC, limit - 1))
    except OSError:  # the top slots are all taken already: the table is that big
        return 0
    finally:
        os.close(probe)
    return limit


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: trust the estimate
        return -1


class FdGuard:
    """The process's descriptor budget for client connections."""

    def __init__(self, reserve: int | None = None) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        #: Descriptors kept free for everything but new clients.
        self.reserve = reserve if reserve is not None else max(16, min(128, self.limit // 10))
        #: Descriptors open besides client connections (listening sockets, the control
        #: socket, the store, logs, the event loop's own), measured at start.
        self.base = max(_open_fds(), 0)
        #: Below this many live connections a new one is far from the limit: the listener
        #: asks no further (no call per accept; ``exhausted``'s own first test).
        self.quiet_below = self.limit - 2 * self.reserve - self.base
        #: The last real count, and how many connections were live then.
        self.used = self.base

    def exhausted(self, live: int) -> bool:
        """Whether a new client would eat into the reserve (``live``: connections now)."""
        if live < self.quiet_below:
            return False  # far from the limit: no syscall
        budget = self.limit - self.reserve
        used = _open_fds()
        if used < 0:
            used = self.base + live
        self.used = used
        return used >= budget
