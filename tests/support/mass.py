"""For the tests where thousands of clients arrive or leave at once (issue 17, pauses): room
for their sockets, and a watcher that shows whether the broker kept answering another
client while it worked them off."""

from __future__ import annotations

import resource
from collections.abc import Callable

from mqttd.mqtt.packets import Connack, Pingresp, Publish, Suback

from . import builder as B
from .process import BrokerProcess
from .raw import RawClient

__all__ = ["Watcher", "room_for"]


def room_for(n: int) -> None:
    """Raise this process's open-file limit to hold ``n`` client sockets (a broker started
    afterwards inherits it, for its side of them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * n + 500))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Watcher:
    """A 3.1.1 raw client subscribed to ``filters`` (QoS 0) that keeps one PINGREQ
    outstanding while it waits for the events published there: a PINGRESP arriving between
    two events is the broker answering another client in the middle of the mass."""

    def __init__(self, broker: BrokerProcess, filters: list[str]) -> None:
        self.raw = RawClient(broker, version=4, timeout=30)
        self.raw.send(B.connect("watcher", level=4))
        assert self.raw.expect(Connack).reason_code == 0
        self.raw.send(B.subscribe(1, [(f, 0) for f in filters]))
        assert self.raw.expect(Suback).reason_codes == [0] * len(filters)

    def ping(self) -> None:
        """Send the first PINGREQ (after the mass was sent, so it queues behind it)."""
        self.raw.send(B.pingreq())

    def watch(self, event: Callable[[Publish], None], done: Callable[[], bool]) -> list[str]:
        """Hand each PUBLISH to ``event`` until ``done()``, answering each PINGRESP with the
        next PINGREQ; the order they came in: ``"event"`` and ``"ping"``."""
        stream: list[str] = []
        while not done():
            p = self.raw.recv(timeout=60)
            if isinstance(p, Pingresp):
                stream.append("ping")
                self.raw.send(B.pingreq())
                continue
            assert isinstance(p, Publish), p
            event(p)
            stream.append("event")
        return stream

    @staticmethod
    def pings_between(stream: list[str]) -> int:
        """The PINGRESPs between the first and the last event of a :meth:`watch`."""
        first = stream.index("event")
        last = len(stream) - 1 - stream[::-1].index("event")
        return stream[first:last].count("ping")

    def close(self) -> None:
        self.raw.send(B.disconnect())
        self.raw.close()
