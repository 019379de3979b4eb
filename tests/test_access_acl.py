"""Authorization with an ACL file (``[authz] acl_file``): the parser, the rules' semantics
(blocks, patterns, placeholders, deny first, subscription containment), the chain around
them, the broker core's delivery check, and end to end with real clients (paho-mqtt,
mosquitto_sub) on a real ``mqttd start``: publish, subscribe, deliveries under a wildcard,
retained messages, ``deny_action = "disconnect"``, ``mqttd ctl acl check|reload`` and the
refusal of a malformed file at start and by ``mqttd config check``.

Clients log in with user names on a loopback listener where anonymous access is allowed
and no authentication provider is configured: the names are taken as given, which is what
user-based rules need here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_util import Probe, World
from support import WAIT, builder as B, uid
from support.clients import Clients, MosquittoSub, PacketTypes, props
from support.ctlrun import Result, ctl, ctl_json
from support.process import BrokerProcess, checked_broker, log_size, run_mqttd, wait_log

from mqttd.access.acl_file import MAX_ERRORS, AclFile, _matches, contains, parse_acl
from mqttd.access.authn import AccessError, AuthChain
from mqttd.access.authz import AuthzChain
from mqttd.access.build import build_access
from mqttd.access.password_file import hash_password
from mqttd.config import AuthSettings, AuthzSettings, Settings, parse_settings
from mqttd.core.message import Message
from mqttd.core.services import AuthResult, ClientInfo
from mqttd.metrics import DELIVERY_DROPPED_NOT_AUTHORIZED
from mqttd.mgmt.access import Acl
from mqttd.mgmt.errors import InvalidArgument, Unavailable
from mqttd.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Pubrec,
    Suback,
    SubOpts,
    Subscribe,
)
from mqttd.mqtt.topics import match

pytest_plugins = ["support.fixtures"]

NOT_AUTHORIZED = 0x87


def client(client_id: str = "c1", username: str | None = None, **kw: Any) -> ClientInfo:
    return ClientInfo(client_id, username, "127.0.0.1:1", **kw)


def acl_source(tmp_path: Path, text: str) -> AclFile:
    path = tmp_path / "acl"
    path.write_text(text)
    return AclFile(str(path))


def errors_of(text: str, path: str = "/etc/acl") -> list[str]:
    with pytest.raises(AccessError) as err:
        parse_acl(text, path)
    return err.value.errors


# --- the parser -------------------------------------------------------------------------------

def test_every_line_form() -> None:
    rules = parse_acl(
        "# a comment\n"
        "   # an indented comment\n"
        "\n"
        "topic public/#\n"                       # no access word: readwrite
        "topic read news/+\n"
        "topic write up/x\n"
        "topic readwrite both/x\n"
        "topic deny news/secret\n"
        "topic read with space/in it\n"          # the rest of the line is the topic
        "user alice\n"
        "topic\treadwrite\talice/#\n"            # tabs separate too
        "pattern read users/%u/#\n"              # a pattern inside a block is for everyone
        "pattern write dev/${clientid}/up\n"
        "user bob smith\n"                       # a user name may hold a space
        "topic read bob/#\n"
        "user alice\n"                           # a second block of alice adds up
        "topic write alice2/#\n"
        "  topic read   indented/x  \n",          # blanks around words are ignored
        "/etc/acl")
    assert [(r.text, r.line) for r in rules.anonymous] == [
        ("topic readwrite public/#", 4), ("topic read news/+", 5), ("topic write up/x", 6),
        ("topic readwrite both/x", 7), ("topic deny news/secret", 8),
        ("topic read with space/in it", 9)]
    assert [r.text for r in rules.users["alice"]] == [
        "topic readwrite alice/#", "topic write alice2/#", "topic read indented/x"]
    assert [r.text for r in rules.users["bob smith"]] == ["topic read bob/#"]
    assert [(r.text, r.line) for r in rules.patterns] == [
        ("pattern read users/%u/#", 12), ("pattern write dev/${clientid}/up", 13)]
    assert rules.count == 12


@pytest.mark.parametrize(("line", "error"), [
    ("topic reed a/b", "unknown access 'reed'"),
    ("topic a b", "unknown access 'a'"),                     # spaces need the access word
    ("topic", "topic: missing topic"),
    ("pattern read", "pattern read: missing topic"),
    ("topic deny", "a topic named 'deny' needs the access word first"),
    ("user", "user: missing user name"),
    ("users alice", "unknown keyword 'users'"),
    ("Topic read a", "unknown keyword 'Topic'"),              # keywords are lower case
    ("topic read a/#/b", "invalid topic filter 'a/#/b'"),
    ("topic read a/b+", "'+' must occupy a whole level"),
    ("topic read $share/g/a", "not a shared subscription"),
    ("topic read a/\x01", "control or non-character"),
    ("pattern read a/x%c", "placeholder %c must be a whole topic level"),
    ("pattern read a/%u-x", "placeholder %u must be a whole topic level"),
    ("topic read a/${clientid}x", "placeholder ${clientid} must be a whole topic level"),
    ("topic read a/${client}", "unknown placeholder ${client}"),
])
def test_bad_lines_name_file_and_line(line: str, error: str) -> None:
    errors = errors_of(f"# first\ntopic read ok/#\n{line}\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith("/etc/acl:3: "), errors
    assert error in errors[0], errors


def test_every_bad_line_is_listed_up_to_a_limit() -> None:
    errors = errors_of("topic reed a\nfoo\ntopic read ok\nuser\n")
    assert [e.split(":")[1] for e in errors] == ["1", "2", "4"]
    many = errors_of("bad\n" * (MAX_ERRORS + 5))
    assert len(many) == MAX_ERRORS + 1
    assert many[-1] == "/etc/acl: ... and 5 more problems"


def test_placeholders_stay_literal_where_they_do_not_apply() -> None:
    # mosquitto substitutes %c/%u only in pattern lines: in a topic line they are text
    rules = parse_acl("topic read a/%c\n", "/p")
    assert not rules.anonymous[0].dynamic
    assert rules.anonymous[0].parts == ("a", "%c")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(AccessError) as err:
        AclFile(str(tmp_path / "missing"), "authz.acl_file")
    assert err.value.errors == [f"authz.acl_file: cannot read {tmp_path / 'missing'}: "
                                "No such file or directory"]
    bad = tmp_path / "latin1"
    bad.write_bytes(b"topic read a\ntopic read caf\xe9\n")
    with pytest.raises(AccessError) as err:
        AclFile(str(bad))
    assert err.value.errors == [f"{bad}:2: not UTF-8 text"]


def test_build_through_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("topic read a/#\n")
    settings = parse_settings({"authz": {"acl_file": str(path)}})
    access = build_access(settings)
    assert access.authz is not None
    assert [s.description for s in access.authz.sources] == [f"acl_file {path}"]
    access.close()
    settings = parse_settings({"authz": {"sources": [
        {"type": "acl_file", "paht": "x"}, {"type": "acl_file", "path": str(tmp_path / "no")}]}})
    with pytest.raises(AccessError) as err:
        build_access(settings)
    assert err.value.errors == [
        "authz.sources[0].path: missing",
        "authz.sources[0].paht: unknown key (did you mean path?)",
        f"authz.sources[1].path: cannot read {tmp_path / 'no'}: No such file or directory"]


# --- containment of a subscription in a rule ---------------------------------------------------

@pytest.mark.parametrize(("rule", "sub", "covered"), [
    ("a/#", "a/b/+", True),
    ("a/#", "a/#", True),
    ("a/#", "a", True),            # a/# matches its parent level
    ("a/#", "b/#", False),
    ("a/+", "a/b", True),
    ("a/+", "a/+", True),
    ("a/+", "a/#", False),         # a/# matches a/b/c, a/+ does not
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/b", "a/+", False),         # a literal does not cover a wildcard
    ("a/b", "a/b", True),
    ("+/+", "a/+", True),
    ("+/b", "+/+", False),
    ("#", "#", True),
    ("#", "a/b/c", True),
    ("#", "$SYS/x", False),        # a leading wildcard never covers $ topics
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/+", True),
    ("$SYS/#", "#", False),
    ("a/+/c", "a/+/c", True),
    ("a/+/c", "a/+/#", False),
    ("a//b", "a//b", True),        # empty levels are levels
    ("a/+/b", "a//b", True),
])
def test_containment(rule: str, sub: str, covered: bool) -> None:
    assert contains(rule, sub) is covered


# --- what the rules decide ----------------------------------------------------------------------

RULES = """\
topic read public/#
topic write anon/up
user alice
topic readwrite alice/#
topic read #
topic deny secret/#
user bob
topic write public/#
topic deny clients/bob-secret/#
pattern readwrite clients/%c/#
pattern read users/${username}/inbox
pattern deny users/%u/inbox/locked
"""


@pytest.fixture
def source(tmp_path: Path) -> AclFile:
    return acl_source(tmp_path, RULES)


def test_blocks(source: AclFile) -> None:
    anon, alice, carol = client(), client(username="alice"), client(username="carol")
    assert source.check(anon, "deliver", "public/x") is True
    assert source.check(anon, "publish", "public/x") is None    # read only: no write rule
    assert source.check(anon, "publish", "anon/up") is True
    # top-of-file topic lines are the anonymous block (mosquitto 2), not everyone's
    assert source.check(carol, "deliver", "public/x") is None
    assert source.check(alice, "publish", "anon/up") is None
    assert source.check(alice, "publish", "alice/x") is True
    assert source.check(alice, "deliver", "elsewhere/x") is True
    assert source.check(alice, "publish", "elsewhere/x") is None


def test_actions_map_to_accesses(source: AclFile) -> None:
    bob = client(username="bob")
    assert source.check(bob, "publish", "public/x") is True
    assert source.check(bob, "subscribe", "public/x") is None
    assert source.check(bob, "deliver", "public/x") is None
    assert source.check(bob, "unknown", "public/x") is None


def test_deny_wins(source: AclFile) -> None:
    alice = client(username="alice")
    assert source.check(alice, "deliver", "secret/x") is False   # deny before "read #"
    assert source.check(alice, "publish", "secret/x") is False
    # a user block's deny also beats a pattern's allow
    bob = client("bob-secret", "bob")
    assert source.check(bob, "publish", "clients/bob-secret/x") is False
    # and a pattern's deny beats a user block's allow
    assert source.check(alice, "deliver", "users/alice/inbox/locked") is False


def test_subscribe_needs_a_rule_covering_the_filter(source: AclFile) -> None:
    anon, alice = client(), client(username="alice")
    assert source.check(anon, "subscribe", "public/#") is True
    assert source.check(anon, "subscribe", "public/+/x") is True
    assert source.check(anon, "subscribe", "#") is None          # overlaps public/#, wider
    assert source.check(anon, "subscribe", "+/x") is None
    # a deny refuses a subscription it covers; one it only overlaps is granted, and the
    # denied topics are refused message by message when delivered
    assert source.check(alice, "subscribe", "secret/#") is False
    assert source.check(alice, "subscribe", "secret/+/x") is False
    assert source.check(alice, "subscribe", "#") is True
    assert source.check(alice, "subscribe", "+/x") is True
    assert source.check(alice, "subscribe", "$SYS/#") is None    # '#' does not cover $SYS
    # a shared subscription is checked on its real filter
    assert source.check(alice, "subscribe", "$share/g/secret/x") is False
    assert source.check(anon, "subscribe", "$share/g/public/#") is True
    assert source.check(anon, "subscribe", "$queue/public/a") is True


def test_patterns(source: AclFile) -> None:
    dev = client("dev7")
    assert source.check(dev, "publish", "clients/dev7/x") is True
    assert source.check(dev, "subscribe", "clients/dev7/#") is True
    assert source.check(dev, "publish", "clients/dev8/x") is None
    assert source.check(dev, "subscribe", "clients/+/x") is None
    # %u / ${username} do not apply to a client without a user name
    assert source.check(dev, "deliver", "users//inbox") is None
    bob = client("b1", "bob")
    assert source.check(bob, "deliver", "users/bob/inbox") is True
    assert source.check(bob, "deliver", "users/alice/inbox") is None


@pytest.mark.parametrize("client_id", ["dev/+", "#", "a+b"])
def test_wildcards_in_names_never_widen_a_pattern(source: AclFile, client_id: str) -> None:
    who = client(client_id)
    # the allow pattern clients/%c/# is skipped ...
    assert source.check(who, "subscribe", "clients/#") is None
    assert source.check(who, "deliver", "clients/x") is None


def test_wildcards_in_names_make_a_deny_pattern_refuse(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "topic read #\npattern deny private/%c/#\n")
    assert src.check(client("plain"), "deliver", "anything") is True
    verdict, why = src.explain(client("x#"), "deliver", "anything")
    assert verdict is False
    assert why.endswith("pattern deny private/%c/# (a wildcard or $ in the client id or "
                        "user name)")


def test_a_slash_in_a_name(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "topic readwrite #\npattern readwrite own/%c/#\n"
                               "pattern deny private/%c/#\n")
    # an allow pattern is skipped: client "a/b" must not reach client "a"'s tree ...
    assert src.check(client("a/b"), "publish", "own/a/b/x") is True    # ("topic #" grants)
    assert src.explain(client("a/b"), "publish", "own/a/b/x")[1].endswith(
        ":1: topic readwrite #")
    # ... while a deny pattern takes the name as written, levels and all
    assert src.check(client("a/b"), "publish", "private/a/b/x") is False
    assert src.check(client("a/b"), "publish", "private/a/c") is True


def test_a_dollar_name_cannot_reach_dollar_topics(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "pattern readwrite %c/#\n")
    assert src.check(client("$SYS"), "subscribe", "$SYS/#") is None
    assert src.check(client("dev"), "subscribe", "dev/#") is True


def test_explain_names_the_line(source: AclFile) -> None:
    path = source.path
    assert source.explain(client(username="alice"), "subscribe", "secret/x") == (
        False, f"acl_file {path}:6: topic deny secret/#")
    assert source.explain(client("dev7"), "publish", "clients/dev7/a") == (
        True, f"acl_file {path}:10: pattern readwrite clients/%c/#")
    assert source.explain(client(), "publish", "nowhere") == (
        None, f"acl_file {path}: no rule matched")


def test_reload_keeps_the_old_rules_on_a_bad_file(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "topic read a/#\n")
    anon = client()
    (tmp_path / "acl").write_text("topic read a/#\ntopic reed b/#\n")
    with pytest.raises(AccessError) as err:
        src.reload()
    assert err.value.errors[0].startswith(f"{tmp_path / 'acl'}:2: unknown access")
    assert src.check(anon, "deliver", "a/x") is True
    (tmp_path / "acl").write_text("topic read b/#\n")
    src.reload()
    assert src.check(anon, "deliver", "a/x") is None
    assert src.check(anon, "deliver", "b/x") is True


TOPICS = ["a", "a/b", "a/b/c", "b/a", "$SYS/x", "$SYS", "a//b", "/a", "secret/x",
          "users/bob/inbox", "clients/c1/x", "public/x", "alice/x"]
FILTERS = ["#", "+", "a/#", "a/+", "+/+", "+/b", "a/b", "a/+/c", "$SYS/#", "$SYS/+", "/+",
           "+/#", "a//b", "secret/#", "users/+/inbox", "clients/c1/#", "$share/g/a/#"]


def test_fast_paths_agree_with_the_reference_matcher() -> None:
    for f in FILTERS[:-1]:
        for t in TOPICS:
            assert _matches(tuple(f.split("/")), t.split("/")) == match(f, t), (f, t)
            # a topic name is a filter matching only itself: containment agrees with match
            assert contains(f, t) == match(f, t), (f, t)


@pytest.mark.parametrize("who", [client(), client("c1"), client("c1", "alice"),
                                 client("x", "bob"), client("#", "bob"), client("a/b", "bob")])
def test_check_and_explain_agree(source: AclFile, who: ClientInfo) -> None:
    # check() looks only at rules indexed by the first level; explain() walks the file
    for action, names in (("publish", TOPICS), ("deliver", TOPICS), ("subscribe", FILTERS)):
        for topic in names:
            assert source.check(who, action, topic) == \
                source.explain(who, action, topic)[0], (who, action, topic)


# --- the chain around the source ----------------------------------------------------------------

def test_chain_no_match_cache_forget_reload(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "topic read a/#\n")
    chain = AuthzChain(AuthzSettings(), [src])
    anon = client()
    assert chain.check(anon, "deliver", "a/x") == 0
    assert chain.check(anon, "deliver", "b/x") == NOT_AUTHORIZED    # no_match = deny
    allow_all = AuthzChain(AuthzSettings(no_match="allow"), [src])
    assert allow_all.check(anon, "deliver", "b/x") == 0
    # decisions are cached per client until forgotten or reloaded
    (tmp_path / "acl").write_text("topic read b/#\n")
    src.rules = parse_acl("topic read b/#\n", "x")   # swapped behind the cache's back
    assert chain.check(anon, "deliver", "a/x") == 0
    chain.forget(anon.client_id)
    assert chain.check(anon, "deliver", "a/x") == NOT_AUTHORIZED
    assert chain.check(anon, "deliver", "b/x") == 0
    (tmp_path / "acl").write_text("topic read c/#\n")
    chain.reload()
    assert chain.check(anon, "deliver", "b/x") == NOT_AUTHORIZED


def test_chain_reload_reports_every_bad_source_and_reloads_the_others(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    good = acl_source(tmp_path / "one", "topic read a/#\n")
    bad = acl_source(tmp_path / "two", "topic read a/#\n")
    chain = AuthzChain(AuthzSettings(), [bad, good])
    (tmp_path / "one" / "acl").write_text("topic read b/#\n")
    (tmp_path / "two" / "acl").write_text("oops\n")
    with pytest.raises(AccessError) as err:
        chain.reload()
    assert err.value.errors == [f"{tmp_path / 'two' / 'acl'}:1: unknown keyword 'oops' "
                                "(expected topic, pattern or user; a comment starts the line "
                                "with #)"]
    assert good.check(client(), "deliver", "b/x") is True
    assert bad.check(client(), "deliver", "a/x") is True


def test_chain_delivery_check_only_where_something_can_refuse(tmp_path: Path) -> None:
    # the chain a JWT/HTTP provider brings without [authz]: only clients with an ACL pay
    acl_only = AuthzChain(AuthzSettings(no_match="allow"), [])
    assert acl_only.delivery_check(client()) is None
    granted = client(acl=lambda action, topic: None)
    assert acl_only.delivery_check(granted) == acl_only.check
    with_source = AuthzChain(AuthzSettings(no_match="allow"), [acl_source(tmp_path, "")])
    assert with_source.delivery_check(client()) == with_source.check
    deny_rest = AuthzChain(AuthzSettings(), [])
    assert deny_rest.delivery_check(client()) == deny_rest.check


def test_chain_explain(tmp_path: Path) -> None:
    src = acl_source(tmp_path, "topic read a/#\n")
    chain = AuthzChain(AuthzSettings(), [src])
    assert chain.explain(client(), "deliver", "a/b") == (
        True, f"acl_file {src.path}:1: topic read a/#")
    assert chain.explain(client(), "deliver", "b") == (
        False, "no source matched: no_match = deny")
    assert chain.explain(client(superuser=True), "publish", "b") == (
        True, "superuser (authorization is skipped)")
    granted = client(acl=lambda action, topic: topic == "b" or None)
    assert chain.explain(granted, "publish", "b") == (
        True, "the client ACL its authentication attached")


# --- the broker core: deliveries, takeover, deny_action (real channels, no sockets) --------------

class Superusers:
    """An authentication provider vouching for every user name as given, and granting
    superuser to ``root``."""

    kind = "sync"
    description = "test provider"

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        return AuthResult(0, superuser=client.username == "root")

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


class Core:
    """A real Broker (core_util.World) with an ACL file as its authorization chain."""

    def __init__(self, tmp_path: Path, rules: str, deny_action: str = "ignore",
                 **zone: Any) -> None:
        self.world = World(**zone)
        self.source = acl_source(tmp_path, rules)
        settings = AuthzSettings(deny_action=deny_action)
        self.chain = AuthzChain(settings, [self.source])
        self.world.broker.authorizer = self.chain
        self.world.broker.authenticator = AuthChain(AuthSettings(), [Superusers()])

    def connect(self, client_id: str, username: str | None, version: int = 5, *,
                clean: bool = True, expiry: int = 0) -> Any:
        p = Probe(self.world, version)
        out = p.send(Connect("MQTT", version, clean, 60, client_id, None, username, None,
                             {"session_expiry_interval": expiry} if version == 5 else {}))
        assert isinstance(out[0], Connack) and out[0].reason_code == 0, out
        p.backlog = out[1:]
        return p

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 0,
                retain: bool = False) -> None:
        self.world.broker.publish(Message(topic, payload, qos, retain))

    @property
    def denied(self) -> int:
        return self.world.metrics.get(DELIVERY_DROPPED_NOT_AUTHORIZED)


CORE_RULES = """\
user alice
topic read #
topic deny secret/#
topic write alice/#
user bob
topic read public/#
"""


def topics(packets: list[Any]) -> list[str]:
    return [p.topic for p in packets if isinstance(p, Publish)]


def test_core_delivery_check(tmp_path: Path) -> None:
    core = Core(tmp_path, CORE_RULES)
    alice = core.connect("a1", "alice")
    root = core.connect("r1", "root")
    assert alice.channel.acl_deliver is not None
    assert root.channel.acl_deliver is None              # a superuser costs nothing
    for p in (alice, root):
        assert p.send(Subscribe(1, [("#", SubOpts(1))])) == [Suback(1, [1])]
    core.publish("secret/x", qos=1)
    core.publish("public/x", qos=0)
    assert topics(alice.out()) == ["public/x"]
    assert topics(root.out()) == ["secret/x", "public/x"]
    assert core.denied == 1
    assert alice.channel.dropped == 1


def test_core_no_authorizer_no_check(tmp_path: Path) -> None:
    world = World()
    p = world.client("c", 5)
    assert p.channel.acl_deliver is None


def test_core_queued_deliveries_are_checked_when_they_go_out(tmp_path: Path) -> None:
    core = Core(tmp_path, CORE_RULES)
    alice = core.connect("a1", "alice", clean=False, expiry=300)
    assert alice.send(Subscribe(1, [("#", SubOpts(1))])) == [Suback(1, [1])]
    alice.channel.handle_close()
    core.publish("secret/q", qos=1)     # queued in the offline session
    core.publish("public/q", qos=1)
    back = core.connect("a1", "alice", clean=False, expiry=300)
    assert topics(back.out() + back.backlog) == ["public/q"]
    assert core.denied == 1


def test_core_mountpoint_is_taken_off_before_the_check(tmp_path: Path) -> None:
    core = Core(tmp_path, "user bob\ntopic read public/#\n", mountpoint="m/")
    bob = core.connect("b1", "bob")
    assert bob.send(Subscribe(1, [("public/#", SubOpts(0))])) == [Suback(1, [0])]
    core.publish("m/public/x")
    assert topics(bob.out()) == ["public/x"]
    assert core.denied == 0


def test_core_retained_messages_are_checked(tmp_path: Path) -> None:
    core = Core(tmp_path, CORE_RULES)
    core.publish("secret/r", retain=True)
    core.publish("public/r", retain=True)
    alice = core.connect("a1", "alice")
    out = alice.send(Subscribe(1, [("#", SubOpts(0))]))
    assert out[0] == Suback(1, [0])
    assert topics(out) == ["public/r"]


def test_core_takeover_by_another_user_does_not_inherit_decisions(tmp_path: Path) -> None:
    core = Core(tmp_path, CORE_RULES)
    alice = core.connect("same", "alice")
    assert alice.send(Publish("alice/x", b"", 1, False, False, 1)) == [Puback(1, 0x10)]
    bob = core.connect("same", "bob")                    # takes the client id over
    assert bob.send(Publish("alice/x", b"", 1, False, False, 1)) == [Puback(1, NOT_AUTHORIZED)]
    alice.channel.handle_close()                         # the old connection ends late
    assert bob.send(Publish("alice/x", b"", 1, False, False, 2)) == [Puback(2, NOT_AUTHORIZED)]
    bob.channel.handle_close()
    assert "same" not in core.chain._cache                # forgotten when it left


def test_core_inflight_resent_on_resume_is_checked_for_the_new_user(tmp_path: Path) -> None:
    """alice leaves a QoS 1 message in flight; bob resumes the session (same client id,
    clean start 0): what he may not read is dropped, not resent with DUP."""
    core = Core(tmp_path, CORE_RULES)
    alice = core.connect("shared-id", "alice", clean=False, expiry=300)
    alice.send(Subscribe(1, [("#", SubOpts(1))]))
    alice.out()
    core.publish("alice/x", qos=1)
    core.publish("public/x", qos=1)
    assert topics(alice.out()) == ["alice/x", "public/x"]  # both in flight, not acked
    alice.channel.handle_close()
    bob = core.connect("shared-id", "bob", clean=False, expiry=300)
    resent = [p for p in bob.backlog if isinstance(p, Publish)]
    assert [(p.topic, p.dup) for p in resent] == [("public/x", True)]
    assert core.denied == 1
    assert list(bob.session.inflight) == [resent[0].packet_id]


def test_core_deny_action_disconnect_takes_back_the_packets_filters(tmp_path: Path) -> None:
    core = Core(tmp_path, CORE_RULES, deny_action="disconnect")
    alice = core.connect("a1", "alice", clean=False, expiry=300)
    out = alice.send(Subscribe(1, [("public/#", SubOpts(1)), ("secret/#", SubOpts(1))]))
    assert out == [Disconnect(NOT_AUTHORIZED, {"reason_string":
                                               "subscription to secret/# not authorized"})]
    assert alice.channel.closing
    assert alice.session.subscriptions == {}


# --- end to end -----------------------------------------------------------------------------------

E2E_ACL = """\
# anonymous clients: the public tree, read only
topic read public/#

