"""The metric table (EMQX's emqx_metrics): every counter's name and its fixed index.

Shared by the reference (``_metrics_py.py``) and the compiled (``_speedups/_metrics.pyx``)
counter arrays, and re-exported by the facade ``mqttd.metrics``. The hot path
increments by index (``metrics.inc(PACKETS_PUBLISH_INUSE)``), never by name.

The names and their families are EMQX's (bytes, packets, messages, delivery, and the
``client.*``/``session.*`` hook counters), in the order EMQX's docs list them. The
rule-engine counters (``rules.*``, ``actions.*``) are left out: mqttd has no rule
engine. The ``node`` family is mqttd's own: refused, crashed and rate-limited
connections, restarted background workers, failed hook callbacks, and connections refused
for a ban or banned for flapping.

Nine metrics are not counters but sums (``DERIVED``): EMQX increments them in the
same places as other counters, so they always equal those sums, and computing them
when read keeps the hot path at one increment per event.

Generated once and kept by hand: an index is the position of its name in ``NAMES``
(tests/test_metrics.py checks every constant against it).
"""

from __future__ import annotations

__all__ = [
    "ALL_NAMES",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "CLIENT_ACL_ALLOW",
    "CLIENT_ACL_DENY",
    "CLIENT_ACL_IGNORE",
    "CLIENT_AUTH_ANONYMOUS",
    "CLIENT_AUTH_FAILURE",
    "CLIENT_AUTH_IGNORE",
    "CLIENT_AUTH_SUCCESS",
    "CLIENT_CONNACK",
    "CLIENT_CONNECT",
    "CLIENT_CONNECTED",
    "CLIENT_DISCONNECTED",
    "CLIENT_SUBSCRIBE",
    "CLIENT_UNSUBSCRIBE",
    "CONNECTIONS_CRASHED",
    "CONNECTIONS_FLAPPING",
    "CONNECTIONS_RATE_LIMITED",
    "CONNECTIONS_REFUSED_BANNED",
    "CONNECTIONS_REFUSED_MAX_CONNECTIONS",
    "CONNECTIONS_REFUSED_MAX_CONN_RATE",
    "COUNT",
    "DELIVERY_DROPPED_EXPIRED",
    "DELIVERY_DROPPED_NOT_AUTHORIZED",
    "CONNECTIONS_REFUSED_TLS",
    "CONNECTIONS_REFUSED_WEBSOCKET",
    "CONNECTIONS_REFUSED_PROXY_PROTOCOL",
    "CONNECTIONS_REFUSED_MAX_FDS",
    "CONNECTIONS_PAUSED_OVERLOAD",
    "CONNECTIONS_REFUSED_OVERLOAD",
    "PUBLISHERS_HELD",
    "PUBLISHERS_RELEASED_CLOSED",
    "PUBLISHERS_RELEASED_ROOM",
    "PUBLISHERS_RELEASED_TIMEOUT",
    "CLUSTER_RECEIVED",
    "CLUSTER_DUPLICATES",
    "CLUSTER_DROPPED",
    "CLUSTER_SHARED_RECEIVED",
    "DELIVERY_DROPPED_NO_LOCAL",
    "DELIVERY_DROPPED_QOS0_MSG",
    "DELIVERY_DROPPED_QUEUE_FULL",
    "DELIVERY_DROPPED_TOO_LARGE",
    "DERIVED",
    "FAMILIES",
    "HOOKS_FAILED",
    "MESSAGES_ACKED",
    "MESSAGES_DELAYED",
    "MESSAGES_DELIVERED",
    "MESSAGES_DROPPED_EXPIRED",
    "MESSAGES_DROPPED_NO_SUBSCRIBERS",
    "MESSAGES_FORWARD",
    "MESSAGES_PUBLISH",
    "MESSAGES_QOS0_RECEIVED",
    "MESSAGES_QOS0_SENT",
    "MESSAGES_QOS1_RECEIVED",
    "MESSAGES_QOS1_SENT",
    "MESSAGES_QOS2_RECEIVED",
    "MESSAGES_QOS2_SENT",
    "MESSAGES_RETAINED",
    "NAMES",
    "PACKETS_AUTH_RECEIVED",
    "PACKETS_AUTH_SENT",
    "PACKETS_CONNACK_AUTH_ERROR",
    "PACKETS_CONNACK_ERROR",
    "PACKETS_CONNACK_SENT",
    "PACKETS_CONNECT_RECEIVED",
    "PACKETS_DISCONNECT_RECEIVED",
    "PACKETS_DISCONNECT_SENT",
    "PACKETS_PINGREQ_RECEIVED",
    "PACKETS_PINGRESP_SENT",
    "PACKETS_PUBACK_INUSE",
    "PACKETS_PUBACK_MISSED",
    "PACKETS_PUBACK_RECEIVED",
    "PACKETS_PUBACK_SENT",
    "PACKETS_PUBCOMP_INUSE",
    "PACKETS_PUBCOMP_MISSED",
    "PACKETS_PUBCOMP_RECEIVED",
    "PACKETS_PUBCOMP_SENT",
    "PACKETS_PUBLISH_AUTH_ERROR",
    "PACKETS_PUBLISH_DROPPED",
    "PACKETS_PUBLISH_ERROR",
    "PACKETS_PUBLISH_INUSE",
    "PACKETS_PUBREC_INUSE",
    "PACKETS_PUBREC_MISSED",
    "PACKETS_PUBREC_RECEIVED",
    "PACKETS_PUBREC_SENT",
    "PACKETS_PUBREL_MISSED",
    "PACKETS_PUBREL_RECEIVED",
    "PACKETS_PUBREL_SENT",
    "PACKETS_RECEIVED",
    "PACKETS_SUBACK_SENT",
    "PACKETS_SUBSCRIBE_AUTH_ERROR",
    "PACKETS_SUBSCRIBE_ERROR",
    "PACKETS_SUBSCRIBE_RECEIVED",
    "PACKETS_UNSUBACK_SENT",
    "PACKETS_UNSUBSCRIBE_ERROR",
    "PACKETS_UNSUBSCRIBE_RECEIVED",
    "SESSION_CREATED",
    "SESSION_DISCARDED",
    "SESSION_RESUMED",
    "SESSION_TAKEOVERED",
    "SESSION_TERMINATED",
    "WORKERS_RESTARTED",
]

