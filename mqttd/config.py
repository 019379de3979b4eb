"""Broker settings: zones (EMQX's emqx_zone) and listeners.

A zone is a named group of MQTT settings that listeners bind to. Each key
resolves Zone > Global ``[mqtt]`` > embedded default, as in EMQX. The
embedded defaults below need no file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(slots=True)
class Zone:
    """The MQTT behaviour a listener's clients get. Durations are seconds."""

    name: str = "default"
    #: Largest packet accepted from a client, fixed header included (MQTT 5 Maximum Packet Size).
    max_packet_size: int = 1024 * 1024
    max_clientid_len: int = 65535
    #: Deepest topic accepted (0 = unlimited).
    max_topic_levels: int = 128
    max_qos_allowed: int = 2
    #: Topic Alias Maximum granted to MQTT 5 clients (client → server).
    max_topic_alias: int = 65535
    retain_available: bool = True
    wildcard_subscription: bool = True
    shared_subscription: bool = True
    #: random | round_robin | sticky | hash (of client id).
    shared_subscription_strategy: str = "round_robin"
    #: MQTT 5 Server Keep Alive sent in CONNACK (0 = accept the client's value).
    server_keepalive: int = 0
    #: A client is dropped after keepalive × backoff × 2 without traffic (0.75 → 1.5×).
    keepalive_backoff: float = 0.75
    #: Subscriptions per client (0 = unlimited).
    max_subscriptions: int = 0
    upgrade_qos: bool = False
    #: QoS 1/2 messages in flight to a client (also our MQTT 5 Receive Maximum).
    max_inflight: int = 32
    #: QoS 2 messages from a client awaiting PUBREL (0 = unlimited).
    max_awaiting_rel: int = 100
    await_rel_timeout: float = 300.0
    #: Session expiry for 3.1.1 clients with clean session 0 (MQTT 5 clients say their own).
    session_expiry_interval: int = 7200
    #: Upper bound on any session's expiry interval (MQTT 5 0xFFFFFFFF means "never").
    max_session_expiry_interval: int = 0xFFFFFFFF
    max_mqueue_len: int = 1000
    mqueue_store_qos0: bool = True
    #: Seconds a new connection has to send CONNECT.
    idle_timeout: float = 10.0
    allow_anonymous: bool = True
    mountpoint: str = ""
    use_username_as_clientid: bool = False
    #: Do not deliver a client's messages back to itself (3.1.1's "no local").
    ignore_loop_deliver: bool = False
    #: Topic filters whose subscription is refused with 0x80 (an operator deny list).
    deny_subscribe: list[str] = field(default_factory=list)
    #: Per-connection inbound rate limits: messages/s and bytes/s (0 = none).
    rate_limit_messages_in: float = 0.0
    rate_limit_bytes_in: float = 0.0

    def replace(self, **changes: object) -> Zone:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(slots=True)
class Listener:
    """One TCP listener: where it binds and which zone its clients get."""

    name: str = "default"
    bind: str = "127.0.0.1"
    port: int = 1883
    zone: str = "default"
    max_connections: int = 1_024_000
    backlog: int = 1024


@dataclass(slots=True)
class Settings:
    """Everything the broker needs to start."""

    node: str = "mqttd@127.0.0.1"
    data_dir: str = ""
    log_level: str = "info"
    zones: dict[str, Zone] = field(default_factory=lambda: {"default": Zone()})
    listeners: list[Listener] = field(default_factory=lambda: [Listener()])
    #: Seconds between $SYS publications.
    sys_interval: float = 60.0

    def zone(self, name: str) -> Zone:
        return self.zones[name]
