"""The password file (mosquitto's format) and ``mqttd passwd``.

Files are made by Debian's ``mosquitto_passwd`` and by ``mqttd passwd`` and checked both
ways: mqttd reads what mosquitto_passwd writes, a real ``mosquitto`` broker accepts what
``mqttd passwd`` writes. Clients are real (paho-mqtt, ``mosquitto_pub``, raw sockets), every
broker runs on 127.0.0.1 and is stopped by its PID. Also here: the start (and ``mqttd
config check``) refusing a bad file with FILE:LINE, the secure default for listeners beyond
loopback (through ``mqttd config check`` only: nothing binds beyond loopback), hashing off
the event loop during a connect storm, and the cache of successful checks.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from support import WAIT, builder as B, uid
from support.clients import Client
from support.process import MQTTD, BrokerProcess, checked_broker, run_mqttd, wait_log
from support.raw import RawClient

from mqttd.access.authn import AccessError
from mqttd.access.password_file import (
    DEFAULT_ITERATIONS,
    PasswordFile,
    hash_password,
    parse_hash,
    read_password_file,
)
from mqttd.cli import passwd as passwd_cli
from mqttd.core.services import AuthResult, ClientInfo
from mqttd.mqtt.packets import Connack, Pingresp

pytest_plugins = ["support.fixtures"]

MOSQUITTO = "/usr/sbin/mosquitto"
needs_mosquitto_passwd = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                                            reason="Debian's mosquitto_passwd is not installed")


def mosquitto_passwd(*args: str) -> None:
    done = subprocess.run(["mosquitto_passwd", *args], capture_output=True, text=True,
                          timeout=WAIT * 2, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)


def mqttd_passwd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``python -m mqttd passwd``; never raises on the exit code."""
    return subprocess.run([*MQTTD, "passwd", *args], capture_output=True, text=True,
                          input=stdin, timeout=60, check=False)


def client(username: str | None) -> ClientInfo:
    return ClientInfo(uid("c-"), username, "127.0.0.1:50000")


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


# --- the file format -----------------------------------------------------------------------

