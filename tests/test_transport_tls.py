"""TLS listeners end to end: real certificates (support.certs), a real broker, paho-mqtt and
Debian's mosquitto_pub/mosquitto_sub over TLS, mutual TLS with the certificate's name handed
to authentication, bad handshakes closed and counted, bad files refused at start and by
``mqttd config check``, and certificate reload under live connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from support import WAIT, uid
from support.certs import Pki, make_pki
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, checked_broker, run_mqttd, wait_log

pytest_plugins = ["support.fixtures"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: Pki, extra: str = "") -> str:
    return f"""
[mqtt]
idle_timeout = 2

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.tls]
type = "ssl"
bind = "127.0.0.1"
port = 0
certfile = "{pki.server_chain}"
keyfile = "{pki.server_key}"

[listeners.mtls]
type = "ssl"
bind = "127.0.0.1"
port = 0
certfile = "{pki.server_cert}"
keyfile = "{pki.server_key_encrypted}"
keyfile_password = "{pki.server_key_password}"
cafile = "{pki.ca_cert}"
verify = "required"
peer_cert_as_username = "cn"
allow_anonymous = false
max_connections = 3

[listeners.opt]
type = "ssl"
bind = "127.0.0.1"
port = 0
certfile = "{pki.server_cert}"
keyfile = "{pki.server_key}"
cafile = "{pki.ca_cert}"
verify = "optional"
peer_cert_as_username = "san"
peer_cert_as_clientid = "cn"
tls_versions = ["tlsv1.3"]
{extra}"""


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[BrokerProcess]:
    with checked_broker(tls_config(pki)) as b:
        yield b


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", *args)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def metric(broker: BrokerProcess, name: str) -> int:
    return int(ctl_json(broker, "broker", "metrics")["metrics"][name])


def client_ctx(pki: Pki, cert: tuple[Path, Path] | None = None, *,
               cafile: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (hostname 127.0.0.1 is in its SANs)."""
    ctx = ssl.create_default_context(cafile=str(cafile or pki.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def tls_connect(broker: BrokerProcess, listener: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", broker.ports[listener]), timeout=WAIT)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def paho_tls(broker: BrokerProcess, pki: Pki, listener: str, client_id: str,
             cert: tuple[Path, Path] | None = None, **kwargs: Any) -> Client:
    tls: dict[str, Any] = {"ca_certs": str(pki.ca_cert)}
    if cert is not None:
        tls.update(certfile=str(cert[0]), keyfile=str(cert[1]))
    return Client(broker, client_id, port=broker.ports[listener], tls=tls, **kwargs)


def serial_served(broker: BrokerProcess, pki: Pki, listener: str = "tls") -> int:
    with tls_connect(broker, listener, client_ctx(pki)) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


# --- clients over TLS -------------------------------------------------------------------------


def test_paho_over_tls_round_trip_with_a_plain_tcp_subscriber(broker: BrokerProcess,
                                                             pki: Pki) -> None:
    topic = uid("tls/")
    sub = Client(broker, uid("sub-"))
    sub.connect()
    sub.subscribe(topic, 1)
    pub = paho_tls(broker, pki, "tls", uid("pub-"))
    assert pub.c._ssl_context is not None and not pub.c._tls_insecure
    pub.connect()
    pub.publish(topic, b"over tls", qos=1)
    assert sub.expect_message().payload == b"over tls"
    # and the other way round: TCP in, TLS out
    pub.subscribe(topic + "/back", 0)
    sub.publish(topic + "/back", b"back over tls")
    assert pub.expect_message().payload == b"back over tls"
    row = ctl_json(broker, "clients", "show", pub.c._client_id.decode())
    assert (row["listener"], row["transport"]) == ("tls", "ssl")
    pub.close()
    sub.close()


def test_mosquitto_clients_with_ca_and_client_certificates(broker: BrokerProcess,
                                                           pki: Pki) -> None:
    cert, key = pki.client("mosq-device")
    topic = uid("mosq/")
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.ports["mtls"]), "-t", topic,
         "-C", "1", "-W", "10", "--cafile", str(pki.ca_cert), "--cert", str(cert),
         "--key", str(key), "-i", uid("msub-")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not any(r["clientid"].startswith("msub-")
                      for r in ctl_json(broker, "clients", "list")):
            assert time.monotonic() < deadline, "mosquitto_sub did not connect over mTLS"
            time.sleep(0.05)
        pub = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.ports["tls"]), "-t", topic,
             "-m", "from mosquitto_pub", "-q", "1", "--cafile", str(pki.ca_cert)],
            capture_output=True, text=True, timeout=WAIT * 2)
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=WAIT * 2)
        assert sub.returncode == 0, err
        assert out.strip() == "from mosquitto_pub"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_alpn_mqtt_is_agreed(broker: BrokerProcess, pki: Pki) -> None:
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["mqtt"])
    with tls_connect(broker, "tls", ctx) as s:
        assert s.selected_alpn_protocol() == "mqtt"
        assert s.version() in ("TLSv1.2", "TLSv1.3")