# bytes
BYTES_RECEIVED = 0
BYTES_SENT = 1

# packets
PACKETS_RECEIVED = 2
PACKETS_CONNECT_RECEIVED = 3
PACKETS_CONNACK_SENT = 4
PACKETS_CONNACK_ERROR = 5
PACKETS_CONNACK_AUTH_ERROR = 6
PACKETS_PUBLISH_INUSE = 7
PACKETS_PUBLISH_AUTH_ERROR = 8
PACKETS_PUBLISH_ERROR = 9
PACKETS_PUBLISH_DROPPED = 10
PACKETS_PUBACK_RECEIVED = 11
PACKETS_PUBACK_SENT = 12
PACKETS_PUBACK_INUSE = 13
PACKETS_PUBACK_MISSED = 14
PACKETS_PUBREC_RECEIVED = 15
PACKETS_PUBREC_SENT = 16
PACKETS_PUBREC_INUSE = 17
PACKETS_PUBREC_MISSED = 18
PACKETS_PUBREL_RECEIVED = 19
PACKETS_PUBREL_SENT = 20
PACKETS_PUBREL_MISSED = 21
PACKETS_PUBCOMP_RECEIVED = 22
PACKETS_PUBCOMP_SENT = 23
PACKETS_PUBCOMP_INUSE = 24
PACKETS_PUBCOMP_MISSED = 25
PACKETS_SUBSCRIBE_RECEIVED = 26
PACKETS_SUBSCRIBE_ERROR = 27
PACKETS_SUBSCRIBE_AUTH_ERROR = 28
PACKETS_SUBACK_SENT = 29
PACKETS_UNSUBSCRIBE_RECEIVED = 30
PACKETS_UNSUBSCRIBE_ERROR = 31
PACKETS_UNSUBACK_SENT = 32
PACKETS_PINGREQ_RECEIVED = 33
PACKETS_PINGRESP_SENT = 34
PACKETS_DISCONNECT_RECEIVED = 35
PACKETS_DISCONNECT_SENT = 36
PACKETS_AUTH_RECEIVED = 37
PACKETS_AUTH_SENT = 38