@needs_mosquitto_passwd
def test_reads_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Both of mosquitto's formats: $7$ (PBKDF2-SHA512, mosquitto 2's default) and $6$
    (salted SHA-512, ``-H sha512``); every entry re-encodes to the exact text it was read
    from."""
    path = tmp_path / "pw"
    mosquitto_passwd("-c", "-b", str(path), "alice", "secret")
    mosquitto_passwd("-b", str(path), "bob", "pa:ss wörd")  # a colon and UTF-8
    mosquitto_passwd("-H", "sha512", "-b", str(path), "eve", "old style")
    users = read_password_file(str(path))
    assert sorted(users) == ["alice", "bob", "eve"]
    assert (users["alice"].scheme, users["bob"].scheme, users["eve"].scheme) == ("7", "7", "6")
    assert users["alice"].iterations >= 1 and users["eve"].iterations == 0
    assert users["alice"].verify(b"secret") and not users["alice"].verify(b"Secret")
    assert users["bob"].verify("pa:ss wörd".encode()) and not users["bob"].verify(b"pa")
    assert users["eve"].verify(b"old style") and not users["eve"].verify(b"old")
    for line in path.read_text().splitlines():
        user, field = line.split(":", 1)
        assert users[user].encode() == field


def test_hash_password_round_trip() -> None:
    h = hash_password(b"pw", 1000)
    assert h.encode().startswith("$7$1000$")
    assert parse_hash(h.encode()) == h
    assert h.verify(b"pw") and not h.verify(b"pw ")
    assert hash_password(b"pw", 1000).salt != h.salt  # a fresh salt each time
    assert DEFAULT_ITERATIONS == passwd_cli.DEFAULT_ITERATIONS == 210_000


GOOD7 = hash_password(b"x", 1).encode()
SALT, DIGEST = GOOD7.split("$")[3:]

BAD_LINES = [
    ("nocolon", "expected user:hash"),
    (f":{GOOD7}", "empty user name"),
    ("u:plaintext-secret", "not a password hash"),
    ("u:$9$x$y", "unknown hash format (mqttd reads"),
    (f"u:$2b$10${SALT}", "unknown hash format $2b$"),
    (f"u:$7$many${SALT}${DIGEST}", "iteration count of a $7$ hash is not a number"),
    (f"u:$7$0${SALT}${DIGEST}", "iteration count of a $7$ hash must be 1"),
    (f"u:$7$1${SALT}", "a $7$ hash is $7$ITERATIONS$SALT$HASH"),
    (f"u:$7$1$AAAA${DIGEST}", "the salt is 3 bytes, not 12"),
    (f"u:$7$1$!!!!${DIGEST}", "the salt is not base64"),
    (f"u:$7$1${SALT}$AAAA", "the hash is 3 bytes, not 64"),
    (f"u:$6${SALT}", "a $6$ hash is $6$SALT$HASH"),
]


@pytest.mark.parametrize("line, what", BAD_LINES, ids=[w for _, w in BAD_LINES])
def test_a_bad_line_is_reported_with_file_and_line(tmp_path: Path, line: str, what: str
                                                   ) -> None:
    path = tmp_path / "pw"
    path.write_text(f"# users\n\nok:{GOOD7}\n{line}\n")
    with pytest.raises(AccessError) as err:
        read_password_file(str(path))
    assert len(err.value.errors) == 1, err.value.errors
    assert err.value.errors[0].startswith(f"{path}:4: "), err.value.errors
    assert what in err.value.errors[0]
    assert "plaintext-secret" not in err.value.errors[0]  # a password is never echoed


def test_every_bad_line_is_listed_and_duplicates_refused(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(f"a:{GOOD7}\nbad\na:{GOOD7}\n".encode() + b"b:\xff\n")
    with pytest.raises(AccessError) as err:
        read_password_file(str(path))
    assert err.value.errors == [f"{path}:2: expected user:hash (no ':' on the line)",
                                f"{path}:3: user 'a' is already on line 1",
                                f"{path}:4: not UTF-8"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AccessError) as err:
        read_password_file(str(tmp_path / "nope"))
    assert err.value.errors == [f"{tmp_path / 'nope'}: cannot read the password file: "
                                "No such file or directory"]


def test_provider_verdicts_and_reload(tmp_path: Path) -> None:
    """Right password: allow; wrong or none: deny 0x86; no user name or a user the file does
    not list: ignore (None). A bad file on reload keeps the old table."""
    path = tmp_path / "pw"
    path.write_text(f"alice:{hash_password(b'secret', 1000).encode()}\n")
    provider = PasswordFile(str(path))
    assert provider.kind == "blocking"
    entry = provider.entry("alice")
    assert provider.check(client("alice"), b"secret") == AuthResult(credential=(provider, entry))
    assert provider.check(client("alice"), b"wrong") == AuthResult(0x86, reason="wrong password")
    assert provider.check(client("alice"), None) == AuthResult(0x86, reason="no password")
    assert provider.check(client("mallory"), b"secret") is None
    assert provider.check(client(None), b"secret") is None
    path.write_text(f"alice:{hash_password(b'new', 1000).encode()}\nbroken\n")
    with pytest.raises(AccessError) as err:
        provider.reload()
    assert err.value.errors == [f"{path}:2: expected user:hash (no ':' on the line)"]
    assert provider.check(client("alice"), b"secret").code == 0  # type: ignore[union-attr]
    path.write_text(f"alice:{hash_password(b'new', 1000).encode()}\n")
    provider.reload()
    assert provider.check(client("alice"), b"new") == AuthResult(
        credential=(provider, provider.entry("alice")))
    assert provider.entry("alice") != entry
    assert provider.check(client("alice"), b"secret").code == 0x86  # type: ignore[union-attr]


# --- end to end: a file from mosquitto_passwd in a real mqttd ------------------------------

@pytest.fixture(scope="module")
def pwfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("Debian's mosquitto_passwd is not installed")
    path = tmp_path_factory.mktemp("pw") / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "secret")
    mosquitto_passwd("-H", "sha512", "-b", str(path), "eve", "old style")
    return path


@pytest.fixture(scope="module")
def broker(pwfile: Path) -> Iterator[BrokerProcess]:
    """Whom nobody vouched for: ``default`` refuses, ``open`` lets in anonymously (the
    listener's key); ``zone_closed`` and ``zone_open`` leave it to their zone's key."""
    config = f"""
[auth]
password_file = "{pwfile}"

[zones.strict]
allow_anonymous = false

[listeners.zone_closed]
bind = "127.0.0.1"
port = 0
zone = "strict"

[listeners.zone_open]
bind = "127.0.0.1"
port = 0

[listeners.default]
bind = "127.0.0.1"
port = 0
allow_anonymous = false

[listeners.open]
bind = "127.0.0.1"
port = 0
allow_anonymous = true
"""
    with checked_broker(config) as b:
        yield b


@pytest.mark.parametrize("version", [5, 4])
def test_paho_with_the_right_password_gets_in(clients, broker, version: int) -> None:
    topic = uid("pw/")
    alice = clients(version=version, username="alice", password="secret")
    alice.subscribe(topic, 1)
    eve = clients(version=version, username="eve", password="old style")  # $6$
    assert eve.publish(topic, b"hello", 1) == 0
    assert alice.expect_message().payload == b"hello"


@pytest.mark.parametrize("version", [5, 4])
def test_paho_with_a_wrong_password_is_refused(clients, broker, version: int) -> None:
    for port in (broker.ports["default"], broker.ports["open"]):  # the file decided
        c = clients(version=version, username="alice", password="wrong", connect=False,
                    port=port)
        _, rc, _ = c.connect(expect_ok=False)
        assert rc == 0x86, rc  # paho shows 3.1.1's 4 in 5.0 numbering too


@pytest.mark.parametrize("version, wrong, anonymous", [(5, 0x86, 0x87), (4, 4, 5), (3, 4, 5)])
def test_raw_codes_and_allow_anonymous(raws, broker, version: int, wrong: int,
                                       anonymous: int) -> None:
    """The exact CONNACK codes. A client with no user name is left to the listener's
    allow_anonymous; a user name the file does not list is refused everywhere (admitted, it
    would carry that user's ACL rights without proof; mosquitto refuses it too)."""
    closed, open_ = broker.ports["default"], broker.ports["open"]
    zone_closed, zone_open = broker.ports["zone_closed"], broker.ports["zone_open"]
    cases = [
        (closed, "alice", b"secret", 0),
        (closed, "alice", b"wrong", wrong),
        (closed, "alice", None, wrong) if version == 5 else None,  # 3.x: no password alone
        (closed, "mallory", b"secret", wrong),  # unknown user: nobody vouched, refused
        (closed, None, None, anonymous),
        (open_, "mallory", b"secret", wrong),  # unknown user: refused even here
        (open_, None, None, 0),
        (open_, "alice", b"wrong", wrong),  # a listed user is never anonymous
        (zone_closed, "alice", b"secret", 0),  # the zone's allow_anonymous = false
        (zone_closed, "mallory", b"secret", wrong),
        (zone_closed, None, None, anonymous),
        (zone_open, "mallory", b"secret", wrong),  # likewise under the zone's true
        (zone_open, None, None, 0),
        (zone_open, "eve", b"wrong", wrong),
    ]
    for case in filter(None, cases):
        port, username, password, rc = case
        r = raws(broker, version, port=port)
        r.send(B.connect(uid(), level=version, username=username, password=password))
        ack = r.expect(Connack)
        assert ack.reason_code == rc, (case, ack)


@pytest.mark.parametrize("version, wrong", [("mqttv5", 134), ("mqttv311", 4)])
def test_mosquitto_pub_user_and_password(broker, version: str, wrong: int) -> None:
    def pub(port: int, *auth: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port),
                               "-V", version, "-t", uid("pw/"), "-m", "x", *auth],
                              capture_output=True, text=True, timeout=WAIT * 2, check=False)

    closed, open_ = broker.ports["default"], broker.ports["open"]
    assert pub(closed, "-u", "alice", "-P", "secret").returncode == 0
    assert pub(closed, "-u", "eve", "-P", "old style").returncode == 0
    assert pub(closed, "-u", "alice", "-P", "wrong").returncode == wrong
    assert pub(closed, "-u", "mallory", "-P", "x").returncode == wrong
    assert pub(open_, "-u", "mallory", "-P", "x").returncode == wrong  # unknown: refused
    assert pub(open_).returncode == 0  # anonymous: allow_anonymous = true lets it in
    assert pub(open_, "-u", "alice", "-P", "wrong").returncode == wrong