user alice
topic readwrite alice/#
topic read #
topic deny secret/#

user bob
topic write public/#

user admin
topic readwrite #

# every client: its own tree; every user: its inbox
pattern readwrite clients/%c/#
pattern read users/${username}/inbox
"""


def acl_broker(path: Path, text: str, extra: str = "") -> Any:
    path.write_text(text)
    return checked_broker(f'[authz]\nacl_file = "{path}"\n{extra}')


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with acl_broker(tmp_path_factory.mktemp("acl") / "acl", E2E_ACL) as b:
        yield b


def ok_or_no_subscribers(rc: int) -> bool:
    return rc in (0, 0x10)


def test_publish_allowed_and_refused_mqtt5(clients: Clients, raws: Any,
                                           broker: BrokerProcess) -> None:
    u = uid()
    admin = clients(username="admin", version=5)
    assert admin.subscribe(f"+/{u}", 2) == [2]
    alice = clients(username="alice", version=5)
    assert alice.publish(f"public/{u}", b"no", 1) == NOT_AUTHORIZED      # PUBACK 0x87
    assert alice.publish(f"public/{u}", b"no", 0) == 0                  # silently dropped
    # QoS 2: PUBREC 0x87 ends the flow (paho would answer it with a PUBREL anyway)
    raw = raws(broker, 5)
    raw.connect(uid("raw-"), username="alice")
    raw.send(B.publish(f"secret/{u}", b"no", qos=2, packet_id=7, properties=B.EMPTY_PROPS))
    assert raw.expect(Pubrec) == Pubrec(7, NOT_AUTHORIZED)
    assert alice.publish(f"alice/{u}", b"yes", 1) == 0
    msg = admin.expect_message()
    assert (msg.topic, msg.payload) == (f"alice/{u}", b"yes")
    admin.assert_no_message()


def test_publish_refused_mqtt311_is_dropped(clients: Clients) -> None:
    u = uid()
    admin = clients(username="admin", version=5)
    assert admin.subscribe(f"+/{u}", 2) == [2]
    alice = clients(username="alice", version=4)
    assert alice.publish(f"public/{u}", b"no", 1) == 0    # 3.1.1 cannot say no: PUBACK 0
    assert alice.publish(f"public/{u}", b"no", 2) == 0
    assert alice.publish(f"alice/{u}", b"yes", 1) == 0
    assert admin.expect_message().payload == b"yes"
    admin.assert_no_message()


def test_subscribe_allowed_and_refused(clients: Clients) -> None:
    alice5 = clients(username="alice", version=5)
    assert alice5.subscribe([("alice/#", 1), ("secret/#", 1), ("secret/+/x", 0), ("#", 0),
                             ("$share/g/secret/a", 1), ("$SYS/#", 0)]) == [
        1, NOT_AUTHORIZED, NOT_AUTHORIZED, 0, NOT_AUTHORIZED, NOT_AUTHORIZED]
    alice4 = clients(username="alice", version=4)
    assert alice4.subscribe([("alice/#", 1), ("secret/#", 1)]) == [1, 0x80]
    bob = clients(username="bob", version=5)
    assert bob.subscribe("public/x", 0) == [NOT_AUTHORIZED]         # write only
    anon = clients(version=5)
    assert anon.subscribe([("public/#", 1), ("alice/#", 1)]) == [1, NOT_AUTHORIZED]


def test_delivery_refused_under_a_wildcard(clients: Clients, broker: BrokerProcess) -> None:
    u = uid()
    before = ctl_json(broker, "broker", "metrics")["metrics"]["delivery.dropped.not_authorized"]
    alice = clients(username="alice", version=5)
    assert alice.subscribe("#", 1) == [1]            # granted: "read #" covers it
    sub = MosquittoSub(broker, "-u", "alice", "-V", "mqttv5", "-t", f"+/{u}", "-q", "1")
    try:
        sub.wait_subscribed()
        admin = clients(username="admin", version=5)
        assert admin.publish(f"secret/{u}", b"hidden", 1) == 0
        assert admin.publish(f"public/{u}", b"end", 1) == 0
        seen = []
        while True:                                  # whatever else "#" brings, up to ours
            msg = alice.expect_message()
            seen.append(msg.topic)
            if msg.topic == f"public/{u}":
                break
        assert not [t for t in seen if t.startswith("secret/")], seen
        assert sub.message() == (f"public/{u}", 1, 0, "end")
    finally:
        sub.stop()
    after = ctl_json(broker, "broker", "metrics")["metrics"]["delivery.dropped.not_authorized"]
    assert after - before == 2                       # one for each subscriber


def test_retained_messages_are_filtered_the_same_way(clients: Clients) -> None:
    u = uid()
    admin = clients(username="admin", version=5)
    assert admin.publish(f"secret/{u}/r", b"hidden", 1, retain=True) == 0x10
    assert admin.publish(f"public/{u}/r", b"shown", 1, retain=True) == 0x10
    try:
        for version in (4, 5):
            alice = clients(username="alice", version=version)
            assert alice.subscribe(f"+/{u}/#", 1) == [1]
            msg = alice.expect_message()
            assert (msg.topic, msg.payload, msg.retain) == (f"public/{u}/r", b"shown", True)
            assert admin.publish(f"public/{u}/end", b"end", 1) == 0
            assert alice.expect_message().topic == f"public/{u}/end"
            alice.assert_no_message()
    finally:
        admin.publish(f"secret/{u}/r", b"", 1, retain=True)
        admin.publish(f"public/{u}/r", b"", 1, retain=True)


def test_patterns_end_to_end(clients: Clients) -> None:
    u = uid()
    dev = clients(f"dev-{u}", version=5)             # anonymous: patterns still apply
    assert dev.publish(f"clients/dev-{u}/up", b"x", 1) in (0, 0x10)
    assert dev.publish(f"clients/other-{u}/up", b"x", 1) == NOT_AUTHORIZED
    assert dev.subscribe([(f"clients/dev-{u}/#", 1), ("clients/+/up", 1)]) == [
        1, NOT_AUTHORIZED]
    bob = clients(username="bob", version=5)
    assert bob.subscribe([("users/bob/inbox", 1), ("users/alice/inbox", 1)]) == [
        1, NOT_AUTHORIZED]


def test_wills_need_the_right_to_publish(clients: Clients, broker: BrokerProcess) -> None:
    u = uid()
    admin = clients(username="admin", version=5)
    assert admin.subscribe([(f"public/{u}/will", 1), (f"clients/+/{u}", 1)]) == [1, 1]
    start = log_size(broker)
    # anonymous clients may only read public/...: that will is dropped at CONNACK
    denied = clients(f"w1-{u}", version=5,
                     will={"topic": f"public/{u}/will", "payload": b"no", "qos": 1})
    wait_log(broker, f"client w1-{u}: will to public/{u}/will not authorized", start=start)
    allowed = clients(f"w2-{u}", version=5,
                      will={"topic": f"clients/w2-{u}/{u}", "payload": b"yes", "qos": 1})
    denied.drop()
    allowed.drop()
    wait_log(broker, f"client w1-{u} disconnected", start=start)
    msg = admin.expect_message()
    assert (msg.topic, msg.payload) == (f"clients/w2-{u}/{u}", b"yes")
    assert admin.publish(f"public/{u}/will", b"sentinel", 1) == 0
    assert admin.expect_message().payload == b"sentinel"
    admin.assert_no_message()


def test_ctl_acl_check(clients: Clients, broker: BrokerProcess) -> None:
    r = ctl(broker, "acl", "check", "c1", "alice", "subscribe", "secret/+")
    assert r.code == 0, r
    lines = {k.strip(): v for k, v in (line.split(" : ", 1) for line in r.out.splitlines())}
    assert lines["result"] == "deny"
    assert lines["by"].endswith(":7: topic deny secret/#"), lines
    data = ctl_json(broker, "acl", "check", "c1", "alice", "publish", "alice/x")
    assert data["result"] == "allow"
    assert data["by"].endswith(":5: topic readwrite alice/#")
    assert data["connected"] is False
    # '' is a client without a user name
    data = ctl_json(broker, "acl", "check", "c2", "", "deliver", "public/a")
    assert (data["result"], data["username"]) == ("allow", None)
    assert data["by"].endswith(":2: topic read public/#")
    data = ctl_json(broker, "acl", "check", "c2", "", "publish", "public/a")
    assert data == {"result": "deny", "by": "no source matched: no_match = deny",
                    "clientid": "c2", "username": None, "action": "publish",
                    "topic": "public/a", "connected": False, "superuser": False}
    # a connected client is asked about as it is
    cid = uid("live-")
    clients(cid, username="bob", version=5)
    data = ctl_json(broker, "acl", "check", cid, "bob", "publish", "public/x")
    assert (data["result"], data["connected"]) == ("allow", True)
    # bad arguments: exit 2 with the usage
    r = ctl(broker, "acl", "check", "c1", "alice", "publish", "a/#")
    assert r.code == 2 and "not a valid topic name" in r.err and "acl check" in r.err, r
    r = ctl(broker, "acl", "check", "c1", "alice", "read", "a")
    assert r.code == 2 and "'read' is not one of publish, subscribe, deliver" in r.err, r
    r = ctl(broker, "acl", "check", "c1", "alice", "subscribe", "a/#/b")
    assert r.code == 2 and "not a valid topic filter" in r.err, r


def _passwd(path: Path, password: bytes) -> None:
    path.write_text(f"carol:{hash_password(password, iterations=1000).encode()}\n")
    path.chmod(0o600)


def test_ctl_acl_reload(tmp_path: Path) -> None:
    acl, passwd = tmp_path / "acl", tmp_path / "passwd"
    _passwd(passwd, b"pw")
    with acl_broker(acl, "user carol\ntopic read a/#\n",
                    f'[auth]\npassword_file = "{passwd}"\n') as b:
        made = Clients(b)
        try:
            carol = made(uid("carol-"), username="carol", password="pw", version=5)
            assert carol.publish("a/x", b"", 1) == NOT_AUTHORIZED
            acl.write_text("user carol\ntopic readwrite a/#\n")
            _passwd(passwd, b"pw2")
            r = ctl(b, "acl", "reload")
            assert r == Result(0, f"Reloaded password_file {passwd}\n"
                                  f"Reloaded acl_file {acl}\n", ""), r
            # her password changed in the file: the connection made with the old one ends
            # (as mosquitto does on reload)
            rc, _ = carol.wait_disconnected()
            assert rc == NOT_AUTHORIZED
            carol = made(uid("carol-"), username="carol", password="pw2", version=5)
            assert carol.publish("a/x", b"", 1) == 0x10
            # the new password, and no remembered login with the old one
            old = made(uid("carol-"), username="carol", password="pw", version=5,
                       connect=False)
            assert old.connect(expect_ok=False)[1].value == 0x86
            made(uid("carol-"), username="carol", password="pw2", version=5)
            assert ctl_json(b, "acl", "reload") == {
                "reloaded": [f"password_file {passwd}", f"acl_file {acl}"]}
            # broken edits change nothing and say why, every problem listed
            acl.write_text("user carol\ntopic readwrite a/#\ntopic writ b/#\n")
            passwd.write_text("carol:plain\n")
            r = ctl(b, "acl", "reload")
            assert r.code == 1, r
            assert r.err.startswith("mqttd ctl: reload failed; the files concerned keep their old "
                                    f"content:\n{passwd}:1: "), r
            assert r.err.endswith(f"\n{acl}:3: unknown access 'writ' (read, write, "
                                  "readwrite or deny; a topic with spaces needs the access "
                                  "word first)\n"), r
            assert carol.publish("a/y", b"", 1) == 0x10
            made(uid("carol-"), username="carol", password="pw2", version=5)
            assert ctl_json(b, "acl", "check", "x", "carol", "publish", "a/z")["by"] == (
                f"acl_file {acl}:2: topic readwrite a/#")
        finally:
            made.close_all()
        assert "reload asked by mqttd ctl failed" in b.log()


def test_deny_action_disconnect(tmp_path: Path) -> None:
    with acl_broker(tmp_path / "acl", "user dave\ntopic readwrite d/#\n",
                    'deny_action = "disconnect"\n') as b:
        made = Clients(b)
        try:
            ok = made(uid("d-"), username="dave", version=5)
            assert ok.publish("d/x", b"", 1) == 0x10         # allowed: nothing happens
            c5 = made(uid("d-"), username="dave", version=5)
            c5.publish("e/x", b"", 0, wait=False)
            rc, _ = c5.wait_disconnected()
            assert rc == NOT_AUTHORIZED
            c4 = made(uid("d-"), username="dave", version=4)
            c4.publish("e/x", b"", 1, wait=False)
            c4.wait_disconnected()                          # 3.1.1: the socket is closed
            # a refused filter: no SUBACK, and the packet's other filters are not kept
            cid = uid("d-")
            expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
            s = made(cid, username="dave", version=5, clean=False, properties=expiry)
            s.c.subscribe([("d/#", 1), ("e/#", 1)])
            rc, _ = s.wait_disconnected()
            assert rc == NOT_AUTHORIZED
            assert ctl_json(b, "subscriptions", "show", cid) == []
            assert ok.publish("d/y", b"", 1) == 0x10
        finally:
            made.close_all()
        log = b.log()
        assert "subscription to e/# not authorized" in log


# --- a malformed file stops the start and fails mqttd config check ------------------------------

def test_bad_file_at_start_and_in_config_check(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read a/#\nuser\ntopic read b/+x\n")
    config = tmp_path / "mqttd.toml"
    config.write_text(f'[authz]\nacl_file = "{acl}"\n'
                      '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    check = run_mqttd("config", "check", "-c", str(config))
    assert check.returncode == 2, check
    assert check.stderr.splitlines() == [
        f"{config}: {acl}:2: user: missing user name",
        f"{config}: {acl}:3: invalid topic filter 'b/+x': '+' must occupy a whole level"]
    start = run_mqttd("start", "-c", str(config), "--data-dir", str(tmp_path / "data"),
                      timeout=WAIT * 4)
    output = start.stdout + start.stderr
    assert start.returncode != 0, output
    assert f"{acl}:2: user: missing user name" in output
    assert "Traceback" not in output
    acl.unlink()
    check = run_mqttd("config", "check", "-c", str(config))
    assert check.returncode == 2
    assert f"authz.acl_file: cannot read {acl}: No such file or directory" in check.stderr


# --- management without a source --------------------------------------------------------------

def test_mgmt_without_sources() -> None:
    world = World()
    access = build_access(Settings())
    acl = Acl(lambda: access, world.registry)
    with pytest.raises(Unavailable):
        acl.reload(by="test")
    data = acl.check("c", None, "publish", "a")
    assert (data["result"], data["by"]) == ("allow", "no authorization source is configured")
    with pytest.raises(InvalidArgument):
        acl.check("c", None, "publish", "")
    with pytest.raises(Unavailable):
        Acl(lambda: None, world.registry).check("c", None, "publish", "a")
    access.close()
