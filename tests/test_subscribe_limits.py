"""Subscriptions per client against a real daemon (issue 14): the default ``max_subscriptions``
(10,000) and its refusals."""

from __future__ import annotations

from collections.abc import Iterable

from support import builder as B
from support.ctlrun import ctl_json
from support.process import checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Connack, Suback


def subscribe_many(packet_id: int, filters: Iterable[str], level: int, qos: int = 1) -> bytes:
    """One SUBSCRIBE with every filter (``builder.subscribe`` concatenates as it goes,
    quadratic at 100,000 filters; same bytes, joined once)."""
    props = b"\x00" if level == 5 else b""
    body = b"".join([B.u16(packet_id), props,
                     *(B.string(f) + B.u8(qos) for f in filters)])
    return B.packet(B.SUBSCRIBE, 2, body)


def connected(broker: object, client_id: str, level: int) -> RawClient:
    c = RawClient(broker, version=level, timeout=30)  # type: ignore[arg-type]
    c.send(B.connect(client_id, level=level))
    assert c.expect(Connack).reason_code == 0
    return c


def test_default_max_subscriptions_refuses_past_10000() -> None:
    with checked_broker() as broker:
        before = ctl_json(broker, "broker", "metrics")["metrics"]["packets.subscribe.error"]
        with connected(broker, "many5", 5) as c:
            c.send(subscribe_many(1, (f"dev/{i}" for i in range(10_001)), 5))
            ack = c.expect(Suback, timeout=30)
            assert ack.reason_codes == [1] * 10_000 + [0x97]  # Quota exceeded
            # Replacing one it holds is not a new subscription: still granted.
            c.send(subscribe_many(2, ["dev/7", "dev/new"], 5, qos=0))
            assert c.expect(Suback).reason_codes == [0, 0x97]
        with connected(broker, "many4", 4) as c:
            c.send(subscribe_many(1, (f"dev/{i}" for i in range(10_001)), 4))
            assert c.expect(Suback, timeout=30).reason_codes == [1] * 10_000 + [0x80]
        after = ctl_json(broker, "broker", "metrics")["metrics"]["packets.subscribe.error"]
        assert after - before == 3
