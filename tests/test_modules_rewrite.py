"""Topic rewrite (``[modules.rewrite]``, mqttd/modules/rewrite.py) against a real daemon
with paho clients: publish and subscribe rules, ``$1``.. and ``${clientid}``, the first
matching rule deciding, rewriting before authorization, unsafe placeholder values, run-time
unload, and bad rules refused by ``mqttd config check`` and ``mqttd start``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import uid
from support.clients import Clients
from support.ctlrun import ctl_json, ok
from support.process import BrokerProcess, broker_fixture, checked_broker, run_mqttd

from mqttd.hooks import Hooks
from mqttd.modules.rewrite import source_prefix

pytest_plugins = ["support.fixtures"]

NOT_AUTHORIZED = 0x87

RULES = r"""
[modules.rewrite]
enable = true

[[modules.rewrite.rules]]
action = "publish"
source_topic = "x/#"
re = '^x/(\w+)/(\w+)$'
dest_topic = "y/$2/$1"

[[modules.rewrite.rules]]
action = "subscribe"
source_topic = "my/inbox"
re = "^my/inbox$"
dest_topic = "inbox/${clientid}"

[[modules.rewrite.rules]]
action = "all"
source_topic = "old/#"
re = "^old/(.*)$"
dest_topic = "new/$1"

# Only the first rule whose filter matches decides: this one never applies to old/...
[[modules.rewrite.rules]]
action = "all"
source_topic = "old/#"
re = "^old/(.*)$"
dest_topic = "never/$1"

