"""JWT keys from a JSON Web Key Set (``jwks_url``) end to end: a real aiohttp server on
127.0.0.1 (its own loop on a thread) serves a JWKS of keys generated here (RSA 2048 and EC
P-256); a real broker fetches it; real paho clients connect with tokens signed by PyJWT.

What is checked: a token signed by a key of the set connects (RSA and EC, chosen by
``kid``), a wrong signature under a known kid is refused; a token naming a kid the set does
not hold is refused until the server serves that key and the broker fetches the set again;
unknown kids do not make a request each (``jwks_min_interval``); a key replaced under the
same kid works after the periodic refresh (``jwks_refresh``) and the old one no longer does;
a set that cannot be fetched refuses tokens with 0x88 and says so in the log without the
token; bad options fail ``mqttd config check`` with one line each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support import WAIT, uid
from support.clients import Clients
from support.httpserver import ThreadedHttpServer
from support.process import BrokerProcess, checked_broker, log_size, run_mqttd, wait_log

pytest_plugins = ["support.fixtures"]

BAD_USER = 0x86
SERVER_UNAVAILABLE = 0x88


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str) -> dict[str, Any]:
    """The public JWK of a private key, with its kid."""
    pub = key.public_key()
    algo = RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm
    data: dict[str, Any] = algo.to_jwk(pub, as_dict=True)
    data["kid"] = kid
    data["use"] = "sig"
    return data


class JwksServer(ThreadedHttpServer):
    """aiohttp serving ``self.keys`` as a JWKS at /jwks; ``fetches`` counts requests."""

    NAME = "the JWKS server"

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/jwks"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/jwks", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        return web.json_response({"keys": list(self.keys)})


@pytest.fixture
def clients() -> Iterator[Clients]:
    """paho clients; each test starts its own broker and names it in every call."""
    made = Clients(None)  # type: ignore[arg-type]
    yield made
    made.close_all()


@pytest.fixture
def server() -> Iterator[JwksServer]:
    s = JwksServer()
    yield s
    s.close()


def config(url: str, extra: str = "") -> str:
    return f"""
[[auth.providers]]
type = "jwt"
jwks_url = "{url}"
verify_claims = {{ sub = "${{clientid}}" }}
{extra}