# --- a bad file stops the start; mqttd config check says the same --------------------------

def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mqttd.toml"
    path.write_text(body)
    return path


def test_bad_file_stops_the_start_and_config_check(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    pw.write_text(f"# users\nalice:{GOOD7}\nbob:plain-secret\ncarol\n")
    cfg = _config(tmp_path, f'[auth]\npassword_file = "{pw}"\n\n[listeners.default]\n'
                            'bind = "127.0.0.1"\nport = 0\n')
    started = run_mqttd("start", "-c", str(cfg), "--data-dir", str(tmp_path / "data"))
    assert started.returncode != 0
    no_traceback(started)
    assert f"{pw}:3: not a password hash" in started.stderr
    assert f"{pw}:4: expected user:hash" in started.stderr
    assert "plain-secret" not in started.stderr
    checked = run_mqttd("config", "check", "-c", str(cfg))
    assert checked.returncode == 2
    no_traceback(checked)
    assert checked.stderr.splitlines() == [
        f"{cfg}: {pw}:3: not a password hash (plain text? `mqttd passwd -U FILE` hashes a "
        "plain user:password file)",
        f"{cfg}: {pw}:4: expected user:hash (no ':' on the line)"]
    pw.unlink()
    missing = run_mqttd("config", "check", "-c", str(cfg))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"{cfg}: {pw}: cannot read the password file: No such file or directory"]


