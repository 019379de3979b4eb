"""A listener's own ``password_file`` and ``acl_file`` (mosquitto's per-listener settings):
real brokers with two listeners, password files written by ``mqttd passwd``, real paho
clients.

What is checked: each listener's password file lets in its own users only; its ACL file
holds its clients (PUBACK 0x87 outside it) and nobody else's, and a listener without one
is not held by another listener's; a bad listener file stops ``mqttd config check`` with
the listener's key; a listener beyond loopback with its own password file needs no
``allow_anonymous``; ``mqttd ctl conf reload`` applies an acl_file added to a listener
without restarting it (its client stays connected).
"""

from __future__ import annotations

import json
from pathlib import Path

from support import uid
from support.clients import Client
from support.process import BrokerProcess, checked_broker, run_mqttd

NOT_AUTHORIZED = 0x87
PASSED = (0, 0x10)


def passwd(path: Path, user: str, password: str) -> None:
    args = ["passwd", "-b", str(path), user, password]
    done = run_mqttd(*(args[:1] + (["-c"] if not path.exists() else []) + args[1:]))
    assert done.returncode == 0, done


def config(tmp: Path, extra_b: str = "") -> str:
    return f"""
[listeners.a]
bind = "127.0.0.1"
port = 0
allow_anonymous = false
password_file = "{tmp / 'a.passwd'}"
acl_file = "{tmp / 'a.acl'}"

[listeners.b]
bind = "127.0.0.1"
port = 0
allow_anonymous = false
password_file = "{tmp / 'b.passwd'}"
{extra_b}
"""


def files(tmp: Path) -> None:
    passwd(tmp / "a.passwd", "alice", "pw-a")
    passwd(tmp / "b.passwd", "bob", "pw-b")
    (tmp / "a.acl").write_text("user alice\ntopic readwrite a/#\n")
    (tmp / "b.acl").write_text("user bob\ntopic readwrite b/own\n")


def client(b: BrokerProcess, listener: str, user: str, password: str) -> Client:
    return Client(b, uid("l-"), version=5, username=user, password=password,
                  port=b.ports[listener])


def connack(b: BrokerProcess, listener: str, user: str, password: str) -> int:
    c = client(b, listener, user, password)
    try:
        _, rc, _ = c.connect(expect_ok=False)
        return int(rc.value)
    finally:
        c.close()


def test_each_listener_has_its_own_users_and_acl(tmp_path: Path) -> None:
    files(tmp_path)
    with checked_broker(config(tmp_path)) as b:
        alice = client(b, "a", "alice", "pw-a")
        alice.connect()
        bob = client(b, "b", "bob", "pw-b")
        bob.connect()
        try:
            assert alice.publish("a/1", b"x", 1) in PASSED
            assert alice.publish("b/1", b"x", 1) == NOT_AUTHORIZED  # a's ACL holds her
            # listener b has no ACL file: a's does not hold its clients
            assert bob.publish("b/1", b"x", 1) in PASSED
            assert bob.publish("a/1", b"x", 1) in PASSED
        finally:
            alice.close()
            bob.close()
        # each password file is asked on its own listener only
        assert connack(b, "b", "alice", "pw-a") != 0
        assert connack(b, "a", "bob", "pw-b") != 0
        assert connack(b, "a", "alice", "wrong") != 0


def test_ctl_conf_reload_adds_an_acl_file_to_a_running_listener(tmp_path: Path) -> None:
    files(tmp_path)
    with checked_broker(config(tmp_path)) as b:
        bob = client(b, "b", "bob", "pw-b")
        bob.connect()
        try:
            assert bob.publish("b/1", b"x", 1) in PASSED
            b.config_path.write_text(config(tmp_path, f'acl_file = "{tmp_path / "b.acl"}"'))
            done = run_mqttd("ctl", "--data-dir", str(b.data_dir), "--json", "conf", "reload")
            assert done.returncode == 0, (done.stdout, done.stderr)
            report = json.loads(done.stdout)
            applied = {row["key"]: row["change"] for row in report["applied"]}
            assert "listeners' password_file/acl_file" in applied, report
            assert "acl_file" in applied["listeners.b"], report
            assert "restarted" not in applied["listeners.b"], report
            # the same connection, now held by b's ACL
            assert bob.publish("b/own", b"x", 1) in PASSED
            assert bob.publish("b/1", b"x", 1) == NOT_AUTHORIZED
            assert bob.disconnected is None
        finally:
            bob.close()


def test_listener_files_in_config_check(tmp_path: Path) -> None:
    files(tmp_path)
    cfg = tmp_path / "mqttd.toml"
    # beyond loopback with its own password file: no allow_anonymous needed
    cfg.write_text(f"""
[listeners.public]
bind = "0.0.0.0"
port = 0
password_file = "{tmp_path / 'a.passwd'}"
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 0, done
    cfg.write_text(f"""
[listeners.public]
bind = "0.0.0.0"
port = 0
password_file = "{tmp_path / 'missing.passwd'}"
acl_file = "{tmp_path / 'missing.acl'}"
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    for text in (f"{tmp_path / 'missing.passwd'}: cannot read the password file",
                 f"listeners.public.acl_file: cannot read {tmp_path / 'missing.acl'}"):
        assert any(text in ln for ln in lines), (text, done.stderr)
    assert "Traceback" not in done.stderr
    cfg.write_text('[listeners.open]\nbind = "127.0.0.1"\nport = 0\npassword_file = 7\n')
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    assert "listeners.open.password_file: expected a string, got an integer" in done.stderr