[[modules.rewrite.rules]]
action = "publish"
source_topic = "user/#"
re = "^user/(.*)$"
dest_topic = "users/${username}/$1"
"""


broker = broker_fixture(RULES)


def test_publish_rule_with_groups(clients: Clients, broker: BrokerProcess) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe([("y/#", 1), ("x/#", 1)]) == [1, 1]
    pub = clients(version=5)
    pub.publish(f"x/a{u}/b{u}", b"swapped", 1)
    msg = sub.expect_message()
    assert (msg.topic, msg.payload) == (f"y/b{u}/a{u}", b"swapped")
    # The expression not found in the topic: the topic stays as it was (EMQX's rule).
    pub.publish(f"x/a/b/c{u}", b"kept", 1)
    assert sub.expect_message().topic == f"x/a/b/c{u}"
    sub.assert_no_message()


def test_subscribe_rule_with_clientid_and_unsubscribe(clients: Clients,
                                                      broker: BrokerProcess) -> None:
    cid = uid("rw-")
    sub = clients(cid, version=5)
    assert sub.subscribe("my/inbox", 1) == [1]
    subs = ctl_json(broker, "subscriptions", "show", cid)
    assert [s["topic"] for s in subs] == [f"inbox/{cid}"]
    pub = clients(version=5)
    pub.publish(f"inbox/{cid}", b"for you", 1)
    assert sub.expect_message().topic == f"inbox/{cid}"
    assert sub.unsubscribe("my/inbox") == [0]
    assert ctl_json(broker, "subscriptions", "show", cid) == []


def test_all_rule_applies_to_both_and_first_match_decides(clients: Clients,
                                                          broker: BrokerProcess) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe([(f"old/{u}", 1), (f"never/{u}", 1)]) == [1, 1]  # new/{u}, twice
    pub = clients(version=5)
    pub.publish(f"old/{u}", b"moved", 1)  # published to new/{u}
    msg = sub.expect_message()
    assert (msg.topic, msg.payload) == (f"new/{u}", b"moved")
    pub.publish(f"never/{u}", b"sentinel", 1)
    assert sub.expect_message().payload == b"sentinel"
    sub.assert_no_message()


def test_unsafe_or_missing_placeholder_leaves_the_topic(clients: Clients,
                                                        broker: BrokerProcess) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe([("users/#", 1), ("user/#", 1)]) == [1, 1]
    clients(version=5, username="bob").publish(f"user/{u}", b"named", 1)
    assert sub.expect_message().topic == f"users/bob/{u}"
    clients(version=5).publish(f"user/{u}", b"anonymous", 1)  # no user name
    assert sub.expect_message().topic == f"user/{u}"
    clients(version=5, username="a/b").publish(f"user/{u}", b"slash", 1)
    assert sub.expect_message().topic == f"user/{u}"


def test_unload_and_load(clients: Clients, broker: BrokerProcess) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe([("y/#", 1), ("x/#", 1)]) == [1, 1]
    pub = clients(version=5)
    ok(broker, "modules", "unload", "rewrite")
    try:
        pub.publish(f"x/a{u}/b{u}", b"plain", 1)
        assert sub.expect_message().topic == f"x/a{u}/b{u}"
        row = next(m for m in ctl_json(broker, "modules", "list") if m["name"] == "rewrite")
        assert row["loaded"] is False
    finally:
        ok(broker, "modules", "load", "rewrite")
    pub.publish(f"x/a{u}/b{u}", b"again", 1)
    assert sub.expect_message().topic == f"y/b{u}/a{u}"
    row = next(m for m in ctl_json(broker, "modules", "list") if m["name"] == "rewrite")
    assert row["loaded"] is True and row["rules"] == 5 and row["rewritten"] >= 1


def test_rewritten_before_authorization(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    config = (RULES + "\n[[modules.rewrite.rules]]\naction = \"all\"\nsource_topic = \"public/#\"\n"
              "re = '^public/(.*)$'\ndest_topic = \"allowed/$1\"\n"
              f'\n[authz]\nacl_file = "{acl}"\n')
    with checked_broker(config) as b:
        made = Clients(b)
        try:
            u = uid()
            sub = made(version=5)
            # Subscribing to public/... is allowed: it is allowed/... once rewritten.
            assert sub.subscribe([(f"public/{u}", 1), (f"other/{u}", 1)]) == [
                1, NOT_AUTHORIZED]
            pub = made(version=5)
            assert pub.publish(f"public/{u}", b"through", 1) == 0
            assert sub.expect_message().topic == f"allowed/{u}"
            assert pub.publish(f"other/{u}", b"no", 1) == NOT_AUTHORIZED
        finally:
            made.close_all()


@pytest.mark.parametrize("rule,reason", [
    ('action = "publish"\nsource_topic = "a/#"\nre = "(a"\ndest_topic = "b"',
     "re is not a regular expression: missing ), unterminated subpattern"),
    ('action = "publish"\nsource_topic = "a/#"\nre = "^a/(.*)$"\ndest_topic = "b/$2"',
     "dest_topic uses $2 but re has 1 group(s)"),
    ('action = "publish"\nsource_topic = "a/#/b"\nre = "a"\ndest_topic = "b"',
     "source_topic is not a topic filter: '#' must be a whole level, and the last"),
    ('action = "bounce"\nsource_topic = "a"\nre = "a"\ndest_topic = "b"',
     "action must be one of publish, subscribe, all"),
    ('action = "publish"\nsource_topic = "a"\nre = "a"\ndest_topic = "b/${clientname}"',
     "unknown placeholder ${clientname}"),
    ('action = "publish"\nsource_topic = "a"\nre = "a"', "dest_topic missing"),
    ('action = "publish"\nsource_topic = "a"\nre = "a"\ndest_topic = ""',
     "dest_topic is empty"),
])
def test_bad_rules_are_refused_by_config_check_and_start(rule: str, reason: str,
                                                         tmp_path: Path) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f"[modules.rewrite]\nenable = true\n[[modules.rewrite.rules]]\n{rule}\n"
                    '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    checked = run_mqttd("config", "check", "-c", str(conf))
    assert checked.returncode == 2, checked
    assert "modules.rewrite.rules[0]" in checked.stderr and reason in checked.stderr, checked
    assert "Traceback" not in checked.stderr
    started = run_mqttd("start", "-c", str(conf), "--data-dir", str(tmp_path / "data"))
    assert started.returncode != 0, started
    assert reason in started.stderr and "Traceback" not in started.stderr, started


@pytest.mark.parametrize("topic_filter, prefix", [
    ("nomatch/#", "nomatch"), ("a/b/c", "a/b/c"), ("a/+/c", "a"), ("+/x", ""), ("#", ""),
    ("a/b/#", "a/b"), ("$SYS/+/x", "$SYS"),
])
def test_source_prefix(topic_filter: str, prefix: str) -> None:
    """Every topic a filter matches starts with its prefix (the chain is skipped for the
    others), "a" included for "a/#"."""
    assert source_prefix(topic_filter) == prefix


def test_client_publish_chain_is_guarded_only_while_every_callback_says_so() -> None:
    hooks = Hooks()
    assert hooks.client_publish_prefixes is None

    def first(*args: object) -> None: ...

    def second(*args: object) -> None: ...

    hooks.add("client.publish", first, prefixes=("a", "b/c"))
    assert hooks.client_publish_prefixes == ("a", "b/c")
    hooks.add("client.publish", second)  # acts on any topic
    assert hooks.client_publish_prefixes is None
    hooks.delete("client.publish", second)
    hooks.add("client.publish", second, prefixes=("",))  # "" matches every topic
    assert hooks.client_publish_prefixes is None
    hooks.delete("client.publish", second)
    hooks.add("client.publish", second, prefixes=("x",))
    assert hooks.client_publish_prefixes == ("a", "b/c", "x")
    hooks.delete("client.publish", first)
    hooks.delete("client.publish", second)
    assert hooks.client_publish_prefixes == () and not hooks.client_publish
