"""Subscriptions that change while a message is being delivered (docs/ARCHITECTURE.md,
"Subscriptions changed during a delivery").

A message goes to the subscribers of its route as they were when its delivery began: one
subscribed meanwhile (by a hook callback run during the delivery) does not get it, one
unsubscribed meanwhile may still get it, nobody gets it twice and nothing fails. Shown
through a real broker with a plugin that subscribes and unsubscribes sessions from its
``message.delivered`` and ``delivery.dropped`` callbacks, real paho clients, every delivery
path (the fast path's walk, ``Dispatcher.publish``'s, several matching filters, shared
groups), compiled and pure twins alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from support import uid
from support.clients import Client, Clients, props, sub_opts
from support.process import BrokerProcess, checked_broker

pytest_plugins = ["support.fixtures"]

#: Reaches the broker through ``ctx.publish`` (a bound method of the node): beyond the
#: documented plugin surface, as a plugin that changes subscriptions would have to.
PLUGIN_SOURCE = '''
"""Changes subscriptions at the first delivery of a message whose payload says so:
b"churn <nonce> (+|-) <filter> <client id> ..." (+ subscribe, - unsubscribe)."""
from mqttd.mqtt.packets import SubOpts
from mqttd.plugins import Plugin


class Churn(Plugin):
    def load(self):
        node = self.ctx.publish.__self__
        self.broker = node.broker
        self.sessions = node.registry.sessions
        self.done = set()
        self.hook("message.delivered", self.delivered)
        self.hook("delivery.dropped", self.dropped)

    def delivered(self, clientinfo, msg):
        self._act(msg)

    def dropped(self, session, msg, reason):
        self._act(msg)  # (No Local: called in the middle of the walk too)

    def _act(self, msg):
        words = msg.payload.decode().split()
        if len(words) < 2 or words[0] != "churn" or words[1] in self.done:
            return None
        self.done.add(words[1])
        for i in range(2, len(words), 3):
            op, topic_filter, client_id = words[i:i + 3]
            session = self.sessions[client_id]
            if op == "+":
                self.broker.subscribe(session, topic_filter, SubOpts(), 0)
            else:
                self.broker.unsubscribe(session, topic_filter)
        return None
'''


@pytest.fixture(scope="module", params=["c", "py"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BrokerProcess]:
    plugin_dir = tmp_path_factory.mktemp("churn")
    (plugin_dir / "churn_plugin.py").write_text(PLUGIN_SOURCE)
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    if request.param == "py":
        env["MQTTD_NO_EXTENSIONS"] = "1"
    with checked_broker('[plugins.churn]\nclass = "churn_plugin:Churn"\n', env=env) as b:
        assert "plugin churn loaded" in b.log()
        yield b


def _subscriber(clients: Clients, name: str, *filters: str) -> Client:
    """A client ``name`` subscribed to its own ``home/<name>`` (for the sentinel) and to
    ``filters`` in that order (the order of a route's walk is the order of subscription)."""
    c = clients(name)
    c.subscribe(f"home/{name}")
    for f in filters:
        c.subscribe(f)
    return c


def _received(subscribers: dict[str, Client]) -> dict[str, list[bytes]]:
    """Each client's payloads up to its sentinel (everything sent to it before has come:
    one connection keeps the broker's order)."""
    for name, c in subscribers.items():
        c.publish(f"home/{name}", b"sentinel", qos=1)
    got: dict[str, list[bytes]] = {}
    for name, c in subscribers.items():
        got[name] = []
        while True:
            payload = bytes(c.expect_message().payload)
            if payload == b"sentinel":
                break
            got[name].append(payload)
    return got


def _churn(*ops: tuple[str, str, str]) -> bytes:
    """The payload that has the plugin do ``ops`` ((+|-, filter, client id)) at the first
    delivery of its message."""
    return b" ".join([b"churn", uid().encode(), *(" ".join(op).encode() for op in ops)])


def _check(got: dict[str, list[bytes]], churn: bytes, after: bytes, *, kept: set[str],
           removed: set[str], added: set[str]) -> None:
    """``kept``: subscribed throughout (the churned message once, the next once);
    ``removed``: unsubscribed during the churned message's delivery (it at most once, the
    next never); ``added``: subscribed during it (not it, the next once)."""
    for name in kept:
        assert got[name] == [churn, after], name
    for name in removed:
        assert got[name] in ([], [churn]), name
    for name in added:
        assert got[name] == [after], name


@pytest.mark.parametrize("publisher", ["fast", "dispatcher"])
def test_one_route_changed_during_its_walk(broker: BrokerProcess, clients: Clients,
                                           publisher: str) -> None:
    """Six subscribers of one filter; at the first delivery a callback unsubscribes two,
    subscribes a seventh client, and takes one out and back in. ``fast``: a 3.1.1 PUBLISH
    (the fast path's walk, either twin); ``dispatcher``: one with a user property
    (``Dispatcher.publish``'s)."""
    topic = uid("walk/")
    names = [uid(f"s{i}-") for i in range(6)]
    late = uid("late-")
    subs = {n: _subscriber(clients, n, topic) for n in names}
    subs[late] = _subscriber(clients, late)
    pub = clients(uid("pub-"), version=5 if publisher == "dispatcher" else 4)
    properties = (props(PacketTypes.PUBLISH, UserProperty=[("k", "v")])
                  if publisher == "dispatcher" else None)
    churn = _churn(("-", topic, names[1]), ("-", topic, names[4]),
                   ("+", topic, late), ("-", topic, names[5]), ("+", topic, names[5]))
    # QoS 1: acknowledged once dispatched, so before the sentinels that follow.
    pub.publish(topic, churn, qos=1, properties=properties)
    pub.publish(topic, b"after", qos=1, properties=properties)
    got = _received(subs)
    # names[5], out and back in: in the walk's snapshot, so it got the churned message
    # once; and the next once, re-subscribed.
    _check(got, churn, b"after", kept={names[0], names[2], names[3], names[5]},
           removed={names[1], names[4]}, added={late})


def test_every_subscriber_but_one_removed_during_the_walk(broker: BrokerProcess,
                                                          clients: Clients) -> None:
    """The route goes back from a dict to its single-subscriber fields, then away and
    back, in the middle of the walk."""
    topic = uid("walk/")
    names = [uid(f"s{i}-") for i in range(4)]
    subs = {n: _subscriber(clients, n, topic) for n in names}
    pub = clients(uid("pub-"))
    churn = _churn(*[("-", topic, n) for n in names],
                   ("+", topic, names[2]))
    pub.publish(topic, churn, qos=1)
    pub.publish(topic, b"after", qos=1)
    got = _received(subs)
    _check(got, churn, b"after", kept=set(), removed={names[0], names[1], names[3]},
           added=set())
    assert got[names[2]] in ([b"after"], [churn, b"after"])


def test_several_filters_changed_during_the_walk(broker: BrokerProcess,
                                                 clients: Clients) -> None:
    """Several filters match (``Dispatcher._publish_merged``): the publisher's own No Local
    subscriptions, first in each filter's walk, run delivery.dropped, whose callback (at
    the first) changes the subscribers of the filter being walked and of those not walked
    yet, and adds a client to two of them."""
    base = uid("walk/")
    topic = f"{base}/t"
    pub_name = uid("pub-")
    names = [uid(f"s{i}-") for i in range(4)]
    late = uid("late-")
    pub = clients(pub_name, version=5)
    for f in (topic, f"{base}/#", f"{base}/+"):
        pub.subscribe(f, options=sub_opts(no_local=True))
    subs = {names[0]: _subscriber(clients, names[0], topic, f"{base}/#"),
            names[1]: _subscriber(clients, names[1], topic),
            names[2]: _subscriber(clients, names[2], f"{base}/#"),
            names[3]: _subscriber(clients, names[3], f"{base}/+"),
            late: _subscriber(clients, late)}
    churn = _churn(("-", topic, names[1]), ("-", f"{base}/#", names[2]),
                   ("+", f"{base}/#", late), ("+", f"{base}/+", late))
    pub.publish(topic, churn, qos=1)
    pub.publish(topic, b"after", qos=1)
    got = _received(subs)
    # names[0] matches twice: one delivery of each message.
    _check(got, churn, b"after", kept={names[0], names[3]}, removed={names[1], names[2]},
           added={late})
    pub.assert_no_message()


def test_shared_groups_changed_during_the_walk(broker: BrokerProcess, clients: Clients) -> None:
    """The walk over a filter's shared groups: a callback at the first group's delivery
    ends a group (its only member leaves) and makes a new one."""
    topic = uid("walk/")
    names = [uid(f"s{i}-") for i in range(4)]
    late = uid("late-")
    subs = {n: _subscriber(clients, n, f"$share/g{i}/{topic}") for i, n in enumerate(names)}
    subs[late] = _subscriber(clients, late)
    pub = clients(uid("pub-"))
    churn = _churn(("-", f"$share/g2/{topic}", names[2]),
                   ("+", f"$share/h/{topic}", late), ("-", f"$share/g3/{topic}", names[3]),
                   ("+", f"$share/g3/{topic}", names[3]))
    pub.publish(topic, churn, qos=1)
    pub.publish(topic, b"after", qos=1)
    got = _received(subs)
    _check(got, churn, b"after", kept={names[0], names[1]}, removed={names[2]},
           added={late})
    # g3's member left and came back: its group was ended and made anew; the message
    # reached it once at most, and the next once.
    assert got[names[3]] in ([b"after"], [churn, b"after"])
