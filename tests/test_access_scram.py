"""MQTT 5 enhanced authentication with SCRAM-SHA-256 / SCRAM-SHA-512 (spec 4.12, AUTH 3.15),
end to end: a real broker process with a ``scram`` provider whose credentials file was
written by ``mqttd scram-passwd``, and a raw MQTT 5 client whose SCRAM side is the
``scramp`` library's client (the same library the broker uses, but its other half: a
client that checks the server's final signature).

Covered: logins with both mechanisms (then publish/subscribe works, the proven identity is
the client's user name), wrong password and unknown user (both CONNACK 0x86, after the same
exchange), unknown methods (0x8C), garbage at each step (0x87, closed, no traceback), the
packets a client may not send during the exchange (CONNACK 0x82), re-authentication
(AUTH 0x19 ... AUTH 0x00; failure DISCONNECT 0x87; another method DISCONNECT 0x82), AUTH
from a client that started no enhanced authentication (DISCONNECT 0x82), the connect
timeout bounding a stalled exchange, plain CONNECTs and MQTT 3.1.1 clients unaffected,
``mqttd config check`` on a bad credentials file and the ``mqttd scram-passwd`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scramp import ScramClient
from support import builder as B, uid
from support.process import BrokerProcess, checked_broker, run_mqttd
from support.raw import RawClient

from mqttd.access.authn import AccessError, AuthChain
from mqttd.access.scram import ScramFile, make_credentials, parse_line, read_scram_file
from mqttd.config import AuthSettings, Settings
from mqttd.core.channel import MAX_AUTH_ROUNDS, Channel
from mqttd.core.services import AuthStep, ClientInfo
from mqttd.mqtt._codec_py import ParserPy
from mqttd.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingresp,
    Puback,
    Publish,
    Suback,
)
from mqttd.node import Node

pytest_plugins = ["support.fixtures"]

SHA256, SHA512 = "SCRAM-SHA-256", "SCRAM-SHA-512"
PASSWORDS = {"alice": "alice-secret", "bob": "b0b:pass,word=", "dave": "dave-secret"}


@pytest.fixture(scope="module")
def scram_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice and bob with both mechanisms, written by the real command."""
    path = tmp_path_factory.mktemp("scram") / "scram.txt"
    for user, password in PASSWORDS.items():
        done = run_mqttd("scram-passwd", str(path), user, "-b", password, "-m", SHA256,
                         "-m", SHA512, "-I", "4096")
        assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def broker(scram_file: Path) -> Iterator[BrokerProcess]:
    config = f"""
[[auth.providers]]
type = "scram"
path = "{scram_file}"

[zones.strict]
allow_anonymous = false
idle_timeout = 1

[zones.byuser]
use_username_as_clientid = true

[listeners.byuser]
bind = "127.0.0.1"
port = 0
zone = "byuser"

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.strict]
bind = "127.0.0.1"
port = 0
zone = "strict"
"""
    with checked_broker(config) as b:
        yield b


# --- the client side of an exchange ------------------------------------------------------------


def send_connect(r: RawClient, method: str, data: bytes | None, *, client_id: str | None = None,
                 **kwargs: Any) -> str:
    client_id = uid("scram-") if client_id is None else client_id
    r.send(B.connect(client_id, level=5, properties=B.auth_properties(method, data), **kwargs))
    return client_id


def challenge(r: RawClient, method: str) -> str:
    """The server's AUTH 0x18: its server-first message."""
    auth = r.expect(Auth)
    assert auth.reason_code == 0x18, auth
    assert auth.properties["authentication_method"] == method  # [MQTT-4.12.0-5]
    return auth.properties["authentication_data"].decode()


def login(r: RawClient, method: str, user: str, password: str, **kwargs: Any
          ) -> tuple[ScramClient, Connack]:
    """CONNECT (client-first) -> AUTH 0x18 (server-first) -> AUTH 0x18 (client-final) ->
    CONNACK; returns the SCRAM client and the CONNACK."""
    client = ScramClient([method], user, password)
    send_connect(r, method, client.get_client_first().encode(), **kwargs)
    client.set_server_first(challenge(r, method))
    r.send(B.auth(0x18, B.auth_properties(method, client.get_client_final().encode())))
    return client, r.expect(Connack)


