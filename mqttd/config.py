"""Broker settings: zones (EMQX's emqx_zone) and listeners.

A zone is a named group of MQTT settings that listeners bind to. Each key
resolves Zone > Global ``[mqtt]`` > embedded default, as in EMQX. The
embedded defaults below need no file.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


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
    #: MQTT 5 Server Keep Alive imposed on every client (0 = accept the client's value).
    server_keepalive: int = 0
    #: Largest keepalive a client may ask for (mosquitto's max_keepalive; 0 = no limit). An
    #: MQTT 5 client asking for 0 or more gets this as Server Keep Alive; a 3.1/3.1.1 client
    #: is refused with CONNACK 0x02, having no way to learn it.
    max_keepalive: int = 0
    #: A client is dropped after keepalive × backoff × 2 without traffic (0.75 → 1.5×).
    keepalive_backoff: float = 0.75
    #: Subscriptions per client (0 = unlimited). Bounded by default: each costs ~0.5 KB
    #: and a SUBSCRIBE of 10,000 filters ~35 ms of loop; CONFIG.md says why 10,000.
    max_subscriptions: int = 10_000
    #: QoS 1/2 messages in flight to a client (capped by the client's Receive Maximum).
    max_inflight: int = 32
    #: QoS 2 messages from a client awaiting PUBREL (0 = unlimited); also the Receive Maximum
    #: the broker advertises to MQTT 5 clients.
    max_awaiting_rel: int = 100
    #: Seconds a QoS 2 packet id from a client may wait for its PUBREL (0 = forever).
    await_rel_timeout: float = 300.0
    #: Session expiry for 3.1.1 clients with clean session 0 (MQTT 5 clients say their own).
    session_expiry_interval: int = 7200
    #: Upper bound on any session's expiry interval (MQTT 5 0xFFFFFFFF means "never").
    max_session_expiry_interval: int = 0xFFFFFFFF
    max_mqueue_len: int = 1000
    mqueue_store_qos0: bool = True
    #: What a full message queue does with one more message: drop_oldest (EMQX),
    #: drop_newest (mosquitto) or backpressure (the QoS 1/2 publisher's PUBACK/PUBREC and
    #: its reading wait for room, up to mqueue_backpressure_timeout, after which
    #: mqueue_backpressure_fallback drops). docs/DURABILITY.md "Queue overflow".
    mqueue_overflow: str = "drop_oldest"
    mqueue_backpressure_timeout: float = 5.0
    mqueue_backpressure_fallback: str = "drop_oldest"
    #: Flow control: a connected client's QoS 1/2 messages queued (its window full) at which
    #: the publisher of one more waits, as under backpressure, until the queue is half of it
    #: (at most mqueue_backpressure_timeout; nothing is dropped for it); 0: never.
    mqueue_flow_limit: int = 500
    #: Seconds a new connection has to send CONNECT.
    idle_timeout: float = 10.0
    allow_anonymous: bool = True
    mountpoint: str = ""
    use_username_as_clientid: bool = False
    #: Do not deliver a client's messages back to itself (3.1.1's "no local").
    ignore_loop_deliver: bool = False
    #: Deliver at the subscription's QoS even when the message's is lower (EMQX's
    #: upgrade_qos), rather than the lower of the two.
    upgrade_qos: bool = False
    #: Topic filters whose subscription is refused with 0x80 (an operator deny list): a filter
    #: listed here, or one a listed wildcard filter covers ("a/#" also refuses "a/b/+").
    deny_subscribe: list[str] = field(default_factory=list)
    #: Per-connection inbound rate limits: messages/s and bytes/s (0 = none).
    rate_limit_messages_in: float = 0.0
    rate_limit_bytes_in: float = 0.0

    def replace(self, **changes: object) -> Zone:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(slots=True)
class Listener:
    """One listener: where it binds, its transport and which zone its clients get."""

    name: str = "default"
    bind: str = "127.0.0.1"
    port: int = 1883
    zone: str = "default"
    #: Live connections at most; a client over it gets CONNACK 0x97 / 0x03 (counted).
    max_connections: int = 1_024_000
    #: New connections per second at most (0 = no limit); over it CONNACK 0x9F / 0x03
    #: (counted). EMQX's listener key of the same name.
    max_conn_rate: float = 0.0
    backlog: int = 1024
    #: Listening sockets of a tcp/ws listener on one address (Linux: a SO_REUSEPORT group,
    #: one client accepted per socket per loop turn); 1: one socket without SO_REUSEPORT,
    #: which no other process can join.
    accept_sockets: int = 8
    #: Whether clients no authentication provider vouched for get in on this listener;
    #: None: the zone's ``allow_anonymous`` on loopback, and *no* elsewhere (a listener
    #: beyond loopback with no provider refuses to start unless this says true).
    allow_anonymous: bool | None = None
    #: A mosquitto password file / ACL file for this listener's clients only (mosquitto's
    #: per-listener settings): asked before the [auth] providers / [authz] sources.
    password_file: str = ""
    acl_file: str = ""
    #: The transport: "tcp", "ssl" (TLS), "ws" (WebSocket) or "wss" (WebSocket over TLS).
    type: str = "tcp"
    #: PROXY protocol (v1 or v2) header expected before anything else (HAProxy, AWS NLB):
    #: the client's address is the one it gives.
    proxy_protocol: bool = False
    # --- TLS (ssl, wss) ---
    #: The server's certificate chain (PEM, leaf first) and its private key.
    certfile: str = ""
    keyfile: str = ""
    #: The password of an encrypted key file.
    keyfile_password: str = ""
    #: CAs that sign client certificates (PEM).
    cafile: str = ""
    #: Client certificates: "none" (not asked), "optional" (verified when sent) or
    #: "required" (the handshake fails without a valid one).
    verify: str = "none"
    tls_versions: list[str] = field(default_factory=lambda: ["tlsv1.2", "tlsv1.3"])
    #: OpenSSL cipher list for TLS 1.2 ("" = OpenSSL's default); TLS 1.3 suites are fixed.
    ciphers: str = ""
    #: Take the user name / client id from the verified client certificate: "cn", "dn"
    #: (the whole subject) or "san" (its first DNS name, e-mail or URI); "" = no.
    peer_cert_as_username: str = ""
    peer_cert_as_clientid: str = ""
    # --- WebSocket (ws, wss) ---
    #: The HTTP path of the upgrade request.
    path: str = "/mqtt"
    #: Origins allowed to connect (browsers send one); empty: any.
    allowed_origins: list[str] = field(default_factory=list)
    #: Take the client's address from X-Forwarded-For (behind a trusted HTTP proxy only).
    forwarded_for: bool = False
    #: Per-message deflate (RFC 7692) when the client offers it.
    compress: bool = False


@dataclass(slots=True)
class PluginSpec:
    """A plugin named in the configuration: where its class is and the options it gets.

    ``ref`` is ``"module:Class"`` (imported) or the name of an entry point in the
    ``mqttd.plugins`` group (an installed distribution's plugin).
    """

    name: str
    ref: str
    enabled: bool = True
    options: dict[str, Any] = field(default_factory=dict)


# --- [modules]: the built-in feature modules (mqttd/modules, docs/MODULES.md) -----------

@dataclass(slots=True)
class DelayedSettings:
    """``[modules.delayed]``: a PUBLISH to ``$delayed/<seconds>/<topic>`` is delivered to
    ``<topic>`` that many seconds later."""

    enable: bool = False
    #: Delayed messages pending at most (0: no limit); past it a PUBLISH is refused (MQTT 5:
    #: 0x97 quota exceeded).
    max_delayed_messages: int = 100_000


@dataclass(slots=True)
class RewriteRule:
    """One ``[[modules.rewrite.rules]]`` entry (EMQX's topic rewrite rule)."""

    #: "publish", "subscribe" or "all".
    action: str
    #: The topic filter a topic (or a subscription's filter) must match for the rule to apply.
    source_topic: str
    #: A regular expression searched in the topic; its groups are ``$1``... in ``dest_topic``.
    re: str
    #: The new topic: text, ``$1``..``$9``, ``${clientid}`` and ``${username}``.
    dest_topic: str


@dataclass(slots=True)
class RewriteSettings:
    """``[modules.rewrite]``: topic rewrite rules, the first whose ``source_topic`` matches
    applies."""

    enable: bool = False
    rules: list[RewriteRule] = field(default_factory=list)


@dataclass(slots=True)
class AutoSubscribeTopic:
    """One ``[[modules.auto_subscribe.topics]]`` entry: a filter (``${clientid}``,
    ``${username}`` allowed) and its subscription options."""

    topic: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class AutoSubscribeSettings:
    """``[modules.auto_subscribe]``: subscriptions every client gets when it connects."""

    enable: bool = False
    topics: list[AutoSubscribeTopic] = field(default_factory=list)


@dataclass(slots=True)
class RetainerSettings:
    """``[modules.retainer]``: limits on what is kept as a retained message."""

    enable: bool = False
    #: Retained messages kept at most (0: no limit); a new topic past it is not kept.
    max_retained_messages: int = 0
    #: Largest payload kept as retained, in bytes (0: no limit).
    max_payload_size: int = 0
    #: Expiry given to retained messages that have none, in seconds (0: none).
    msg_expiry_interval: int = 0
    #: Listeners whose clients' retained messages are delivered but never kept.
    disabled_listeners: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TopicMetricsSettings:
    """``[modules.topic_metrics]``: message counts and rates of registered topics."""

    enable: bool = False
    #: Topics registered at most (``mqttd ctl topic-metrics add`` past it is refused).
    max_topics: int = 512
    #: Topic names registered when the module loads (no wildcards).
    topics: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SlowSubsSettings:
    """``[modules.slow_subs]``: the subscribers slowest to acknowledge QoS 1/2 deliveries."""

    enable: bool = False
    #: A delivery acknowledged this late or later is recorded, in seconds ("500ms").
    threshold: float = 0.5
    #: Records kept at most: the slowest (client id, topic) pairs.
    top_k: int = 10
    #: A record not refreshed for this long is forgotten, in seconds.
    expire_interval: int = 300
    #: ``$SYS/brokers/<node>/slow_subs`` every this many seconds while there are records
    #: (0: never).
    notice_interval: int = 15


class ModulesSettings(NamedTuple):
    """``[modules]``: each module's settings (``enable``: loaded at start)."""

    delayed: DelayedSettings
    rewrite: RewriteSettings
    auto_subscribe: AutoSubscribeSettings
    retainer: RetainerSettings
    topic_metrics: TopicMetricsSettings
    slow_subs: SlowSubsSettings


def default_modules() -> ModulesSettings:
    """Every module with its defaults (none enabled)."""
    return ModulesSettings(DelayedSettings(), RewriteSettings(), AutoSubscribeSettings(),
                           RetainerSettings(), TopicMetricsSettings(), SlowSubsSettings())


# --- [bridges]: MQTT bridges to other brokers (mqttd/bridge, docs/BRIDGE.md) -------------

@dataclass(slots=True)
class BridgeMapping:
    """One ``[[bridges.<name>.egress]]`` or ``[[bridges.<name>.ingress]]`` entry: messages on
    ``filter`` (local for egress, on the remote for ingress) go to ``prefix`` + their topic
    on the other side, at QoS ``qos`` at most."""

    filter: str
    prefix: str = ""
    qos: int = 1


@dataclass(slots=True)
class BridgeSettings:
    """``[bridges.<name>]``: one MQTT client connection to another broker."""

    name: str = ""
    #: Connected at start (``mqttd ctl bridges start|stop`` at run time).
    enable: bool = True
    #: The remote broker, ``host:port``.
    address: str = ""
    #: 4 (MQTT 3.1.1) or 5.
    protocol_version: int = 4
    #: Empty: ``<node name>-bridge-<name>``.
    client_id: str = ""
    username: str = ""
    password: str = ""
    clean_start: bool = True
    #: MQTT 3.1.1: tell the remote it is a bridge (protocol level 0x84, mosquitto's
    #: try_private), so a mosquitto does not send back what the bridge published.
    try_private: bool = False
    #: MQTT 5 Session Expiry Interval asked for, in seconds.
    session_expiry: int = 0
    keepalive: int = 60
    #: TLS to the remote; cafile empty: the system's trust store.
    tls: bool = False
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    tls_verify: bool = True
    #: Reconnect back-off: the first wait, doubled after each failure up to the last.
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    #: QoS 1/2 messages waiting for the remote at most; past it the oldest is dropped.
    max_queued: int = 10_000
    #: QoS 1/2 messages sent and not yet acknowledged by the remote at most.
    max_inflight: int = 32
    #: While connected, QoS 1/2 messages queued at which a local publisher of one more
    #: waits (its acknowledgement held, its reading paused) until the queue is below it
    #: again, as a zone's ``mqueue_overflow = backpressure`` does; 0: never.
    pause_queued: int = 2_000
    egress: list[BridgeMapping] = field(default_factory=list)
    ingress: list[BridgeMapping] = field(default_factory=list)


@dataclass(slots=True)
class AccessSpec:
    """One authentication provider or authorization source: its type and its options
    (validated by :mod:`mqttd.access` when the chains are built)."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Where it was configured, for error lines (``auth.providers[0]``).
    path: str = ""


@dataclass(slots=True)
class AuthSettings:
    """``[auth]``: the authentication chain, asked in order (EMQX's authn chain)."""

    providers: list[AccessSpec] = field(default_factory=list)
    #: Threads that verify password hashes off the event loop.
    hash_threads: int = 2
    #: Seconds a successful check is remembered (0: never).
    cache_ttl: float = 60.0
    #: Checks in progress from one client address at most (0: no bound); past it that
    #: address's CONNECTs get 0x89 (server busy), so one address cannot take every place
    #: in the node's bound of 1,024 from the others.
    max_pending_per_address: int = 64


@dataclass(slots=True)
class AuthzSettings:
    """``[authz]``: the authorization chain, asked in order (EMQX's authz sources)."""

    sources: list[AccessSpec] = field(default_factory=list)
    #: What no source matching means: "deny" (default) or "allow".
    no_match: str = "deny"
    #: A denied publish or subscribe: "ignore" (0x87 in the ack) or "disconnect".
    deny_action: str = "ignore"
    #: Decisions remembered per client, and for how long (seconds).
    cache_size: int = 32
    cache_ttl: float = 60.0


@dataclass(slots=True)
class FlappingSettings:
    """``[flapping]``: a client id that connects more than ``max_count`` times within
    ``window`` seconds is banned for ``ban_time`` seconds (EMQX's flapping detection)."""

    enable: bool = False
    max_count: int = 15
    window: float = 60.0
    ban_time: float = 300.0


@dataclass(slots=True)
class StoreSettings:
    """``[store]``: where and how sessions, their queues and retained messages are kept
    (docs/DURABILITY.md). ``durability``: "off" (memory only), "process" (survives kill -9
    of mqttd: acknowledgements wait for the commit), "power" (also survives power loss:
    fsync per group commit)."""

    durability: str = "process"
    #: The SQLite file, relative to the data directory unless absolute.
    file: str = "mqttd.db"
    #: Bytes the store (its operation log and the database's live pages) may take (0: no
    #: limit); past it QoS 1/2 messages that need storing are refused (0x97) as on a full
    #: disk.
    max_size: int = 0
    #: Seconds between applications of the operation log to the database, and the log size
    #: that starts one sooner.
    apply_interval: float = 1.0
    apply_bytes: int = 8 << 20


@dataclass(slots=True)
class LogSettings:
    """``[log]``: where the broker's log goes and how it looks (docs/OPERATIONS.md "Logs").
    The level is ``Settings.log_level`` (``[log] level``, formerly ``[node] log_level``)."""

    #: "text" (one readable line each) or "json" (JSON Lines with structured fields).
    format: str = "text"
    #: A log file (relative to the data directory unless absolute); "" is standard error.
    file: str = ""
    #: Bytes after which the file is rotated (0: never; rotate externally, then SIGHUP).
    max_size: int = 0
    #: Rotated files kept beside the file when ``max_size`` is set.
    rotate: int = 5
    #: Also send every line to syslog (in addition to the file or standard error).
    syslog: bool = False
    #: A Unix socket path, or "host:port" for UDP syslog.
    syslog_address: str = "/dev/log"
    syslog_facility: str = "daemon"
    #: One info line per client connect and disconnect (mosquitto's connection_messages).
    connection_messages: bool = True


@dataclass(slots=True)
class HttpSettings:
    """``[http]``: the REST management API, ``/metrics`` and the dashboard (docs/HTTP.md).
    Off unless enabled; on loopback unless told otherwise; no anonymous access."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    #: 0: any free port (the one bound is logged as ``http api on HOST:PORT``).
    port: int = 18083
    #: Let requests without credentials in (read and write!): for a loopback-only node.
    allow_anonymous: bool = False
    #: Let Prometheus scrape ``/metrics`` without credentials (the rest still needs them).
    metrics_allow_anonymous: bool = False
    #: HTTP basic authentication against the built-in user table (superusers only).
    basic_auth: bool = True
    #: Largest request body accepted (413 beyond).
    max_body_size: int = 1024 * 1024


@dataclass(slots=True)
class SysmonSettings:
    """``[sysmon]``: alarms on the process's health, checked every ``check_interval``
    (docs/OPERATIONS.md "Alarms"). Each alarm activates at its high watermark and clears
    at the lower clear watermark, so a value hovering near one does not flap."""

    enable: bool = True
    check_interval: float = 1.0
    #: How late the monitor's timer may fire (the longest pause every client saw).
    loop_lag_high: float = 0.25
    loop_lag_clear: float = 0.05
    #: A garbage collection longer than this raises ``long_gc`` (0: off); it clears after
    #: ``long_gc_clear`` seconds without another.
    long_gc: float = 0.1
    long_gc_clear: float = 60.0
    #: Resident memory (bytes; 0: 80 % of the machine's memory) and where it clears
    #: (0: 90 % of the high watermark).
    process_memory_high: int = 0
    process_memory_clear: int = 0
    #: Open file descriptors as a fraction of RLIMIT_NOFILE.
    fd_high: float = 0.8
    fd_clear: float = 0.7
    #: A listener's connections as a fraction of its max_connections.
    connections_high: float = 0.9
    connections_clear: float = 0.8
    #: The store's slowest commit in a check interval.
    store_latency_high: float = 1.0
    store_latency_clear: float = 0.2
    #: Cleared alarms kept for ``mqttd ctl alarms list --history``.
    alarm_history: int = 100


@dataclass(slots=True)
class OverloadSettings:
    """``[overload_protection]``: shedding load while the event loop lags (EMQX's olp;
    docs/OPERATIONS.md "Overload protection")."""

    enable: bool = True
    #: Loop lag counted as overload, and for how long it must last before shedding starts
    #: (and again before the next step is taken).
    lag: float = 0.5
    lag_for: float = 3.0
    #: Lag under which, lasting ``recover_for``, shedding stops.
    recover_lag: float = 0.1
    recover_for: float = 3.0
    #: Second step: the heaviest publishers (bytes received in the last check interval)
    #: whose reading pauses, and for how long each time (0: never pause anyone).
    pause_publishers: int = 10
    pause_time: float = 1.0


@dataclass(slots=True)
class ClusterSettings:
    """``[cluster]``: nodes forming one broker over NATS (docs/CLUSTER.md)."""

    #: The NATS system the nodes meet in (``nats://host:port``); empty: a single node.
    nats_url: str = ""
    #: Seconds the first connection attempt may take before the node starts alone.
    connect_timeout: float = 2.0
    #: Seconds between attempts to join while NATS was unreachable at start (0: never).
    rejoin_interval: float = 5.0
    #: Seconds between a node's heartbeats on NATS (membership, mqttd ctl cluster nodes).
    heartbeat_interval: float = 1.0
    #: Heartbeats a node may miss before the others count it down and drop its routes.
    heartbeat_misses: int = 3
    #: The JetStream key-value bucket holding the cluster's retained messages.
    retained_bucket: str = "mqttd_retained"
    #: The JetStream key-value bucket holding client id -> owning node.
    sessions_bucket: str = "mqttd_sessions"
    #: Seconds a cluster-wide ``mqttd ctl`` command waits for the other nodes' answers.
    ctl_timeout: float = 2.0
    #: Seconds a node waits for another node to hand over a session a CONNECT resumes.
    handover_timeout: float = 5.0
    #: Seconds a QoS 1/2 publisher's acknowledgement waits for the other nodes its message
    #: was forwarded to to confirm it; past it the publisher hears 0x80 (3.1.1: closed).
    forward_timeout: float = 10.0
    #: Forwarded messages awaiting the other nodes' confirmation past which this node's
    #: publishers wait (flow control between nodes), as under backpressure.
    forward_window: int = 20000


@dataclass(slots=True)
class Settings:
    """Everything the broker needs to start."""

    node: str = "mqttd@127.0.0.1"
    data_dir: str = ""
    log_level: str = "info"
    zones: dict[str, Zone] = field(default_factory=lambda: {"default": Zone()})
    listeners: list[Listener] = field(default_factory=lambda: [Listener()])
    #: Seconds between $SYS publications (mosquitto's default, 10).
    sys_interval: float = 10.0
    #: Payload bytes a trace line shows before cutting (mqttd ctl trace --payload-limit).
    trace_payload_limit: int = 256
    #: Seconds the event loop may poll after a busy turn instead of sleeping, at most
    #: (mqttd.transport.busypoll; 0: never; off below two CPUs).
    busy_poll: float = 0.0001
    #: Plugins loaded at start, in order (``[plugins]`` in the file).
    plugins: list[PluginSpec] = field(default_factory=list)
    #: The built-in feature modules' settings (``[modules.<name>]``).
    modules: ModulesSettings = field(default_factory=default_modules)
    auth: AuthSettings = field(default_factory=AuthSettings)
    authz: AuthzSettings = field(default_factory=AuthzSettings)
    flapping: FlappingSettings = field(default_factory=FlappingSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    log: LogSettings = field(default_factory=LogSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sysmon: SysmonSettings = field(default_factory=SysmonSettings)
    overload: OverloadSettings = field(default_factory=OverloadSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    #: MQTT bridges to other brokers (``[bridges.<name>]``), in file order.
    bridges: list[BridgeSettings] = field(default_factory=list)

    def zone(self, name: str) -> Zone:
        return self.zones[name]


# --- loading and validation -------------------------------------------------------------

class ConfigError(Exception):
    """One or more problems in a configuration file; ``errors`` holds one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# The first is a bare number's unit: "30" is 30 s, as the number 30 is.
_DURATION_UNITS = {"s": 1, "us": 0.000001, "ms": 0.001, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}

#: Keys given as durations (seconds, or a string such as "30s", "2h", "500ms"), in every
#: section.
_DURATIONS = {"await_rel_timeout", "idle_timeout", "session_expiry_interval",
              "max_session_expiry_interval", "server_keepalive", "max_keepalive",
              "cache_ttl", "window", "ban_time", "apply_interval", "sys_interval", "busy_poll",
              # [sysmon], [overload_protection]
              "check_interval", "loop_lag_high", "loop_lag_clear", "long_gc", "long_gc_clear",
              "store_latency_high", "store_latency_clear", "lag", "lag_for", "recover_lag",
              "recover_for", "pause_time", "mqueue_backpressure_timeout"}
#: Keys whose default is None (not set) but whose value must be true or false.
_OPTIONAL_BOOLS = {"allow_anonymous"}
#: Zone keys given as sizes (bytes, or a string such as "64KB", "1MB").
_SIZES = {"max_packet_size", "max_size", "apply_bytes", "max_body_size",
          "process_memory_high", "process_memory_clear"}

_RANGES: dict[str, tuple[float, float]] = {
    "max_packet_size": (16, 268_435_460),
    "max_clientid_len": (23, 65535),
    "max_topic_levels": (0, 65535),
    "max_qos_allowed": (0, 2),
    "max_topic_alias": (0, 65535),
    "server_keepalive": (0, 65535),
    "max_keepalive": (0, 65535),
    "keepalive_backoff": (0.5, 10),
    "max_subscriptions": (0, 2 ** 31),
    "max_inflight": (1, 65535),
    "max_awaiting_rel": (0, 65535),
    "await_rel_timeout": (0, 2 ** 31),
    "session_expiry_interval": (0, 0xFFFFFFFF),
    "max_session_expiry_interval": (0, 0xFFFFFFFF),
    "max_mqueue_len": (0, 2 ** 31),
    "mqueue_backpressure_timeout": (0.01, 3600),
    "mqueue_flow_limit": (0, 2 ** 31),
    "idle_timeout": (0.1, 3600),
    "rate_limit_messages_in": (0, 2 ** 31),
    "rate_limit_bytes_in": (0, 2 ** 40),
    "port": (0, 65535),
    "max_connections": (1, 2 ** 31),
    "max_conn_rate": (0, 2 ** 31),
    "backlog": (1, 65535),
    "accept_sockets": (1, 64),
    "sys_interval": (0, 86400),
    "busy_poll": (0, 0.01),
    "trace_payload_limit": (0, 2 ** 20),
    "hash_threads": (1, 64),
    "max_pending_per_address": (0, 1024),
    "cache_ttl": (0, 86400),
    "cache_size": (0, 65536),
    "max_count": (1, 2 ** 31),
    "window": (0.001, 86400),
    "ban_time": (0, 2 ** 31),
    "max_size": (0, 2 ** 50),
    "apply_interval": (0.01, 3600),
    "apply_bytes": (4096, 2 ** 40),
    "rotate": (1, 1000),
    "max_body_size": (1024, 2 ** 30),
    "check_interval": (0.05, 60),
    "loop_lag_high": (0.001, 3600), "loop_lag_clear": (0, 3600),
    "long_gc": (0, 3600), "long_gc_clear": (0, 86400),
    "process_memory_high": (0, 2 ** 50), "process_memory_clear": (0, 2 ** 50),
    "fd_high": (0.01, 1), "fd_clear": (0, 1),
    "connections_high": (0.01, 1), "connections_clear": (0, 1),
    "store_latency_high": (0.000001, 3600), "store_latency_clear": (0, 3600),
    "alarm_history": (1, 100_000),
    "lag": (0.001, 3600), "lag_for": (0, 3600), "recover_lag": (0, 3600),
    "recover_for": (0, 3600), "pause_publishers": (0, 2 ** 31), "pause_time": (0.01, 3600),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "shared_subscription_strategy": ("random", "round_robin", "sticky", "hash"),
    "mqueue_overflow": ("drop_oldest", "drop_newest", "backpressure"),
    "mqueue_backpressure_fallback": ("drop_oldest", "drop_newest"),
    "log_level": ("debug", "info", "warning", "error"),
    "level": ("debug", "info", "warning", "error"),
    "format": ("text", "json"),
    "syslog_facility": ("kern", "user", "daemon", "auth", "local0", "local1", "local2",
                        "local3", "local4", "local5", "local6", "local7"),
    "no_match": ("deny", "allow"),
    "deny_action": ("ignore", "disconnect"),
    "durability": ("off", "process", "power"),
    "type": ("tcp", "ssl", "ws", "wss"),
    "verify": ("none", "optional", "required"),
    "peer_cert_as_username": ("", "cn", "dn", "san"),
    "peer_cert_as_clientid": ("", "cn", "dn", "san"),
}

_ZONE_FIELDS = {f.name: f for f in dataclasses.fields(Zone) if f.name != "name"}
_LISTENER_FIELDS = {f.name: f for f in dataclasses.fields(Listener) if f.name != "name"}
_FLAPPING_FIELDS = {f.name: f for f in dataclasses.fields(FlappingSettings)}
_STORE_FIELDS = {f.name: f for f in dataclasses.fields(StoreSettings)}
_HTTP_FIELDS = {f.name: f for f in dataclasses.fields(HttpSettings)}
_CLUSTER_FIELDS = {f.name: f for f in dataclasses.fields(ClusterSettings)}
_LOG_FIELDS = {f.name: f for f in dataclasses.fields(LogSettings)}
_SYSMON_FIELDS = {f.name: f for f in dataclasses.fields(SysmonSettings)}
_OVERLOAD_FIELDS = {f.name: f for f in dataclasses.fields(OverloadSettings)}
_NODE_FIELDS = {"name": "node", "data_dir": "data_dir", "log_level": "log_level",
                "sys_interval": "sys_interval", "trace_payload_limit": "trace_payload_limit",
                "busy_poll": "busy_poll"}


def _parse_unit(value: str, units: Mapping[str, float]) -> float | None:
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    if not m:
        return None
    unit = m.group(2).lower() or next(iter(units))
    if unit not in units:
        return None
    factor = units[unit]
    if factor < 1:  # ("100us" is the float 0.0001, as 100 * 1e-6 is not)
        return float(m.group(1)) / round(1 / factor)
    return float(m.group(1)) * factor


class EnvValue(str):
    """A value from an environment variable (``MQTTD_<SECTION>__<KEY>``, see
    :mod:`mqttd.config_sources`): text, turned into the type its key takes, then checked as
    a file's value is."""

    __slots__ = ()


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _from_env(key: str, text: str, default: object) -> tuple[object, str | None]:
    """An environment variable's text as the TOML value it stands for; (value, error)."""
    if isinstance(default, bool) or (default is None and key in _OPTIONAL_BOOLS):
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE, None
        return None, f"expected true or false, got {text!r}"
    if isinstance(default, list):
        if text.strip().startswith("["):  # a TOML array, as in the file
            import tomllib

            try:
                return tomllib.loads(f"v = {text}")["v"], None
            except tomllib.TOMLDecodeError:
                return None, f"expected a list such as [\"a\", \"b\"] or a,b, got {text!r}"
        return [part.strip() for part in text.split(",") if part.strip()], None
    if isinstance(default, (int, float)):
        for number in (int, float):
            try:
                return number(text.strip()), None
            except ValueError:
                pass
        if key in _DURATIONS or key in _SIZES:
            return text.strip(), None  # "30s", "1MB": parsed as the file's strings are
        kind = "an integer" if isinstance(default, int) else "a number"
        return None, f"expected {kind}, got {text!r}"
    return str(text), None


def _coerce(key: str, value: object, default: object) -> tuple[object, str | None]:
    """Convert a TOML value for ``key``; returns (value, error)."""
    if isinstance(value, EnvValue):
        value, err = _from_env(key, value, default)
        if err:
            return None, err
    if isinstance(value, str) and key in _DURATIONS:
        parsed = _parse_unit(value, _DURATION_UNITS)
        if parsed is None:
            return None, f"not a duration: {value!r} (use seconds or e.g. \"30s\", \"2h\")"
        value = int(parsed) if isinstance(default, int) else parsed
    elif isinstance(value, str) and key in _SIZES:
        parsed = _parse_unit(value, _SIZE_UNITS)
        if parsed is None:
            return None, f"not a size: {value!r} (use bytes or e.g. \"64KB\", \"1MB\")"
        value = int(parsed)
    if isinstance(default, bool) or (default is None and key in _OPTIONAL_BOOLS):
        if not isinstance(value, bool):
            return None, f"expected true or false, got {_tname(value)}"
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"expected an integer, got {_tname(value)}"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"expected a number, got {_tname(value)}"
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            return None, f"expected a string, got {_tname(value)}"
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"expected a list of strings, got {_tname(value)}"
    if key in _RANGES and isinstance(value, (int, float)):
        lo, hi = _RANGES[key]
        if not lo <= value <= hi:
            return None, f"{value} is out of range ({lo:g}..{hi:g})"
    if key in _CHOICES and value not in _CHOICES[key]:
        return None, f"{value!r} is not one of {', '.join(_CHOICES[key])}"
    return value, None


def _tname(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _unknown(path: str, key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{path}{key}: unknown key{hint}"


def _apply(target: object, table: dict[str, Any], fields: dict[str, Any], path: str,
           errors: list[str]) -> None:
    for key, value in table.items():
        if key not in fields:
            errors.append(_unknown(path, key, list(fields)))
            continue
        value, err = _coerce(key, value, getattr(target, key))
        if err:
            errors.append(f"{path}{key}: {err}")
        else:
            setattr(target, key, value)


def parse_settings(data: dict[str, Any], base: Settings | None = None) -> Settings:
    """Build Settings from a parsed TOML document; raises ConfigError listing every problem.

    Zone keys resolve Zone > Global ``[mqtt]`` > embedded default: each
    ``[zones.<name>]`` starts from the global zone and overrides it.
    """
    errors: list[str] = []
    settings = base or Settings()
    sections = {"node", "mqtt", "zones", "listeners", "plugins", "auth", "authz", "flapping",
                "store", "log", "http", "sysmon", "overload_protection", "modules",
                "bridges", "cluster"}
    for key in data:
        if key not in sections:
            errors.append(_unknown("", key, sorted(sections)))
    node = data.get("node", {})
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in _NODE_FIELDS:
                errors.append(_unknown("node.", key, list(_NODE_FIELDS)))
                continue
            attr = _NODE_FIELDS[key]
            value, err = _coerce(key, value, getattr(settings, attr))
            if err:
                errors.append(f"node.{key}: {err}")
            else:
                setattr(settings, attr, value)
    else:
        errors.append("node: expected a table")
    global_zone = settings.zones.get("default", Zone()).replace(name="default")
    mqtt = data.get("mqtt", {})
    if isinstance(mqtt, dict):
        _apply(global_zone, mqtt, _ZONE_FIELDS, "mqtt.", errors)
    else:
        errors.append("mqtt: expected a table")
    zones = {"default": global_zone}
    zone_tables = data.get("zones", {})
    if not isinstance(zone_tables, dict):
        errors.append("zones: expected a table of zones")
        zone_tables = {}
    for name, table in zone_tables.items():
        if not isinstance(table, dict):
            errors.append(f"zones.{name}: expected a table")
            continue
        zone = global_zone.replace(name=name)
        _apply(zone, table, _ZONE_FIELDS, f"zones.{name}.", errors)
        zones[name] = zone
    listeners = []
    listener_tables = data.get("listeners")
    if listener_tables is None:
        listeners = list(settings.listeners)
    elif not isinstance(listener_tables, dict):
        errors.append("listeners: expected a table of listeners")
    else:
        for name, table in listener_tables.items():
            if not isinstance(table, dict):
                errors.append(f"listeners.{name}: expected a table")
                continue
            listener = Listener(name=name)
            _apply(listener, table, _LISTENER_FIELDS, f"listeners.{name}.", errors)
            errors += _transport_errors(listener, table)
            if listener.zone not in zones and not any(
                    e.startswith(f"listeners.{name}.zone") for e in errors):
                errors.append(f"listeners.{name}.zone: no zone named {listener.zone!r}"
                              f" (zones: {', '.join(sorted(zones))})")
            listeners.append(listener)
        if not listeners:
            errors.append("listeners: at least one listener is needed")
    plugins = _parse_plugins(data["plugins"], errors) if "plugins" in data else None
    auth = _parse_access(data.get("auth", {}), "auth", "providers", AuthSettings(), errors)
    authz = _parse_access(data.get("authz", {}), "authz", "sources", AuthzSettings(), errors)
    flapping = FlappingSettings()
    table = data.get("flapping", {})
    if isinstance(table, dict):
        _apply(flapping, table, _FLAPPING_FIELDS, "flapping.", errors)
    else:
        errors.append("flapping: expected a table")
    store = StoreSettings()
    table = data.get("store", {})
    if isinstance(table, dict):
        _apply(store, table, _STORE_FIELDS, "store.", errors)
        if not store.file:
            errors.append("store.file: must not be empty")
    else:
        errors.append("store: expected a table")
    log_settings = _parse_log(data.get("log", {}), settings, errors)
    http = HttpSettings()
    table = data.get("http", {})
    if isinstance(table, dict):
        _apply(http, table, _HTTP_FIELDS, "http.", errors)
        if not http.bind:
            errors.append("http.bind: must not be empty")
    else:
        errors.append("http: expected a table")
    sysmon, overload = _parse_sysmon(data, errors)
    cluster = ClusterSettings()
    table = data.get("cluster", {})
    if isinstance(table, dict):
        _apply(cluster, table, _CLUSTER_FIELDS, "cluster.", errors)
        if cluster.nats_url and not cluster.nats_url.startswith(
                ("nats://", "tls://", "ws://", "wss://")):
            errors.append("cluster.nats_url: expected nats://HOST:PORT (or tls://, ws://, "
                          f"wss://), not {cluster.nats_url!r}")
        if cluster.connect_timeout <= 0:
            errors.append("cluster.connect_timeout: must be more than 0")
        if cluster.rejoin_interval < 0:
            errors.append("cluster.rejoin_interval: must be 0 (never) or more")
        if cluster.heartbeat_interval <= 0:
            errors.append("cluster.heartbeat_interval: must be more than 0")
        if cluster.heartbeat_misses < 1:
            errors.append("cluster.heartbeat_misses: must be at least 1")
        if not 0 < cluster.ctl_timeout <= 60:
            errors.append("cluster.ctl_timeout: must be more than 0 and at most 60 seconds")
        if not 0 < cluster.handover_timeout <= 60:
            errors.append("cluster.handover_timeout: must be more than 0 and at most 60 "
                          "seconds")
        if not 0 < cluster.forward_timeout <= 3600:
            errors.append("cluster.forward_timeout: must be more than 0 and at most 3600 "
                          "seconds")
        if cluster.forward_window < 1:
            errors.append("cluster.forward_window: must be at least 1")
        for key in ("retained_bucket", "sessions_bucket"):
            bucket = getattr(cluster, key)
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", bucket):
                errors.append(f"cluster.{key}: letters, digits, '-' and '_' only "
                              f"(a JetStream bucket name), not {bucket!r}")
        if cluster.retained_bucket == cluster.sessions_bucket:
            errors.append("cluster.sessions_bucket: must not be the retained_bucket")
    else:
        errors.append("cluster: expected a table")
    modules = _parse_modules(data.get("modules", {}), listeners, errors)
    bridges = _parse_bridges(data.get("bridges", {}), errors)
    if not errors:
        errors += listener_security_errors(listeners, auth)
    if errors:
        raise ConfigError(errors)
    settings.zones = zones
    settings.listeners = listeners
    if plugins is not None:
        settings.plugins = plugins
    settings.auth = auth
    settings.authz = authz
    settings.flapping = flapping
    settings.store = store
    settings.log = log_settings
    settings.http = http
    settings.modules = modules
    settings.cluster = cluster
    settings.sysmon = sysmon
    settings.overload = overload
    settings.bridges = bridges
    return settings


def _parse_sysmon(data: dict[str, Any], errors: list[str]
                  ) -> tuple[SysmonSettings, OverloadSettings]:
    """``[sysmon]`` and ``[overload_protection]``; each clear watermark must lie below its
    high one (else the alarm could never clear, or would flap)."""
    sysmon = SysmonSettings()
    table = data.get("sysmon", {})
    if isinstance(table, dict):
        _apply(sysmon, table, _SYSMON_FIELDS, "sysmon.", errors)
        for high, clear in (("loop_lag_high", "loop_lag_clear"), ("fd_high", "fd_clear"),
                            ("connections_high", "connections_clear"),
                            ("store_latency_high", "store_latency_clear"),
                            ("process_memory_high", "process_memory_clear")):
            hi, lo = getattr(sysmon, high), getattr(sysmon, clear)
            if hi and lo >= hi:
                if clear in table:
                    errors.append(f"sysmon.{clear}: {lo:g} must be below {high} ({hi:g})")
                else:  # only the high watermark was lowered: its clear one follows it
                    setattr(sysmon, clear, type(lo)(hi / 2))
    else:
        errors.append("sysmon: expected a table")
    overload = OverloadSettings()
    table = data.get("overload_protection", {})
    if isinstance(table, dict):
        _apply(overload, table, _OVERLOAD_FIELDS, "overload_protection.", errors)
        if overload.recover_lag >= overload.lag and "recover_lag" not in table:
            overload.recover_lag = overload.lag / 2
        elif overload.recover_lag >= overload.lag:
            errors.append(f"overload_protection.recover_lag: {overload.recover_lag:g} must be "
                          f"below lag ({overload.lag:g})")
    else:
        errors.append("overload_protection: expected a table")
    return sysmon, overload


def _parse_log(table: object, settings: Settings, errors: list[str]) -> LogSettings:
    """``[log]``; its ``level`` sets ``settings.log_level`` (what ``[node] log_level`` set)."""
    log_settings = LogSettings()
    if not isinstance(table, dict):
        errors.append("log: expected a table")
        return log_settings
    table = dict(table)
    if "level" in table:
        value, err = _coerce("level", table.pop("level"), "")
        if err:
            errors.append(f"log.level: {err}")
        else:
            settings.log_level = str(value)
    known = {"level": None, **_LOG_FIELDS}
    for key in [k for k in table if k not in _LOG_FIELDS]:
        errors.append(_unknown("log.", key, list(known)))
        del table[key]
    _apply(log_settings, table, _LOG_FIELDS, "log.", errors)
    return log_settings


#: Listener keys that only mean something for some transports.
_TLS_KEYS = ("certfile", "keyfile", "keyfile_password", "cafile", "verify", "tls_versions",
             "ciphers", "peer_cert_as_username", "peer_cert_as_clientid")
_WS_KEYS = ("path", "allowed_origins", "forwarded_for", "compress")
TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")


def _transport_errors(lst: Listener, table: dict[str, Any]) -> list[str]:
    """What the listener's transport needs and what it cannot use (the files themselves are
    checked when the TLS context is built: ``transport/tls.py``)."""
    path = f"listeners.{lst.name}."
    errors = []
    tls = lst.type in ("ssl", "wss")
    ws = lst.type in ("ws", "wss")
    for key in _TLS_KEYS if not tls else ():
        if key in table:
            errors.append(f"{path}{key}: only for a TLS listener (type = \"ssl\" or \"wss\"; "
                          f"this one is {lst.type!r})")
    for key in _WS_KEYS if not ws else ():
        if key in table:
            errors.append(f"{path}{key}: only for a WebSocket listener (type = \"ws\" or "
                          f"\"wss\"; this one is {lst.type!r})")
    if tls:
        for key in ("certfile", "keyfile"):
            if not getattr(lst, key):
                errors.append(f"{path}{key}: required for a {lst.type} listener")
        if lst.verify != "none" and not lst.cafile:
            errors.append(f"{path}cafile: required with verify = {lst.verify!r} (the CAs "
                          "that sign client certificates)")
        for key in ("peer_cert_as_username", "peer_cert_as_clientid"):
            if getattr(lst, key) and lst.verify == "none":
                errors.append(f"{path}{key}: needs verify = \"optional\" or \"required\" "
                              "(an unverified certificate proves nothing)")
        bad = [v for v in lst.tls_versions if v not in TLS_VERSIONS]
        if bad or not lst.tls_versions:
            errors.append(f"{path}tls_versions: {bad or 'empty'}: use {list(TLS_VERSIONS)} "
                          "(TLS 1.0 and 1.1 are broken)")
    if ws and not lst.path.startswith("/"):
        errors.append(f"{path}path: {lst.path!r} must start with /")
    return errors


#: ``[auth]`` / ``[authz]`` keys that name a file and stand for a one-entry chain.
_ACCESS_SHORTHANDS = {"auth": {"password_file": "password_file"},
                      "authz": {"acl_file": "acl_file"}}


def _parse_access(section: object, name: str, chain_key: str, target: Any,
                  errors: list[str]) -> Any:
    """``[auth]``/``[authz]``: the chain (``[[auth.providers]]`` tables with a ``type``, or a
    shorthand such as ``password_file = PATH``) and the chain's own settings."""
    if not isinstance(section, dict):
        errors.append(f"{name}: expected a table")
        return target
    chain: list[AccessSpec] = []
    fields = {f.name: f for f in dataclasses.fields(target) if f.name != chain_key}
    shorthands = _ACCESS_SHORTHANDS[name]
    rest: dict[str, Any] = {}
    for key, value in section.items():
        if key in shorthands:
            if not isinstance(value, str) or not value:
                errors.append(f"{name}.{key}: expected a file path, got {_tname(value)}")
            else:
                chain.append(AccessSpec(shorthands[key], {"path": value}, f"{name}.{key}"))
        elif key == chain_key:
            if not isinstance(value, list):
                errors.append(f"{name}.{key}: expected a list of tables ([[{name}.{key}]])")
                continue
            for i, entry in enumerate(value):
                path = f"{name}.{key}[{i}]"
                if not isinstance(entry, dict):
                    errors.append(f"{path}: expected a table, got {_tname(entry)}")
                elif not isinstance(entry.get("type"), str) or not entry["type"]:
                    errors.append(f"{path}.type: missing (which kind of {key[:-1]} it is)")
                else:
                    options = {k: v for k, v in entry.items() if k != "type"}
                    chain.append(AccessSpec(entry["type"], options, path))
        else:
            rest[key] = value
    _apply(target, rest, fields, f"{name}.", errors)
    setattr(target, chain_key, chain)
    return target


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost`` (the only binds open by default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_security_errors(listeners: list[Listener], auth: AuthSettings) -> list[str]:
    """Secure by default: a listener beyond loopback with no authentication provider is
    refused unless the operator wrote ``allow_anonymous = true`` for it (mosquitto 2). A TLS
    listener that requires a client certificate and names clients after it authenticates
    every client itself."""
    if auth.providers:
        return []
    # A listener with its own password_file has a provider for its clients.
    return [f"listeners.{lst.name}.allow_anonymous: the listener binds {lst.bind}, beyond "
            "loopback, and no authentication provider is configured; add one ([auth] "
            "password_file = PATH), require client certificates (verify = \"required\" with "
            "peer_cert_as_username) or set allow_anonymous = true for this listener"
            for lst in listeners
            if not is_loopback(lst.bind) and lst.allow_anonymous is not True
            and not lst.password_file
            and not (lst.verify == "required" and lst.peer_cert_as_username)]


_PLUGIN_REF = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_PLUGIN_KEYS = ("class", "enabled")


def _plugin_ref_error(ref: object) -> str | None:
    """Why ``ref`` is not a plugin reference ("module:Class" or an entry point name)."""
    import re

    if not isinstance(ref, str):
        return f"expected a string, got {_tname(ref)}"
    if ":" in ref:
        module, _, attr = ref.partition(":")
        if re.fullmatch(_PLUGIN_REF, module) and re.fullmatch(_PLUGIN_REF, attr):
            return None
        return f"{ref!r} is not \"module:Class\""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", ref):
        return None
    return f"{ref!r} is neither \"module:Class\" nor an entry point name"


def _parse_plugins(section: object, errors: list[str]) -> list[PluginSpec]:
    """``plugins = ["mod:Class", "entry-point", ...]``, or a ``[plugins]`` table whose keys
    name plugins: ``name = "mod:Class"``, ``name = true|false`` (the entry point called
    ``name``), or ``[plugins.name]`` with ``class``, ``enabled`` and the plugin's options."""
    specs: list[PluginSpec] = []
    if isinstance(section, list):
        for i, ref in enumerate(section):
            err = _plugin_ref_error(ref)
            if err:
                errors.append(f"plugins[{i}]: {err}")
            elif any(s.name == ref for s in specs):
                errors.append(f"plugins[{i}]: {ref!r} is listed twice")
            else:
                specs.append(PluginSpec(str(ref), str(ref)))
        return specs
    if not isinstance(section, dict):
        errors.append("plugins: expected a list of plugins or a table")
        return specs
    for name, value in section.items():
        path = f"plugins.{name}"
        if isinstance(value, bool):
            spec = PluginSpec(name, name, value)
        elif isinstance(value, str):
            spec = PluginSpec(name, value)
        elif isinstance(value, dict):
            cls: Any = value.get("class", name)
            enabled = value.get("enabled", True)
            if not isinstance(enabled, bool):
                errors.append(f"{path}.enabled: expected true or false, got {_tname(enabled)}")
                continue
            err = _plugin_ref_error(cls)
            if err:
                errors.append(f"{path}.class: {err}")
                continue
            options = {k: v for k, v in value.items() if k not in _PLUGIN_KEYS}
            spec = PluginSpec(name, cls, enabled, options)
        else:
            errors.append(f"{path}: expected \"module:Class\", true/false or a table, "
                          f"got {_tname(value)}")
            continue
        err = _plugin_ref_error(spec.ref)
        if err:
            errors.append(f"{path}: {err}")
            continue
        specs.append(spec)
    return specs


# --- [modules] ---------------------------------------------------------------------------

#: Placeholders a rewrite destination or an auto-subscribe topic may hold.
MODULE_PLACEHOLDERS = ("${clientid}", "${username}")
_REWRITE_ACTIONS = ("publish", "subscribe", "all")
_MODULE_INTS = {"max_delayed_messages": 2 ** 31, "max_retained_messages": 2 ** 31,
                "max_payload_size": 268_435_455, "msg_expiry_interval": 0xFFFFFFFF,
                "qos": 2, "retain_handling": 2, "max_topics": 100_000, "top_k": 1000,
                "expire_interval": 0xFFFFFFFF, "notice_interval": 86400}
#: Module keys given as durations (seconds, or e.g. "500ms", "5m").
_MODULE_DURATIONS = {"msg_expiry_interval", "threshold", "expire_interval", "notice_interval"}


def topic_filter_error(text: str) -> str | None:
    """Why ``text`` is not a topic filter (None: it is one); as mqtt/topics says it, which
    this leaf module may not import."""
    if not text:
        return "empty"
    if "\0" in text:
        return "contains a NUL character"
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, and the last"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def topic_name_error(text: str) -> str | None:
    """Why ``text`` is not a topic name one may publish to (None: it is one)."""
    if not text:
        return "empty"
    if "\0" in text:
        return "contains a NUL character"
    if "+" in text or "#" in text:
        return "a filter, not a topic name: '+' and '#' are not allowed"
    if len(text.encode("utf-8", "surrogatepass")) > 65535:
        return "longer than 65535 bytes"
    return None


def _placeholder_error(text: str) -> str | None:
    import re  # as the other parsers here: not paid by every import of config

    for ref in re.findall(r"\$\{[^}]*\}?", text):
        if ref not in MODULE_PLACEHOLDERS:
            return f"unknown placeholder {ref} (known: {', '.join(MODULE_PLACEHOLDERS)})"
    return None


def _module_table(target: Any, table: dict[str, Any], path: str, errors: list[str],
                  skip: tuple[str, ...] = ()) -> None:
    """``_apply`` for a module's keys: durations and sizes read here, ranges checked here."""
    fields = {f.name: f for f in dataclasses.fields(target) if f.name not in skip}
    for key, value in table.items():
        if key in skip:
            continue
        if key not in fields:
            errors.append(_unknown(path, key, list(fields)))
            continue
        if isinstance(value, str) and (key in _MODULE_DURATIONS or key == "max_payload_size"):
            units = _DURATION_UNITS if key in _MODULE_DURATIONS else _SIZE_UNITS
            parsed = _parse_unit(value, units)
            if parsed is None:
                kind = "duration" if units is _DURATION_UNITS else "size"
                errors.append(f"{path}{key}: not a {kind}: {value!r}")
                continue
            value = int(parsed) if isinstance(getattr(target, key), int) else parsed
        value, err = _coerce(key, value, getattr(target, key))
        if err is None and key in _MODULE_INTS and isinstance(value, int) \
                and not 0 <= value <= _MODULE_INTS[key]:
            err = f"{value} is out of range (0..{_MODULE_INTS[key]})"
        if err:
            errors.append(f"{path}{key}: {err}")
        else:
            setattr(target, key, value)


def _rewrite_rule(entry: object, path: str, errors: list[str]) -> RewriteRule | None:
    import re

    if not isinstance(entry, dict):
        errors.append(f"{path}: expected a table (action, source_topic, re, dest_topic)")
        return None
    rule = RewriteRule("all", "", "", "")
    n = len(errors)
    missing = [k for k in ("action", "source_topic", "re", "dest_topic") if k not in entry]
    if missing:
        errors.append(f"{path}: {', '.join(missing)} missing")
    _module_table(rule, entry, f"{path}.", errors)
    if len(errors) > n:
        return None
    shown = (f"{path} (action {rule.action!r}, source_topic {rule.source_topic!r}, "
             f"re {rule.re!r}, dest_topic {rule.dest_topic!r})")
    if rule.action not in _REWRITE_ACTIONS:
        errors.append(f"{shown}: action must be one of {', '.join(_REWRITE_ACTIONS)}")
        return None
    err = topic_filter_error(rule.source_topic)
    if err:
        errors.append(f"{shown}: source_topic is not a topic filter: {err}")
        return None
    try:
        groups = re.compile(rule.re).groups
    except re.error as exc:
        errors.append(f"{shown}: re is not a regular expression: {exc}")
        return None
    err = _placeholder_error(rule.dest_topic)
    if not rule.dest_topic:
        err = "dest_topic is empty"
    for ref in re.findall(r"\$(\d+)", rule.dest_topic):
        if int(ref) > groups:
            err = f"dest_topic uses ${ref} but re has {groups} group(s)"
    if err:
        errors.append(f"{shown}: {err}")
        return None
    return rule


def _parse_modules(section: object, listeners: list[Listener], errors: list[str]
                   ) -> ModulesSettings:
    """``[modules.<name>]`` tables; unknown modules and keys, bad rules and topics refused
    with where they are and why."""
    delayed, rewrite = DelayedSettings(), RewriteSettings()
    auto, retainer = AutoSubscribeSettings(), RetainerSettings()
    metrics, slow = TopicMetricsSettings(), SlowSubsSettings()
    if not isinstance(section, dict):
        errors.append("modules: expected a table of modules")
        return default_modules()
    known = list(ModulesSettings._fields)
    for name, table in section.items():
        path = f"modules.{name}."
        if name not in known:
            errors.append(_unknown("modules.", name, known))
            continue
        if not isinstance(table, dict):
            errors.append(f"modules.{name}: expected a table")
            continue
        if name == "delayed":
            _module_table(delayed, table, path, errors)
        elif name == "retainer":
            _module_table(retainer, table, path, errors)
            names = {lst.name for lst in listeners}
            for lst in retainer.disabled_listeners:
                if lst not in names:
                    errors.append(f"{path}disabled_listeners: no listener named {lst!r}")
        elif name == "slow_subs":
            _module_table(slow, table, path, errors)
            if slow.threshold <= 0:
                errors.append(f"{path}threshold: must be above 0, got {slow.threshold:g}")
            if slow.top_k < 1:
                errors.append(f"{path}top_k: must be at least 1")
            if slow.expire_interval < 1:
                errors.append(f"{path}expire_interval: must be at least 1 second")
        elif name == "topic_metrics":
            _module_table(metrics, table, path, errors)
            for topic in metrics.topics:
                err = topic_name_error(topic)
                if err:
                    errors.append(f"{path}topics: {topic!r}: {err}")
            if len(metrics.topics) > metrics.max_topics:
                errors.append(f"{path}topics: {len(metrics.topics)} topics, more than "
                              f"max_topics ({metrics.max_topics})")
        elif name == "rewrite":
            _module_table(rewrite, table, path, errors, ("rules",))
            rules = table.get("rules", [])
            if not isinstance(rules, list):
                errors.append(f"{path}rules: expected a list of rules ([[{path}rules]])")
                continue
            for i, entry in enumerate(rules):
                rule = _rewrite_rule(entry, f"{path}rules[{i}]", errors)
                if rule is not None:
                    rewrite.rules.append(rule)
        else:  # auto_subscribe
            _module_table(auto, table, path, errors, ("topics",))
            topics = table.get("topics", [])
            if not isinstance(topics, list):
                errors.append(f"{path}topics: expected a list of topics ([[{path}topics]])")
                continue
            for i, entry in enumerate(topics):
                where = f"{path}topics[{i}]"
                if not isinstance(entry, dict) or "topic" not in entry:
                    errors.append(f"{where}: expected a table with a topic")
                    continue
                sub = AutoSubscribeTopic("")
                n = len(errors)
                _module_table(sub, entry, f"{where}.", errors)
                if len(errors) > n:
                    continue
                err = _placeholder_error(sub.topic) or topic_filter_error(
                    sub.topic.replace("${clientid}", "c").replace("${username}", "u"))
                if err:
                    errors.append(f"{where}.topic: {sub.topic!r}: {err}")
                    continue
                auto.topics.append(sub)
    return ModulesSettings(delayed, rewrite, auto, retainer, metrics, slow)


# --- [bridges] ---------------------------------------------------------------------------

def _parse_bridges(section: object, errors: list[str]) -> list[BridgeSettings]:
    """``[bridges.<name>]`` tables with their ``egress``/``ingress`` mappings; every
    problem named with its key."""
    if not isinstance(section, dict):
        errors.append("bridges: expected a table of bridges ([bridges.<name>])")
        return []
    bridges = []
    for name, table in section.items():
        path = f"bridges.{name}."
        if not isinstance(table, dict):
            errors.append(f"bridges.{name}: expected a table")
            continue
        if not name or any(c in name for c in "/+#") or name.strip() != name:
            errors.append(f"bridges.{name}: a bridge name may not be empty, hold spaces at "
                          "its ends, or hold / + #")
            continue
        b = BridgeSettings(name=name)
        n = len(errors)
        _module_table(b, table, path, errors, ("name", "egress", "ingress"))
        if "name" in table:
            errors.append(f"{path}name: unknown key (the name is the table's)")
        if len(errors) > n:
            continue
        host, _, port = b.address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            errors.append(f"{path}address: expected host:port, got {b.address!r}")
        if b.protocol_version not in (4, 5):
            errors.append(f"{path}protocol_version: 4 (MQTT 3.1.1) or 5, not "
                          f"{b.protocol_version}")
        if not 0 <= b.keepalive <= 65535:
            errors.append(f"{path}keepalive: {b.keepalive} is out of range (0..65535)")
        if not 0 <= b.session_expiry <= 0xFFFFFFFF:
            errors.append(f"{path}session_expiry: {b.session_expiry} is out of range")
        if not 0 < b.reconnect_min <= b.reconnect_max:
            errors.append(f"{path}reconnect_min: must be > 0 and <= reconnect_max")
        if b.max_queued < 0 or not 0 < b.max_inflight <= 65535:
            errors.append(f"{path}max_queued/max_inflight: max_queued >= 0, max_inflight "
                          "1..65535")
        if b.pause_queued < 0:
            errors.append(f"{path}pause_queued: {b.pause_queued} is out of range (>= 0)")
        if (b.certfile or b.keyfile or b.cafile) and not b.tls:
            errors.append(f"{path}tls: cafile/certfile/keyfile given but tls = false")
        if bool(b.certfile) != bool(b.keyfile):
            errors.append(f"{path}certfile: certfile and keyfile go together")
        for direction in ("egress", "ingress"):
            entries = table.get(direction, [])
            if not isinstance(entries, list):
                errors.append(f"{path}{direction}: expected a list ([[{path}{direction}]])")
                continue
            for i, entry in enumerate(entries):
                where = f"{path}{direction}[{i}]"
                if not isinstance(entry, dict) or "filter" not in entry:
                    errors.append(f"{where}: expected a table with a filter")
                    continue
                m = BridgeMapping("")
                k = len(errors)
                _module_table(m, entry, f"{where}.", errors)
                if len(errors) > k:
                    continue
                err = topic_filter_error(m.filter)
                if err:
                    errors.append(f"{where}.filter: {m.filter!r}: {err}")
                elif any(c in m.prefix for c in "+#"):
                    errors.append(f"{where}.prefix: {m.prefix!r}: no wildcards in a prefix")
                elif not 0 <= m.qos <= 2:
                    errors.append(f"{where}.qos: {m.qos} is out of range (0..2)")
                else:
                    getattr(b, direction).append(m)
        if not b.egress and not b.ingress and "egress" not in table \
                and "ingress" not in table:
            errors.append(f"bridges.{name}: no egress and no ingress mapping: it would "
                          "carry nothing")
        bridges.append(b)
    return bridges


# --- the sources: file, environment ----------------------------------------------------
#
# An environment variable MQTTD_<SECTION>__<KEY> sets [section] key
# (MQTTD_MQTT__MAX_PACKET_SIZE=1MB), MQTTD_<SECTION>__<NAME>__<KEY> a key of a named table
# (MQTTD_LISTENERS__DEFAULT__PORT=1884), as EMQX's container images take theirs; names match
# whatever their case. The value is the file's text without quotes; it goes through the same
# conversion and checks (EnvValue), and an error names the variable. MQTTD_ variables
# without "__" (MQTTD_DATA_DIR, MQTTD_NO_EXTENSIONS) are not settings.

ENV_PREFIX = "MQTTD_"


def env_settings(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str],
                                                       list[str]]:
    """The settings the environment gives, as the TOML document would hold them; the
    variable behind each dotted key; and the variables that cannot be read as one."""
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    errors: list[str] = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):
            errors.append(f"{var}: not a setting (MQTTD_<SECTION>__<KEY>, one name between "
                          "each double underscore)")
            continue
        table = data
        for i, part in enumerate(parts[:-1]):
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                errors.append(f"{var}: {'.'.join(parts[:i + 1])} is already a value")
                break
            table = nxt
        else:
            table[parts[-1]] = EnvValue(environ[var])
            origin[".".join(parts)] = var
    return data, origin, errors


def _merge(into: dict[str, Any], over: dict[str, Any], origin: dict[str, str], prefix: str,
           placed: dict[str, str]) -> None:
    """Lay ``over`` onto ``into``; a name matches an existing one whatever its case.
    ``placed`` gets the variable behind each dotted key as it is named in ``into``."""
    for name, value in over.items():
        key = name if name in into else next((k for k in into if k.lower() == name), name)
        here, there = prefix + name, prefix + key
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, here + ".", placed)
            for dotted in list(placed):
                if dotted.startswith(here + ".") and here != there:
                    placed[there + dotted[len(here):]] = placed.pop(dotted)
            continue
        into[key] = value
        for dotted, var in origin.items():
            if dotted == here or dotted.startswith(here + "."):
                placed[there + dotted[len(here):]] = var


@dataclass(slots=True)
class Loaded:
    """Settings and where they came from."""

    settings: Settings
    #: The configuration file (None: none).
    file: str | None = None
    #: The file's document as read.
    file_data: dict[str, Any] = field(default_factory=dict)
    #: Dotted key -> the environment variable that set it.
    env: dict[str, str] = field(default_factory=dict)
    #: Dotted key -> the command-line option that set it (filled by the command line).
    cli: dict[str, str] = field(default_factory=dict)


def _read(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None


def _blame(line: str, path: str | None, env: dict[str, str]) -> str:
    """An error line, prefixed with the variable or the file it comes from."""
    key = line.split(":", 1)[0]
    for dotted in sorted(env, key=len, reverse=True):
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return f"{env[dotted]} ({line.split(': ', 1)[0]}): {line.split(': ', 1)[-1]}"
    return f"{path}: {line}" if path else line


def load_config(path: str | None, environ: Mapping[str, str] | None = None
                ) -> Loaded:
    """The file (if any) under the environment's settings, validated as one; ConfigError
    lists every problem, each naming the file or the variable."""
    environ = os.environ if environ is None else environ
    file_data = _read(path) if path is not None else {}
    env_data, origin, errors = env_settings(environ)
    data = copy.deepcopy(file_data)
    env: dict[str, str] = {}
    _merge(data, env_data, origin, "", env)
    try:
        settings = parse_settings(data)
    except ConfigError as err:
        errors += [_blame(e, path, env) for e in err.errors]
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    base = os.path.dirname(os.path.abspath(path)) if path is not None else os.getcwd()
    _resolve_files(settings, base)
    return Loaded(settings, path, file_data, env)


def load_settings(path: str | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML configuration file (None: the embedded defaults) under the
    environment's ``MQTTD_<SECTION>__<KEY>`` settings; each error names the file or the
    variable it comes from."""
    return load_config(path, environ).settings


#: Options of providers and sources that name a file.
_FILE_OPTIONS = ("path", "public_key_file", "cafile", "certfile", "keyfile")


def _resolve_files(settings: Settings, base: str) -> None:
    """Relative file names in ``[auth]``/``[authz]`` and the listeners' and bridges' TLS
    files are taken from the configuration file's directory, not from the working directory
    (which ``--daemon`` sets to the data directory): the configuration means the same
    wherever mqttd is started from."""
    for lst in [*settings.listeners, *settings.bridges]:
        for key in ("certfile", "keyfile", "cafile"):
            value = getattr(lst, key)
            if value and not os.path.isabs(value):
                setattr(lst, key, os.path.join(base, os.path.expanduser(value)))
    for spec in [*settings.auth.providers, *settings.authz.sources]:
        for key in _FILE_OPTIONS:
            value = spec.options.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                spec.options[key] = os.path.join(base, os.path.expanduser(value))


def default_data_dir() -> str:
    """``$MQTTD_DATA_DIR``, else ``$XDG_STATE_HOME/mqttd``, else ``~/.local/state/mqttd``."""
    env = os.environ.get("MQTTD_DATA_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "mqttd")