# --- mutual TLS and the certificate's identity ------------------------------------------------


def test_client_certificate_names_the_user_and_authenticates(broker: BrokerProcess,
                                                             pki: Pki) -> None:
    # allow_anonymous = false on mtls and no provider: the verified certificate is the proof,
    # and its CN replaces the user name the CONNECT sent.
    c = paho_tls(broker, pki, "mtls", uid("m-"), pki.client("device-17"),
                 username="admin", password="guess")
    c.connect()
    row = ctl_json(broker, "clients", "show", c.c._client_id.decode())
    assert (row["username"], row["listener"], row["transport"]) == ("device-17", "mtls", "ssl")
    c.close()


def test_optional_verification_takes_san_and_cn(broker: BrokerProcess, pki: Pki) -> None:
    c = paho_tls(broker, pki, "opt", "ignored-id",
                 pki.client("sensor-9", san="sensor-9.example.org"))
    c.connect()
    row = ctl_json(broker, "clients", "show", "sensor-9")
    assert row["username"] == "sensor-9.example.org"
    c.close()
    # optional: no certificate is fine, and then the CONNECT's names stand
    n = paho_tls(broker, pki, "opt", uid("nocert-"), username="plain")
    n.connect()
    assert ctl_json(broker, "clients", "show", n.c._client_id.decode())["username"] == "plain"
    n.close()


def test_required_certificate_missing_or_from_another_ca_fails_the_handshake(
        broker: BrokerProcess, pki: Pki) -> None:
    before = metric(broker, "connections.refused.tls")
    for cert in (None, pki.client("intruder", other_ca=True)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            s = tls_connect(broker, "mtls", client_ctx(pki, cert))
            # TLS 1.3: the server's verdict on the client certificate arrives after the
            # client's handshake has returned, at the first read
            s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
            data = s.recv(16)
            s.close()
            if not data:
                raise ConnectionError("closed")
    deadline = time.monotonic() + WAIT
    while metric(broker, "connections.refused.tls") < before + 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_tls_version_below_the_listener_minimum_is_refused(broker: BrokerProcess,
                                                           pki: Pki) -> None:
    before = metric(broker, "connections.refused.tls")
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the opt listener allows 1.3 only
    with pytest.raises(ssl.SSLError):
        tls_connect(broker, "opt", ctx)
    deadline = time.monotonic() + WAIT
    while metric(broker, "connections.refused.tls") == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "listener opt: TLS handshake with 127.0.0.1:" in broker.log()


# --- bad handshakes: closed, counted, harmless -------------------------------------------------


def test_bad_handshakes_are_closed_counted_and_harm_nobody(broker: BrokerProcess,
                                                           pki: Pki) -> None:
    topic = uid("live/")
    live = paho_tls(broker, pki, "tls", uid("live-"))
    live.connect()
    live.subscribe(topic, 0)
    before = metric(broker, "connections.refused.tls")
    # a plain MQTT client on the TLS port
    with socket.create_connection(("127.0.0.1", broker.ports["tls"]), timeout=WAIT) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        assert s.recv(100) == b""
    # a handshake that never finishes: closed within the zone's idle timeout (2 s)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", broker.ports["tls"]), timeout=WAIT * 2) as s:
        assert s.recv(100) == b""
    assert time.monotonic() - t0 < 2 + WAIT
    # half a ClientHello, then silence
    with socket.create_connection(("127.0.0.1", broker.ports["tls"]), timeout=WAIT * 2) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert s.recv(100) == b""
    # a TLS client on the plain port: the broker's first-byte check refuses it
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_connect(broker, "default", client_ctx(pki))
    deadline = time.monotonic() + WAIT
    while metric(broker, "connections.refused.tls") < before + 3:
        assert time.monotonic() < deadline, metric(broker, "connections.refused.tls")
        time.sleep(0.05)
    # the live client never noticed
    pub = Client(broker, uid("p-"))
    pub.connect()
    pub.publish(topic, b"still here")
    assert live.expect_message().payload == b"still here"
    assert "not TLS (a plain MQTT client on a TLS port?)" in broker.log()
    assert_clean_log(broker)
    pub.close()
    live.close()


def test_failed_handshakes_give_back_their_max_connections_slot(broker: BrokerProcess,
                                                                pki: Pki) -> None:
    # mtls allows 3 connections: many failed handshakes must not use them up
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", broker.ports["mtls"]), timeout=WAIT) as s:
            s.sendall(b"not tls at all\r\n\r\n")
            assert s.recv(100) == b""
    clients = [paho_tls(broker, pki, "mtls", uid("slot-"), pki.client(f"slot-{i}"))
               for i in range(3)]
    for c in clients:
        c.connect()
    for c in clients:
        c.close()


# --- files: start and config check ------------------------------------------------------------


@pytest.mark.parametrize("case", ["expired", "mismatch", "unreadable", "no_password",
                                  "wrong_password", "no_cafile"])
def test_bad_tls_files_stop_the_start_and_fail_config_check(pki: Pki, tmp_path: Path,
                                                            case: str) -> None:
    keys = {"certfile": pki.server_cert, "keyfile": pki.server_key}
    expect = ""
    extra = ""
    if case == "expired":
        keys = {"certfile": pki.expired_server_cert, "keyfile": pki.expired_server_key}
        expect = "listeners.bad.certfile: "
        word = "expired on"
    elif case == "mismatch":
        keys["keyfile"] = pki.mismatched_key
        expect, word = "listeners.bad.keyfile: ", "is not the key of the certificate"
    elif case == "unreadable":
        keys["certfile"] = tmp_path / "missing.pem"
        expect, word = "listeners.bad.certfile: cannot read", "No such file"
    elif case == "no_password":
        keys["keyfile"] = pki.server_key_encrypted
        expect, word = "listeners.bad.keyfile_password: ", "is encrypted"
    elif case == "wrong_password":
        keys["keyfile"] = pki.server_key_encrypted
        extra = 'keyfile_password = "not it"\n'
        expect, word = "listeners.bad.keyfile: ", "wrong keyfile_password"
    else:
        extra = 'verify = "required"\n'
        expect, word = "listeners.bad.cafile: required", "verify"
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f"""[listeners.bad]
type = "ssl"
bind = "127.0.0.1"
port = 0
certfile = "{keys['certfile']}"
keyfile = "{keys['keyfile']}"
{extra}""")
    check = run_mqttd("config", "check", "-c", str(conf))
    assert check.returncode == 2, check
    assert expect in check.stderr and word in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    start = run_mqttd("start", "-c", str(conf), "--data-dir", str(tmp_path / "data"),
                      timeout=30)
    assert start.returncode != 0
    out = start.stdout + start.stderr
    assert expect in out and word in out, out
    assert "Traceback" not in out


