"""The built-in user table (``[[auth.providers]] type = "builtin"``, managed with
``mqttd ctl users``) against real daemons with real clients: add, list, passwd, del, the
superuser flag, and the table surviving kill -9 (a change is answered once committed)."""

from __future__ import annotations

import json
import signal
from typing import Any

from support import uid
from support.clients import Client
from support.process import BrokerProcess
from test_ctl_store import ctl, ok

from mqttd.access.password_file import hash_password
from mqttd.access.users import BuiltinUsers, UserTable
from mqttd.core.services import ClientInfo

pytest_plugins = ["support.fixtures"]

CONFIG = """
[[auth.providers]]
type = "builtin"

[authz]
no_match = "deny"

[[authz.sources]]
type = "acl_file"
path = "{acl}"
"""


def _broker(tmp_path: Any, extra_args: list[str] | None = None) -> BrokerProcess:
    acl = tmp_path / "acl"
    if not acl.exists():
        acl.write_text("user alice\ntopic readwrite alice/#\n")
    config = CONFIG.format(acl=acl) + '\n[zones.default]\nallow_anonymous = false\n'
    return BrokerProcess(config, extra_args=extra_args)


def _connect(b: BrokerProcess, username: str, password: str, version: int = 5) -> int:
    """The CONNACK reason code (MQTT 5) or return code (3.1.1) for these credentials."""
    c = Client(b, uid("u-"), version=version, username=username, password=password)
    try:
        _flags, rc, _props = c.connect(expect_ok=False)
        return int(rc.value) if hasattr(rc, "value") else int(rc)
    finally:
        c.close()


def test_users_added_listed_changed_and_deleted_decide_who_connects(tmp_path: Any) -> None:
    b = _broker(tmp_path)
    try:
        assert _connect(b, "alice", "s3cret") == 0x86  # nobody yet
        assert "Added user alice" in ok(b, "users", "add", "alice", "s3cret")
        assert _connect(b, "alice", "s3cret") == 0
        assert _connect(b, "alice", "wrong") == 0x86
        # 3.1.1's return code 4 (bad user name or password), which paho reports as 0x86.
        assert _connect(b, "alice", "wrong", version=4) == 0x86
        assert _connect(b, "bob", "s3cret") == 0x86
        r = ctl(b, "users", "add", "alice", "again")
        assert r.code != 0 and "exists" in r.err, r
        ok(b, "users", "add", "root", "toor", "--superuser")
        rows = json.loads(ok(b, "--json", "users", "list"))
        assert rows == [{"username": "alice", "is_superuser": False},
                        {"username": "root", "is_superuser": True}], rows
        table = ok(b, "users", "list")
        assert "alice" in table and "root" in table and "$7$" not in table
        # A superuser bypasses authorization: root may publish where the ACL allows nobody.
        root = Client(b, uid("root-"), version=5, username="root", password="toor")
        alice = Client(b, uid("alice-"), version=5, username="alice", password="s3cret")
        try:
            root.connect()
            alice.connect()
            # Allowed (0x10: no subscriber has it) for root; refused (0x87) for alice.
            assert root.publish("elsewhere/x", b"x", 1) == 0x10
            assert alice.publish("elsewhere/x", b"x", 1) == 0x87
        finally:
            root.close()
            alice.close()
        ok(b, "users", "passwd", "alice", "n3w")
        assert _connect(b, "alice", "s3cret") == 0x86
        assert _connect(b, "alice", "n3w") == 0
        ok(b, "users", "del", "alice")
        assert _connect(b, "alice", "n3w") == 0x86
        r = ctl(b, "users", "del", "alice")
        assert r.code != 0, r
        r = ctl(b, "users", "add", "", "x")
        assert r.code != 0, r
        assert "n3w" not in b.log() and "s3cret" not in b.log()  # secrets are never logged
    finally:
        b.stop()
        b.cleanup()


def test_the_user_table_survives_kill_9(tmp_path: Any) -> None:
    """``users add`` answers once the user is committed: killed right after, the next start
    has it."""
    b = _broker(tmp_path)
    data_dir = b.data_dir
    try:
        ok(b, "users", "add", "alice", "s3cret")
        ok(b, "users", "add", "carol", "pw", "--superuser")
        ok(b, "users", "del", "carol")
        b.stop(signal.SIGKILL)
        b2 = _broker(tmp_path, extra_args=["--data-dir", str(data_dir)])
        b2.data_dir = data_dir
        try:
            assert _connect(b2, "alice", "s3cret") == 0
            assert _connect(b2, "carol", "pw") == 0x86
            rows = json.loads(ok(b2, "--json", "users", "list"))
            assert rows == [{"username": "alice", "is_superuser": False}], rows
        finally:
            b2.stop()
            b2.cleanup()
    finally:
        b.stop()
        b.cleanup()


