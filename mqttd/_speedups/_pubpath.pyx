# cython: language_level=3
"""The PUBLISH fast path, compiled: the twin of ``mqttd/core/_pubpath_py.py``.

Read the reference for what it does and when it declines. This is the same code line
for line, with C integers for the QoS, counts and packet id and without the Python
frames of the seven calls it replaces (handle_in, _in_publish, _check_publish,
check_acl, Broker.publish, Dispatcher.publish, Channel.deliver per subscriber). It
imports nothing of mqttd: the facade hands it core's classes and counter indices.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

__all__ = ["PublishPath"]

cdef tuple _K4 = (False, False)
cdef tuple _K5 = (True, False)
cdef tuple _NO_SUBIDS = ()


@cython.final
cdef class PublishPath:
    """The fast path, configured once (see the reference)."""

    cdef object broker_cls, channel_cls, message_cls, connected, encode_publish
    cdef list overfull
    cdef int publish_type
    cdef object qos0_received, qos1_received, acl_ignore, messages_publish
    cdef object messages_delivered, dropped_no_subscribers, qos0_sent, puback_sent

    def __init__(self, broker_cls, channel_cls, message_cls, list overfull, connected,
                 int publish_type, encode_publish, dict counters):
        self.broker_cls = broker_cls
        self.channel_cls = channel_cls
        self.message_cls = message_cls
        self.overfull = overfull
        self.connected = connected
        self.publish_type = publish_type
        self.encode_publish = encode_publish
        self.qos0_received = counters["qos0_received"]
        self.qos1_received = counters["qos1_received"]
        self.acl_ignore = counters["acl_ignore"]
        self.messages_publish = counters["messages_publish"]
        self.messages_delivered = counters["messages_delivered"]
        self.dropped_no_subscribers = counters["dropped_no_subscribers"]
        self.qos0_sent = counters["qos0_sent"]
        self.puback_sent = counters["puback_sent"]

    def take(self, channel, p):
        """Handle ``p`` if it is the common PUBLISH (True); else change nothing (False)."""
        cdef int qos
        cdef Py_ssize_t n, max_levels, limit
        cdef unsigned int packet_id
        cdef char ack[5]
        # --- may we? (no side effect before every test has passed) ---
        if p.packet_type != self.publish_type:
            return False
        qos = p.qos
        if qos > 1 or p.retain or p.properties:
            return False
        if (channel.closing or channel._held is not None or channel.tracer is not None
                or channel.state != self.connected or channel.pressure is not None
                or channel.mountpoint):
            return False
        topic = p.topic
        if not isinstance(topic, str):
            return False
        if (<str>topic).startswith("$"):
            return False
        zone = channel.zone
        if qos > zone.max_qos_allowed:
            return False
        max_levels = zone.max_topic_levels
        if max_levels and (<str>topic).count("/") >= max_levels:
            return False
        broker = channel.services
        if type(broker) is not self.broker_cls:
            return False
        hooks = channel.hooks
        if (hooks.client_publish or hooks.client_check_acl or hooks.message_publish
                or broker.cluster is not None or broker.topic_traces):
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

        # --- Channel.handle_in, _in_publish, _check_publish, Broker.check_acl ---
        metrics = channel.metrics
        channel.recv_pkt += 1
        issued = gate.issued if qos and gate is not None else 0
        metrics.inc(self.qos1_received if qos else self.qos0_received)
        channel.recv_msg += 1
        metrics.inc(self.acl_ignore)
        overfull = self.overfull
        if overfull:  # left by a publish no channel waits for (a will, the API)
            overfull.clear()
        msg = self.message_cls(topic, p.payload, qos, False, p.properties, channel.client_id)

        # --- Broker.publish, Dispatcher.publish ---
        broker.metrics.inc(self.messages_publish)
        routes = dispatcher.router.match(topic)
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
        ack[0] = <char>0x40
        ack[2] = <char>(packet_id >> 8)
        ack[3] = <char>(packet_id & 0xFF)
        if n or channel.version != 5:
            ack[1] = 2
            data = PyBytes_FromStringAndSize(ack, 4)
        else:  # 0x10 No matching subscribers
            ack[1] = 3
            ack[4] = 0x10
            data = PyBytes_FromStringAndSize(ack, 5)
        out = channel.out
        limit = channel.client_max_packet
        if limit and len(data) > limit:  # as Channel._send: never more than the client takes
            channel.dropped += 1
        else:
            out.append(data)
            channel.send_pkt += 1
            metrics.inc(self.puback_sent)
        if held and out:
            channel._held_ack = (msg, n, packet_id, out[len(out) - 1])
        # --- Channel.handle_in: the acknowledgement waits for what the store took ---
        if gate is not None and out and (gate.issued != issued
                                         or channel._stored_pending(gate)):
            channel._hold(gate)
        return True

    cdef Py_ssize_t _dispatch(self, route, msg, dispatcher, hooks) except -1:
        cdef Py_ssize_t n = 0, limit
        cdef int qos, mqos
        cdef dict encoded = {}
        cdef tuple key
        cdef PyObject* found
        sender = msg.sender
        mqos = msg.qos
        one = route.one
        delivered_hook = hooks.message_delivered
        channel_cls = self.channel_cls
        qos0_sent = self.qos0_sent
        for session, entry in (((one, route.entry),) if one is not None
                               else route.subs.items()):
            opts, subid = entry
            if opts.no_local and sender == session.client_id:
                dispatcher._no_local(session, msg)
                continue
            qos = opts.qos
            if qos > mqos and not session.upgrade_qos:
                qos = mqos
            delivery = (msg, qos, False, (subid,) if subid else _NO_SUBIDS, None)
            n += 1
            ch = session.channel
            if ch is None:
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
            version = ch.version
            key = _K5 if version == 5 else _K4
            found = PyDict_GetItem(encoded, key)
            if found is NULL:
                data = self.encode_publish(msg.topic, msg.payload, 0, False, False, 0,
                                           msg.properties, version)
                encoded[key] = data
            else:
                data = <object>found
            limit = ch.client_max_packet
            if limit and len(data) > limit:
                ch.deliver(delivery, encoded)  # dropped and counted there
                continue
            out = ch.out
            was_empty = not out
            out.append(data)
            ch.send_pkt += 1
            ch.send_msg += 1
            ch.metrics.inc(qos0_sent)
            if was_empty and ch.wakeup is not None:
                ch.wakeup()
        if n:
            dispatcher.metrics.inc(self.messages_delivered, n)
        return n
