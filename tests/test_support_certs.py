"""The certificates of ``support.certs`` work in real TLS: Debian's mosquitto serves them with
``require_certificate true``, mosquitto_pub and paho-mqtt (hostname checked) get a message
through, and an ``ssl`` client refuses an expired server certificate and one from another CA
(and the server refuses a client certificate from another CA)."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from support import WAIT, uid
from support.certs import Pki, fingerprint, make_pki
from support.mosquitto import MOSQUITTO, Mosquitto

pytestmark = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO) or shutil.which("mosquitto_pub") is None,
    reason="Debian's mosquitto broker and clients are not installed")


def tls_lines(pki: Pki, cert: Path, key: Path) -> list[str]:
    return [f"cafile {pki.ca_cert}", f"certfile {cert}", f"keyfile {key}",
            "require_certificate true"]


def client_context(cafile: Path, cert: tuple[Path, Path] | None = None, *,
                   tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))  # verifies chain and host name
    if cert:
        ctx.load_cert_chain(*map(str, cert))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True if the server ends the connection instead of answering CONNECT. Under TLS 1.3
    the client's handshake is over before the server has judged the client's certificate, so
    the refusal shows later: an alert, an EOF or a reset, depending on timing."""
    try:
        return handshake(port, ctx) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def handshake(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """TLS handshake, then an MQTT 3.1.1 CONNECT; returns what the server answered (b"" if
    it closed). Raises what the ``ssl`` module raised."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
        return s.recv(16)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def test_round_trip_mosquitto_pub_to_paho_with_client_certificates(pki: Pki) -> None:
    with Mosquitto(tls_lines(pki, pki.server_cert, pki.server_key)) as broker:
        got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        subscribed: queue.Queue[bool] = queue.Queue()
        topic = uid("certs/")
        cert, key = pki.client("paho-subscriber", san="sub@example.test")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uid("paho-"))
        c.tls_set(ca_certs=str(pki.ca_cert), certfile=str(cert), keyfile=str(key))
        c.tls_insecure_set(False)  # the host name 127.0.0.1 must be in the certificate
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_: subscribed.put(True)
        c.on_message = lambda _c, _u, m: got.put(m)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:
            assert subscribed.get(timeout=WAIT), broker.log()
            pub_cert, pub_key = pki.client("mosquitto-pub", san="pub.example.test")
            done = subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                 "--cafile", str(pki.ca_cert), "--cert", str(pub_cert), "--key", str(pub_key),
                 "-t", topic, "-m", "through TLS"],
                capture_output=True, text=True, timeout=WAIT * 2, check=False)
            assert done.returncode == 0, (done.stderr, broker.log())
            msg = got.get(timeout=WAIT)
            assert (msg.topic, msg.payload) == (topic, b"through TLS")
        finally:
            c.disconnect()
            c.loop_stop()


def test_ssl_client_accepts_the_server_for_ip_and_dns_name(pki: Pki) -> None:
    with Mosquitto(tls_lines(pki, pki.server_chain, pki.server_key)) as broker:
        ctx = client_context(pki.ca_cert, pki.client("ssl-client"))
        for host in ("127.0.0.1", "localhost"):
            assert handshake(broker.port, ctx, host) == bytes([0x20, 2, 0, 0]), broker.log()
        # The same server certificate refuses a name it does not carry.
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            handshake(broker.port, ctx, "example.test")


def test_ssl_client_refuses_an_expired_server_certificate(pki: Pki) -> None:
    lines = tls_lines(pki, pki.expired_server_cert, pki.expired_server_key)
    with Mosquitto(lines) as broker:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired") as err:
            handshake(broker.port, client_context(pki.ca_cert, pki.client("c")))
        assert err.value.verify_code == 10  # X509_V_ERR_CERT_HAS_EXPIRED


def test_wrong_ca_is_refused_both_ways(pki: Pki) -> None:
    with Mosquitto(tls_lines(pki, pki.server_cert, pki.server_key)) as broker:
        # The client trusts only the unrelated CA: the server's certificate does not verify.
        with pytest.raises(ssl.SSLCertVerificationError) as err:
            handshake(broker.port, client_context(pki.other_ca_cert, pki.client("c")))
        # 19 (self-signed certificate in chain): OpenSSL in mosquitto completes the chain it
        # sends from its cafile, so the client sees the (untrusted) CA; 20 if it did not.
        assert err.value.verify_code in (19, 20), err.value
        # The client presents a certificate of the unrelated CA: the server refuses it; under
        # TLS 1.2 the handshake itself fails with the server's alert.
        wrong = pki.client("c", other_ca=True)
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
            handshake(broker.port, client_context(pki.ca_cert, wrong, tls12=True))
        assert refused(broker.port, client_context(pki.ca_cert, wrong))
        # And a client with no certificate at all (require_certificate true).
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            handshake(broker.port, client_context(pki.ca_cert, tls12=True))
        assert refused(broker.port, client_context(pki.ca_cert))
        assert "certificate verify failed" in broker.log()


def test_keys_encrypted_mismatched_and_client_names(pki: Pki) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_cert_chain(pki.server_cert, pki.server_key_encrypted, pki.server_key_password)
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(pki.server_cert, pki.server_key_encrypted, "wrong password")
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        ctx.load_cert_chain(pki.server_cert, pki.mismatched_key)
    cert_path, _ = pki.client("alice", san=["alice@example.test", "alice.example.test"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=alice,O=mqttd tests"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.test"]
    assert san.get_values_for_type(x509.DNSName) == ["alice.example.test"]


def test_renew_server_writes_a_new_certificate_that_is_served(pki: Pki) -> None:
    before, old_serial = fingerprint(pki.server_cert), pki.server_serial
    serial = pki.renew_server()
    assert serial != old_serial and fingerprint(pki.server_cert) != before
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the renewed files still pair up
    ctx.load_cert_chain(pki.server_chain, pki.server_key_encrypted, pki.server_key_password)
    with Mosquitto(tls_lines(pki, pki.server_cert, pki.server_key)) as broker:
        cctx = client_context(pki.ca_cert, pki.client("c"))
        with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT) as raw, \
                cctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            served = s.getpeercert(binary_form=True)
        assert served is not None
        assert x509.load_der_x509_certificate(served).serial_number == serial