def test_tls_keys_on_a_tcp_listener_are_refused_with_a_hint(tmp_path: Path) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text('[listeners.x]\nbind = "127.0.0.1"\nport = 0\ncertfile = "a.pem"\n'
                    'path = "/mqtt"\n')
    r = run_mqttd("config", "check", "-c", str(conf))
    assert r.returncode == 2
    assert "listeners.x.certfile: only for a TLS listener" in r.stderr
    assert "listeners.x.path: only for a WebSocket listener" in r.stderr


def test_relative_tls_paths_are_read_from_the_config_directory(pki: Pki, tmp_path: Path
                                                               ) -> None:
    conf = pki.dir / f"{uid('rel-')}.toml"
    conf.write_text('[listeners.r]\ntype = "ssl"\nbind = "127.0.0.1"\nport = 0\n'
                    f'certfile = "{pki.server_cert.name}"\nkeyfile = "{pki.server_key.name}"\n')
    try:
        r = subprocess.run([*run_mqttd.__globals__["MQTTD"], "config", "check", "-c",
                            str(conf)], capture_output=True, text=True, cwd=tmp_path,
                           timeout=30, check=False)
        assert r.returncode == 0, r.stderr
    finally:
        conf.unlink()


# --- reload -----------------------------------------------------------------------------------


def test_certificate_reload_keeps_live_connections(pki: Pki, tmp_path: Path) -> None:
    own = make_pki(tmp_path / "pki")
    with checked_broker(tls_config(own)) as b:
        topic = uid("reload/")
        old_client = paho_tls(b, own, "tls", uid("old-"))
        old_client.connect()
        old_client.subscribe(topic, 1)
        first = serial_served(b, own)
        assert first == own.server_serial
        assert f"listener tls: TLS certificate {own.server_chain} valid until" in b.log()
        # ctl listeners reload
        new = own.renew_server()
        assert serial_served(b, own) == first  # nothing reloaded yet
        r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "listeners", "reload", "tls")
        assert r.returncode == 0, r
        assert serial_served(b, own) == new
        # SIGHUP reloads every TLS listener
        newer = own.renew_server()
        os.kill(b.proc.pid, signal.SIGHUP)
        wait_log(b, "listener mtls: TLS certificate and key reloaded")
        assert serial_served(b, own) == newer
        # the connection made before both reloads is still served
        pub = Client(b, uid("p-"))
        pub.connect()
        pub.publish(topic, b"after reloads", qos=1)
        assert old_client.expect_message().payload == b"after reloads"
        # a bad new file: refused with the reason, the old certificate stays in use
        good = own.server_chain.read_bytes()
        own.server_chain.write_text("not a certificate\n")
        r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "listeners", "reload", "tls")
        assert r.returncode != 0
        assert "listeners.tls.certfile" in r.stdout + r.stderr
        assert serial_served(b, own) == newer
        own.server_chain.write_bytes(good)
        # a listener without TLS cannot be reloaded
        r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "listeners", "reload", "default")
        assert r.returncode != 0 and "no TLS" in r.stdout + r.stderr
        pub.close()
        old_client.close()
