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
"""

from __future__ import annotations

import os
import resource

__all__ = ["FdGuard"]


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
        #: The last real count, and how many connections were live then.
        self.used = self.base

    def exhausted(self, live: int) -> bool:
        """Whether a new client would eat into the reserve (``live``: connections now)."""
        budget = self.limit - self.reserve
        if self.base + live < budget - self.reserve:
            return False  # far from the limit: no syscall
        used = _open_fds()
        if used < 0:
            used = self.base + live
        self.used = used
        return used >= budget
