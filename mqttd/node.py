"""The composition root: builds one node's services and wires them together.

No protocol logic lives here: each service is built with exactly what it
needs (the broker gets the loop's timers, the trace manager the registry,
``$SYS`` the dispatcher and the counters, plugins a :class:`PluginContext`),
so no object reaches through another to find a third.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .access.banned import BANNED_FILE, Ban, BannedTable
from .access.build import Access, build_access
from .access.password_file import PasswordHash
from .access.users import UserTable
from .alarms import Alarm, Alarms
from .bridge import BridgeManager
from .cluster.routing import Cluster
from .config import Settings, is_loopback
from .core.broker import Broker
from .core.message import Message
from .hooks import Hooks
from .metrics import (
    HOOKS_FAILED,
    PUBLISHERS_HELD,
    PUBLISHERS_RELEASED_CLOSED,
    PUBLISHERS_RELEASED_ROOM,
    PUBLISHERS_RELEASED_TIMEOUT,
    WORKERS_RESTARTED,
    Metrics,
)
from .mgmt.subscriptions import Subscriptions
from .modules.base import ModuleContext
from .modules.manager import ModuleManager
from .plugins import PluginContext, PluginManager
from .stats import Stats
from .store.base import StoreError
from .store.journal import Journal, replay
from .store.kv import KVSpace, KVStore
from .store.oplog import OpLog
from .store.restore import restore
from .store.sqlite import SqliteBackend
from .supervisor import Supervisor
from .sys_topics import SysPublisher
from .trace.manager import TraceManager

log = logging.getLogger("mqttd.node")

#: What each durability setting promises, for the start's log line.
_DURABILITY = {
    "process": "survives kill -9 of mqttd; acknowledgements wait for the commit",
    "power": "survives power loss; acknowledgements wait for the commit and its fsync",
}


class LoopTimers:
    """The core's :class:`~mqttd.core.services.Timers` on the running event loop."""

    __slots__ = ()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any
                   ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class Node:
    """One mqttd node: settings, counters, hooks, the broker and the operations services."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings = settings or Settings()
        #: Wall-clock time the node was created (uptime counts from here).
        self.started_at = time.time()
        #: Counters by index (mqttd.metrics); gauges with their maxima (mqttd.stats).
        self.metrics = Metrics()
        self.stats = Stats()
        #: Extension points: chains of callbacks per hook point (mqttd.hooks).
        self.hooks = Hooks()
        self.hooks.on_failure = self._hook_failed
        #: What every channel calls: access, publish, subscribe, sessions.
        self.broker = Broker(settings, self.metrics, self.hooks, LoopTimers())
        self.registry = self.broker.registry
        self.dispatcher = self.broker.dispatcher
        #: Client and topic traces (mqttd ctl trace); the broker tests the topic table's
        #: truth on every publish.
        self.trace = TraceManager(self.registry, settings.trace_payload_limit)
        self.broker.topic_traces = self.trace.topics
        self.broker.trace_publish = self.trace.on_publish
        self.plugins = PluginManager(PluginContext(self.hooks, self.metrics, self.stats,
                                                   settings, self.publish))
        #: The built-in feature modules ([modules.<name>], mqttd ctl modules).
        self.modules = ModuleManager(ModuleContext(self.hooks, self.metrics, settings,
                                                   self.broker, LoopTimers(), self.kv_space))
        #: MQTT bridges to other brokers ([bridges.<name>], mqttd ctl bridges).
        self.bridges = BridgeManager(settings.bridges, self.hooks, self.broker, settings.node)
        #: Background workers (stats tick, $SYS, sweeps, trace writers), restarted on crash.
        self.supervisor = Supervisor(on_restart=self._worker_restarted)
        self.sys = SysPublisher(settings.node, self.dispatcher, self.hooks, self.stats,
                                self.metrics, self.started_at)
        #: Alarms (mqttd ctl alarms), each change published to
        #: $SYS/brokers/<node>/alarms/activate|deactivate.
        self.alarms = Alarms(settings.sysmon.alarm_history)
        self.alarms.on_change.append(self._alarm_changed)
        #: This node's part in a cluster over NATS (None: a single node, and the publish
        #: path and the router carry no cluster hook at all).
        self.cluster: Cluster | None = None
        if settings.cluster.nats_url:
            self.cluster = Cluster(settings.cluster, settings.node, self.dispatcher,
                                   self.metrics, self.registry, self.hooks,
                                   self.broker.publish_will)
            self.broker.cluster = self.cluster
            self.broker.remote_gate = self.cluster.gate
            self.broker.router.on_change = self.cluster.route_changed
            self.broker.router.on_group = self.cluster.group_changed
            self.cluster.control.traces = self.trace  # client traces asked by other nodes
            self.cluster.control.subscriptions = Subscriptions(self.registry, self.dispatcher)
            self.sys.nodes = lambda c=self.cluster: [  # $SYS/brokers: every node up
                r["node"] for r in c.nodes() if r["status"] == "up"]
        #: The access chains, built at start (their files are read then).
        self.access: Access | None = None
        #: The durable store's journal, opened at start (None: durability off).
        self.journal: Journal | None = None
        #: ``mqttd start --reset-store``: move the store file aside and start empty.
        self.reset_store = False
        #: The built-in user table, kept in the store (None: durability off).
        self.users: UserTable | None = None
        #: The banned table kept in the store (None: durability off, build_access reads
        #: banned.json); the task retiring a migrated banned.json.
        self.banned: BannedTable | None = None
        self._banned_file_task: asyncio.Task[None] | None = None
        #: Modules' and bridges' own records in the store (None: durability off).
        self.kv: KVStore | None = None

    def store_path(self) -> str | None:
        """The store file, or None when nothing is stored (durability off, or no data
        directory: an embedded node)."""
        settings = self.settings
        if settings.store.durability == "off" or not settings.data_dir:
            return None
        return os.path.join(os.path.abspath(os.path.expanduser(settings.data_dir)),
                            os.path.expanduser(settings.store.file))

    def open_store(self) -> None:
        """Open the store, restore what it holds, and keep durable state in it from now on.
        Raises StoreError (one line naming the file and the problem)."""
        path = self.store_path()
        if path is None:
            log.info("durability off: sessions, queued and retained messages are kept in "
                     "memory only and lost when mqttd stops")
            return
        st = self.settings.store
        if self.reset_store:
            self._move_aside(path)
        backend = SqliteBackend(path, st.durability)
        restored = backend.open()
        oplog = OpLog(path, sync=st.durability == "power")
        try:
            restored, replayed = replay(oplog, backend, restored)
        except BaseException:
            backend.close()
            raise
        journal = Journal(backend, st.durability, oplog, restored.last_msg_id, st.max_size,
                          st.apply_interval, st.apply_bytes)
        self.broker.use_store(journal)
        report = restore(restored, journal, self.registry, self.broker.retainer,
                         self.settings.zones)
        journal.start(asyncio.get_running_loop())
        self.journal = journal
        self.users = UserTable(restored.users, self._persist_user)
        self.banned = self._restore_bans(restored.banned, journal)
        self.kv = KVStore(journal, restored.kv)
        log.info("durability %s (%s): %s", st.durability, _DURABILITY[st.durability], path)
        if replayed:
            log.info("store: %d operations of the operation log replayed into the store",
                     replayed)
        log.info("store: restored %d sessions (%d expired), %d subscriptions, %d queued and "
                 "%d in-flight messages (%d expired), %d retained messages, %d wills in %.2f s",
                 report.sessions, report.expired, report.subscriptions, report.queued,
                 report.inflight, report.expired_messages, report.retained, report.wills,
                 report.seconds)

    def kv_space(self, name: str) -> KVSpace | None:
        """The records ``name`` (a module, a bridge) keeps in the store, restored at start
        (``store/kv.py``); None when nothing is stored. Usable once the store is open:
        from ``start()`` on, when modules and bridges start."""
        return self.kv.space(name) if self.kv is not None else None

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Publish as the broker itself (plugins' ``ctx.publish``); sessions reached."""
        return self.broker.publish(Message(topic, payload, qos, retain))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Build the access chains, load the configured plugins and start the background
        workers (in the loop).

        Raises mqttd.access.build.AccessError if a provider or source cannot be built (a
        password or ACL file missing or malformed), mqttd.plugins.PluginError if a
        configured plugin cannot be loaded.
        """
        self.open_store()
        self.access = access = build_access(self.settings, self.users, self.banned)
        broker = self.broker
        broker.authenticator = access.authn
        broker.authorizer = access.authz
        broker.anonymous = self.anonymous_policy()
        access.start(self.registry, self.metrics, LoopTimers())
        self.plugins.load_all(self.settings.plugins)
        self.modules.load_enabled()
        self.bridges.start_all(self.kv_space,
                               self.kv.spaces if self.kv is not None else None)
        self._register_stats()
        self.sys.load_presence()
        self.supervisor.start_child("stats", self.stats.run)
        interval = self.settings.sys_interval
        if interval > 0:
            self.supervisor.start_child("sys", lambda: self.sys.run(interval))
        if self.cluster is not None:
            # Transient: a NATS unreachable at start ends it normally (the node runs alone).
            self.supervisor.start_child("cluster", self.cluster.run, restart="transient")

    def _restore_bans(self, rows: list[tuple[str, str, str, str, float, float]],
                      journal: Journal) -> BannedTable:
        """The banned table from the store; a banned.json from before is moved in once
        (AccessError if it is malformed: the start stops, as it did reading it)."""
        table = BannedTable(None)
        table.persist = self._persist_ban
        table.load_rows(rows)
        legacy = os.path.join(os.path.abspath(os.path.expanduser(self.settings.data_dir)),
                              BANNED_FILE)
        if os.path.exists(legacy):
            moved = table.adopt_file(legacy)
            journal.commit_now()
            log.info("banned: %d bans moved from %s into the store (the file is renamed "
                     "%s.migrated once they are committed)", moved, legacy, BANNED_FILE)
            self._banned_file_task = asyncio.get_running_loop().create_task(
                self._retire_banned_file(legacy, journal))
        return table

    async def _retire_banned_file(self, path: str, journal: Journal) -> None:
        """Rename a migrated banned.json once its bans are on disk in the store, so that it
        is moved in only once (kept, renamed, for an operator who goes back to
        durability off)."""
        if not await journal.flush():
            log.error("banned: the bans moved from %s are not committed yet; the file is "
                      "kept and moved in again at the next start", path)
            return
        try:
            os.replace(path, path + ".migrated")
        except OSError as err:
            log.error("banned: cannot rename %s: %s (its bans are in the store; it will be "
                      "moved in again at the next start)", path, err.strerror or err)

    def _persist_ban(self, ban: Ban, deleted: bool) -> None:
        journal = self.journal
        assert journal is not None  # persisted only with the store
        if deleted:
            journal.delete_ban(ban.kind, ban.who)
        else:
            journal.save_ban(ban.kind, ban.who, ban.by, ban.reason, ban.at, ban.until)
        journal.commit_now()  # in the operation log before the operator is answered

    def _persist_user(self, username: str, password_hash: PasswordHash | None,
                      superuser: bool) -> None:
        journal = self.journal
        assert journal is not None  # the table exists only with the store
        if password_hash is None:
            journal.delete_user(username)
        else:
            journal.save_user(username, password_hash.encode(), superuser)

    @staticmethod
    def _move_aside(path: str) -> None:
        """Rename the store file (and its WAL) out of the way, kept for inspection."""
        suffix = time.strftime(".reset-%Y%m%dT%H%M%S")
        logs = [p[len(path):] for p in glob.glob(glob.escape(path) + ".oplog.*")]
        for part in ("", "-wal", "-shm", *logs):
            try:
                os.replace(path + part, path + suffix + part)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError(f"{path}{part}: cannot move it aside: "
                                 f"{err.strerror or err}") from None
            if not part:
                log.warning("store %s moved aside to %s: starting with an empty store",
                            path, path + suffix)

    async def stop(self) -> None:
        """Stop the background workers, unload the plugins, close the access chains."""
        await self.supervisor.stop()
        await self.bridges.aclose()
        self.sys.unload_presence()
        self.modules.unload_all()
        self.plugins.unload_all()
        if self.access is not None:
            await self.access.aclose()
        if self.journal is not None:
            await self.journal.aclose()

    def anonymous_policy(self) -> dict[str, bool]:
        """Per listener: whether a client no provider vouched for gets in. Unset, a
        loopback listener follows its zone's allow_anonymous; any other says no."""
        zones = self.settings.zones
        return {lst.name: lst.allow_anonymous if lst.allow_anonymous is not None
                else (zones[lst.zone].allow_anonymous if is_loopback(lst.bind) else False)
                for lst in self.settings.listeners}

    def _register_stats(self) -> None:
        # Each component registers its own update function (EMQX's emqx_cm, emqx_router
        # and emqx_retainer each call emqx_stats:update_interval in their init).
        self.registry.register_stats(self.stats)
        self.broker.router.register_stats(self.stats)
        self.broker.retainer.register_stats(self.stats)
        m = self.metrics
        # Publishers waiting now under backpressure: every wait started and not yet ended.
        self.stats.update_interval("backpressure", lambda: {"publishers.held": (
            m.get(PUBLISHERS_HELD) - m.get(PUBLISHERS_RELEASED_ROOM)
            - m.get(PUBLISHERS_RELEASED_TIMEOUT) - m.get(PUBLISHERS_RELEASED_CLOSED))})
        if self.cluster is not None:
            self.stats.update_interval("cluster", self.cluster.counters)

    def _alarm_changed(self, event: str, alarm: Alarm) -> None:
        # EMQX's alarm message: JSON, QoS 0, not retained, published even when the periodic
        # $SYS topics are off (as presence is).
        self.sys.publish(f"alarms/{event}", json.dumps(
            alarm.as_dict(self.settings.node), separators=(",", ":")).encode())

    def _hook_failed(self) -> None:
        self.metrics.inc(HOOKS_FAILED)

    def _worker_restarted(self) -> None:
        self.metrics.inc(WORKERS_RESTARTED)