def test_unknown_provider_option(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    pw.write_text(f"alice:{GOOD7}\n")
    cfg = _config(tmp_path, f'[[auth.providers]]\ntype = "password_file"\npath = "{pw}"\n'
                            'hash = "md5"\n\n[[auth.providers]]\ntype = "password_file"\n')
    checked = run_mqttd("config", "check", "-c", str(cfg))
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        f"{cfg}: auth.providers[0].hash: unknown option (password_file takes: path)",
        f"{cfg}: auth.providers[1].path: missing (the password file to read)"]


# --- the secure default, through mqttd config check only (nothing binds beyond loopback) ---

@pytest.mark.parametrize("extra, ok", [
    ("", False),
    ("password_file", True),
    ("allow_anonymous = true", True),
    ("allow_anonymous = false", False),
])
def test_listener_beyond_loopback_needs_a_provider(tmp_path: Path, extra: str, ok: bool
                                                   ) -> None:
    pw = tmp_path / "passwd"
    pw.write_text(f"alice:{GOOD7}\n")
    auth = f'[auth]\npassword_file = "{pw}"\n\n' if extra == "password_file" else ""
    listener_key = extra if extra.startswith("allow_anonymous") else ""
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: even a start could not bind.
    cfg = _config(tmp_path, f'{auth}[listeners.local]\nbind = "127.0.0.1"\nport = 1883\n\n'
                            f'[listeners.public]\nbind = "192.0.2.1"\nport = 1883\n'
                            f'{listener_key}\n')
    checked = run_mqttd("config", "check", "-c", str(cfg))
    no_traceback(checked)
    if ok:
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith(f"{cfg}: ok")
    else:
        assert checked.returncode == 2
        lines = checked.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"{cfg}: listeners.public.allow_anonymous: the listener binds 192.0.2.1"), lines


# --- mqttd passwd ---------------------------------------------------------------------------

def test_passwd_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    done = mqttd_passwd("-c", "-I", "1000", "-b", str(path), "alice", "secret")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Other lines stay as they are: a comment, a user the tool does not touch.
    path.write_text(f"# the users\n{path.read_text()}\nkeep:{GOOD7}")  # no final newline
    for args in (["-I", "1000", "-b", str(path), "bob", "pa:ss wörd"],
                 ["-I", "2000", "-b", str(path), "alice", "changed"],
                 ["-b", str(path), "carol", "c"]):
        done = mqttd_passwd(*args)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0] == "# the users" and lines[1].startswith("alice:$7$2000$")  # in place
    assert lines[2:4] == ["", f"keep:{GOOD7}"]
    users = read_password_file(str(path))
    assert sorted(users) == ["alice", "bob", "carol", "keep"]
    assert users["alice"].verify(b"changed") and not users["alice"].verify(b"secret")
    assert users["bob"].verify("pa:ss wörd".encode()) and users["bob"].iterations == 1000
    assert users["carol"].iterations == DEFAULT_ITERATIONS and users["carol"].verify(b"c")
    done = mqttd_passwd("-D", str(path), "bob")
    assert done.returncode == 0, done.stderr
    assert sorted(read_password_file(str(path))) == ["alice", "carol", "keep"]
    # -c overwrites
    done = mqttd_passwd("-c", "-I", "1000", "-b", str(path), "dave", "d")
    assert done.returncode == 0, done.stderr
    assert sorted(read_password_file(str(path))) == ["dave"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mqttd-passwd-")]


def test_passwd_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    link = tmp_path / "link"
    assert mqttd_passwd("-c", "-I", "1", "-b", str(real), "a", "a").returncode == 0
    link.symlink_to(real)
    assert mqttd_passwd("-I", "1", "-b", str(link), "b", "b").returncode == 0
    assert link.is_symlink() and sorted(read_password_file(str(real))) == ["a", "b"]


def test_passwd_converts_a_plain_file(tmp_path: Path) -> None:
    """-U hashes every plain user:password line in place; hashes already there stay (a
    second hashing would lock the user out), comments and blank lines too."""
    path = tmp_path / "passwd"
    kept = hash_password(b"k", 1).encode()
    path.write_text(f"# plain\ncarol:plain\n\ndave:x y:z\nkeep:{kept}\n")
    path.chmod(0o644)
    done = mqttd_passwd("-U", "-I", "1000", str(path))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0] == "# plain" and lines[2] == "" and lines[4] == f"keep:{kept}"
    users = read_password_file(str(path))
    assert users["carol"].verify(b"plain") and users["dave"].verify(b"x y:z")
    assert users["carol"].iterations == 1000
    # Running it again changes nothing.
    before = path.read_text()
    assert mqttd_passwd("-U", str(path)).returncode == 0
    assert path.read_text() == before


