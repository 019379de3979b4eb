"""Modules (EMQX's emqx_modules management): list, load, unload; the delayed module's
pending messages (``mqttd ctl delayed list|del``), topic metrics (``topic-metrics
add|del|list``) and slow subscriptions (``slow-subs list|clear``)."""

from __future__ import annotations

from ..modules.base import ModuleError
from ..modules.delayed import Delayed
from ..modules.manager import ModuleManager
from ..modules.slow_subs import SlowSubs
from ..modules.topic_metrics import TopicMetrics
from .errors import Conflict, Failed, InvalidArgument, NotFound, Unavailable
from .listing import Row

__all__ = ["Modules"]


class Modules:
    """The node's module manager, if it has one."""

    def __init__(self, manager: ModuleManager | None) -> None:
        self.manager = manager

    def _manager(self) -> ModuleManager:
        if self.manager is None:
            raise Unavailable("this node has no module manager")
        return self.manager

    def all(self) -> list[Row]:
        """Every module: name, loaded, enabled, description and what a loaded one counts."""
        return self._manager().list()

    def load(self, name: str) -> Row:
        """Load a module with its configured settings; Failed(<why>)."""
        try:
            self._manager().load(name)
        except ModuleError as err:
            raise Failed(str(err), "unknown_module" if "no module" in str(err)
                         else "already_loaded") from None
        return {"name": name, "loaded": True}

    def unload(self, name: str) -> Row:
        """Unload a loaded module; NotFound("module") if it is not loaded."""
        try:
            unloaded = self._manager().unload(name)
        except ModuleError as err:
            raise Failed(str(err), "unknown_module") from None
        if not unloaded:
            raise NotFound("loaded module", name)
        return {"name": name, "unloaded": True}

    def _delayed(self) -> Delayed:
        module = self._manager().get("delayed")
        if not isinstance(module, Delayed):
            raise Unavailable("the delayed module is not loaded (mqttd ctl modules load "
                              "delayed)", "not_loaded")
        return module

    def delayed_list(self) -> list[Row]:
        """Pending delayed messages, soonest first."""
        return self._delayed().list()

    def delayed_delete(self, entry_id: str) -> Row:
        """Drop one pending delayed message by id; NotFound("delayed message")."""
        try:
            n = int(entry_id)
        except ValueError:
            raise InvalidArgument(f"a delayed message id is a number, not {entry_id!r}"
                                  ) from None
        if not self._delayed().delete(n):
            raise NotFound("delayed message", entry_id)
        return {"id": n, "deleted": True}

    def _topic_metrics(self) -> TopicMetrics:
        module = self._manager().get("topic_metrics")
        if not isinstance(module, TopicMetrics):
            raise Unavailable("the topic_metrics module is not loaded (mqttd ctl modules "
                              "load topic_metrics)", "not_loaded")
        return module

    def topic_metrics_list(self) -> list[Row]:
        """Every registered topic with its counts and rates."""
        return self._topic_metrics().list()

    def topic_metrics_add(self, topic: str) -> Row:
        """Register a topic name; InvalidArgument (a filter, not a name), Conflict
        (registered already), Failed("quota_exceeded") past max_topics."""
        module = self._topic_metrics()
        try:
            module.add(topic)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        except KeyError:
            raise Conflict(f"topic {topic!r} is registered already", "already_existed"
                           ) from None
        except ModuleError as err:
            raise Failed(str(err), "quota_exceeded") from None
        return {"topic": topic, "registered": True}

    def topic_metrics_delete(self, topic: str) -> Row:
        """Unregister a topic; NotFound("registered topic")."""
        if not self._topic_metrics().delete(topic):
            raise NotFound("registered topic", topic)
        return {"topic": topic, "deleted": True}

    def _slow_subs(self) -> SlowSubs:
        module = self._manager().get("slow_subs")
        if not isinstance(module, SlowSubs):
            raise Unavailable("the slow_subs module is not loaded (mqttd ctl modules load "
                              "slow_subs)", "not_loaded")
        return module

    def slow_subs_list(self) -> list[Row]:
        """The slowest (client id, topic) pairs in the window, slowest first."""
        return self._slow_subs().list()

    def slow_subs_clear(self) -> Row:
        """Forget every slow subscription record."""
        return {"cleared": self._slow_subs().clear()}
