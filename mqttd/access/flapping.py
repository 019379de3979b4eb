"""Flapping detection (EMQX's emqx_flapping): a client id that connects more than
``max_count`` times within ``window`` seconds is banned for ``ban_time`` seconds.

A :class:`~mqttd.access.authn.Gate` of the authentication chain, asked after the banned
table: each CONNECT that reaches it is counted for its client id, and the one that makes
the count pass ``max_count`` within the sliding window is refused (CONNACK 0x8A) and puts
a ban with reason "flapping" in the banned table, which then refuses the client until the
ban ends (and kicks a connection the client still has). The ban is logged once, at
warning, and counted in ``connections.flapping``.

Memory stays bounded: per client id at most ``max_count + 1`` connect times, client ids
not seen for a window are dropped (the oldest first: the table is kept in order of last
connect, so a sweep stops at the first fresh one), and at most ``MAX_TRACKED`` client ids
are followed at once (a flood of distinct ids pushes the oldest out).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import FlappingSettings
from ..core.services import AuthResult, ClientInfo
from ..metrics import CONNECTIONS_FLAPPING, CONNECTIONS_REFUSED_BANNED
from ..mqtt.reasons import ReasonCode as RC
from .banned import BannedTable

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("mqttd.access")

__all__ = ["MAX_TRACKED", "Flapping"]

#: Client ids followed at once, at most.
MAX_TRACKED = 100_000
#: Who flapping bans are by, and their reason.
BY = "flapping detection"
REASON = "flapping"


class Flapping:
    """Counts connects per client id; bans the ones that flap."""

    def __init__(self, settings: FlappingSettings, banned: BannedTable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_count = settings.max_count
        self.window = settings.window
        self.ban_time = settings.ban_time
        self.banned = banned
        self.clock = clock
        self.metrics: Metrics | None = None
        #: client id -> times of its latest connects, in order of the latest connect.
        self._seen: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, client: ClientInfo) -> AuthResult | None:
        now = self.clock()
        if now >= self._next_sweep:
            self.sweep(now)
        client_id = client.client_id
        seen = self._seen
        times = seen.pop(client_id, None)  # re-inserted last: the order of latest connect
        if times is None:
            times = deque(maxlen=self.max_count + 1)
            if len(seen) >= MAX_TRACKED:
                del seen[next(iter(seen))]
        times.append(now)
        if len(times) <= self.max_count or now - times[0] > self.window:
            seen[client_id] = times
            return None
        # max_count + 1 connects within the window: the client id flaps.
        until = self.banned.clock() + self.ban_time
        # Not kicked: connects are counted before authentication, so anyone can make a
        # client id "flap"; a ban that kicked the live connection would let a stranger
        # throw a device off. Its reconnects wait out the ban instead.
        self.banned.add("clientid", client_id, by=BY, reason=REASON, until=until, save=False,
                        kick=False)
        log.warning("client %s from %s is flapping: %d connects within %gs; banned for %gs",
                    client_id, client.peer, len(times), self.window, self.ban_time)
        metrics = self.metrics
        if metrics is not None:
            metrics.inc(CONNECTIONS_FLAPPING)
            metrics.inc(CONNECTIONS_REFUSED_BANNED)
        return AuthResult(RC.BANNED, reason=f"banned (flapping: more than {self.max_count} "
                                            f"connects within {self.window:g}s)")

    def sweep(self, now: float | None = None) -> int:
        """Forget client ids that have not connected for a window; returns how many."""
        if now is None:
            now = self.clock()
        self._next_sweep = now + max(self.window, 1.0)
        horizon = now - self.window
        seen = self._seen
        stale = []
        for client_id, times in seen.items():  # oldest latest-connect first
            if times[-1] >= horizon:
                break
            stale.append(client_id)
        for client_id in stale:
            del seen[client_id]
        return len(stale)