def test_passwd_convert_refuses_a_bad_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    text = f"ok:fine\nnocolon\nu:$7$1$AAAA${DIGEST}\nempty:\n"
    path.write_text(text)
    done = mqttd_passwd("-U", str(path))
    assert done.returncode == 1
    no_traceback(done)
    assert done.stderr.splitlines() == [
        f"mqttd passwd: {path}:2: expected user:password",
        f"mqttd passwd: {path}:3: looks like a damaged hash (the salt is 3 bytes, not 12)",
        f"mqttd passwd: {path}:4: empty password for 'empty'",
        f"mqttd passwd: {path}: nothing written"]
    assert path.read_text() == text


@pytest.mark.parametrize("args, why", [
    (["-c"], "expected FILE USER"),
    (["F"], "expected FILE USER"),
    (["-b", "F", "u"], "-b takes FILE USER PASSWORD"),
    (["-D", "F"], "-D takes FILE USER"),
    (["-D", "-c", "F", "u"], "-D cannot be combined with -b or -c"),
    (["-U", "-b", "F"], "-U cannot be combined with -b, -c or -D"),
    (["-U", "F", "u"], "-U takes FILE"),
    (["-b", "F", "a:b", "p"], "the user name contains ':'"),
    (["-b", "F", "#a", "p"], "the user name starts with '#'"),
    (["-b", "F", " a", "p"], "the user name starts or ends with a blank"),
    (["-b", "F", "", "p"], "the user name is empty"),
    (["-b", "F", "a", ""], "the password is empty"),
])
def test_passwd_usage_errors_exit_2(tmp_path: Path, args: list[str], why: str) -> None:
    args = [str(tmp_path / "F") if a == "F" else a for a in args]
    done = mqttd_passwd(*args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    no_traceback(done)
    assert why in done.stderr
    assert not (tmp_path / "F").exists()


def test_passwd_failures_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    done = mqttd_passwd("-b", str(path), "a", "p")  # no -c: the file must exist
    assert (done.returncode, done.stderr) == (1, f"mqttd passwd: {path}: no such file "
                                                 "(-c creates it)\n")
    assert mqttd_passwd("-c", "-I", "1", "-b", str(path), "a", "p").returncode == 0
    before = path.read_text()
    done = mqttd_passwd("-D", str(path), "nobody")
    assert (done.returncode, done.stderr) == (1, f"mqttd passwd: {path}: no user 'nobody'; "
                                                 "file left as it was\n")
    done = mqttd_passwd(str(path), "b", stdin="one\ntwo\n")  # no terminal: read from stdin
    assert done.returncode == 1 and "the passwords do not match" in done.stderr
    done = mqttd_passwd(str(path), "b", stdin="")
    assert done.returncode == 1 and "no password given" in done.stderr
    done = mqttd_passwd("-c", "-b", str(tmp_path / "no-dir" / "pw"), "a", "p")
    assert done.returncode == 1 and "cannot write" in done.stderr
    for d in (done,):
        no_traceback(d)
    assert path.read_text() == before


def test_passwd_prompts_twice_without_echo(tmp_path: Path) -> None:
    """On a terminal (a pty here) the password is asked twice and never echoed."""
    path = tmp_path / "passwd"
    master, slave = os.openpty()
    proc = subprocess.Popen([*MQTTD, "passwd", "-c", "-I", "1000", str(path), "alice"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""

    def wait_for(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on the terminal: {seen!r}"
            if select.select([master], [], [], left)[0]:
                try:
                    chunk = os.read(master, 1024)
                except OSError:  # EIO: the other side is closed
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}: {seen!r}"
                seen += chunk

    try:
        wait_for(b"Password: ")
        os.write(master, b"s3cret-typed\n")
        wait_for(b"Reenter password: ")
        os.write(master, b"s3cret-typed\n")
        assert proc.wait(30) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"s3cret-typed" not in seen, seen
    assert read_password_file(str(path))["alice"].verify(b"s3cret-typed")


# --- a file from mqttd passwd in a real mosquitto broker -----------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not os.path.exists(MOSQUITTO) or shutil.which("mosquitto_pub") is None,
                    reason="Debian's mosquitto broker and clients are not installed")
def test_mqttd_passwd_file_works_in_mosquitto(tmp_path: Path) -> None:
    """What ``mqttd passwd`` writes (default iterations, -b and -U) is accepted by a real
    mosquitto with allow_anonymous false: right passwords in, a wrong one refused."""
    path = tmp_path / "passwd"
    path.write_text("carol:plain text\n")
    assert mqttd_passwd("-U", str(path)).returncode == 0
    assert mqttd_passwd("-b", str(path), "alice", "sécret:1").returncode == 0
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {path}\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))  # keep file access
        log_path = tmp_path / f"mosquitto-{attempt}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + WAIT * 2
            while b"running" not in log_path.read_bytes() and proc.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            if proc.poll() is not None:
                continue  # it could not bind: try another port

            def pub(user: str, password: str, port: int = port) -> int:
                return subprocess.run(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311",
                     "-t", "t", "-m", "x", "-u", user, "-P", password],
                    capture_output=True, timeout=WAIT * 2, check=False).returncode

            assert pub("alice", "sécret:1") == 0, log_path.read_text()
            assert pub("carol", "plain text") == 0, log_path.read_text()
            assert pub("alice", "wrong") == 5  # mosquitto answers 5, not authorized
            return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    pytest.fail("mosquitto did not start:\n" + log_path.read_text())


