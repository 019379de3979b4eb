"""The running broker: listeners, lifecycle and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from . import __version__, logsetup
from ._accel import LOADED
from .access.build import Access, AccessError
from .config import Listener, Settings
from .ctl.commands import build_table
from .ctl.server import CtlServer
from .http.server import HttpError, HttpServer
from .mgmt.api import Management
from .mgmt.control import ListenerStatus
from .mgmt.errors import Conflict, Failed, MgmtError, Unavailable
from .mgmt.publish import Publisher
from .mqtt.reasons import ReasonCode as RC
from .node import Node
from .overload import Overload
from .plugins import PluginError
from .sdnotify import Notifier
from .store.base import StoreError
from .sysmon import SystemMonitor
from .transport.busypoll import usable_cpus
from .transport.connection import Connection, Flusher
from .transport.fdguard import FdGuard, presize_fd_table
from .transport.listener import ListenerError, MqttListener
from .transport.tls import TlsError, check_listener

log = logging.getLogger("mqttd")


class StartError(Exception):
    """The server could not start: a listener could not be opened (address in use,
    permission denied, ...) or a configured plugin could not be loaded."""


class Server:
    """An mqttd node serving its configured TCP listeners."""

    #: Listeners with SO_REUSEPORT (a worker of `mqttd start --workers N`: see workers.py).
    reuse_port = False

    def __init__(self, settings: Settings | None = None, *, reset_store: bool = False,
                 loader: Callable[[], Settings] | None = None,
                 config_file: str | None = None) -> None:
        self.settings = settings or Settings()
        #: How the settings are made again for a reload (the file, environment and command
        #: line the node was started with), and the file; None: an embedded server.
        self.loader = loader
        self.config_file = config_file
        self.node = Node(self.settings)
        self.node.reset_store = reset_store
        #: Every live connection (the keys; a dict, not a set: at 10,000 clients a set's
        #: table is ~105 B per entry after its 4x growth, a dict's ~30 B).
        self.connections: dict[Connection, None] = {}
        #: Every listener started once, by name (running or stopped by the operator).
        self.listeners: dict[str, MqttListener] = {}
        self._stopped: asyncio.Event | None = None
        self._flusher: Flusher | None = None
        #: The control socket, when settings.data_dir is set.
        self.ctl: CtlServer | None = None
        #: The HTTP API, /metrics and dashboard, when [http] enabled.
        self.http: HttpServer | None = None
        self._shutdown: asyncio.Event | None = None
        self._stop_reason = "signal received"
        #: Tasks started by signals (kept referenced until done).
        self._tasks: set[asyncio.Task[None]] = set()
        #: systemd's notification socket (does nothing when not started by systemd).
        self.notifier = Notifier.from_env()
        self._watchdog: asyncio.Task[None] | None = None
        node = self.node
        #: Alarms on the process's health, and the load shedding fed by its loop lag.
        self.sysmon = SystemMonitor(self.settings.sysmon, node.alarms, self._listener_loads,
                                    lambda: node.journal)
        self.overload = Overload(self.settings.overload, node.alarms, lambda: self.connections,
                                 node.metrics)
        self.sysmon.on_lag.append(self.overload.on_lag)
        self.sysmon.tables.append(self._client_tables)
        #: Every operator query and action, for the control socket (and later front ends).
        self.mgmt = Management(self.settings, node.started_at, node.metrics, node.stats,
                               node.broker, node.trace, node.plugins, node.supervisor,
                               _ServerControl(self), access=lambda: node.access,
                               store=lambda: node.journal, alarms=node.alarms,
                               health=self._health)
        self.mgmt.modules.manager = node.modules
        self.mgmt.bridges.manager = node.bridges
        self.mgmt.cluster.cluster = node.cluster

    def _client_tables(self) -> list[dict[Any, Any] | set[Any]]:
        """The tables with an entry per client (sysmon rebuilds them after a departure)."""
        registry = self.node.registry
        tables: list[dict[Any, Any] | set[Any]] = [self.connections, registry.channels,
                                                    registry.sessions]
        if self._flusher is not None:
            tables += self._flusher.tables()
        return tables

    @staticmethod
    def _busy_poll(wanted: float) -> float:
        """``node.busy_poll`` as it can apply: none with less than two CPUs (the poll
        would take the CPU from the clients it waits for)."""
        if wanted and usable_cpus() < 2:
            log.info("node.busy_poll: off (less than two CPUs)")
            return 0.0
        return wanted

    def bound(self, name: str) -> tuple[str, int]:
        """The address a listener actually bound (port 0 resolved)."""
        return self.listeners[name].address

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._flusher = Flusher(loop, self._busy_poll(self.settings.busy_poll))
        self.mgmt.vm.busy = self._flusher.busy
        # A new connection for a client id whose close is still queued finishes it first.
        self.node.registry.finish_close = self._flusher.finish_close
        # Measured before any client: the store, logs and the control socket are open.
        self._fd_guard: FdGuard | None = None
        log.info("mqttd %s starting, speedups: %s", __version__,
                 ", ".join(f"{k}={v}" for k, v in LOADED.items()))
        self.mgmt.start()
        if self.settings.data_dir:
            # First: a second daemon on the same data directory fails before binding.
            self.ctl = CtlServer(self.mgmt, self.settings.data_dir, build_table())
            await self.ctl.start()
        try:
            self.node.start()
        except (PluginError, AccessError) as err:
            raise StartError(str(err)) from None
        except StoreError as err:
            raise StartError(f"cannot open the store: {err}. Move it aside with "
                             "`mqttd start --reset-store` (it is kept, renamed), or restore "
                             "a backup of it") from None
        cluster = self.node.cluster
        if cluster is not None:
            # Held acknowledgements go once the other nodes confirmed (docs/CLUSTER.md).
            cluster.acked = self._flusher.committed
        if self.node.journal is not None:
            if cluster is not None:  # this node confirms others' messages once committed
                cluster.commit_gate = self.node.journal.gate
                flusher_committed = self._flusher.committed

                def committed() -> None:
                    flusher_committed()
                    cluster.store_committed()
                self.node.journal.on_commit = committed
            else:
                self.node.journal.on_commit = self._flusher.committed
        # Every listener's TLS files first: all their problems at once, nothing bound yet.
        problems = [e for lst in self.settings.listeners for e in check_listener(lst)]
        if problems:
            raise StartError("; ".join(problems))
        # Before any client: growing it later stalls the loop (transport/fdguard.py).
        presize_fd_table()
        self._fd_guard = FdGuard()
        for listener in self.settings.listeners:
            await self.start_listener(listener)
        if self.settings.http.enabled:
            http = HttpServer(self.mgmt, Publisher(self.node.broker), self.settings.http,
                              self.settings.data_dir or None)
            try:
                await http.start()
            except HttpError as err:
                raise StartError(str(err)) from None
            self.http = http
        self.sysmon.start(loop)

    def _listener_loads(self) -> list[tuple[str, int, int]]:
        return [(name, len(tcp.connections), tcp.config.max_connections)
                for name, tcp in self.listeners.items() if tcp.running]

    def _health(self) -> dict[str, Any]:
        return {**self.sysmon.figures(), "overload": self.overload.status()}

    async def start_listener(self, listener: Listener, port: int | None = None) -> None:
        """Open one configured listener (on ``port`` if given); StartError if it cannot."""
        flusher = self._flusher
        assert flusher is not None
        trace = self.node.trace
        tcp = MqttListener(listener, self.settings.zone(listener.zone), self.node.broker,
                          flusher, self.connections,
                          # while a client trace waits for its client, new channels are shown
                          lambda: trace.watch if trace.clients else None, self._fd_guard,
                          self.overload.refuse_new if self.settings.overload.enable else None)
        tcp.reuse_port = self.reuse_port
        try:
            await tcp.start(port)
        except ListenerError as err:
            raise StartError(str(err)) from None
        self.listeners[listener.name] = tcp

    async def stop(self) -> None:
        """Stop accepting, tell MQTT 5 clients the server is shutting down, flush, close."""
        self.sysmon.stop()
        if self.http is not None:
            await self.http.close()
        self.notifier.stopping("shutting down")
        for tcp in self.listeners.values():
            tcp.close()
        for conn in list(self.connections):
            conn.shutdown(RC.SERVER_SHUTTING_DOWN)
        for tcp in self.listeners.values():
            await tcp.wait_closed()
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # the aborts' connection_lost
        if self._flusher is not None:
            self._flusher.finish_closes()  # wills and sessions before the store closes
        await self.node.stop()
        if self._stopped is not None:
            self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
        log.info("mqttd stopped")
        if self.ctl is not None:
            await self.ctl.close()  # last: `mqttd ctl stop` is told when all is done
        self.mgmt.close()

    # --- listeners at run time (mqttd ctl listeners) ----------------------------------

    async def stop_listener(self, name: str) -> tuple[str, int]:
        """Stop accepting on a running listener and close its clients (MQTT 5 clients get
        DISCONNECT 0x8B); returns the address it was bound to. KeyError if not running."""
        tcp = self.listeners[name]
        if not tcp.running:
            raise KeyError(name)
        tcp.close()
        for conn in list(tcp.connections):
            conn.shutdown(RC.SERVER_SHUTTING_DOWN)
        await tcp.wait_closed()
        host, port = tcp.address
        log.info("listener %s on %s:%d stopped", name, host, port)
        return host, port

    async def restart_listener(self, name: str) -> tuple[str, int]:
        """(Re)start a configured listener on the port it had (a configured port 0 keeps
        the port it was given, so clients can come back); KeyError if unknown."""
        tcp = self.listeners[name]
        if tcp.running:
            await self.stop_listener(name)
        await self.start_listener(tcp.config, tcp.config.port or tcp.address[1])
        return self.listeners[name].address

    # --- lifecycle ------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Shut down gracefully, as SIGTERM does (``mqttd ctl stop``)."""
        self._stop_reason = reason
        if self._shutdown is not None:
            self._shutdown.set()
        else:  # started with start(), not serve_forever(): stop directly
            log.info("%s, shutting down", reason)
            asyncio.ensure_future(self.stop())

    def _on_hup(self) -> None:
        """SIGHUP: reopen the log files, then reload the configuration as ``mqttd ctl conf
        reload`` does, which also re-reads the password, credentials and ACL files and the
        TLS listeners' certificates and keys (mosquitto's SIGHUP)."""
        # First, so that what follows is written to the new file after a rotation.
        reopened = logsetup.reopen()
        log.info("SIGHUP received: %sreloading the configuration",
                 "log file reopened, " if reopened else "")

        async def reload() -> None:
            try:
                await self.mgmt.conf.reload("SIGHUP", reopen_logs=False)
            except MgmtError:
                pass  # logged by the reload, with every problem; nothing changed

        task = asyncio.get_running_loop().create_task(reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_usr1(self) -> None:
        """SIGUSR1: a store checkpoint (the operation log applied to the database now)."""
        journal = self.node.journal
        if journal is None:
            log.info("SIGUSR1 received: durability is off: no store to checkpoint")
            return
        log.info("SIGUSR1 received: store checkpoint")

        async def checkpoint() -> None:
            await journal.applied()
            log.info("store checkpoint done: operation log at %d bytes", journal.oplog.size)

        task = asyncio.get_running_loop().create_task(checkpoint())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM or ``request_stop()``, then shut down gracefully.

        ``on_ready`` is called once every listener and the control socket are up.
        """
        self._shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Before start(), not after: a SIGTERM that comes while the start finishes (the
        # listeners are already logged, so a supervisor or a test may send it) asks for the
        # graceful stop once started, instead of killing the process half started.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, "signal received")
        try:
            await self.start()
        except BaseException:
            if self.ctl is not None:
                await self.ctl.close()
            self.mgmt.close()
            raise
        # Never the default action (end the process at once, leaving the pid file and the
        # socket behind): a logrotate `kill -HUP` must not take the broker down.
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)
        if on_ready is not None:
            on_ready()
        # systemd (Type=notify): ready once every listener accepts; the watchdog pings come
        # from this loop, so a loop that stops turning stops them.
        self.notifier.ready(f"serving {len(self.listeners)} listeners")
        self._watchdog = loop.create_task(self.notifier.run_watchdog())
        await self._shutdown.wait()
        log.info("%s, shutting down", self._stop_reason)
        await self.stop()


class _ServerControl:
    """The server as management sees it (:class:`mqttd.mgmt.control.ServerControl`)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def listeners(self) -> list[ListenerStatus]:
        server = self._server
        out = []
        for name, tcp in server.listeners.items():
            cfg = tcp.config
            host, port = tcp.address
            out.append(ListenerStatus(name, host, port, cfg.zone, tcp.running,
                                      len(tcp.connections), cfg.max_connections,
                                      cfg.max_conn_rate, cfg.type, cfg.proxy_protocol))
        return out

    def reload_listener(self, name: str) -> str:
        listener = self._server.listeners[name]
        if not listener.tls:
            raise Conflict(f"listener {name} has no TLS (type {listener.config.type})",
                           "not_tls")
        try:
            return listener.reload_tls()
        except TlsError as err:
            for line in err.errors:
                log.warning("listener %s: TLS reload failed, the old certificate stays in "
                            "use: %s", name, line)
            raise Failed("; ".join(err.errors), "; ".join(err.errors)) from None

    async def stop_listener(self, name: str) -> tuple[str, int]:
        return await self._server.stop_listener(name)

    async def restart_listener(self, name: str) -> tuple[str, int]:
        try:
            return await self._server.restart_listener(name)
        except StartError as err:
            raise Failed(str(err), str(err)) from None

    def request_stop(self, reason: str) -> None:
        self._server.request_stop(reason)

    async def wait_stopped(self) -> None:
        await self._server.wait_stopped()

    def connection_count(self) -> int:
        return len(self._server.connections)

    # --- configuration reload --------------------------------------------------------

    def config_file(self) -> str | None:
        return self._server.config_file

    def load_settings(self) -> Settings:
        loader = self._server.loader
        if loader is None:
            raise Unavailable("this node was not started from a configuration (embedded): "
                              "nothing to reload")
        return loader()

    async def replace_listener(self, config: Listener) -> tuple[str, int]:
        server = self._server
        old = server.listeners.get(config.name)
        port = None
        if old is not None:
            if old.running:
                await server.stop_listener(config.name)
                # A port 0 listener comes back on the port its clients know.
                if not config.port and not old.config.port and config.bind == old.config.bind:
                    port = old.address[1]
            del server.listeners[config.name]
        try:
            await server.start_listener(config, port)
        except StartError as err:
            raise Failed(str(err), str(err)) from None
        return server.listeners[config.name].address

    async def remove_listener(self, name: str) -> None:
        server = self._server
        if server.listeners[name].running:
            await server.stop_listener(name)
        del server.listeners[name]

    def update_listener(self, config: Listener) -> None:
        self._server.listeners[config.name].config = config

    def swap_access(self, access: Access) -> None:
        node = self._server.node
        node.access = access
        node.broker.authenticator = access.authn
        node.broker.authorizer = access.authz
        if access.flapping is not None:
            access.flapping.metrics = node.metrics

    def refresh_anonymous(self) -> None:
        node = self._server.node
        node.broker.anonymous = node.anonymous_policy()

    def set_busy_poll(self, max_wait: float) -> float:
        flusher = self._server._flusher
        applied = self._server._busy_poll(max_wait)
        if flusher is not None:
            flusher.busy.bound(applied)
        return applied

    def set_sys_interval(self, interval: float) -> None:
        node = self._server.node
        node.supervisor.delete_child("sys")
        if interval > 0:
            node.supervisor.start_child("sys", lambda: node.sys.run(interval))


#: Young-generation threshold of the cyclic collector in a broker process (CPython: 700).
#: A read of a busy publisher parses ~1,500 packets that are alive together; at 700 the
#: collector ran ~500 times a second under fan-in load and promoted those short-lived
#: packets, which then triggered 2-3 full collections a second (10,000: ~100 a second).
#: Almost nothing on the message path forms cycles (reference counting frees it), so rarer
#: young collections cost nothing.
GC_THRESHOLD0 = 10_000
#: Middle-generation threshold: middle collections do not start by themselves either. One
#: scans every young survivor since the last, and while thousands of clients connect those
#: are the clients' own objects (connection, channel, session, parser, transport): ~100,000
#: of them, 23-25 ms of a stopped loop each time with 19,000 clients (issue 17). Survivors of
#: young collections stay in the middle generation, which nothing scans until sysmon's full
#: collection (``sysmon.GC_FULL_AFTER``); cycles that die young are still freed by the young
#: collections, and the broker's own objects form none (tests/test_gc_cycles.py).
GC_THRESHOLD1 = 1_000_000_000
#: Old-generation threshold: full collections do not start by themselves. CPython's own rule
#: (the old generation grew by a quarter) starts one over every live client's objects each
#: time the population has grown enough (up to 400 ms with 100,000 clients, issue 17),
#: however little garbage there is. The broker does not leave cycles to the collector: a
#: closed connection breaks its own (connection <-> channel, the transport; the registry
#: detaches the session), so its objects go by reference counting; young collections still
#: collect the cycles that die young (exceptions and their tracebacks), sysmon the rest.
GC_THRESHOLD2 = 1_000_000_000


def tune_gc() -> None:
    """Once the broker has started: move everything that exists now (modules, config,
    plugins: ~35,000 objects) out of the collector's reach, and collect young objects
    less often.

    Measured in the end-to-end fan-in QoS 0 benchmark (bench/run.py, timed with
    gc.callbacks): without this, 6-9 full collections per 3 s run took 17-28 ms each
    (the event loop stops that long; ~7 % of the core went to the collector in all).
    Frozen, a full collection scans only what was created after start (~50 µs there);
    with the higher threshold no collection ran at all during the measured runs. Middle
    and full collections then never start by themselves (``GC_THRESHOLD1``,
    ``GC_THRESHOLD2``): with many clients connected (or connecting) one would stop the loop
    for tens to hundreds of milliseconds; sysmon runs the full one when the loop is quiet.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, GC_THRESHOLD1, GC_THRESHOLD2)


def run(settings: Settings, *, use_uvloop: bool = True,
        on_ready: Callable[[], None] | None = None, reset_store: bool = False,
        loader: Callable[[], Settings] | None = None, config_file: str | None = None,
        reuse_port: bool = False) -> Any:
    """Run the broker in this process until it is told to stop.

    This is the process entry point (the command line), so it also tunes the process's
    garbage collector once the listeners are up (``tune_gc``); a Server embedded in
    another program (the tests) leaves that program's collector alone.
    """
    server = Server(settings, reset_store=reset_store, loader=loader, config_file=config_file)
    server.reuse_port = reuse_port

    def ready() -> None:
        tune_gc()
        if on_ready is not None:
            on_ready()

    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        if uvloop is not None:
            return uvloop.run(server.serve_forever(ready))
    return asyncio.run(server.serve_forever(ready))
