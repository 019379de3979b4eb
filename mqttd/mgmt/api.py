"""The management facade: one object holding every area's queries and actions.

The process layer builds it with exactly what management needs (settings,
counters, the broker's services, traces, plugins, the supervisor and a
:class:`~mqttd.mgmt.control.ServerControl` for what only the process knows);
front ends hold it and nothing else of the node.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .access import Acl
from .alarms import AlarmsArea
from .banned import Banned
from .bridges import Bridges
from .clients import Clients
from .cluster import ClusterArea
from .conf import Conf
from .listeners import Listeners
from .listing import Row
from .log import LogLevel
from .modules import Modules
from .plugins import Plugins
from .retained import Retained
from .routes import Routes
from .sessions import Sessions
from .status import Status
from .store import Store
from .subscriptions import Subscriptions
from .trace import Traces
from .users import Users
from .vm import LoopMonitor, Vm

if TYPE_CHECKING:
    from ..access.build import Access
    from ..alarms import Alarms
    from ..config import Settings
    from ..core.broker import Broker
    from ..metrics import Metrics
    from ..plugins import PluginManager
    from ..stats import Stats
    from ..store.journal import Journal
    from ..supervisor import Supervisor
    from ..trace.manager import TraceManager
    from .control import ServerControl

__all__ = ["Management"]


class Management:
    """Every management query and action of one node, grouped by area.

    ``status``, ``clients``, ``sessions``, ``subscriptions``, ``routes``,
    ``retained``, ``listeners``, ``trace``, ``plugins``, ``log``, ``vm``, ``banned``,
    ``store`` and ``alarms`` each answer for their area; :meth:`stop_node` stops the whole
    node. Call :meth:`start` once the event loop runs (it samples loop lag for ``vm``)
    and :meth:`close` when the node stops.
    """

    def __init__(self, settings: Settings, started_at: float, metrics: Metrics | None,
                 stats: Stats | None, broker: Broker, trace: TraceManager,
                 plugins: PluginManager | None, supervisor: Supervisor | None,
                 control: ServerControl,
                 access: Callable[[], Access | None] = lambda: None,
                 store: Callable[[], Journal | None] = lambda: None,
                 alarms: Alarms | None = None,
                 health: Callable[[], dict[str, Any]] = dict) -> None:
        self.settings = settings
        self.control = control
        self.monitor = LoopMonitor()
        self.status = Status(settings, started_at, metrics, stats, broker, supervisor, control)
        self.clients = Clients(broker.registry)
        self.sessions = Sessions(broker.registry)
        self.subscriptions = Subscriptions(broker.registry, broker.dispatcher)
        self.routes = Routes(broker.router, settings.node)
        self.retained = Retained(broker.retainer)
        self.listeners = Listeners(control)
        self.trace = Traces(trace, broker.registry)
        self.plugins = Plugins(plugins)
        #: The built-in feature modules: the process layer hands in the node's manager
        #: (``modules.manager``).
        self.modules = Modules(None)
        #: The MQTT bridges (``bridges.manager``, handed in by the process layer).
        self.bridges = Bridges(None)
        #: The cluster link (``cluster.cluster``, handed in by the process layer).
        self.cluster = ClusterArea(None)
        self.log = LogLevel(settings)
        self.vm = Vm(self.monitor)
        #: ``access`` returns the node's access control once the node has started (its
        #: files are read then), None before.
        self.access = access
        self.banned = Banned(access)
        self.acl = Acl(access, broker.registry)
        #: The configuration reload (mqttd ctl conf reload, SIGHUP).
        self.conf = Conf(settings, control, self.acl, access, store,
                         lambda: self.bridges.manager)
        #: ``store`` returns the durable store's journal once the node has started, None
        #: when durability is off.
        self.store = Store(store)
        #: Active and cleared alarms, and what the system monitors measured.
        self.alarms = AlarmsArea(alarms, settings.node, health)
        #: The built-in user table (kept in the store).
        self.users = Users(access, store, broker.registry)

    @property
    def node_name(self) -> str:
        """The node's name (``mqttd@127.0.0.1``)."""
        return self.settings.node

    def start(self) -> None:
        """Begin sampling the running loop's lag and CPU use (for ``vm``)."""
        self.monitor.start(asyncio.get_running_loop())

    def close(self) -> None:
        """Stop sampling (the node is stopping)."""
        self.monitor.stop()

    async def stop_node(self, reason: str) -> Row:
        """Stop the node gracefully, as SIGTERM does, and return once it has stopped."""
        self.control.request_stop(reason)
        await self.control.wait_stopped()
        return {"node": self.node_name, "pid": os.getpid(), "stopped": True}