# --- the cache: a second connect with the same password does not hash again ----------------

def test_a_successful_check_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    done = mqttd_passwd("-c", "-I", "1000000", "-b", str(path), "cached", "pw")
    assert done.returncode == 0, done.stderr
    hashed = "hashed the password of 'cached'"
    with checked_broker(f'[auth]\npassword_file = "{path}"\n') as b:
        times = []
        for password in ("pw", "pw", "wrong"):
            c = Client(b, uid("c-"), username="cached", password=password)
            t0 = time.perf_counter()
            _, rc, _ = c.connect(expect_ok=False)
            times.append(time.perf_counter() - t0)
            c.close()
            if password == "pw":
                assert rc == 0
                assert b.log().count(hashed) == 1  # the second connect was not hashed
            else:
                assert rc == 0x86
                assert b.log().count(hashed) == 2  # failures are not cached
        # 1,000,000 iterations take a good fraction of a second; a cache hit is a dict
        # look-up (printed; the log's count above is what shows the second was not hashed).
        print(f"connect: hashed {times[0] * 1000:.0f} ms, cached {times[1] * 1000:.0f} ms, "
              f"wrong {times[2] * 1000:.0f} ms")


# --- hashing does not run on the event loop ------------------------------------------------

STORM = 200
#: PINGRESPs another client must get between the storm's first and last CONNACK. Hashed on
#: the loop, each CONNACK would cost the loop a whole hash (~110 ms at 210,000 iterations)
#: and a ping waits for it: at most about one PINGRESP per CONNACK. Off the loop the pinger
#: (one ping every ~5 ms) is answered all along while two threads hash: ~20 per CONNACK.
MIN_IN_A_GAP = 5


class Pinger(threading.Thread):
    """PINGREQ, wait for PINGRESP, again, until stopped; keeps every round trip."""

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True)
        self.raw = RawClient(broker)
        self.raw.send(B.connect("pinger-" + uid(), keepalive=0))
        assert self.raw.expect(Connack).reason_code == 0
        self.stop_flag = threading.Event()
        self.rtts: list[float] = []
        #: time.perf_counter() when each PINGRESP came
        self.answered: list[float] = []

    def run(self) -> None:
        ping = B.pingreq()
        for _ in range(20_000):  # bounded: ~100 s at most
            if self.stop_flag.is_set():
                return
            t0 = time.perf_counter()
            self.raw.send(ping)
            self.raw.expect(Pingresp, timeout=30)
            t1 = time.perf_counter()
            self.rtts.append(t1 - t0)
            self.answered.append(t1)
            time.sleep(0.005)

    def finish(self) -> list[float]:
        self.stop_flag.set()
        self.join(WAIT)
        self.raw.close()
        return self.rtts