def logged_in(raws: Any, broker: BrokerProcess, method: str = SHA256, user: str = "alice",
              **kwargs: Any) -> RawClient:
    r = raws(broker, 5, **kwargs)
    client, ack = login(r, method, user, PASSWORDS[user])
    assert ack.reason_code == 0, ack
    client.set_server_final(ack.properties["authentication_data"].decode())
    return r


def reauthenticate(r: RawClient, method: str, user: str, password: str) -> Any:
    """AUTH 0x19 (client-first) -> AUTH 0x18 -> AUTH 0x18 (client-final) -> the answer."""
    client = ScramClient([method], user, password)
    r.send(B.auth(0x19, B.auth_properties(method, client.get_client_first().encode())))
    client.set_server_first(challenge(r, method))
    r.send(B.auth(0x18, B.auth_properties(method, client.get_client_final().encode())))
    answer = r.recv()
    if isinstance(answer, Auth) and answer.reason_code == 0:
        client.set_server_final(answer.properties["authentication_data"].decode())
    return answer


def refused(r: RawClient) -> Connack:
    """The connection ends with a refusing CONNACK and nothing else."""
    packets = r.expect_closed()
    assert len(packets) == 1 and isinstance(packets[0], Connack), packets
    return packets[0]


def disconnected(r: RawClient) -> int:
    packets = r.expect_closed()
    assert len(packets) == 1 and isinstance(packets[0], Disconnect), packets
    return int(packets[0].reason_code)


