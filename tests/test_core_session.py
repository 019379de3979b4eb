"""core.session.Session without a loop: the inflight window and packet ids, the queue,
building a PUBLISH at an explicit ``now``, the QoS 1/2 acknowledgement faults and the
incoming QoS 2 ids timed by an injected clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from core_util import forbid_event_loop

from mqttd.core.message import Message
from mqttd.core.services import Delivery
from mqttd.core.session import AckFault, Session


@pytest.fixture(autouse=True)
def _no_event_loop() -> Iterator[None]:
    with forbid_event_loop():
        yield


def d(payload: bytes = b"m", qos: int = 1, *, retain: bool = False,
      subids: tuple[int, ...] = (), props: dict | None = None) -> Delivery:
    return (Message("t", payload, qos, retain, props), qos, retain, subids, None)


# --- packet ids and the inflight window --------------------------------------------------

def test_packet_ids_count_up_from_one():
    s = Session("c")
    assert [s.start_inflight(d()) for _ in range(3)] == [1, 2, 3]


def test_packet_id_wraps_from_65535_to_1():
    s = Session("c", max_inflight=10)
    s._next_pid = 0xFFFE
    assert [s.start_inflight(d()) for _ in range(3)] == [0xFFFE, 0xFFFF, 1]


def test_packet_id_skips_ids_still_in_flight():
    s = Session("c")
    first, second, _ = (s.start_inflight(d()) for _ in range(3))
    s._next_pid = 1  # as after a wrap: 1 and 2 are still unacknowledged
    s.drop_inflight(3)
    assert s.next_packet_id() == 3
    assert first in s.inflight and second in s.inflight


def test_packet_id_skip_wraps_past_65535():
    s = Session("c")
    s._next_pid = 0xFFFF
    assert s.start_inflight(d()) == 0xFFFF
    s._next_pid = 0xFFFF  # 0xFFFF is taken: the next free id is 1, not 0
    assert s.next_packet_id() == 1


def test_window_closes_at_max_inflight_and_reopens_on_ack():
    s = Session("c", max_inflight=2)
    assert s.window_open()
    s.start_inflight(d())
    pid = s.start_inflight(d())
    assert not s.window_open()
    assert s.ack(pid, 1) is not AckFault.UNKNOWN
    assert s.window_open()


# --- the message queue ----------------------------------------------------------------------

def test_enqueue_full_queue_drops_the_oldest():
    s = Session("c", max_mqueue_len=2)
    a, b, c = d(b"a"), d(b"b"), d(b"c")
    assert s.enqueue(a) is None and s.enqueue(b) is None
    assert s.enqueue(c) is a
    assert [x[0].payload for x in s.mqueue] == [b"b", b"c"]
    assert (s.enqueued, s.dropped) == (3, 1)


def test_enqueue_without_limit_keeps_everything():
    s = Session("c", max_mqueue_len=0)
    for i in range(50):
        assert s.enqueue(d(bytes([i]))) is None
    assert len(s.mqueue) == 50 and s.dropped == 0


def test_qos0_refused_when_mqueue_store_qos0_is_off():
    s = Session("c", mqueue_store_qos0=False)
    q0 = d(qos=0)
    assert s.enqueue(q0) is q0
    assert not s.mqueue and s.dropped == 1 and s.enqueued == 0
    assert s.enqueue(d(qos=1)) is None and len(s.mqueue) == 1


def test_qos0_queued_when_mqueue_store_qos0_is_on():
    s = Session("c", mqueue_store_qos0=True)
    assert s.enqueue(d(qos=0)) is None and len(s.mqueue) == 1


# --- build_publish --------------------------------------------------------------------------

def test_build_publish_copies_the_delivery_fields():
    s = Session("c")
    pub = s.build_publish(d(b"x", 2, retain=True), 7, now=0.0, dup=True)
    assert (pub.topic, pub.payload, pub.qos, pub.retain, pub.dup, pub.packet_id) == \
        ("t", b"x", 2, True, True, 7)
    assert "message_expiry_interval" not in pub.properties


def test_build_publish_counts_down_message_expiry_at_now():
    s = Session("c")
    delivery = d(props={"message_expiry_interval": 10})
    msg = delivery[0]
    pub = s.build_publish(delivery, 1, now=msg.expiry - 3.5)
    assert pub.properties["message_expiry_interval"] == 4  # rounded up
    assert msg.properties["message_expiry_interval"] == 10  # the message is untouched


def test_build_publish_refuses_an_expired_message():
    s = Session("c")
    delivery = d(props={"message_expiry_interval": 10})
    assert s.build_publish(delivery, 1, now=delivery[0].expiry) is None
    assert s.build_publish(delivery, 1, now=delivery[0].expiry + 100) is None
    assert s.dropped == 2


def test_build_publish_carries_every_subscription_identifier():
    s = Session("c")
    delivery = d(subids=(3, 9))
    pub = s.build_publish(delivery, 1, now=0.0)
    assert pub.properties["subscription_identifier"] == [3, 9]
    assert "subscription_identifier" not in delivery[0].properties


# --- acknowledgements ---------------------------------------------------------------------

def test_puback_completes_a_qos1_message():
    s = Session("c")
    pid = s.start_inflight(d(qos=1))
    entry = s.inflight[pid]
    assert s.ack(pid, 1) is entry
    assert pid not in s.inflight and s.delivered == 1


def test_ack_of_unknown_packet_id():
    s = Session("c")
    assert s.ack(5, 1) is AckFault.UNKNOWN
    assert s.ack(5, 2) is AckFault.UNKNOWN
    assert s.complete(5) is AckFault.UNKNOWN


def test_ack_for_the_wrong_qos_is_a_mismatch_and_keeps_the_message():
    s = Session("c")
    p1 = s.start_inflight(d(qos=1))
    p2 = s.start_inflight(d(qos=2))
    assert s.ack(p1, 2) is AckFault.MISMATCH  # PUBREC for QoS 1
    assert s.ack(p2, 1) is AckFault.MISMATCH  # PUBACK for QoS 2
    assert set(s.inflight) == {p1, p2} and s.delivered == 0


def test_qos2_flow_pubrec_then_pubcomp():
    s = Session("c")
    pid = s.start_inflight(d(qos=2))
    entry = s.inflight[pid]
    assert s.ack(pid, 2) is entry
    assert pid in s.inflight and s.delivered == 0  # PUBREC alone completes nothing
    s.released(pid)
    assert s.complete(pid) is entry
    assert not s.inflight and s.delivered == 1


def test_pubcomp_before_pubrec_is_a_mismatch():
    s = Session("c")
    pid = s.start_inflight(d(qos=2))
    assert s.complete(pid) is AckFault.MISMATCH
    assert pid in s.inflight


def test_second_pubrec_after_release_is_a_mismatch():
    s = Session("c")
    pid = s.start_inflight(d(qos=2))
    s.ack(pid, 2)
    s.released(pid)
    assert s.ack(pid, 2) is AckFault.MISMATCH


# --- incoming QoS 2 ---------------------------------------------------------------------

def test_await_rel_refuses_an_id_already_waiting():
    s = Session("c")
    assert s.await_rel(1, now=10.0)
    assert not s.await_rel(1, now=11.0)
    assert s.awaiting_rel == {1: 10.0}  # the first arrival's time is kept
    assert s.release(1) and not s.release(1)


def test_expire_awaiting_rel_uses_the_given_now():
    s = Session("c")
    s.await_rel(1, now=100.0)
    s.await_rel(2, now=150.0)
    assert s.expire_awaiting_rel(60.0, now=160.0) == 0  # 100 is exactly at the deadline
    assert s.expire_awaiting_rel(60.0, now=160.5) == 1
    assert list(s.awaiting_rel) == [2]
    assert s.expire_awaiting_rel(60.0, now=1000.0) == 1 and not s.awaiting_rel


# --- pending --------------------------------------------------------------------------------

def test_pending_is_inflight_in_send_order_then_queue_without_wait_comp():
    s = Session("c")
    a, b, c, q = d(b"a", 1), d(b"b", 2), d(b"c", 2), d(b"q", 1)
    s.start_inflight(a)
    pb = s.start_inflight(b)
    s.start_inflight(c)
    s.enqueue(q)
    s.ack(pb, 2)
    assert s.pending() == [a, b, c, q]  # PUBREC alone: b is still the client's to confirm
    s.released(pb)
    assert s.pending() == [a, c, q]  # WAIT_COMP: the client has b


def test_info_counts():
    s = Session("c", expiry_interval=30, max_inflight=5, max_mqueue_len=7)
    s.start_inflight(d())
    s.enqueue(d())
    s.await_rel(1, now=0.0)
    info = s.info()
    assert (info["clientid"], info["expiry_interval"], info["inflight"], info["max_inflight"],
            info["mqueue_len"], info["max_mqueue"], info["awaiting_rel"]) == \
        ("c", 30, 1, 5, 1, 7, 1)
    assert s.persistent and not Session("x").persistent
