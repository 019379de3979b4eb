"""Hook chains (mqttd.hooks) and plugins (mqttd.plugins): the chain semantics on their own,
then plugins named in a real broker's configuration, by "module:Class" and by entry point."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support.clients import Client
from support.process import BrokerProcess, run_mqttd

from mqttd.config import ConfigError, PluginSpec, parse_settings
from mqttd.core.services import ClientInfo
from mqttd.hooks import HOOK_POINTS, STOP, Hooks, Stop
from mqttd.node import Node
from mqttd.plugins import Plugin, PluginError, discover

# --- ordering -------------------------------------------------------------------------------


def test_priority_highest_first_then_insertion_order() -> None:
    hooks = Hooks()
    calls: list[str] = []

    def cb(name: str) -> Any:
        return functools.partial(calls.append, name)

    hooks.add("client.connected", cb("a0"))
    hooks.add("client.connected", cb("b5"), priority=5)
    hooks.add("client.connected", cb("c0"))
    hooks.add("client.connected", cb("d-1"), priority=-1)
    hooks.add("client.connected", cb("e5"), priority=5)
    hooks.run("client.connected")
    assert calls == ["b5", "e5", "a0", "c0", "d-1"]
    assert [c.priority for c in hooks.callbacks("client.connected")] == [5, 5, 0, 0, -1]


def test_attribute_flag_is_the_chain() -> None:
    hooks = Hooks()
    for point in HOOK_POINTS:
        assert getattr(hooks, point.replace(".", "_")) == ()
    assert not hooks.message_publish

    def f(msg: Any) -> None:
        return None

    hooks.add("message.publish", f)
    assert hooks.message_publish and hooks.message_publish[0].action is f
    assert hooks.active("message.publish")
    assert hooks.delete("message.publish", f)
    assert hooks.message_publish == ()
    assert not hooks.delete("message.publish", f)
    assert not hooks.active("message.publish")


def test_annotations_list_every_point() -> None:
    annotated = {k for k in Hooks.__annotations__}
    assert annotated == {p.replace(".", "_") for p in HOOK_POINTS}
    assert len(HOOK_POINTS) == 24


def test_add_twice_is_an_error_put_is_not() -> None:
    hooks = Hooks()

    def f() -> None:
        return None

    hooks.add("client.connected", f)
    with pytest.raises(ValueError, match="already"):
        hooks.add("client.connected", f, priority=3)
    hooks.put("client.connected", f)
    assert len(hooks.callbacks("client.connected")) == 1
    with pytest.raises(TypeError):
        hooks.add("client.connected", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hooks.add("client.connected", print, priority="high")  # type: ignore[arg-type]


def test_unknown_points_work_without_a_flag() -> None:
    hooks = Hooks()
    seen: list[Any] = []
    hooks.add("myplugin.event", seen.append)
    hooks.run("myplugin.event", 1)
    assert seen == [1]
    assert hooks.run_fold("myplugin.fold", (), 7) == 7
    assert set(hooks.points()) == {"myplugin.event"}


# --- run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stopper", [STOP, Stop(), Stop(42)], ids=["STOP", "Stop()", "Stop(42)"])
def test_run_stops_on_stop(stopper: Any) -> None:
    hooks = Hooks()
    calls: list[Any] = []
    hooks.add("client.disconnected", lambda c, r: calls.append(("a", c, r)), priority=2)
    hooks.add("client.disconnected", lambda c, r: stopper, priority=1)
    hooks.add("client.disconnected", lambda c, r: calls.append("never"))
    hooks.run("client.disconnected", "chan", "normal")
    assert calls == [("a", "chan", "normal")]


def test_run_continues_on_any_other_value() -> None:
    hooks = Hooks()
    calls: list[Any] = []

    def answer(value: Any, session: Any) -> Any:
        calls.append(value)
        return value

    for value in (None, False, 0, "stop", ("stop",), {"ok": 1}):
        hooks.add("session.created", functools.partial(answer, value))
    hooks.run("session.created", object())
    assert calls == [None, False, 0, "stop", ("stop",), {"ok": 1}]


def test_run_on_empty_point_is_a_no_op() -> None:
    Hooks().run("client.connected", 1, 2, 3)


# --- run_fold ------------------------------------------------------------------------------------


def test_fold_ok_values_and_none() -> None:
    hooks = Hooks()
    hooks.add("client.connack", lambda ch, rc, acc: {**acc, "a": 1}, priority=3)
    hooks.add("client.connack", lambda ch, rc, acc: None, priority=2)  # no opinion
    hooks.add("client.connack", lambda ch, rc, acc: {**acc, "rc": rc}, priority=1)
    assert hooks.run_fold("client.connack", ("chan", 0), {}) == {"a": 1, "rc": 0}


def test_fold_stop_with_value_and_bare_stop() -> None:
    hooks = Hooks()
    hooks.add("client.authenticate", lambda *a: 5, priority=3)
    hooks.add("client.authenticate", lambda *a: Stop(0x86), priority=2)
    hooks.add("client.authenticate", lambda *a: pytest.fail("after Stop"))
    assert hooks.run_fold("client.authenticate", ("c", "u", b"p", "peer"), 0) == 0x86

    hooks = Hooks()
    hooks.add("client.check_acl", lambda ch, act, t, acc: 0x87, priority=2)
    hooks.add("client.check_acl", lambda ch, act, t, acc: STOP, priority=1)
    hooks.add("client.check_acl", lambda *a: pytest.fail("after STOP"))
    assert hooks.run_fold("client.check_acl", ("c", "publish", "t"), 0) == 0x87

    hooks = Hooks()
    hooks.add("message.publish", lambda msg: Stop(None))
    assert hooks.run_fold("message.publish", (), "msg") is None


def test_fold_receives_args_then_acc() -> None:
    hooks = Hooks()
    seen = []
    hooks.add("message.delivered", lambda *a: seen.append(a))
    assert hooks.run_fold("message.delivered", ("chan",), "msg") == "msg"
    assert seen == [("chan", "msg")]


def test_fold_on_empty_point_returns_acc() -> None:
    acc = object()
    assert Hooks().run_fold("message.publish", (), acc) is acc


# --- crash isolation ------------------------------------------------------------------------------


def test_raising_callback_logged_once_and_chain_continues(
        caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    failures = []
    hooks.on_failure = lambda: failures.append(1)
    calls = []

    def broken(*args: Any) -> Any:
        raise RuntimeError("plugin bug")

    hooks.add("message.publish", broken, priority=1)
    hooks.add("message.publish", lambda msg: msg + "!")
    hooks.add("client.connected", broken, priority=1)
    hooks.add("client.connected", lambda ch: calls.append(ch))
    with caplog.at_level(logging.ERROR, logger="mqttd.hooks"):
        for i in range(3):
            assert hooks.run_fold("message.publish", (), "m") == "m!"
            hooks.run("client.connected", i)
    assert calls == [0, 1, 2]
    assert hooks.failures == 6 and len(failures) == 6
    records = [r for r in caplog.records if r.name == "mqttd.hooks"]
    # once per registration: one for message.publish, one for client.connected
    assert len(records) == 2, [r.getMessage() for r in records]
    assert all("plugin bug" in r.exc_text for r in records if r.exc_text)
    assert "broken" in records[0].getMessage()


def test_chain_changed_while_running_does_not_affect_the_run() -> None:
    hooks = Hooks()
    calls = []

    def late() -> None:
        calls.append("late")

    def first() -> None:
        calls.append("first")
        hooks.add("client.connected", late)
        hooks.delete("client.connected", second)

    def second() -> None:
        calls.append("second")

    hooks.add("client.connected", first, priority=1)
    hooks.add("client.connected", second)
    hooks.run("client.connected")
    assert calls == ["first", "second"]
    calls.clear()
    hooks.run("client.connected")
    assert calls == ["first", "late"]


def test_a_reserved_callback_runs_where_it_was_reserved() -> None:
    """reserve() takes a place in the run order; attach() puts the callback there, however
    late, and delete() takes it off again."""
    hooks = Hooks()
    calls: list[str] = []
    early = hooks.reserve(lambda: calls.append("reserved"))
    hooks.add("client.connected", lambda: calls.append("later"))
    hooks.add("client.connected", lambda: calls.append("high"), priority=5)
    hooks.attach("client.connected", early)
    hooks.run("client.connected")
    assert calls == ["high", "reserved", "later"]
    with pytest.raises(ValueError):
        hooks.attach("client.connected", early)
    assert hooks.delete("client.connected", early.action)
    calls.clear()
    hooks.run("client.connected")
    assert calls == ["high", "later"]
    hooks.attach("client.connected", early)
    calls.clear()
    hooks.run("client.connected")
    assert calls == ["high", "reserved", "later"]


def test_presence_hooks_are_on_only_while_a_dollar_filter_exists() -> None:
    """$SYS presence: with no filter beginning with "$" a connect and a leave run none of
    its hooks; the first such filter puts them on in the order they were loaded in, the
    last one's going takes them off, and unloading leaves them off."""
    from mqttd.core.session import Session
    from mqttd.mqtt.packets import SubOpts

    node = Node()
    hooks, sys_ = node.hooks, node.sys
    sys_.load_presence()
    other = lambda info: None  # noqa: E731 - added after presence loaded, same priority
    hooks.add("client.connected", other)
    assert [c.action for c in hooks.callbacks("client.connected")] == [other]
    assert not hooks.client_disconnected
    a, b = Session("a"), Session("b")
    node.dispatcher.subscribe(a, "plain/#", SubOpts(), 0)
    assert not hooks.client_disconnected
    node.dispatcher.subscribe(a, "$SYS/#", SubOpts(), 0)
    assert [c.action for c in hooks.callbacks("client.connected")] == [
        sys_.on_connected, other]
    assert [c.action for c in hooks.client_disconnected] == [sys_.on_disconnected]
    node.dispatcher.subscribe(b, "$SYS/brokers/+/clients/#", SubOpts(), 0)
    node.dispatcher.unsubscribe(a, "$SYS/#")
    assert [c.action for c in hooks.client_disconnected] == [sys_.on_disconnected]
    node.dispatcher.unsubscribe(b, "$SYS/brokers/+/clients/#")
    assert [c.action for c in hooks.callbacks("client.connected")] == [other]
    assert not hooks.client_disconnected
    node.dispatcher.subscribe(b, "$share/g/$SYS/brokers/+/clients/#", SubOpts(), 0)
    assert [c.action for c in hooks.client_disconnected] == [sys_.on_disconnected]
    sys_.unload_presence()
    assert not hooks.client_disconnected
    node.dispatcher.unsubscribe(b, "$share/g/$SYS/brokers/+/clients/#")
    node.dispatcher.subscribe(a, "$SYS/#", SubOpts(), 0)
    assert not hooks.client_disconnected  # unloaded: stays off
    sys_.load_presence()  # loaded while a "$" filter exists: on at once
    assert [c.action for c in hooks.client_disconnected] == [sys_.on_disconnected]