def _storm(broker: BrokerProcess) -> tuple[int, int, float, int]:
    """200 clients connect at once with wrong passwords (never cached: every one hashes)
    while another pings; (PINGRESPs between the first and the last CONNACK, the most
    between two consecutive CONNACKs, the worst round trip, CONNACKs)."""
    pinger = Pinger(broker)
    pinger.start()
    socks = []
    acks: list[float] = []  # when each CONNACK was read (in the order they were sent)
    try:
        for i in range(STORM):
            s = RawClient(broker, timeout=60)
            s.send(B.connect(f"storm-{uid()}", username="storm", password=b"wrong-%d" % i))
            socks.append(s)
        for s in socks:
            assert s.expect(Connack).reason_code == 4  # 3.1.1: bad user name or password
            acks.append(time.perf_counter())
    finally:
        rtts = pinger.finish()
        for s in socks:
            s.close()
    # The checks are answered in the order they were queued, and read in that order here:
    # the first read is no earlier than the first CONNACK, the last no earlier than the last.
    first, last = acks[0], acks[-1]
    between = sum(1 for t in pinger.answered if first < t < last)
    most = max((sum(1 for t in pinger.answered if a < t < b) for a, b in pairwise(acks)),
               default=0)
    return between, most, max(rtts), len(acks)


def test_hashing_runs_off_the_event_loop(tmp_path: Path) -> None:
    """A connect storm against a 210,000-iteration file: every check hashes (wrong
    passwords, each logged), two hashing threads keep both cores busy for seconds, and a
    connected client's pings are answered all along, between the storm's CONNACKs. On the
    loop, each hash (or batch of hashes) would stall every client: at most about one ping
    between two CONNACKs, as the loop gets round to the pinger once between hashes; in the
    threads, while a batch of eight hashes (~0.2 s), the pinger is answered every ~5 ms.
    (Counted per gap, not in all: how long the whole storm takes depends on the hashing's
    speed, which side-by-side hashing tripled.)"""
    path = tmp_path / "passwd"
    assert mqttd_passwd("-c", "-b", str(path), "storm", "right").returncode == 0
    # The storm comes from one address: the per-address bound (which would refuse most of it
    # busy, tests/test_access_chain.py) is lifted, so every CONNECT is hashed.
    config = (f'[auth]\npassword_file = "{path}"\nmax_pending_per_address = 0\n\n'
              '[mqtt]\nidle_timeout = "120s"\n')  # the last of 200 waits ~11 s for its turn
    with checked_broker(config) as b:  # (at debug: each hash is logged)
        hashed = "hashed the password of 'storm'"
        before = b.log().count(hashed)
        between, most, worst, acks = _storm(b)
        print(f"{between} PINGRESPs between the first and the last of {acks} CONNACKs, "
              f"at most {most} between two, worst round trip {worst * 1000:.1f} ms")
        # It really was hashing all along: every CONNECT of the storm was hashed (each
        # logged by its thread before the answer went back to the loop and its CONNACK).
        assert b.log().count(hashed) == before + STORM
        assert most >= MIN_IN_A_GAP, (
            f"at most {most} PINGRESPs reached another client between two of the storm's "
            f"CONNACKs: the hashes ran on the event loop")


def test_reload_disconnects_users_removed_or_changed_in_the_file(tmp_path: Path) -> None:
    """mosquitto re-checks connected clients when it reloads its password file: a user
    removed from it, or whose password changed, is disconnected (MQTT 5: 0x87); a user whose
    line did not change stays connected."""
    path = tmp_path / "passwd"
    for user, pw in (("keep", "k1"), ("drop", "d1"), ("change", "c1")):
        mqttd_passwd(*(["-c"] if user == "keep" else []), "-b", str(path), user, pw)
    config = f'[auth]\npassword_file = "{path}"\n[zones.default]\nallow_anonymous = false\n'
    with checked_broker(config) as b:
        conns = {}
        for user, pw in (("keep", "k1"), ("drop", "d1"), ("change", "c1")):
            c = Client(b, uid(f"{user}-"), version=5, username=user, password=pw)
            c.connect()
            conns[user] = c
        assert mqttd_passwd("-D", str(path), "drop").returncode == 0
        assert mqttd_passwd("-b", str(path), "change", "c2").returncode == 0
        os.kill(b.proc.pid, signal.SIGHUP)
        for user in ("drop", "change"):
            rc, _ = conns[user].wait_disconnected()
            assert int(rc.value) == 0x87, (user, rc)
        wait_log(b, "because its credentials were revoked (reload by SIGHUP)")
        assert conns["keep"].disconnected is None
        conns["keep"].subscribe("still/here", 0)
        for c in conns.values():
            c.close()


