"""The PUBLISH fast path, pure-Python reference (the compiled twin is
``mqttd/_speedups/_pubpath.pyx``; the facade is ``mqttd/core/pubpath.py``).

``PublishPathPy.take(channel, packet)`` does for the common PUBLISH what
``Channel.handle_in`` → ``_in_publish`` → ``_check_publish`` → ``Broker.check_acl`` →
``Broker.publish`` → ``Dispatcher.publish`` → ``Channel.deliver`` do, in one call: a QoS 0
or 1 PUBLISH, not retained, without properties (so no alias), to a topic not starting with
``$``, from a connected client that is not traced, held, pressed or mounted, on a Broker
with no authorization to ask, no client.publish callback for the topic (one registered for
some prefixes only, a topic rewrite rule's, leaves the other topics here), no message.publish /
client.check_acl callbacks, no topic trace, no topic metrics for the topic, and a store that
is not full; on a cluster node, only a message that stays on the node (NATS is not there, or
no other node is known to want it: a topic in ``ClusterLink.lane`` (a dict lookup, counted
in its slot), else ``ClusterLink.keep_local``, what ``Broker.publish``'s ``cluster.forward``
decides; the local shared groups then get their copy as here, counted as forward counts).
Anything else returns False *before changing anything*, and the caller hands the packet to
``Channel.handle_in``, the readable state machine, which stays the reference.

Inside, whatever the fast path does not inline it hands to the same Python code the slow
path runs, at the same point: several matching filters or shared groups go to
``Dispatcher.publish``, a QoS 1/2 delivery or any QoS 0 one with something special (paused,
authorization on delivery, message.delivered callbacks, aliases, a mountpoint, a trace, a
packet-size limit it passes) to ``Channel.deliver``, an offline session to
``Session.enqueue``, backpressure to ``Channel._press``, the durable store's hold rule to
``Channel._hold``, the bridges' egress (``Broker.egress``, where ``Broker.publish`` calls
it). The counters move as the slow path moves them. tests/test_pubpath.py
checks py ≡ c ≡ ``handle_in`` on random traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..hooks import Hooks
    from ..mqtt.packets import Properties
    from .broker import Broker
    from .channel import Channel
    from .dispatch import Dispatcher
    from .message import Message
    from .router import Route, SubEntry
    from .services import Backlog
    from .session import Session

#: ``encode_publish``'s signature (mqttd/mqtt/codec.py).
EncodePublish = Callable[[str, bytes, int, bool, bool, int, "Properties", int], bytes]

#: The PUBACK packet type (MQTT's, fixed): a subscriber's acknowledgement of a QoS 1
#: delivery, which the fast path takes too (with the refill of the window it opens).
_PUBACK = 4

#: ``encoded`` keys of the QoS 0 bytes shared by subscribers (MQTT 5 or not, retain False):
#: the ones ``Channel.deliver`` uses.
_K4 = (False, False)
_K5 = (True, False)


class PublishPathPy:
    """The fast path, configured once with what it must not import (core's classes and
    counters: this module sits beside them, the compiled twin below them)."""

    __slots__ = ("broker_cls", "channel_cls", "message_cls", "overfull", "connected",
                 "publish_type", "encode_publish", "qos_recv", "acl_ignore",
                 "messages_publish", "messages_delivered", "dropped_no_subscribers",
                 "qos0_sent", "puback_sent", "puback_received", "messages_acked",
                 "qos1_sent")

    def __init__(self, broker_cls: type[Broker], channel_cls: type[Channel],
                 message_cls: type[Message], overfull: list[Backlog], connected: object,
                 publish_type: int, encode_publish: EncodePublish,
                 counters: dict[str, int], slotted: dict[str, type] | None = None) -> None:
        # ``slotted``: core's slotted classes by name, whose slots the compiled twin reads
        # at offsets found here (attribute access is all the reference needs).
        self.broker_cls = broker_cls
        self.channel_cls = channel_cls
        self.message_cls = message_cls
        self.overfull = overfull
        self.connected = connected
        self.publish_type = publish_type
        self.encode_publish = encode_publish
        self.qos_recv = (counters["qos0_received"], counters["qos1_received"])
        self.acl_ignore = counters["acl_ignore"]
        self.messages_publish = counters["messages_publish"]
        self.messages_delivered = counters["messages_delivered"]
        self.dropped_no_subscribers = counters["dropped_no_subscribers"]
        self.qos0_sent = counters["qos0_sent"]
        self.puback_sent = counters["puback_sent"]
        self.puback_received = counters["puback_received"]
        self.messages_acked = counters["messages_acked"]
        self.qos1_sent = counters["qos1_sent"]

    def take(self, channel: Channel, p: Any) -> bool:  # type: ignore[explicit-any]
        # ``p``: any packet (its packet_type is tested first, as Channel.handle_in does)
        """Handle ``p`` if it is the common PUBLISH (True); else change nothing (False)."""
        # --- may we? (no side effect before every test has passed) ---
        if p.packet_type != self.publish_type:
            if p.packet_type == _PUBACK:
                return self._puback(channel, p)
            return False
        qos = p.qos
        if qos > 1 or p.retain or p.properties:
            return False
        if (channel.closing or channel._held is not None or channel.tracer is not None
                or channel.state != self.connected or channel.pressure is not None
                or channel.mountpoint):
            return False
        topic = p.topic
        if not isinstance(topic, str) or topic[:1] == "$":
            return False
        zone = channel.zone
        if qos > zone.max_qos_allowed:
            return False
        max_levels = zone.max_topic_levels
        if max_levels and topic.count("/") >= max_levels:
            return False
        broker = channel.services
        if type(broker) is not self.broker_cls:
            return False
        hooks = channel.hooks
        if hooks.client_publish and (hooks.client_publish_prefixes is None
                                     or topic.startswith(hooks.client_publish_prefixes)):
            return False  # (prefixed callbacks, e.g. a rewrite rule's, leave other topics)
        if hooks.client_check_acl or hooks.message_publish or broker.topic_traces:
            return False
        if broker.authorizer is not None and not (
                channel._clientinfo or channel.clientinfo).superuser:
            return False
        gate = channel.gate
        if qos and gate is not None and gate.full:  # the store may refuse it: slow path
            return False
        dispatcher = broker.dispatcher
        watched = dispatcher.watched
        if watched is not None and topic in watched:
            return False
        cluster = broker.cluster  # (a single node: this one test)
        if cluster is not None:  # the last test: what passes it is taken
            lane = cluster.lane
            if topic in lane.topics:  # known to stay here: counted as forward counts it
                lane.kept += 1
            elif not cluster.keep_local(topic):  # (which counts it when it stays)
                return False  # it goes to other nodes: Broker.publish forwards it

        # --- Channel.handle_in, _in_publish, _check_publish, Broker.check_acl ---
        metrics = channel.metrics
        channel.recv_pkt += 1
        issued = gate.issued if qos and gate is not None else 0
        metrics.inc(self.qos_recv[qos])
        channel.recv_msg += 1
        metrics.inc(self.acl_ignore)
        overfull = self.overfull
        if overfull:  # left by a publish no channel waits for (a will, the API)
            overfull.clear()
        msg = self.message_cls(topic, p.payload, qos, False, p.properties, channel.client_id)

        # --- Broker.publish, Dispatcher.publish ---
        broker.metrics.inc(self.messages_publish)  # (on a cluster node, a single node's)
        egress = broker.egress
        if egress is not None:  # the bridges, where Broker.publish gives it them
            egress(msg)
        router = dispatcher.router
        routes = router._cache.get(topic)  # Router.match's first step, without its call
        if routes is None:
            routes = router.match_uncached(topic)
        if not routes:
            dispatcher.dropped_no_subscribers += 1
            dispatcher.metrics.inc(self.dropped_no_subscribers)
            if hooks.message_dropped:
                hooks.run("message.dropped", msg, "no_subscribers")
            n = 0
        elif len(routes) != 1 or routes[0].groups:
            n = dispatcher.publish(msg)
        else:
            n = self._dispatch(routes[0], msg, dispatcher, hooks)

        # --- back in Channel._in_publish: backpressure, PUBACK ---
        held = channel._press() if overfull else False
        if not qos:
            return True
        packet_id = p.packet_id
        if n or channel.version != 5:
            ack = bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))
        else:  # 0x10 No matching subscribers
            ack = bytes((0x40, 3, packet_id >> 8, packet_id & 0xFF, 0x10))
        out = channel.out
        if type(out) is not list:  # an idle channel's shared empty NO_OUT: its own list now
            out = channel.out = []
        limit = channel.client_max_packet
        if limit and len(ack) > limit:  # as Channel._send: never more than the client takes
            channel.dropped += 1
        else:
            out.append(ack)
            channel.send_pkt += 1
            metrics.inc(self.puback_sent)
        if held and out:
            channel._held_ack = (msg, n, packet_id, out[-1])
        # --- Channel.handle_in: the acknowledgement waits for what the store took ---
        if gate is not None and out and (gate.issued != issued
                                         or channel._stored_pending(gate)):
            channel._hold(gate)
        return True

    def run(self, channel: Channel, packets: list[Any]) -> int:  # type: ignore[explicit-any]
        """Apply one read's ``packets`` to ``channel`` in order, each through :meth:`take`
        or else ``Channel.handle_in``, stopping after the one that closes the channel or
        puts it under backpressure; returns how many were applied (Connection._received's
        loop, in the compiled twin without a Python frame per packet)."""
        handle = channel.handle_in
        n = 0
        for packet in packets:
            n += 1
            if not self.take(channel, packet):
                handle(packet)
            if channel.closing or channel.pressure is not None:
                break
        return n

    def _puback(self, channel: Channel, p: Any) -> bool:  # type: ignore[explicit-any]
        """What ``Channel.handle_in`` → ``_in_puback`` → ``Session.ack`` → ``Broker.acked``
        → ``Channel.drain`` do for the PUBACK of a QoS 1 delivery in flight, from a
        connected client that is not traced or held, with no message.acked callback
        (timed deliveries, for delivery.slow, included); anything else: False, nothing
        changed. A durable store changes nothing here but its calls (a PUBACK's output is
        never held for a commit): the stored delivery goes (``Session.forget``) and a
        refill is stored as drain's ``start_inflight`` stores it."""
        if (channel.closing or channel._held is not None or channel.tracer is not None
                or channel.state != self.connected or channel._clientinfo is None):
            return False
        session = channel.session
        if session is None:
            return False
        broker = channel.services
        hooks = channel.hooks
        if type(broker) is not self.broker_cls or hooks.message_acked:
            return False
        packet_id = p.packet_id
        inflight = session.inflight
        entry = inflight.get(packet_id)
        if entry is None or entry[1] != 1:
            return False
        wait_comp = session.wait_comp
        if wait_comp is not None and packet_id in wait_comp:
            return False
        # --- Channel.handle_in, Session.ack, Broker.acked ---
        channel.recv_pkt += 1
        metrics = channel.metrics
        metrics.inc(self.puback_received)
        del inflight[packet_id]
        session.delivered += 1
        stored = session.store is not None
        if stored:
            session.forget(entry)
        broker.metrics.inc(self.messages_acked)
        sent_at = session.sent_at
        if sent_at is not None:  # timed (delivery.slow): as _in_puback
            sent = sent_at.pop(packet_id, 0.0)
            if time.monotonic() - sent >= hooks.slow_threshold:
                channel._completed(session, entry[0], sent)
        # --- Channel.drain ---
        if channel.paused:
            return True
        mq = session.mqueue
        if not mq:
            return True
        if (channel.acl_deliver is not None or channel.alias_out_max or channel.mountpoint
                or channel.client_max_packet):
            channel.drain()
            return True
        if hooks.delivery_slow:  # each PUBLISH sent is timed, as drain does it
            sent_at = session.sent_at
            if sent_at is None:
                sent_at = session.sent_at = {}
        else:
            sent_at = None
        out = channel.out
        was_empty = not out
        if type(out) is not list:  # (NO_OUT)
            out = channel.out = []
        version = channel.version
        max_inflight = session.max_inflight
        # The common queued delivery: QoS 1, no subscription identifier, no expiry (so the
        # message's own properties): its PUBLISH straight from the message, as drain's
        # build_publish → start_inflight → _send_publish make it.
        while mq and len(inflight) < max_inflight:
            delivery = mq[0]
            msg = delivery[0]
            if delivery[1] != 1 or delivery[3] or msg.expiry:
                break
            mq.popleft()
            if stored:
                pid = session.start_inflight(delivery)
            else:
                pid = session.next_packet_id()
                inflight[pid] = delivery
            if sent_at is not None:
                sent_at[pid] = time.monotonic()
            out.append(self.encode_publish(msg.topic, msg.payload, 1, delivery[2], False, pid,
                                           msg.properties, version))
            channel.send_pkt += 1
            channel.send_msg += 1
            metrics.inc(self.qos1_sent)
        if mq and len(inflight) < max_inflight:
            channel.drain()  # the rest as drain does it (QoS 0/2, expiry, identifiers)
        if was_empty and out and channel.wakeup is not None:
            channel.wakeup()
        return True

    def _dispatch(self, route: Route, msg: Message, dispatcher: Dispatcher, hooks: Hooks
                  ) -> int:
        """Dispatcher.publish's one-route case without shared groups; QoS 0 deliveries to a
        plain channel inlined from Channel.deliver with one encoding shared."""
        sender = msg.sender
        mqos = msg.qos
        encoded: dict[tuple[bool, bool], bytes] = {}
        n = 0
        one = route.one
        delivered_hook = hooks.message_delivered
        channel_cls = self.channel_cls
        # A route's single subscriber is kept without a dict (see Route); a dict is walked
        # in place, the route marked meanwhile (a callback's changes copied: Route.walking).
        if one is not None:
            walk: Iterable[tuple[Session, SubEntry]] = ((one, route.entry),)
            walking = None
        else:
            walk = route.subs.items()
            walking = route.walking
            route.walking = True
        try:
            for session, (opts, subid) in walk:
                if opts.no_local and sender == session.client_id:
                    dispatcher._no_local(session, msg)
                    continue
                qos = opts.qos
                if qos > mqos and not session.upgrade_qos:
                    qos = mqos
                delivery = (msg, qos, False, (subid,) if subid else (), None)
                n += 1
                ch = session.channel
                if ch is None:
                    dropped = session.enqueue(delivery)
                    if dropped is not None:
                        dispatcher.queue_dropped(session, dropped)
                    continue
                if (qos == 1 and not subid and not delivered_hook and type(ch) is channel_cls
                        and not ch.closing and ch.acl_deliver is None
                        and (ch.paused or len(session.inflight) >= session.max_inflight)):
                    # Channel.deliver's QoS 1 to a full window (a flood's usual case): queued
                    dropped = session.enqueue(delivery)
                    if dropped is not None:
                        dispatcher.queue_dropped(session, dropped)
                    continue
                if (qos or subid or delivered_hook or type(ch) is not channel_cls or ch.closing
                        or ch.acl_deliver is not None or ch.paused or ch.alias_out_max
                        or ch.tracer is not None or ch.mountpoint):
                    ch.deliver(delivery, encoded)
                    continue
                # Channel.deliver's shared QoS 0 bytes (the message has no expiry: no properties)
                v5 = ch.version == 5
                key = _K5 if v5 else _K4
                data = encoded.get(key)
                if data is None:
                    data = encoded[key] = self.encode_publish(
                        msg.topic, msg.payload, 0, False, False, 0, msg.properties, ch.version)
                limit = ch.client_max_packet
                if limit and len(data) > limit:
                    ch.deliver(delivery, encoded)  # dropped and counted there
                    continue
                out = ch.out
                was_empty = not out
                if type(out) is not list:  # (NO_OUT)
                    out = ch.out = []
                out.append(data)
                ch.send_pkt += 1
                ch.send_msg += 1
                ch.metrics.inc(self.qos0_sent)
                if was_empty and ch.wakeup is not None:
                    ch.wakeup()
        finally:
            if walking is not None:
                route.walking = walking
        if n:
            dispatcher.metrics.inc(self.messages_delivered, n)
        return n
