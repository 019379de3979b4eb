"""Live configuration reload (``mqttd ctl conf reload``, SIGHUP; docs/OPERATIONS.md "Reload").

The file the node was started with is read again, under the ``MQTTD_<SECTION>__<KEY>``
environment and the command-line options it was started with, and checked in full (the
settings, every TLS listener's files, the access chains with their password and ACL files,
the log's destinations) before anything changes: a bad file changes nothing and the answer
lists every problem as ``FILE: key: what``. Then what can change in a running node
changes, one log line each, and the rest is reported as needing a restart:

- zones: the live :class:`~mqttd.config.Zone` objects are changed in place. Every channel
  holds its zone object and reads it on its hot path with no lookup, so a value a channel
  reads when it uses it applies to connected clients at once; a value settled when a client
  connects (what its CONNACK told it, its inflight window, its parser's packet limit, its
  rate limits) applies to clients that connect from then on. ``shared_subscription_strategy``
  (one dispatcher for the node) and ``mountpoint`` (live subscriptions are stored under the
  old one) need a restart;
- ``[auth]``, ``[authz]``, ``[flapping]``: unchanged, their files are re-read (as SIGHUP
  always did); changed, both chains are built again and swapped in (the banned table is
  kept; connected clients keep their session, new connections meet the new chains);
- ``[log]``: the handlers are replaced (else the log files are reopened);
- ``sys_interval``: the ``$SYS`` worker restarts at the new interval;
- ``busy_poll``: the event loop's poll window takes the new bound at once;
- listeners: added ones start, removed ones stop, a changed TLS option reloads the TLS
  context, ``max_connections``/``allow_anonymous`` change in place, any other change is a
  stop and a start on the new settings (its clients are disconnected); every TLS listener
  also reloads its certificate and key (a renewed certificate in the same file);
- ``[store]``: ``max_size``, ``apply_interval`` and ``apply_bytes`` change; ``durability``
  and ``file`` need a restart;
- ``[bridges]``: added bridges start, removed ones stop, a changed one reconnects with its
  new settings and keeps its queue (``BridgeManager.reload``);
- anything else needs a restart, named by its key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import logsetup
from ..access.build import AccessError, build_access
from ..config import ConfigError, Settings
from ..transport.tls import check_listener
from .errors import Failed, MgmtError, Unavailable
from .listing import Row

if TYPE_CHECKING:
    from ..access.build import Access
    from ..store.journal import Journal
    from .access import Acl
    from .bridges import BridgeControl
    from .control import ServerControl

__all__ = ["LISTENER_IN_PLACE", "LISTENER_TLS", "ZONE_LIVE", "ZONE_RESTART", "Conf",
           "reload_text"]

log = logging.getLogger("mqttd.reload")

#: Zone keys a connected client's channel reads each time it uses them.
ZONE_LIVE = frozenset({"max_topic_levels", "max_qos_allowed", "retain_available",
                       "wildcard_subscription", "shared_subscription", "max_subscriptions",
                       "deny_subscribe", "ignore_loop_deliver", "max_topic_alias"})
#: Zone keys that cannot change in a running node.
ZONE_RESTART = {"shared_subscription_strategy": "one dispatcher strategy for the node, "
                "chosen at start",
                "mountpoint": "connected clients' subscriptions are stored under the old one"}
#: Listener keys that make its TLS context (new handshakes get the new one).
LISTENER_TLS = frozenset({"certfile", "keyfile", "keyfile_password", "cafile", "verify",
                          "tls_versions", "ciphers"})
#: Listener keys applied without restarting it: read at each accept, or (its own
#: password_file and acl_file) through the access chains, rebuilt.
LISTENER_IN_PLACE = frozenset({"max_connections", "allow_anonymous", "password_file",
                               "acl_file"})
#: ``[store]`` keys the journal reads as it runs.
STORE_LIVE = ("max_size", "apply_interval", "apply_bytes")
#: Settings fields applied here (the others need a restart when they change).
_HANDLED = {"zones", "listeners", "auth", "authz", "flapping", "log", "log_level",
            "sys_interval", "busy_poll", "store", "modules", "bridges"}
#: Settings fields that are not sections, by the key the file gives them.
_KEYS = {"node": "node.name", "data_dir": "node.data_dir", "log_level": "log.level",
         "sys_interval": "node.sys_interval", "trace_payload_limit": "node.trace_payload_limit",
         "busy_poll": "node.busy_poll",
         "overload": "overload_protection"}


def _listener_files(settings: Settings) -> list[tuple[str, str, str]]:
    """Each listener's own access files (a change rebuilds the chains)."""
    return [(lst.name, lst.password_file, lst.acl_file) for lst in settings.listeners
            if lst.password_file or lst.acl_file]