def test_node_counts_failed_hooks() -> None:
    node = Node()
    node.hooks.add("client.connected", lambda ch: 1 / 0)
    node.hooks.run("client.connected", None)
    assert node.metrics.snapshot()["hooks.failed"] == 1


# --- plugins: configuration and manager -------------------------------------------------------


def test_plugins_config_forms() -> None:
    import tomllib

    s = parse_settings(tomllib.loads('plugins = ["pkg.mod:Cls", "entry-name"]'))
    assert [(p.name, p.ref, p.enabled) for p in s.plugins] == [
        ("pkg.mod:Cls", "pkg.mod:Cls", True), ("entry-name", "entry-name", True)]
    s = parse_settings(tomllib.loads(textwrap.dedent("""
        [plugins]
        short = "pkg.mod:Short"
        off = false
        [plugins.audit]
        class = "pkg.audit:Audit"
        path = "/tmp/x"
        level = 2
    """)))
    assert s.plugins == [PluginSpec("short", "pkg.mod:Short"), PluginSpec("off", "off", False),
                         PluginSpec("audit", "pkg.audit:Audit", True,
                                    {"path": "/tmp/x", "level": 2})]


@pytest.mark.parametrize("text,error", [
    ('plugins = ["no spaces allowed"]', 'plugins[0]: '),
    ('plugins = ["a:b:c"]', 'plugins[0]: '),
    ('plugins = [1]', 'plugins[0]: expected a string'),
    ('plugins = ["x:Y", "x:Y"]', 'listed twice'),
    ('plugins = 3', 'plugins: expected a list'),
    ('[plugins]\nx = 3', 'plugins.x: expected'),
    ('[plugins.x]\nenabled = "yes"', 'plugins.x.enabled: expected true or false'),
    ('[plugins.x]\nclass = "bad class"', 'plugins.x.class: '),
])
def test_plugins_config_errors(text: str, error: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as exc:
        parse_settings(tomllib.loads(text))
    assert any(error in e for e in exc.value.errors), exc.value.errors


class _Recorder(Plugin):
    """Records connects."""

    def load(self) -> None:
        self.seen: list[Any] = []
        self.hook("client.connected", self.seen.append, priority=self.options.get("prio", 0))


def test_plugin_manager_load_unload() -> None:
    node = Node()
    manager = node.plugins
    plugin = manager.load(PluginSpec("rec", f"{__name__}:_Recorder", True, {"prio": 3}))
    assert node.hooks.callbacks("client.connected")[0].priority == 3
    node.hooks.run("client.connected", "chan")
    assert plugin.seen == ["chan"]
    assert manager.get("rec") is plugin
    listed = manager.list_plugins()
    assert listed[0] == {"name": "rec", "ref": f"{__name__}:_Recorder", "active": True,
                         "description": "Records connects."}
    with pytest.raises(PluginError, match="already loaded"):
        manager.load(PluginSpec("rec", f"{__name__}:_Recorder"))
    assert manager.unload("rec")
    assert not node.hooks.client_connected
    assert not manager.unload("rec")


@pytest.mark.parametrize("ref,error", [
    ("no_such_module_xyz:Cls", "cannot import no_such_module_xyz"),
    (f"{__name__}:Missing", "has no Missing"),
    ("no-such-entry-point", "no plugin called"),
    (f"{__name__}:_BadPlugin", "failed to load: ZeroDivisionError"),
])
def test_plugin_errors(ref: str, error: str) -> None:
    with pytest.raises(PluginError, match=error):
        Node().plugins.load(ref)


class _BadPlugin(Plugin):
    def load(self) -> None:
        1 / 0  # noqa: B018


# --- plugins in a real broker ---------------------------------------------------------------------

PLUGIN_SOURCE = '''
"""A test plugin: writes every hook it sees to a JSON-lines file; refuses user "mallory"."""
import json

from mqttd.hooks import Stop
from mqttd.plugins import Plugin

POINTS = ["client.authenticate", "client.connected", "client.disconnected",
          "session.created", "session.terminated", "message.publish", "client.check_acl"]


class Spy(Plugin):
    description = "records hooks"

    def load(self):
        self.out = open(self.options["path"], "a", buffering=1)
        for point in POINTS:
            self.hook(point, self._make(point))
        self.hook("client.authenticate", self.deny_mallory, priority=10)

    def _make(self, point):
        def record(*args):
            self.out.write(json.dumps({"point": point, "args": [_show(a) for a in args]}) + "\\n")
        return record

    def deny_mallory(self, client_id, username, password, peer, acc):
        if username == "mallory":
            return Stop(0x86)
        return None

    def unload(self):
        super().unload()
        self.out.write(json.dumps({"point": "unloaded"}) + "\\n")
        self.out.close()


def _show(value):
    for attr in ("client_id", "topic"):
        if hasattr(value, attr):
            return getattr(value, attr)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
'''


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_records(path: Path, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        recs = _records(path)
        if predicate(recs):
            return recs
        if time.monotonic() > deadline:
            raise AssertionError(f"plugin records not as expected: {recs}")
        time.sleep(0.02)


def _connect(broker: BrokerProcess, client_id: str, username: str | None = None
             ) -> tuple[Client, int]:
    """A connected (or refused) MQTT 5 paho client and its CONNACK reason code."""
    c = Client(broker, client_id, version=5, username=username,
               password=None if username is None else "pw")
    _flags, rc, _props = c.connect(expect_ok=False)
    return c, int(rc.value)


@pytest.fixture()
def plugin_dir(tmp_path: Path) -> Path:
    (tmp_path / "spy_plugin.py").write_text(PLUGIN_SOURCE)
    return tmp_path


def _env_with(path: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}


def test_configured_plugin_observes_hooks_in_a_real_broker(plugin_dir: Path) -> None:
    out = plugin_dir / "events.jsonl"
    config = f'[plugins.spy]\nclass = "spy_plugin:Spy"\npath = "{out}"\n'
    b = BrokerProcess(config, env=_env_with(plugin_dir))
    try:
        assert "plugin spy loaded (spy_plugin:Spy)" in b.log()
        c, rc = _connect(b, "alice", "alice")
        assert rc == 0
        c.publish("t/1", b"x", qos=1)
        c.disconnect()
        m, rc = _connect(b, "m1", "mallory")
        assert rc == 0x86  # the plugin's fold decided
        m.wait_disconnected()
        recs = _wait_records(out, lambda r: any(x["point"] == "session.terminated"
                                                for x in r))
        auth = [r["args"] for r in recs if r["point"] == "client.authenticate"]
        # the recorder sits after deny_mallory (priority 10), so it never sees mallory
        assert auth[0][:2] == ["alice", "alice"] and auth[0][4] == 0
        assert [r["args"][0] for r in recs if r["point"] == "session.created"] == ["alice"]
        acl = [r["args"] for r in recs if r["point"] == "client.check_acl"]
        assert acl and acl[0][1:3] == ["publish", "t/1"]
        assert [r["args"] for r in recs if r["point"] == "client.connected"] == [["alice"]]
        assert [r["args"][0] for r in recs if r["point"] == "message.publish"] == ["t/1"]
        assert [r["args"] for r in recs if r["point"] == "client.disconnected"] == [
            ["alice", "normal"]]
        assert [r["args"] for r in recs if r["point"] == "session.terminated"] == [
            ["alice", "terminated"]]
    finally:
        assert b.stop() == 0
    assert _records(out)[-1] == {"point": "unloaded"}
    assert "Traceback" not in b.log()


ENTRY_POINT_PLUGIN = '''
from mqttd.plugins import Plugin


class EpPlugin(Plugin):
    """Counts authentications through an entry point."""

    def load(self):
        self.n = 0
        self.hook("client.authenticate", self.count)

    def count(self, client_id, username, password, peer, acc):
        self.n += 1
        with open(self.options["path"], "w") as f:
            f.write(str(self.n))
'''


def _install_entry_point(path: Path) -> None:
    """A minimal installed distribution: its dist-info declares the entry point."""
    (path / "ep_plugin_mod.py").write_text(ENTRY_POINT_PLUGIN)
    info = path / "mqttd_test_ep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mqttd-test-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mqttd.plugins]\ntest-ep = ep_plugin_mod:EpPlugin\n")


def test_entry_point_plugin_discovered_and_loaded(tmp_path: Path) -> None:
    _install_entry_point(tmp_path)
    probe = ("import json, mqttd.plugins as p; "
             "print(json.dumps({k: v.value for k, v in p.discover().items()}))")
    proc = subprocess.run([sys.executable, "-c", probe], env={**os.environ,
                          **_env_with(tmp_path)}, capture_output=True, text=True, timeout=30,
                          check=True)
    assert json.loads(proc.stdout) == {"test-ep": "ep_plugin_mod:EpPlugin"}
    assert "test-ep" not in discover()  # not on this interpreter's path
    out = tmp_path / "count.txt"
    config = f'[plugins.test-ep]\npath = "{out}"\n'
    b = BrokerProcess(config, env=_env_with(tmp_path))
    try:
        assert "plugin test-ep loaded (test-ep)" in b.log()
        c, rc = _connect(b, "ep-client")
        assert rc == 0
        c.disconnect()
        deadline = time.monotonic() + 5
        while not (out.exists() and out.read_text() == "1"):
            assert time.monotonic() < deadline, "entry-point plugin saw no authentication"
            time.sleep(0.02)
    finally:
        assert b.stop() == 0


def test_a_plugin_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "mqttd.toml"
    config.write_text('plugins = ["no_such_plugin_module:Auth"]\n'
                      '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    proc = run_mqttd("start", "-c", str(config), "--data-dir", str(tmp_path / "data"),
                     timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "cannot import no_such_plugin_module" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the folds the channel and the node run, in process --------------------------------------

class _Client:
    """A channel and a parser for what it writes (no socket: the channel does no I/O)."""

    def __init__(self, node: Node, client_id: str) -> None:
        from mqttd.core.channel import Channel
        from mqttd.mqtt._codec_py import ParserPy
        from mqttd.mqtt.packets import Connect

        self.channel = ch = Channel(node.broker, node.settings.zone("default"), "127.0.0.1:1")
        self.parser = ParserPy(version=5)
        ch.handle_in(Connect("MQTT", 5, True, 0, client_id, None, None, None, {}))
        self.read()

    def handle_in(self, packet: Any) -> None:
        self.channel.handle_in(packet)

    def read(self) -> list[Any]:
        data = b"".join(self.channel.out)
        self.channel.out.clear()
        return self.parser.feed(data)


def _world() -> tuple[Node, Any]:
    node = Node()
    return node, functools.partial(_Client, node)


def test_subscribe_fold_rewrites_and_refuses_filters() -> None:
    import asyncio

    from mqttd.mqtt.packets import Suback, SubOpts, Subscribe

    async def body() -> None:
        node, client = _world()
        seen: list[Any] = []

        def policy(client: ClientInfo, props: Any, filters: list[Any]) -> Any:
            out = []
            for f, opts in filters:
                if f == "secret/#":
                    out.append((f, 0x87))
                else:
                    out.append(("tenant/" + f, opts))
            return out

        node.hooks.add("client.subscribe", policy)
        node.hooks.add("session.subscribed", lambda *a: seen.append(a[1:]))
        ch = client("sub")
        ch.handle_in(Subscribe(1, [("a/b", SubOpts(1)), ("secret/#", SubOpts(0))], {}))
        assert ch.read() == [Suback(1, [1, 0x87])]
        assert list(ch.channel.session.subscriptions) == ["tenant/a/b"]
        assert seen == [("tenant/a/b", SubOpts(1), True)]
        snap = node.metrics.snapshot()
        assert snap["client.subscribe"] == 1 and snap["packets.subscribe.error"] == 1
        assert snap["packets.subscribe.auth_error"] == 1

    asyncio.run(body())


def test_publish_and_delivered_folds() -> None:
    import asyncio

    from mqttd.core.message import Message
    from mqttd.mqtt.packets import Publish, SubOpts, Subscribe

    async def body() -> None:
        node, client = _world()

        def gate(msg: Message) -> Any:
            if msg.topic == "drop/me":
                return Stop(None)  # not published
            return None

        def stamp(client: ClientInfo, msg: Message) -> Message:
            assert isinstance(client, ClientInfo)  # a view, never the live channel
            return Message(msg.topic, msg.payload + b"!" + client.client_id.encode(), msg.qos,
                           msg.retain, msg.properties, msg.sender)

        node.hooks.add("message.publish", gate)
        node.hooks.add("message.delivered", stamp)
        a, b = client("a"), client("b")
        for ch in (a, b):
            ch.handle_in(Subscribe(1, [("#", SubOpts(0))], {}))
            ch.read()
        pub = client("p")
        pub.handle_in(Publish("drop/me", b"x", 0, False, False, 0, {}))
        pub.handle_in(Publish("keep/me", b"x", 0, False, False, 0, {}))
        assert [p.payload for p in a.read()] == [b"x!a"]
        assert [p.payload for p in b.read()] == [b"x!b"]
        snap = node.metrics.snapshot()
        assert snap["messages.publish"] == 2 and snap["messages.delivered"] == 2
        assert snap["messages.dropped.no_subscribers"] == 0

    asyncio.run(body())


def test_a_delivered_callback_that_keeps_the_message_keeps_the_shared_encoding() -> None:
    """QoS 0 subscribers share one encoded PUBLISH (the same bytes object) while a
    message.delivered callback only looks; the callback still sees every delivery."""
    import asyncio

    from mqttd.mqtt.packets import Publish, SubOpts, Subscribe

    async def body() -> None:
        node, client = _world()
        seen: list[str] = []
        node.hooks.add("message.delivered", lambda ci, msg: seen.append(ci.client_id))
        a, b = client("a"), client("b")
        for ch in (a, b):
            ch.handle_in(Subscribe(1, [("t/#", SubOpts(0))], {}))
            ch.read()
        client("p").handle_in(Publish("t/1", b"x", 0, False, False, 0, {}))
        assert a.channel.out[0] is b.channel.out[0]
        assert [p.payload for p in a.read()] == [b"x"] and sorted(seen) == ["a", "b"]

    asyncio.run(body())