def pubsub_works(r: RawClient) -> None:
    topic = uid("scram/")
    r.send(B.subscribe(1, [(topic, 1)], properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [1]
    r.send(B.publish(topic, b"hello", qos=1, packet_id=2, properties=B.EMPTY_PROPS))
    got = [r.recv(), r.recv()]
    pub = next(p for p in got if isinstance(p, Publish))
    assert (pub.topic, pub.payload) == (topic, b"hello")
    assert any(isinstance(p, Puback) and p.packet_id == 2 for p in got), got


def client_row(broker: BrokerProcess, client_id: str) -> dict[str, Any]:
    done = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", "clients", "show",
                     client_id)
    assert done.returncode == 0, done.stderr
    row: dict[str, Any] = json.loads(done.stdout)
    return row


# --- logins ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [SHA256, SHA512])
def test_login_then_publish_and_subscribe(raws, broker, method):
    r = raws(broker, 5)
    client, ack = login(r, method, "alice", PASSWORDS["alice"])
    assert ack.reason_code == 0
    assert ack.properties["authentication_method"] == method  # [MQTT-4.12.0-5]
    # The server-final proves the server holds alice's keys (raises if it does not).
    client.set_server_final(ack.properties["authentication_data"].decode())
    pubsub_works(r)


def test_the_proven_identity_is_the_user_name(raws, broker):
    r = raws(broker, 5)
    client_id = uid("who-")
    client = ScramClient([SHA512], "bob", PASSWORDS["bob"])
    send_connect(r, SHA512, client.get_client_first().encode(), client_id=client_id)
    client.set_server_first(challenge(r, SHA512))
    r.send(B.auth(0x18, B.auth_properties(SHA512, client.get_client_final().encode())))
    assert r.expect(Connack).reason_code == 0
    assert client_row(broker, client_id)["username"] == "bob"


def test_connect_user_name_must_be_the_scram_user(raws, broker):
    r = raws(broker, 5)
    _, ack = login(r, SHA256, "alice", PASSWORDS["alice"], username="alice")
    assert ack.reason_code == 0
    r = raws(broker, 5)
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    send_connect(r, SHA256, client.get_client_first().encode(), username="bob")
    assert refused(r).reason_code == 0x87  # no AUTH: refused at the client-first


def test_login_on_a_listener_without_anonymous_clients(raws, broker):
    r = logged_in(raws, broker, SHA256, "bob", port=broker.ports["strict"])
    pubsub_works(r)


def test_wrong_password_is_0x86(raws, broker):
    r = raws(broker, 5)
    _, ack = login(r, SHA256, "alice", "not-alices")
    assert ack.reason_code == 0x86
    assert "authentication_data" not in ack.properties
    assert r.expect_closed() == []
    assert "SCRAM: wrong password for 'alice'" in broker.log()


def test_unknown_user_gets_the_same_exchange_and_0x86(raws, broker):
    """A decoy salt, then the proof fails: the client cannot tell an unknown user from a
    wrong password (RFC 5802 5.1). The decoy salt stays the same for the same name."""
    salts = []
    for _ in range(2):
        r = raws(broker, 5)
        client = ScramClient([SHA256], "mallory", "guess")
        send_connect(r, SHA256, client.get_client_first().encode())
        server_first = challenge(r, SHA256)
        salts.append(dict(kv.split("=", 1) for kv in server_first.split(","))["s"])
        client.set_server_first(server_first)
        r.send(B.auth(0x18, B.auth_properties(SHA256, client.get_client_final().encode())))
        assert refused(r).reason_code == 0x86
    assert salts[0] == salts[1]
    assert "SCRAM: unknown user 'mallory'" in broker.log()


@pytest.mark.parametrize("method", ["SCRAM-SHA-1", "PLAIN", "SCRAM-SHA-256-PLUS"])
def test_unknown_method_is_0x8c(raws, broker, method):
    r = raws(broker, 5)
    send_connect(r, method, b"n,,n=alice,r=abcdefgh")
    assert refused(r).reason_code == 0x8C  # [MQTT-4.12.0-1]


def test_a_banned_user_name_is_refused_without_a_connect_user_name(raws, broker):
    """The gates see the user the client-first names: a ban on dave holds although the
    CONNECT carries no User Name."""
    ctl = ("ctl", "--data-dir", str(broker.data_dir))
    assert run_mqttd(*ctl, "banned", "add", "username", "dave").returncode == 0
    try:
        r = raws(broker, 5)
        client = ScramClient([SHA256], "dave", PASSWORDS["dave"])
        send_connect(r, SHA256, client.get_client_first().encode())
        assert refused(r).reason_code == 0x8A
    finally:
        assert run_mqttd(*ctl, "banned", "del", "username", "dave").returncode == 0
    logged_in(raws, broker, SHA256, "dave")


# --- garbage and protocol errors during the exchange -------------------------------------------


@pytest.mark.parametrize("data", [b"hello", b"\xff\xfe\xfd", b"p=tls-unique,,n=alice,r=abc",
                                  b"n,a=bob,n=alice,r=abc", b"", None],
                         ids=["text", "not-utf8", "channel-binding", "authzid", "empty",
                              "absent"])
def test_garbage_client_first_is_refused(raws, broker, data):
    r = raws(broker, 5)
    send_connect(r, SHA256, data)
    assert refused(r).reason_code == 0x87


@pytest.mark.parametrize("garbage", [b"garbage", b"\xff\xfe", b"c=biws,r=wrong-nonce,p=AAAA",
                                     b"c=biws,r=NONCE,p=!!notbase64!!", b""],
                         ids=["text", "not-utf8", "wrong-nonce", "bad-proof-encoding", "empty"])
def test_garbage_client_final_is_refused_without_a_traceback(raws, broker, garbage):
    r = raws(broker, 5)
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    send_connect(r, SHA256, client.get_client_first().encode())
    nonce = dict(kv.split("=", 1) for kv in challenge(r, SHA256).split(","))["r"]
    r.send(B.auth(0x18, B.auth_properties(SHA256, garbage.replace(b"NONCE", nonce.encode()))))
    assert refused(r).reason_code == 0x87
    assert "Traceback" not in broker.log()


@pytest.mark.parametrize("packet", [
    B.publish("a/b", b"x", qos=1, packet_id=1, properties=B.EMPTY_PROPS),
    B.pingreq(),
    B.auth(0x19, B.auth_properties(SHA256, b"c=biws")),
    B.auth(0x18, B.auth_properties(SHA512, b"c=biws")),
    B.auth(0x00, B.EMPTY_PROPS),
    b"\xf0\x00",
], ids=["publish", "pingreq", "auth-0x19", "auth-other-method", "auth-without-method",
        "auth-short-form"])
def test_only_auth_may_come_before_connack(raws, broker, packet):
    """[MQTT-3.1.2-30], [MQTT-4.12.0-5]: CONNACK 0x82, never a DISCONNECT before CONNACK."""
    r = raws(broker, 5)
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    send_connect(r, SHA256, client.get_client_first().encode())
    challenge(r, SHA256)
    r.send(packet)
    assert refused(r).reason_code == 0x82


def test_disconnect_during_the_exchange_just_closes(raws, broker):
    r = raws(broker, 5)
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    send_connect(r, SHA256, client.get_client_first().encode())
    challenge(r, SHA256)
    r.send(B.disconnect(0))
    assert r.expect_closed() == []


def test_a_stalled_exchange_ends_at_the_connect_timeout(raws, broker):
    r = raws(broker, 5, port=broker.ports["strict"])  # idle_timeout = 1
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    send_connect(r, SHA256, client.get_client_first().encode())
    challenge(r, SHA256)
    start = time.monotonic()
    assert r.expect_closed(timeout=5) == []
    assert time.monotonic() - start < 4


# --- re-authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("method", [SHA256, SHA512])
def test_reauthentication_succeeds(raws, broker, method):
    r = logged_in(raws, broker, method)
    answer = reauthenticate(r, method, "alice", PASSWORDS["alice"])
    assert isinstance(answer, Auth) and answer.reason_code == 0, answer
    assert answer.properties["authentication_method"] == method
    r.send(B.pingreq())
    assert isinstance(r.recv(), Pingresp)
    pubsub_works(r)


def test_reauthentication_with_a_wrong_password_disconnects_0x87(raws, broker):
    r = logged_in(raws, broker)
    answer = reauthenticate(r, SHA256, "alice", "wrong")
    assert isinstance(answer, Disconnect) and answer.reason_code == 0x87  # [MQTT-4.12.1-2]
    assert r.expect_closed() == []


def test_reauthentication_as_another_user_disconnects_0x87(raws, broker):
    r = logged_in(raws, broker, SHA256, "alice")
    client = ScramClient([SHA256], "bob", PASSWORDS["bob"])
    r.send(B.auth(0x19, B.auth_properties(SHA256, client.get_client_first().encode())))
    assert disconnected(r) == 0x87


def test_reauthentication_with_another_method_is_a_protocol_error(raws, broker):
    r = logged_in(raws, broker, SHA256)
    client = ScramClient([SHA512], "alice", PASSWORDS["alice"])
    r.send(B.auth(0x19, B.auth_properties(SHA512, client.get_client_first().encode())))
    assert disconnected(r) == 0x82  # [MQTT-4.12.1-1]


@pytest.mark.parametrize("packet", [
    B.auth(0x18, B.auth_properties(SHA256, b"c=biws")),
    B.auth(0x00, B.auth_properties(SHA256)),
    b"\xf0\x00",
], ids=["continue-without-start", "success-from-client", "short-form"])
def test_auth_out_of_sequence_after_connack_is_a_protocol_error(raws, broker, packet):
    r = logged_in(raws, broker, SHA256)
    r.send(packet)
    assert disconnected(r) == 0x82


def test_reauthenticate_twice_is_a_protocol_error(raws, broker):
    r = logged_in(raws, broker, SHA256)
    client = ScramClient([SHA256], "alice", PASSWORDS["alice"])
    r.send(B.auth(0x19, B.auth_properties(SHA256, client.get_client_first().encode())))
    challenge(r, SHA256)
    r.send(B.auth(0x19, B.auth_properties(SHA256, b"n,,n=alice,r=abcdefgh")))
    assert disconnected(r) == 0x82


def test_auth_from_a_client_without_enhanced_authentication(raws, broker):
    r = raws(broker, 5)
    r.connect(uid("plain-"))
    r.send(B.auth(0x19, B.auth_properties(SHA256, b"n,,n=alice,r=abc")))
    assert disconnected(r) == 0x82  # [MQTT-4.12.0-7]


# --- what SCRAM does not touch ----------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_plain_clients_are_unaffected(clients, broker, version):
    topic = uid("plain/")
    c = clients(version=version)  # anonymous on the default listener (loopback)
    assert c.subscribe(topic, 1) == [1]
    c.publish(topic, b"x", 1)
    assert c.expect_message().payload == b"x"


@pytest.mark.parametrize("version,code", [(4, 4), (5, 0x86)])
def test_plain_connect_with_a_password_is_ignored_by_the_provider(raws, broker, version, code):
    """alice's SCRAM password is no password for a plain CONNECT: the provider ignores it,
    and this listener lets in no one nobody vouched for."""
    r = raws(broker, version, port=broker.ports["strict"])
    r.connect(uid(), username="alice", password=PASSWORDS["alice"].encode(), expect_rc=code)


# --- the credentials file, config check and scram-passwd -------------------------------------


def test_config_check_names_each_bad_line(tmp_path):
    creds = make_credentials("pw", SHA256, 4096).encode("carol")
    path = tmp_path / "scram.txt"
    path.write_text("# comment\n\n" + creds + "\n"
                    "dave:SCRAM-SHA-1:4096:AAAAAAAAAAAAAAAA:AAAA:AAAA\n"
                    "erin:SCRAM-SHA-256:100:AAAAAAAAAAAAAAAA:AAAA:AAAA\n"
                    "frank:plain-text-password\n"
                    + creds + "\n")
    config = tmp_path / "mqttd.toml"
    config.write_text(f'[[auth.providers]]\ntype = "scram"\npath = "{path}"\nmode = 1\n')
    done = run_mqttd("config", "check", "-c", str(config))
    assert done.returncode == 2
    assert "auth.providers[0].mode: unknown option (scram takes: path)" in done.stderr
    config.write_text(f'[[auth.providers]]\ntype = "scram"\npath = "{path}"\n')
    done = run_mqttd("config", "check", "-c", str(config))
    assert done.returncode == 2
    assert f"{path}:4: unknown mechanism 'SCRAM-SHA-1'" in done.stderr
    assert f"{path}:5: the iteration count must be 4096" in done.stderr
    assert f"{path}:6: expected user:MECHANISM:ITERATIONS:SALT:STORED_KEY:SERVER_KEY" \
        in done.stderr
    assert f"{path}:7: user 'carol' has SCRAM-SHA-256 already on line 3" in done.stderr
    assert "plain-text-password" not in done.stderr
    assert "Traceback" not in done.stderr
    path.write_text(creds + "\n")
    config.write_text(f'[[auth.providers]]\ntype = "scram"\npath = "{path}"\n')
    done = run_mqttd("config", "check", "-c", str(config))
    assert done.returncode == 0, done.stderr


def test_reload_reads_the_file_again_and_keeps_the_old_table_if_bad(tmp_path):
    path = tmp_path / "scram.txt"
    path.write_text(make_credentials("pw", SHA256, 4096).encode("carol") + "\n")
    provider = ScramFile(str(path))
    assert provider.lookup("erin", SHA256)[4] is False
    path.write_text(path.read_text() + make_credentials("pw", SHA256, 4096).encode("erin"))
    provider.reload()
    assert provider.lookup("erin", SHA256)[4] is True
    path.write_text("erin:broken\n")
    with pytest.raises(AccessError, match=":1: expected user:MECHANISM"):
        provider.reload()
    assert provider.lookup("erin", SHA256)[4] is True  # the old table stays


def test_a_missing_credentials_file_stops_the_start(tmp_path):
    config = f'[[auth.providers]]\ntype = "scram"\npath = "{tmp_path / "none.txt"}"\n'
    with pytest.raises(RuntimeError, match="cannot read the SCRAM credentials file"):
        BrokerProcess(config)


def test_parse_line_refuses_wrong_key_sizes():
    good = make_credentials("pw", SHA512, 4096)
    line = good.encode("u:with:colons")
    user, parsed = parse_line(line)  # type: ignore[misc]
    assert (user, parsed) == ("u:with:colons", good)
    short = make_credentials("pw", SHA256, 4096).encode("u").replace(SHA256, SHA512)
    with pytest.raises(ValueError, match="stored key is 32 bytes, not 64"):
        parse_line(short)


def test_scram_passwd_adds_changes_and_deletes(tmp_path):
    path = tmp_path / "creds"
    path.write_text("# operators\nkeep:me:not:a:valid:line\n")
    assert run_mqttd("scram-passwd", str(path), "alice", "-b", "one").returncode == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = read_scram_file_lenient(path)
    assert set(first) == {("alice", SHA256)} and first[("alice", SHA256)].iterations == 10_000
    done = run_mqttd("scram-passwd", str(path), "alice", "-b", "two", "-m", SHA256, "-m",
                     SHA512, "-I", "5000")
    assert done.returncode == 0, done.stderr
    lines = path.read_text().splitlines()
    assert lines[:2] == ["# operators", "keep:me:not:a:valid:line"]  # kept as they were
    assert lines[2].startswith("alice:SCRAM-SHA-256:5000:")  # changed in place
    assert lines[3].startswith("alice:SCRAM-SHA-512:5000:")
    assert run_mqttd("scram-passwd", str(path), "alice", "-D").returncode == 0
    assert path.read_text().splitlines() == ["# operators", "keep:me:not:a:valid:line"]
    done = run_mqttd("scram-passwd", str(path), "alice", "-D")
    assert done.returncode == 1 and "not in" in done.stderr
    done = run_mqttd("scram-passwd", str(path), "x", "-b", "pw", "-I", "100")
    assert done.returncode == 1 and "iteration count must be 4096" in done.stderr
    done = run_mqttd("scram-passwd", str(path), "x", "-b", "pw", "-m", "SCRAM-SHA-1")
    assert done.returncode == 2 and "unknown mechanism" in done.stderr


def read_scram_file_lenient(path: Path) -> dict[tuple[str, str], Any]:
    """The file's valid entries (the test file keeps one bad line on purpose)."""
    good = path.with_suffix(".good")
    good.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith(("#", "keep:"))))
    try:
        return read_scram_file(str(good))
    except AccessError as err:  # pragma: no cover - the assertion says what
        raise AssertionError(err.errors) from None