def test_builtin_needs_the_store(tmp_path: Any) -> None:
    """With durability off there is nowhere to keep the users: the start is refused with
    one line naming the provider."""
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n")
    config = CONFIG.format(acl=acl) + '\n[store]\ndurability = "off"\n'
    try:
        b = BrokerProcess(config)
    except RuntimeError as err:
        assert "auth.providers[0]: type builtin keeps its users in the store" in str(err)
    else:
        b.stop()
        b.cleanup()
        raise AssertionError("the broker started without a store for its user table")


def test_password_from_standard_input(tmp_path: Any, monkeypatch: Any) -> None:
    """``--password-stdin``: the password is read from the first line of standard input,
    never an argument (which every user of the machine sees in the process list)."""
    import io

    b = _broker(tmp_path)
    try:
        monkeypatch.setattr("sys.stdin", io.StringIO("fr0m-stdin\n"))
        assert "Added user dave" in ok(b, "users", "add", "dave", "--password-stdin")
        assert _connect(b, "dave", "fr0m-stdin") == 0
        monkeypatch.setattr("sys.stdin", io.StringIO("n3xt\n"))
        ok(b, "users", "passwd", "dave", "--password-stdin")
        assert _connect(b, "dave", "n3xt") == 0
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        r = ctl(b, "users", "add", "erin", "--password-stdin")
        assert r.code == 2 and "no password on standard input" in r.err, r
    finally:
        b.stop()
        b.cleanup()


def test_clients_of_a_user_whose_password_changes_or_who_is_deleted_are_disconnected(
        tmp_path: Any) -> None:
    """As mosquitto on reload: a connection made with credentials that no longer hold ends
    (MQTT 5: DISCONNECT 0x87); other users' connections stay."""
    b = _broker(tmp_path)
    try:
        ok(b, "users", "add", "alice", "first")
        ok(b, "users", "add", "bob", "other")
        alice = Client(b, uid("a-"), version=5, username="alice", password="first")
        alice.connect()
        bob = Client(b, uid("b-"), version=5, username="bob", password="other")
        bob.connect()
        ok(b, "users", "passwd", "alice", "second")
        rc, _ = alice.wait_disconnected()
        assert int(rc.value) == 0x87, rc
        assert _connect(b, "alice", "first") == 0x86
        again = Client(b, uid("a2-"), version=5, username="alice", password="second")
        again.connect()
        ok(b, "users", "del", "alice")
        rc, _ = again.wait_disconnected()
        assert int(rc.value) == 0x87, rc
        assert "because its user was deleted" in b.log()
        assert bob.disconnected is None
        bob.subscribe("alice/x", 0)  # still served
        for c in (alice, again, bob):
            c.close()
    finally:
        b.stop()
        b.cleanup()


def test_checks_asked_together_get_the_verdicts_of_checks_asked_alone() -> None:
    """The provider's check_many (what a hashing thread calls with the checks queued
    together): the verdicts of check, for right and wrong passwords at two iteration
    counts, a superuser, no password, unknown users, no user name, no table."""
    provider = BuiltinUsers()
    provider.table = UserTable({
        "a": (hash_password(b"pa", 60).encode(), False),
        "b": (hash_password(b"pb", 60).encode(), True),
        "c": (hash_password(b"pc", 30).encode(), False)})
    asked = [("a", b"pa"), ("b", b"pb"), ("c", b"pc"), ("a", b"pb"), ("c", None),
             ("nobody", b"x"), ("nobody", None), (None, None), ("b", b"pb"), ("c", b"")]
    clients = [ClientInfo(f"c{k}", user, "127.0.0.1:1") for k, (user, _) in enumerate(asked)]
    passwords = [pw for _, pw in asked]

    def verdict(r: Any) -> tuple[int, bool, bool] | None:
        return None if r is None else (r.code, r.superuser, r.credential is not None)

    alone = [verdict(provider.check(c, p)) for c, p in zip(clients, passwords, strict=True)]
    assert alone == [(0, False, True), (0, True, True), (0, False, True), (0x86, False, False),
                     (0x86, False, False), None, None, None, (0, True, True),
                     (0x86, False, False)]
    for n in (2, 5, len(asked)):
        assert [verdict(r) for r in provider.check_many(clients[:n], passwords[:n])] \
            == alone[:n]
    provider.table = None
    assert provider.check_many(clients[:2], passwords[:2]) == [None, None]
