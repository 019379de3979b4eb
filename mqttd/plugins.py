"""Plugins: Python classes that register hook callbacks when they are loaded.

A plugin is named in the configuration (``[plugins]``, see ``mqttd/config.py``)
either as ``"module:Class"`` or by the name of an entry point in the
``mqttd.plugins`` group, which is how an installed distribution offers one::

    # the plugin's pyproject.toml
    [project.entry-points."mqttd.plugins"]
    audit = "mqttd_audit:AuditPlugin"

Installed plugins are only *discovered* (``discover()``, ``mqttd ctl plugins
list``); a plugin is loaded only when the configuration (or an operator)
names it, never because it happens to be installed.

The plugin protocol: the class is called as ``Class(ctx, options)`` where
``ctx`` is a :class:`PluginContext` (the node's hooks, metrics, stats, settings
and a ``publish`` function: the whole surface a plugin may rely on) and
``options`` is the plugin's table from the configuration, without ``class``
and ``enabled``; then its ``load()`` is called, which registers hooks on
``ctx.hooks``. Hook callbacks receive :class:`~mqttd.core.services.ClientInfo`,
``Message`` and session views, never a live channel or connection.
``unload()``, if the plugin has one, is called when it is unloaded.
:class:`Plugin` is a convenient base: its :meth:`Plugin.hook` registers a
callback and remembers it, and its ``unload`` removes every callback it
registered.

A configured plugin that cannot be loaded stops the node from starting
(:class:`PluginError`): a missing authentication plugin must not leave the
broker open.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from .config import PluginSpec, Settings
from .hooks import Hooks
from .metrics import Metrics
from .stats import Stats

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "PluginContext", "PluginError", "PluginManager",
           "discover", "resolve"]

log = logging.getLogger("mqttd.plugins")

ENTRY_POINT_GROUP = "mqttd.plugins"


class PluginError(Exception):
    """A plugin could not be found, imported, created or loaded."""


class Publish(Protocol):
    """``publish(topic, payload, qos=0, retain=False)``: publish as the broker (no client
    is the sender; the ``message.publish`` hook runs); returns the sessions reached."""

    def __call__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
                 ) -> int: ...


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin is given: the documented surface of the node (EMQX plugins see
    emqx_hooks, emqx_metrics and emqx_broker:publish; mosquitto plugins an accessor API)."""

    #: The node's hook chains: ``hooks.add(point, callback, priority)``.
    hooks: Hooks
    #: Counters by index (``metrics.inc``, ``metrics.snapshot()``).
    metrics: Metrics
    #: Gauges with their maxima (``stats.snapshot()``, ``stats.update_interval``).
    stats: Stats
    #: The node's configuration (read-only by convention).
    settings: Settings
    publish: Publish


class Plugin:
    """Optional base class for plugins: remembers its hooks and removes them on unload."""

    #: One line for ``mqttd ctl plugins list``.
    description = ""

    def __init__(self, ctx: PluginContext, options: dict[str, Any]) -> None:
        self.ctx = ctx
        self.options = options
        self._hooks: list[tuple[str, Callable[..., Any]]] = []

    def hook(self, point: str, callback: Callable[..., Any], priority: int = 0) -> None:
        """Add ``callback`` to ``point`` on the node's hooks; removed again by unload()."""
        self.ctx.hooks.add(point, callback, priority)
        self._hooks.append((point, callback))

    def load(self) -> None:
        """Register hooks here (with :meth:`hook`)."""

    def unload(self) -> None:
        for point, callback in self._hooks:
            self.ctx.hooks.delete(point, callback)
        self._hooks.clear()


def discover() -> dict[str, metadata.EntryPoint]:
    """Installed plugins: entry point name -> entry point, in the ``mqttd.plugins`` group."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(ref: str) -> Any:
    """The object ``ref`` names: ``"module:Attr"`` or an entry point name."""
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as err:
            raise PluginError(f"cannot import {module_name}: {type(err).__name__}: {err}"
                              ) from err
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise PluginError(f"module {module_name} has no {attr}") from None
        return obj
    ep = discover().get(ref)
    if ep is None:
        raise PluginError(f"no plugin called {ref!r}: not \"module:Class\" and no "
                          f"{ENTRY_POINT_GROUP!r} entry point has that name")
    try:
        return ep.load()
    except Exception as err:
        raise PluginError(f"cannot load entry point {ref} ({ep.value}): "
                          f"{type(err).__name__}: {err}") from err


class _Loaded:
    __slots__ = ("instance", "spec")

    def __init__(self, spec: PluginSpec, instance: Any) -> None:
        self.spec = spec
        self.instance = instance


class PluginManager:
    """The node's loaded plugins (EMQX's emqx_plugins, for Python classes)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self._loaded: dict[str, _Loaded] = {}

    def load(self, spec: PluginSpec | str) -> Any:
        """Create and load a plugin; returns the instance. Raises PluginError."""
        if isinstance(spec, str):
            spec = PluginSpec(spec, spec)
        if spec.name in self._loaded:
            raise PluginError(f"plugin {spec.name} is already loaded")
        cls = resolve(spec.ref)
        if not callable(cls):
            raise PluginError(f"plugin {spec.name}: {spec.ref} is not a class")
        try:
            instance = cls(self.ctx, dict(spec.options))
            load = getattr(instance, "load", None)
            if load is not None:
                load()
        except Exception as err:
            raise PluginError(f"plugin {spec.name} failed to load: "
                              f"{type(err).__name__}: {err}") from err
        self._loaded[spec.name] = _Loaded(spec, instance)
        log.info("plugin %s loaded (%s)", spec.name, spec.ref)
        return instance

    def load_all(self, specs: list[PluginSpec]) -> None:
        """Load every enabled plugin of ``specs``, in order; the first failure raises."""
        for spec in specs:
            if spec.enabled:
                self.load(spec)

    def unload(self, name: str) -> bool:
        """Unload a plugin; False if none by that name is loaded."""
        entry = self._loaded.pop(name, None)
        if entry is None:
            return False
        unload = getattr(entry.instance, "unload", None)
        if unload is not None:
            try:
                unload()
            except Exception:
                log.exception("plugin %s failed to unload cleanly", name)
        log.info("plugin %s unloaded", name)
        return True

    def unload_all(self) -> None:
        for name in reversed(list(self._loaded)):
            self.unload(name)

    def get(self, name: str) -> Any:
        entry = self._loaded.get(name)
        return entry.instance if entry is not None else None

    def list_plugins(self) -> list[dict[str, Any]]:
        """Loaded plugins, then installed ones not loaded: name, ref, description, active."""
        out = []
        for name, entry in self._loaded.items():
            out.append({"name": name, "ref": entry.spec.ref, "active": True,
                        "description": _description(entry.instance)})
        for name, ep in sorted(discover().items()):
            if name not in self._loaded:
                out.append({"name": name, "ref": ep.value, "active": False,
                            "description": ""})
        return out


def _description(obj: Any) -> str:
    text = getattr(obj, "description", "") or (type(obj).__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""