def _differ(old: Any, new: Any) -> list[str]:
    """The dataclass fields whose values differ."""
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def _zone_key(name: str, key: str) -> str:
    return f"mqtt.{key}" if name == "default" else f"zones.{name}.{key}"


def _show(value: Any) -> str:
    """A value as the file writes it (true, "text", ["a"])."""
    return json.dumps(value) if isinstance(value, (str, bool, list)) else str(value)


class Conf:
    """The node's configuration as an operator reloads it."""

    def __init__(self, settings: Settings, control: ServerControl, acl: Acl,
                 access: Callable[[], Access | None],
                 store: Callable[[], Journal | None],
                 bridges: Callable[[], BridgeControl | None] = lambda: None) -> None:
        #: The settings in force (changed in place by a reload: everything that holds them
        #: sees the new values).
        self.settings = settings
        self.control = control
        self.acl = acl
        self.access = access
        self.store = store
        self.bridges = bridges
        self._lock = asyncio.Lock()

    async def reload(self, by: str, *, reopen_logs: bool = True) -> Row:
        """Read the configuration again and apply it (see the module's docstring).

        Returns ``{"file", "applied": [{key, change}], "restart": [{key, why}],
        "failed": [{key, why}]}``. Raises Failed (``bad_config``, every problem on its own
        line) when the new configuration is bad: then nothing has changed. ``failed`` lists
        what could not be applied once the checks had passed (a port taken meanwhile).
        """
        async with self._lock:  # a SIGHUP during `mqttd ctl conf reload` waits its turn
            return await self._reload(by, reopen_logs)

    # --- checking --------------------------------------------------------------------

    def _check(self, by: str) -> tuple[Settings, Access | None, dict[str, Any] | None]:
        """The new settings, the chains built from them and the log's new configuration
        (None: unchanged); Failed listing every problem when any is found."""
        control = self.control
        file = control.config_file()

        def in_file(line: str) -> str:
            # Lines that start with a path already name their file.
            return line if file is None or line.startswith("/") else f"{file}: {line}"

        try:
            new = control.load_settings()
        except ConfigError as err:
            self._refuse(by, err.errors)
        cur = self.settings
        errors = [in_file(e) for lst in new.listeners for e in check_listener(lst)]
        built = None
        access = self.access()
        if access is not None:
            try:
                built = build_access(new, access.users, access.banned)
            except AccessError as err:
                errors += [in_file(e) for e in err.errors]
        doc = None
        if new.log != cur.log or new.log_level != cur.log_level:
            st = new.log
            try:
                doc = logsetup.build(level=new.log_level, format=st.format, file=st.file,
                                     data_dir=cur.data_dir, max_size=st.max_size,
                                     rotate=st.rotate, syslog=st.syslog,
                                     syslog_address=st.syslog_address,
                                     syslog_facility=st.syslog_facility,
                                     connection_messages=st.connection_messages)
            except ValueError as err:
                errors.append(in_file(str(err)))
        if errors:
            if built is not None:
                built.authn.close()
            self._refuse(by, errors)
        return new, built, doc

    @staticmethod
    def _refuse(by: str, errors: list[str]) -> Any:
        log.warning("reload asked by %s failed, nothing changed: %s", by, "; ".join(errors))
        raise Failed("the configuration was not reloaded, nothing changed:\n"
                     + "\n".join(errors), "bad_config")

    # --- applying --------------------------------------------------------------------

    async def _reload(self, by: str, reopen_logs: bool) -> Row:
        control = self.control
        file = control.config_file()
        log.info("configuration reload asked by %s: %s", by, file or "no file, the environment")
        new, built, doc = self._check(by)
        cur = self.settings
        applied: list[Row] = []
        restart: list[Row] = []
        failed: list[Row] = []

        def done(key: str, change: str) -> None:
            applied.append({"key": key, "change": change})
            log.info("reload: %s: %s", key, change)

        def later(key: str, why: str) -> None:
            restart.append({"key": key, "why": why})
            log.info("reload: %s: changed, needs a restart (%s)", key, why)

        def fail(key: str, why: str) -> None:
            failed.append({"key": key, "why": why})
            log.warning("reload: %s: not applied: %s", key, why)

        # The log first: every line that follows goes where the new [log] says.
        if doc is not None:
            try:
                logsetup.apply(doc)
            except ValueError as err:
                fail("log", str(err))
            else:
                for key in _differ(cur.log, new.log):
                    done(f"log.{key}", f"{_show(getattr(cur.log, key))} → "
                                       f"{_show(getattr(new.log, key))}")
                if cur.log_level != new.log_level:
                    done("log.level", f"{cur.log_level} → {new.log_level}")
                cur.log, cur.log_level = new.log, new.log_level
        elif reopen_logs:
            logsetup.reopen()
        self._zones(cur, new, done, later)
        self._store(cur, new, done, later)
        await self._access(by, cur, new, built, done, fail)
        if new.busy_poll != cur.busy_poll:
            polls = control.set_busy_poll(new.busy_poll)
            done("node.busy_poll", f"{cur.busy_poll * 1e6:g}us → {new.busy_poll * 1e6:g}us"
                 + (" (off: below two CPUs)" if new.busy_poll and not polls else ""))
            cur.busy_poll = new.busy_poll
        if new.sys_interval != cur.sys_interval:
            control.set_sys_interval(new.sys_interval)
            done("node.sys_interval", f"{cur.sys_interval:g}s → {new.sys_interval:g}s"
                 + (" ($SYS topics off)" if not new.sys_interval else ""))
            cur.sys_interval = new.sys_interval
        await self._listeners(cur, new, done, fail)
        if new.bridges != cur.bridges:
            manager = self.bridges()
            if manager is None:
                later("bridges", "read at start")
            else:
                for name, change in manager.reload(new.bridges):
                    done(f"bridges.{name}", change)
                cur.bridges = new.bridges
        control.refresh_anonymous()
        for name in type(cur.modules)._fields:
            if getattr(cur.modules, name) != getattr(new.modules, name):
                # Modules read their section when loaded: the next load takes the new one.
                done(f"modules.{name}", "kept for the next `ctl modules load " + name + "`"
                     " (a loaded module keeps its settings until unloaded and loaded again)")
        cur.modules = new.modules
        for f in dataclasses.fields(cur):
            name = f.name
            old, now = getattr(cur, name), getattr(new, name)
            if name in _HANDLED or old == now:
                continue
            section = _KEYS.get(name, name)
            if dataclasses.is_dataclass(old):
                for key in _differ(old, now):
                    later(f"{section}.{key}", "read at start")
            else:
                later(section, "read at start")
        log.info("configuration reloaded by %s: %d change%s applied, %d need%s a restart%s",
                 by, len(applied), "" if len(applied) == 1 else "s", len(restart),
                 "s" if len(restart) == 1 else "", f", {len(failed)} failed" if failed else "")
        return {"file": file, "applied": applied, "restart": restart, "failed": failed}

    @staticmethod
    def _zones(cur: Settings, new: Settings, done: Callable[[str, str], None],
               later: Callable[[str, str], None]) -> None:
        for name, zone in new.zones.items():
            live = cur.zones.get(name)
            if live is None:
                cur.zones[name] = zone
                done(f"zones.{name}", "added")
                continue
            for key in _differ(live, zone):
                old, now = getattr(live, key), getattr(zone, key)
                if key in ZONE_RESTART:
                    later(_zone_key(name, key), ZONE_RESTART[key])
                    continue
                # In place: channels hold this very object (no lookup on the hot path).
                setattr(live, key, now)
                done(_zone_key(name, key), f"{_show(old)} → {_show(now)} ("
                     + ("connected clients too" if key in ZONE_LIVE
                        else "clients that connect from now on") + ")")
        for name in [n for n in cur.zones if n not in new.zones]:
            # Its connected clients keep the object until they reconnect.
            del cur.zones[name]
            done(f"zones.{name}", "removed")

    def _store(self, cur: Settings, new: Settings, done: Callable[[str, str], None],
               later: Callable[[str, str], None]) -> None:
        journal = self.store()
        for key in _differ(cur.store, new.store):
            old, now = getattr(cur.store, key), getattr(new.store, key)
            if key not in STORE_LIVE:
                later(f"store.{key}", "the store is opened at start")
                continue
            if journal is not None:
                setattr(journal, key, now)
            setattr(cur.store, key, now)
            done(f"store.{key}", f"{_show(old)} → {_show(now)}")

    async def _access(self, by: str, cur: Settings, new: Settings, built: Access | None,
                      done: Callable[[str, str], None],
                      fail: Callable[[str, str], None]) -> None:
        old = self.access()
        if built is None or old is None:
            return
        sections = [s for s in ("auth", "authz", "flapping")
                    if getattr(cur, s) != getattr(new, s)]
        if _listener_files(cur) != _listener_files(new):
            sections.append("listeners' password_file/acl_file")
        if not sections:
            built.authn.close()  # only a check: the running chains re-read their files
            try:
                row = self.acl.reload(by)
            except Unavailable:
                log.info("%s: no access control file is configured: nothing to reload", by)
            except MgmtError as err:
                fail("auth", err.message)
            else:
                done("auth", "files re-read: " + ", ".join(row["reloaded"]))
            return
        self.control.swap_access(built)
        for section in sections:
            if not section.startswith("listeners"):  # those follow with the listeners
                setattr(cur, section, getattr(new, section))
        old.authn.close()
        await old.authn.wait_closed()
        authz = built.authz
        done(", ".join(sections), f"access chains rebuilt: {len(built.authn.providers)} "
             f"authentication provider(s), {len(authz.sources) if authz else 0} "
             "authorization source(s), flapping detection "
             + ("on" if built.flapping is not None else "off"))

    async def _listeners(self, cur: Settings, new: Settings, done: Callable[[str, str], None],
                         fail: Callable[[str, str], None]) -> None:
        control = self.control
        status = {s.name: s for s in control.listeners()}
        before = {lst.name: lst for lst in cur.listeners}
        after = {lst.name for lst in new.listeners}
        # Removed first: an added listener may take over a removed one's port.
        for name in before:
            if name not in after:
                host, port = status[name].host, status[name].port
                await control.remove_listener(name)
                done(f"listeners.{name}", f"removed: no longer listening on {host}:{port}")
        for lst in new.listeners:
            key = f"listeners.{lst.name}"
            old = before.get(lst.name)
            changed = [] if old is None else _differ(old, lst)
            if old is None or set(changed) - LISTENER_TLS - LISTENER_IN_PLACE:
                try:
                    host, port = await control.replace_listener(lst)
                except Failed as err:
                    fail(key, err.message)
                    continue
                done(key, f"added: listening on {host}:{port}" if old is None else
                     f"{', '.join(changed)} changed: restarted on {host}:{port} (its clients "
                     "were disconnected)")
                continue
            running = status[lst.name].running
            if changed:
                control.update_listener(lst)
                done(key, ", ".join(f"{k} {_show(getattr(old, k))} → "
                                    f"{_show(getattr(lst, k))}" for k in changed
                                    if k not in LISTENER_TLS)
                     or "TLS options changed")
            if lst.type in ("ssl", "wss") and running:
                # Also the SIGHUP of old: a certificate renewed in the same file.
                try:
                    certfile = control.reload_listener(lst.name)
                except MgmtError as err:
                    fail(key, err.message)
                else:
                    done(key, f"TLS certificate and key reloaded from {certfile}")
        cur.listeners[:] = new.listeners


def reload_text(data: Row) -> str:
    """The answer for people: what was applied, what needs a restart, what failed."""
    lines = [f"Reloaded {data['file'] or 'the environment (no configuration file)'}:"]
    for title, part, field in (("applied", "applied", "change"),
                               ("needs a restart", "restart", "why"),
                               ("failed", "failed", "why")):
        for row in data[part]:
            lines.append(f"  {title}: {row['key']}: {row[field]}")
    if not data["applied"] and not data["restart"] and not data["failed"]:
        lines.append("  nothing changed")
    return "\n".join(lines)