# messages
MESSAGES_QOS0_RECEIVED = 39
MESSAGES_QOS1_RECEIVED = 40
MESSAGES_QOS2_RECEIVED = 41
MESSAGES_QOS0_SENT = 42
MESSAGES_QOS1_SENT = 43
MESSAGES_QOS2_SENT = 44
MESSAGES_PUBLISH = 45
MESSAGES_DELIVERED = 46
MESSAGES_ACKED = 47
MESSAGES_RETAINED = 48
MESSAGES_DELAYED = 49
MESSAGES_FORWARD = 50
MESSAGES_DROPPED_EXPIRED = 51
MESSAGES_DROPPED_NO_SUBSCRIBERS = 52

# delivery
DELIVERY_DROPPED_TOO_LARGE = 53
DELIVERY_DROPPED_QUEUE_FULL = 54
DELIVERY_DROPPED_QOS0_MSG = 55
DELIVERY_DROPPED_EXPIRED = 56
DELIVERY_DROPPED_NO_LOCAL = 57

# client
CLIENT_CONNECT = 58
CLIENT_CONNACK = 59
CLIENT_AUTH_SUCCESS = 60
CLIENT_AUTH_FAILURE = 61
CLIENT_AUTH_IGNORE = 62
CLIENT_AUTH_ANONYMOUS = 63
CLIENT_ACL_ALLOW = 64
CLIENT_ACL_DENY = 65
CLIENT_ACL_IGNORE = 66
CLIENT_CONNECTED = 67
CLIENT_DISCONNECTED = 68
CLIENT_SUBSCRIBE = 69
CLIENT_UNSUBSCRIBE = 70

# session
SESSION_CREATED = 71
SESSION_RESUMED = 72
SESSION_TAKEOVERED = 73
SESSION_DISCARDED = 74
SESSION_TERMINATED = 75

# node
CONNECTIONS_REFUSED_MAX_CONNECTIONS = 76
CONNECTIONS_REFUSED_MAX_CONN_RATE = 77
CONNECTIONS_CRASHED = 78
CONNECTIONS_RATE_LIMITED = 79
WORKERS_RESTARTED = 80
HOOKS_FAILED = 81
CONNECTIONS_REFUSED_BANNED = 82
CONNECTIONS_FLAPPING = 83
# delivery (added after the node family, to keep every earlier index)
DELIVERY_DROPPED_NOT_AUTHORIZED = 84
# node: transport handshakes that failed (TLS, WebSocket upgrade, PROXY protocol header)
CONNECTIONS_REFUSED_TLS = 85
CONNECTIONS_REFUSED_WEBSOCKET = 86
CONNECTIONS_REFUSED_PROXY_PROTOCOL = 87
# node: refused to keep file descriptors in reserve (transport/fdguard.py)
CONNECTIONS_REFUSED_MAX_FDS = 88

# node: overload protection (mqttd/overload.py): sockets refused, publishers paused
CONNECTIONS_REFUSED_OVERLOAD = 89
CONNECTIONS_PAUSED_OVERLOAD = 90
# node: publishers held under mqueue_overflow = "backpressure" (their acknowledgement and
# reading wait for room), and how each wait ended: room, the timeout, the connection closing
PUBLISHERS_HELD = 91
PUBLISHERS_RELEASED_ROOM = 92
PUBLISHERS_RELEASED_TIMEOUT = 93
PUBLISHERS_RELEASED_CLOSED = 94

# cluster (mqttd's own; messages sent to other nodes count in messages.forward)
CLUSTER_RECEIVED = 95
CLUSTER_DUPLICATES = 96
CLUSTER_DROPPED = 97
CLUSTER_SHARED_RECEIVED = 98

#: Number of counters.
COUNT = 99