def _nice_of_tasks(pid: int) -> list[int]:
    """The niceness of each thread of process ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat_line = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # the command name (field 2) may hold spaces: count from after its ')'
        out.append(int(stat_line.rsplit(")", 1)[1].split()[16]))
    return out


def test_hashing_threads_yield_to_the_event_loop(tmp_path: Path) -> None:
    """Where the loop and the hashing threads share a core (a broker pinned to one), a hash
    must not keep the loop waiting for its time slice: the hashing threads run niced (10),
    the loop's thread does not. (bench/bench_auth.py measures what it does to the worst
    PING during a saturating CONNECT storm.)"""
    path = tmp_path / "passwd"
    assert mqttd_passwd("-c", "-b", str(path), "u", "right").returncode == 0
    config = f'[auth]\npassword_file = "{path}"\nhash_threads = 3\n'
    with checked_broker(config) as b:
        with RawClient(b) as c:  # one check through the threads: they are running
            c.send(B.connect(f"nice-{uid()}", username="u", password=b"right"))
            assert c.expect(Connack).reason_code == 0
        nices = _nice_of_tasks(b.proc.pid)
        assert nices.count(10) == 3, nices
        main_thread = int(Path(f"/proc/{b.proc.pid}/stat").read_text()
                           .rsplit(")", 1)[1].split()[16])
        assert main_thread == 0, nices


@pytest.mark.parametrize("cache_ttl", [0, 60])
def test_reload_renews_the_reused_success_of_each_user(tmp_path: Path, cache_ttl: int) -> None:
    """The provider answers a user's every successful check with one shared result naming
    the user's entry (``PasswordFile._granted``), and the chain may remember a success
    (``cache_ttl``). After a reload neither may let in what the new file does not: a user
    removed, or whose password changed, is refused with the old password; the changed
    password, an unchanged line, and a line hashed again from the same password get in."""
    path = tmp_path / "passwd"
    users = {"keep": "k1", "drop": "d1", "change": "c1", "rehash": "r1"}
    for n, (user, pw) in enumerate(users.items()):
        done = mqttd_passwd(*(["-c"] if n == 0 else []), "-I", "101", "-b", str(path),
                            user, pw)
        assert done.returncode == 0, done.stderr
    config = (f'[auth]\npassword_file = "{path}"\ncache_ttl = {cache_ttl}\n'
              '[zones.default]\nallow_anonymous = false\n')

    def connect(b: BrokerProcess, user: str, pw: str) -> int:
        c = Client(b, uid(f"{user}-"), version=5, username=user, password=pw)
        try:
            _, rc, _ = c.connect(expect_ok=False)
        finally:
            c.close()
        return int(rc.value) if hasattr(rc, "value") else int(rc)

    with checked_broker(config) as b:
        hashed = "hashed the password of"
        for _ in range(2):  # the second time through the reused result (or the cache)
            for user, pw in users.items():
                assert connect(b, user, pw) == 0, user
        before = b.log().count(hashed)
        assert before == (8 if cache_ttl == 0 else 4)  # cached: the second ones not hashed
        old_line = {line.split(":", 1)[0]: line for line in path.read_text().splitlines()}
        assert mqttd_passwd("-D", str(path), "drop").returncode == 0
        assert mqttd_passwd("-I", "101", "-b", str(path), "change", "c2").returncode == 0
        assert mqttd_passwd("-I", "101", "-b", str(path), "rehash", "r1").returncode == 0
        new_line = {line.split(":", 1)[0]: line for line in path.read_text().splitlines()}
        assert new_line["keep"] == old_line["keep"]
        assert new_line["rehash"] != old_line["rehash"]  # a new salt: another entry
        mark = len(b.log())
        os.kill(b.proc.pid, signal.SIGHUP)
        wait_log(b, f"{path}: reloaded, 3 users", start=mark)
        assert connect(b, "drop", "d1") == 0x86
        assert connect(b, "change", "c1") == 0x86
        assert connect(b, "change", "c2") == 0
        assert connect(b, "keep", "k1") == 0
        assert connect(b, "rehash", "r1") == 0
        # Every success after the reload was hashed again against the new file (the cache
        # was emptied; "drop" is no longer listed, so its check hashes a decoy, unlogged).
        assert b.log().count(hashed) == before + 4
        for _ in range(2):  # and the new results are reused as the old ones were
            assert connect(b, "keep", "k1") == 0
            assert connect(b, "change", "c2") == 0
            assert connect(b, "change", "c1") == 0x86