[zones.default]
allow_anonymous = false
"""


def token(key: Any, kid: str | None, cid: str, alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": cid, "exp": int(time.time()) + 300}, key, algorithm=alg,
                      headers=headers)


def connect_rc(clients: Any, broker: BrokerProcess, cid: str, password: str) -> int:
    c = clients(cid, broker=broker, connect=False, version=5, username="u", password=password)
    _, rc, _ = c.connect(expect_ok=False)
    if int(rc.value) == 0:
        c.disconnect()
    return int(rc.value)


def until_accepted(clients: Any, broker: BrokerProcess, key: Any, kid: str,
                   alg: str = "RS256") -> int:
    """Connect with a fresh token until it is accepted (at most WAIT seconds); the tries
    it took."""
    deadline = time.monotonic() + WAIT
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        cid = uid("jwks-")
        if connect_rc(clients, broker, cid, token(key, kid, cid, alg)) == 0:
            return tries
        time.sleep(0.2)
    raise AssertionError(f"a token with kid {kid} was never accepted")


def test_tokens_signed_by_keys_of_the_set_connect(clients, server):
    rsa_a, ec_b, other = rsa_key(), ec.generate_private_key(ec.SECP256R1()), rsa_key()
    server.keys = [jwk(rsa_a, "a"), jwk(ec_b, "b")]
    with checked_broker(config(server.url)) as broker:
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(rsa_a, "a", cid)) == 0
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(ec_b, "b", cid, "ES256")) == 0
        # the right kid, the wrong key: the signature does not verify
        cid = uid("jwks-")
        bad = token(other, "a", cid)
        start = log_size(broker)
        assert connect_rc(clients, broker, cid, bad) == BAD_USER
        wait_log(broker, f"client {cid} refused", start=start)
        assert "jwt: signature does not verify" in broker.log()[start:]
        # an RSA key's kid with an EC algorithm in the header: not that key's algorithm
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(ec_b, "a", cid, "ES256")) == BAD_USER
        assert bad not in broker.log()
        assert "jwt: 2 keys from " + server.url in broker.log()
    # one fetch served every check (the set is kept)
    assert server.fetches == 1


def test_unknown_kid_is_refused_until_the_set_serving_it_is_fetched(clients, server):
    rsa_a, rsa_b = rsa_key(), rsa_key()
    server.keys = [jwk(rsa_a, "a")]
    with checked_broker(config(server.url, 'jwks_min_interval = "0.5s"')) as broker:
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(rsa_a, "a", cid)) == 0
        cid = uid("jwks-")
        start = log_size(broker)
        assert connect_rc(clients, broker, cid, token(rsa_b, "b", cid)) == BAD_USER
        wait_log(broker, f"client {cid} refused", start=start)
        assert "jwt: no key with this kid in the key set" in broker.log()[start:]
        fetched = server.fetches
        server.keys = [jwk(rsa_a, "a"), jwk(rsa_b, "b")]  # the issuer publishes key b
        until_accepted(clients, broker, rsa_b, "b")
        assert server.fetches > fetched
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(rsa_a, "a", cid)) == 0


def test_unknown_kids_do_not_make_a_request_each(clients, server):
    rsa_a, stranger = rsa_key(), rsa_key()
    server.keys = [jwk(rsa_a, "a")]
    extra = 'jwks_refresh = "1h"\njwks_min_interval = "1h"'
    with checked_broker(config(server.url, extra)) as broker:
        for n in range(8):
            cid = uid("jwks-")
            assert connect_rc(clients, broker, cid, token(stranger, f"made-up-{n}", cid)) \
                == BAD_USER
        # the first check fetched the set; the unknown kids after it ask no more
        assert server.fetches == 1
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(rsa_a, "a", cid)) == 0


def test_a_rotated_key_works_after_the_periodic_refresh(clients, server):
    old, new = rsa_key(), rsa_key()
    server.keys = [jwk(old, "k")]
    extra = 'jwks_refresh = "1s"\njwks_min_interval = "1s"'
    with checked_broker(config(server.url, extra)) as broker:
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(old, "k", cid)) == 0
        # the issuer replaces the key under the same kid: no unknown kid tells the broker,
        # only the refresh brings the new key
        server.keys = [jwk(new, "k")]
        until_accepted(clients, broker, new, "k")
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(old, "k", cid)) == BAD_USER
        # and a key removed from the set is no longer taken
        server.keys = [jwk(new, "k2")]
        until_accepted(clients, broker, new, "k2")
        cid = uid("jwks-")
        assert connect_rc(clients, broker, cid, token(new, "k", cid)) == BAD_USER


def test_a_set_that_cannot_be_fetched_refuses_with_0x88_and_logs_no_token(clients, server):
    key = rsa_key()
    url = f"http://127.0.0.1:{server.port}/missing"
    with checked_broker(config(url)) as broker:
        cid = uid("jwks-")
        sent = token(key, "a", cid)
        start = log_size(broker)
        assert connect_rc(clients, broker, cid, sent) == SERVER_UNAVAILABLE
        wait_log(broker, f"jwt: JWKS {url} answered 404", start=start)
        wait_log(broker, f"client {cid} refused", start=start)
        assert sent not in broker.log() and sent.split(".")[2] not in broker.log()


def test_bad_jwks_options_fail_config_check_with_one_line_each(tmp_path: Path):
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text("""
[[auth.providers]]
type = "jwt"
jwks_url = "ftp://keys.example/jwks"
jwks_refresh = "soon"

[[auth.providers]]
type = "jwt"
jwks_url = "https://keys.example/jwks"
secret = "a-secret-of-at-least-32-bytes-for-hs256"

[[auth.providers]]
type = "jwt"
jwks_url = "https://keys.example/jwks"
jwks_refresh = "10s"
jwks_min_interval = "1m"
algorithms = ["HS256"]

[[auth.providers]]
type = "jwt"
secret = "a-secret-of-at-least-32-bytes-for-hs256"
jwks_refresh = "10s"

[[auth.providers]]
type = "jwt"
jwks_url = "http://127.0.0.1/jwks"
jwks_cafile = "/nonexistent/ca.pem"
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    expected = [
        "auth.providers[0].jwks_url: expected https://HOST[:PORT]/PATH",
        "auth.providers[0].jwks_refresh: not a duration: 'soon'",
        "auth.providers[1].secret: set exactly one of secret, public_key, public_key_file, "
        "jwks_url (got secret, jwks_url)",
        "auth.providers[2].jwks_min_interval: 60s is longer than jwks_refresh (10s)",
        "auth.providers[2].algorithms: HS256 does not fit the key",
        "auth.providers[3].jwks_refresh: only with jwks_url",
        "auth.providers[4].jwks_cafile: only for an https:// jwks_url",
    ]
    lines = done.stderr.splitlines()
    for text in expected:
        assert any(text in ln for ln in lines), (text, done.stderr)
    assert "Traceback" not in done.stderr