#: Every counter's name, in index order.
NAMES: tuple[str, ...] = (
    "bytes.received", "bytes.sent", "packets.received", "packets.connect.received",
    "packets.connack.sent", "packets.connack.error", "packets.connack.auth_error",
    "packets.publish.inuse", "packets.publish.auth_error", "packets.publish.error",
    "packets.publish.dropped", "packets.puback.received", "packets.puback.sent",
    "packets.puback.inuse", "packets.puback.missed", "packets.pubrec.received",
    "packets.pubrec.sent", "packets.pubrec.inuse", "packets.pubrec.missed",
    "packets.pubrel.received", "packets.pubrel.sent", "packets.pubrel.missed",
    "packets.pubcomp.received", "packets.pubcomp.sent", "packets.pubcomp.inuse",
    "packets.pubcomp.missed", "packets.subscribe.received", "packets.subscribe.error",
    "packets.subscribe.auth_error", "packets.suback.sent", "packets.unsubscribe.received",
    "packets.unsubscribe.error", "packets.unsuback.sent", "packets.pingreq.received",
    "packets.pingresp.sent", "packets.disconnect.received", "packets.disconnect.sent",
    "packets.auth.received", "packets.auth.sent", "messages.qos0.received",
    "messages.qos1.received", "messages.qos2.received", "messages.qos0.sent",
    "messages.qos1.sent", "messages.qos2.sent", "messages.publish", "messages.delivered",
    "messages.acked", "messages.retained", "messages.delayed", "messages.forward",
    "messages.dropped.expired", "messages.dropped.no_subscribers", "delivery.dropped.too_large",
    "delivery.dropped.queue_full", "delivery.dropped.qos0_msg", "delivery.dropped.expired",
    "delivery.dropped.no_local", "client.connect", "client.connack", "client.auth.success",
    "client.auth.failure", "client.auth.ignore", "client.auth.anonymous", "client.acl.allow",
    "client.acl.deny", "client.acl.ignore", "client.connected", "client.disconnected",
    "client.subscribe", "client.unsubscribe", "session.created", "session.resumed",
    "session.takeovered", "session.discarded", "session.terminated",
    "connections.refused.max_connections", "connections.refused.max_conn_rate",
    "connections.crashed", "connections.rate_limited", "workers.restarted", "hooks.failed",
    "connections.refused.banned", "connections.flapping",
    "delivery.dropped.not_authorized",
    "connections.refused.tls", "connections.refused.websocket",
    "connections.refused.proxy_protocol", "connections.refused.max_fds",
    "connections.refused.overload", "connections.paused.overload",
    "publishers.held", "publishers.released.room", "publishers.released.timeout",
    "publishers.released.closed",
    "cluster.received", "cluster.duplicates", "cluster.dropped", "cluster.shared.received",
)

#: Metrics EMQX increments together with others: each is kept here as the sum of the
#: counters that always move with it, so the hot path increments one counter, not three.
#: EMQX adds 1 to messages.received, messages.qosN.received and packets.publish.received for
#: every PUBLISH received (and likewise when sending); packets.sent with every packet's own
#: counter; messages.dropped and delivery.dropped with every reason's counter; and every
#: authentication (ACL check) ends as exactly one of success, failure or ignore (allow, deny
#: or ignore).
DERIVED: dict[str, tuple[int, ...]] = {
    "packets.sent": (
        PACKETS_CONNACK_SENT, MESSAGES_QOS0_SENT, MESSAGES_QOS1_SENT, MESSAGES_QOS2_SENT,
        PACKETS_PUBACK_SENT, PACKETS_PUBREC_SENT, PACKETS_PUBREL_SENT, PACKETS_PUBCOMP_SENT,
        PACKETS_SUBACK_SENT, PACKETS_UNSUBACK_SENT, PACKETS_PINGRESP_SENT,
        PACKETS_DISCONNECT_SENT, PACKETS_AUTH_SENT,
    ),
    "packets.publish.received": (
        MESSAGES_QOS0_RECEIVED, MESSAGES_QOS1_RECEIVED, MESSAGES_QOS2_RECEIVED,
    ),
    "packets.publish.sent": (MESSAGES_QOS0_SENT, MESSAGES_QOS1_SENT, MESSAGES_QOS2_SENT),
    "messages.received": (MESSAGES_QOS0_RECEIVED, MESSAGES_QOS1_RECEIVED, MESSAGES_QOS2_RECEIVED),
    "messages.sent": (MESSAGES_QOS0_SENT, MESSAGES_QOS1_SENT, MESSAGES_QOS2_SENT),
    "messages.dropped": (MESSAGES_DROPPED_EXPIRED, MESSAGES_DROPPED_NO_SUBSCRIBERS),
    "delivery.dropped": (
        DELIVERY_DROPPED_TOO_LARGE, DELIVERY_DROPPED_QUEUE_FULL, DELIVERY_DROPPED_QOS0_MSG,
        DELIVERY_DROPPED_EXPIRED, DELIVERY_DROPPED_NO_LOCAL, DELIVERY_DROPPED_NOT_AUTHORIZED,
    ),
    "client.authenticate": (CLIENT_AUTH_SUCCESS, CLIENT_AUTH_FAILURE, CLIENT_AUTH_IGNORE),
    "client.check_acl": (CLIENT_ACL_ALLOW, CLIENT_ACL_DENY, CLIENT_ACL_IGNORE),
}