# --- the channel's bound on AUTH rounds, with a method that never ends -----------------------


class _Endless:
    """An exchange that always asks for more (a broken or hostile method)."""

    def start(self, client: ClientInfo, data: bytes | None) -> AuthStep:
        return AuthStep(b"more")

    def next(self, data: bytes | None) -> AuthStep:
        return AuthStep(b"more")


class _EndlessProvider:
    kind = "sync"
    description = "endless (test)"
    methods = ("ENDLESS",)

    def check(self, client: ClientInfo, password: bytes | None) -> None:
        return None

    def exchange(self, method: str) -> _Endless:
        return _Endless()

    def reload(self) -> None:
        pass

    def close(self) -> None:
        return None


def _endless_channel() -> tuple[Channel, ParserPy]:
    node = Node(Settings())
    node.broker.authenticator = AuthChain(AuthSettings(), [_EndlessProvider()])
    return Channel(node.broker, node.settings.zones["default"], "test:1"), ParserPy(version=5)


def _feed(channel: Channel, parser: ParserPy, packet: Any) -> list[Any]:
    channel.handle_in(packet)
    data = b"".join(channel.out)
    channel.out.clear()
    return list(parser.feed(data))


def test_an_endless_exchange_is_refused_after_max_rounds():
    async def body() -> None:
        channel, parser = _endless_channel()
        method = {"authentication_method": "ENDLESS"}
        got = _feed(channel, parser, Connect("MQTT", 5, True, 60, "endless", None, None, None,
                                             {**method, "authentication_data": b"hi"}))
        for _ in range(MAX_AUTH_ROUNDS - 1):
            assert [type(p) for p in got] == [Auth], got
            got = _feed(channel, parser, Auth(0x18, {**method, "authentication_data": b"x"}))
        assert [type(p) for p in got] == [Auth]
        (ack,) = _feed(channel, parser, Auth(0x18, method))
        assert isinstance(ack, Connack) and ack.reason_code == 0x87
        assert channel.closing

    asyncio.run(body())


def test_a_zone_naming_clients_by_user_names_them_by_the_proven_identity(raws, broker):
    """use_username_as_clientid: bob proving himself with SCRAM, with client id "alice" and
    no User Name, is client "bob" (not alice, whose session he would otherwise take)."""
    bob = raws(broker, 5, port=broker.ports["byuser"])
    _, ack = login(bob, SHA256, "bob", PASSWORDS["bob"], client_id="alice")
    assert ack.reason_code == 0, ack
    ctl = ("ctl", "--data-dir", str(broker.data_dir), "--json", "clients", "show")
    shown = run_mqttd(*ctl, "bob")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["username"] == "bob"
    assert run_mqttd(*ctl, "alice").returncode != 0  # no client "alice"
    bob.send(B.pingreq())
    assert bob.expect(Pingresp) == Pingresp()
