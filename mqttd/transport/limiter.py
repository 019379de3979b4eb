"""Rate limits: token buckets for a connection's input and a listener's accepts.

A connection over its inbound budget is not refused and nothing it sent is
dropped: the connection stops reading (``transport.pause_reading()``) for as
long as the bucket needs to refill, then reads again. TCP flow control does the
rest, so the client is slowed down to the configured rate. This is what
emqttd's connection did with esockd's rate limiter (the seeds' message-stream
notes: ``check(Size)`` returns a pause, the socket is re-activated after it).

The bucket lets debt accumulate: a read that takes more than the tokens left
is processed whole (the bytes are already in memory), the balance goes
negative, and the pause is the time the rate needs to pay the debt back. Over
any long stretch the client gets ``rate`` per second; the burst it may send
after an idle spell is one second's worth (``burst`` defaults to ``rate``).

Zero cost when unset: a zone with neither ``rate_limit_messages_in`` nor
``rate_limit_bytes_in`` gives ``ConnLimiter.for_zone`` ``None``, and the
connection tests one attribute per read.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Zone

__all__ = ["ConnLimiter", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; debt allowed."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float | None = None, now: float | None = None
                 ) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.burst <= 0:
            raise ValueError("a token bucket needs a positive burst")
        self.tokens = self.burst
        self.stamp = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now

    def consume(self, n: float, now: float) -> float:
        """Take ``n`` tokens; returns 0.0, or the seconds until the balance is back to 0."""
        self._refill(now)
        self.tokens -= n
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if there are that many (no debt); False otherwise."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class ConnLimiter:
    """One connection's inbound limits: PUBLISH messages per second and bytes per second."""

    __slots__ = ("bytes", "messages")

    def __init__(self, messages_rate: float = 0.0, bytes_rate: float = 0.0,
                 now: float | None = None) -> None:
        self.messages = TokenBucket(messages_rate, now=now) if messages_rate > 0 else None
        self.bytes = TokenBucket(bytes_rate, now=now) if bytes_rate > 0 else None

    @classmethod
    def for_zone(cls, zone: Zone, now: float | None = None) -> ConnLimiter | None:
        """The zone's limiter, or None when the zone sets no inbound limit."""
        if zone.rate_limit_messages_in <= 0 and zone.rate_limit_bytes_in <= 0:
            return None
        return cls(zone.rate_limit_messages_in, zone.rate_limit_bytes_in, now)

    def check(self, messages: int, nbytes: int, now: float) -> float:
        """Account for one read; returns how long to stop reading (0.0: keep reading)."""
        pause = 0.0
        bucket = self.messages
        if bucket is not None and messages:
            pause = bucket.consume(messages, now)
        bucket = self.bytes
        if bucket is not None and nbytes:
            p = bucket.consume(nbytes, now)
            if p > pause:
                pause = p
        return pause