#: Every metric name (counters and derived), by family, in the order EMQX's docs list them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "bytes": (
        "bytes.received", "bytes.sent",
    ),
    "packets": (
        "packets.received", "packets.sent", "packets.connect.received", "packets.connack.sent",
        "packets.connack.error", "packets.connack.auth_error", "packets.publish.received",
        "packets.publish.sent", "packets.publish.inuse", "packets.publish.auth_error",
        "packets.publish.error", "packets.publish.dropped", "packets.puback.received",
        "packets.puback.sent", "packets.puback.inuse", "packets.puback.missed",
        "packets.pubrec.received", "packets.pubrec.sent", "packets.pubrec.inuse",
        "packets.pubrec.missed", "packets.pubrel.received", "packets.pubrel.sent",
        "packets.pubrel.missed", "packets.pubcomp.received", "packets.pubcomp.sent",
        "packets.pubcomp.inuse", "packets.pubcomp.missed", "packets.subscribe.received",
        "packets.subscribe.error", "packets.subscribe.auth_error", "packets.suback.sent",
        "packets.unsubscribe.received", "packets.unsubscribe.error", "packets.unsuback.sent",
        "packets.pingreq.received", "packets.pingresp.sent", "packets.disconnect.received",
        "packets.disconnect.sent", "packets.auth.received", "packets.auth.sent",
    ),
    "messages": (
        "messages.received", "messages.sent", "messages.qos0.received", "messages.qos1.received",
        "messages.qos2.received", "messages.qos0.sent", "messages.qos1.sent",
        "messages.qos2.sent", "messages.publish", "messages.delivered", "messages.acked",
        "messages.retained", "messages.delayed", "messages.forward", "messages.dropped",
        "messages.dropped.expired", "messages.dropped.no_subscribers",
    ),
    "delivery": (
        "delivery.dropped", "delivery.dropped.too_large", "delivery.dropped.queue_full",
        "delivery.dropped.qos0_msg", "delivery.dropped.expired", "delivery.dropped.no_local",
        "delivery.dropped.not_authorized",
    ),
    "client": (
        "client.connect", "client.connack", "client.authenticate", "client.auth.success",
        "client.auth.failure", "client.auth.ignore", "client.auth.anonymous", "client.check_acl",
        "client.acl.allow", "client.acl.deny", "client.acl.ignore", "client.connected",
        "client.disconnected", "client.subscribe", "client.unsubscribe",
    ),
    "session": (
        "session.created", "session.resumed", "session.takeovered", "session.discarded",
        "session.terminated",
    ),
    "node": (
        "connections.refused.max_connections", "connections.refused.max_conn_rate",
        "connections.crashed", "connections.rate_limited", "workers.restarted", "hooks.failed",
        "connections.refused.banned", "connections.flapping", "connections.refused.tls",
        "connections.refused.websocket", "connections.refused.proxy_protocol",
        "connections.refused.max_fds", "connections.refused.overload",
        "connections.paused.overload", "publishers.held", "publishers.released.room",
        "publishers.released.timeout", "publishers.released.closed",
    ),
    "cluster": (
        "cluster.received", "cluster.duplicates", "cluster.dropped", "cluster.shared.received",
    ),
}

#: Every metric name: counters, then derived.
ALL_NAMES: tuple[str, ...] = NAMES + tuple(DERIVED)
