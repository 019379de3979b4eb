"""JWT authentication end to end: a real broker with ``type = "jwt"`` providers, real paho
clients, tokens signed here with PyJWT (HS256 secrets; RS256 keys generated here with
``cryptography``).

What is checked: valid HS256 and RS256 tokens connect; an expired token, a bad signature,
an algorithm the provider does not allow, a failing claim (``sub`` is not the client id)
are refused with 0x86 and logged without the token; something that is not a JWT is
ignored (anonymous access then decides); the ACL claim is enforced with no ``[authz]``
source configured (PUBACK/SUBACK 0x87 outside it), the superuser claim bypasses it; the
token may come in the user name; bad options stop ``mqttd config check`` with one line per
problem.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support import WAIT, uid
from support.process import BrokerProcess, checked_broker, log_size, run_mqttd, wait_log

pytest_plugins = ["support.fixtures"]

SECRET = "mqttd-test-secret-of-at-least-32-bytes!"
BAD_USER = 0x86
NOT_AUTHORIZED = 0x87
#: A PUBACK that let the message through (0x10: no subscriber matched).
PASSED = {0, 0x10}

HS_CONFIG = f"""
[[auth.providers]]
type = "jwt"
secret = "{SECRET}"
verify_claims = {{ sub = "${{clientid}}" }}
superuser_claim = "is_superuser"

[zones.strict]
allow_anonymous = false

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.strict]
bind = "127.0.0.1"
port = 0
zone = "strict"
"""


def hs_token(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, secret, algorithm=alg)


@pytest.fixture(scope="module")
def broker():
    with checked_broker(HS_CONFIG) as b:
        yield b


def refused(clients: Any, broker: BrokerProcess, client_id: str, password: str,
            port: str = "default") -> int:
    c = clients(client_id, connect=False, version=5, username="u", password=password,
                port=broker.ports[port])
    _, rc, _ = c.connect(expect_ok=False)
    return int(rc.value)


# --- HS256 ------------------------------------------------------------------------------

def test_valid_hs256_token_connects_on_a_listener_without_anonymous_access(clients, broker):
    cid = uid("jwt-")
    c = clients(cid, version=5, username="u", password=hs_token({"sub": cid}),
                port=broker.ports["strict"])
    topic = uid("t/")
    assert c.subscribe(topic, 1) == [1]
    assert c.publish(topic, b"x", 1) == 0
    assert c.expect_message().payload == b"x"


@pytest.mark.parametrize("case", ["expired", "bad_signature", "claim_mismatch", "not_yet_valid",
                                  "algorithm"])
def test_bad_tokens_are_refused_with_0x86_and_never_logged(clients, broker, case):
    cid = uid("jwt-")
    token = {
        "expired": lambda: hs_token({"sub": cid, "exp": int(time.time()) - 10}),
        "bad_signature": lambda: hs_token({"sub": cid}, secret="another-secret-32-bytes-long!!!!"),
        "claim_mismatch": lambda: hs_token({"sub": "someone-else"}),
        "not_yet_valid": lambda: hs_token({"sub": cid, "nbf": int(time.time()) + 600}),
        # a 48-byte secret: HS384 is not in this provider's algorithms (HS256 only)
        "algorithm": lambda: hs_token({"sub": cid}, secret=SECRET + "x" * 10, alg="HS384"),
    }[case]()
    start = log_size(broker)
    # refused even where anonymous clients are allowed: the token is wrong, not absent
    assert refused(clients, broker, cid, token) == BAD_USER
    reason = {"expired": "token expired", "bad_signature": "signature does not verify",
              "claim_mismatch": "claim 'sub' does not match",
              "not_yet_valid": "token not yet valid", "algorithm": "algorithm not allowed"}[case]
    wait_log(broker, f"client {cid} refused", start=start)
    line = next(ln for ln in broker.log()[start:].splitlines() if f"client {cid} refused" in ln)
    assert f"jwt: {reason}" in line and " INFO " in line, line
    assert token not in broker.log()
    assert token.split(".")[2] not in broker.log()  # not even the signature


def test_missing_claim_is_refused(clients, broker):
    cid = uid("jwt-")
    assert refused(clients, broker, cid, hs_token({"name": "no sub"})) == BAD_USER


def test_a_password_that_is_not_a_jwt_is_ignored(clients, broker):
    """Not a JWT: the provider has no opinion (a password file after it could accept it).
    With no other provider nobody knows the user name, so the client is refused, also where
    anonymous access is allowed (a user name nobody vouched for would carry its ACL rights)."""
    cid = uid("plain-")
    assert refused(clients, broker, cid, "just a password") == BAD_USER
    assert refused(clients, broker, uid("plain-"), "just a password", "strict") == BAD_USER
    assert refused(clients, broker, uid("plain-"), "a.b.c", "strict") == BAD_USER
    assert f"client {cid} refused" in broker.log()


def test_acl_claim_is_enforced_without_authz_sources(clients, broker):
    cid = uid("acl-")
    acl = [{"permission": "allow", "action": "publish", "topic": "dev/${clientid}/#"},
           {"permission": "allow", "action": "subscribe",
            "topics": ["cmd/${clientid}", "eq q/#"]},
           {"permission": "deny", "action": "all", "topic": "#"}]
    c = clients(cid, version=5, username="u", password=hs_token({"sub": cid, "acl": acl}))
    assert c.publish(f"dev/{cid}/temp", b"1", 1) in PASSED
    assert c.publish("dev/other/temp", b"1", 1) == NOT_AUTHORIZED
    assert c.publish(uid("free/"), b"1", 1) == NOT_AUTHORIZED
    assert c.subscribe(f"cmd/{cid}", 1) == [1]
    assert c.subscribe("q/#", 1) == [1]            # "eq": this filter itself
    assert c.subscribe("q/a", 1) == [NOT_AUTHORIZED]
    assert c.subscribe("cmd/#", 1) == [NOT_AUTHORIZED]
    assert c.subscribe(f"$share/g/cmd/{cid}", 1) == [1]  # a shared subscription: its filter
    # a client without an ACL is not restricted (no [authz] source: everything else allowed)
    free = clients(uid("free-"), version=5)
    assert free.publish("dev/other/temp", b"1", 1) in PASSED


def test_map_form_acl_denies_what_it_does_not_list(clients, broker):
    cid = uid("acl-")
    acl = {"pub": [f"up/{cid}"], "sub": ["down/${clientid}"]}
    c = clients(cid, version=5, username="u", password=hs_token({"sub": cid, "acl": acl}))
    assert c.publish(f"up/{cid}", b"1", 1) in PASSED
    assert c.publish(f"down/{cid}", b"1", 1) == NOT_AUTHORIZED
    assert c.subscribe(f"down/{cid}", 1) == [1]
    assert c.subscribe(f"up/{cid}", 1) == [NOT_AUTHORIZED]


def test_malformed_acl_claim_refuses_the_token(clients, broker):
    cid = uid("acl-")
    for acl in ([{"permission": "maybe", "action": "publish", "topic": "a"}],
                [{"permission": "allow", "action": "publish", "topic": "a/#/b"}],
                [{"permission": "allow", "action": "publish", "topic": "a", "qos": 1}],
                "everything"):
        assert refused(clients, broker, cid, hs_token({"sub": cid, "acl": acl})) == BAD_USER


def test_superuser_claim_bypasses_the_acl(clients, broker):
    cid = uid("su-")
    deny_all = [{"permission": "deny", "action": "all", "topic": "#"}]
    c = clients(cid, version=5, username="u",
                password=hs_token({"sub": cid, "acl": deny_all, "is_superuser": True}))
    assert c.publish(uid("any/"), b"1", 1) in PASSED
    cid = uid("su-")
    plain = clients(cid, version=5, username="u",
                    password=hs_token({"sub": cid, "acl": deny_all, "is_superuser": False}))
    assert plain.publish(uid("any/"), b"1", 1) == NOT_AUTHORIZED


def test_mqtt311_client_refused_with_return_code_4(clients, broker):
    cid = uid("jwt-")
    c = clients(cid, connect=False, version=4, username="u",
                password=hs_token({"sub": cid, "exp": int(time.time()) - 1}))
    _, rc, _ = c.connect(expect_ok=False)
    assert int(rc.value) == BAD_USER  # paho maps 3.1.1's 4 onto 0x86


# --- RS256 and the token in the user name ------------------------------------------------

@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("jwt") / "public.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, other, path


@pytest.fixture(scope="module")
def rs_broker(rsa_keys):
    _, _, path = rsa_keys
    config = f"""
[[auth.providers]]
type = "jwt"
public_key_file = "{path}"
algorithms = ["RS256"]
from = "username"
verify_claims = {{ sub = "${{clientid}}", aud = "mqttd" }}

[zones.default]
allow_anonymous = false
"""
    with checked_broker(config) as b:
        yield b


def test_rs256_token_in_the_user_name(clients, rs_broker, rsa_keys):
    key, other, _ = rsa_keys
    cid = uid("rs-")
    now = int(time.time())
    good = jwt.encode({"sub": cid, "aud": ["x", "mqttd"], "exp": now + 60}, key,
                      algorithm="RS256")
    c = clients(cid, broker=rs_broker, version=5, username=good)
    assert c.publish(uid("t/"), b"1", 1) in PASSED
    for token in (jwt.encode({"sub": cid, "aud": "mqttd"}, other, algorithm="RS256"),
                  jwt.encode({"sub": cid, "aud": "mqttd"}, key, algorithm="RS512"),
                  jwt.encode({"sub": cid, "aud": "other"}, key, algorithm="RS256"),
                  jwt.encode({"sub": cid, "aud": "mqttd", "exp": now - 5}, key,
                             algorithm="RS256")):
        r = clients(cid, broker=rs_broker, connect=False, version=5, username=token)
        _, rc, _ = r.connect(expect_ok=False)
        assert int(rc.value) == BAD_USER
    # the password is not where this provider looks: ignored, and anonymous access is off
    r = clients(cid, broker=rs_broker, connect=False, version=5, username="u", password=good)
    _, rc, _ = r.connect(expect_ok=False)
    assert int(rc.value) == BAD_USER


# --- configuration errors ----------------------------------------------------------------

def test_bad_options_fail_config_check_with_one_line_each(tmp_path: Path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = weak.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "weak.pem").write_bytes(pem)
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text(f"""
[[auth.providers]]
type = "jwt"
secret = "short"
from = "header"
verfiy_claims = {{ sub = "x" }}

[[auth.providers]]
type = "jwt"
public_key_file = "{tmp_path / 'weak.pem'}"

[[auth.providers]]
type = "jwt"
public_key_file = "{tmp_path / 'missing.pem'}"
algorithms = ["HS256"]

[[auth.providers]]
type = "jwt"
secret = "{SECRET}"
verify_claims = {{ sub = "${{peer}}" }}
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    expected = [
        "auth.providers[0].from: 'header' is not one of password, username",
        "auth.providers[0].secret: 5 bytes is too short for HS256",
        "auth.providers[0].verfiy_claims: unknown key (did you mean verify_claims?)",
        "auth.providers[1].public_key_file: a 1024-bit RSA key is too weak",
        "auth.providers[2].public_key_file: " + str(tmp_path / "missing.pem"),
        "auth.providers[3].verify_claims.sub: unknown placeholder ${peer}",
    ]
    for text in expected:
        assert any(text in ln for ln in lines), (text, done.stderr)
    assert "Traceback" not in done.stderr
    # and start fails the same way, before any listener
    start = run_mqttd("start", "-c", str(cfg), "--data-dir", str(tmp_path / "data"))
    assert start.returncode != 0
    assert "auth.providers[0].secret" in start.stdout + start.stderr
    assert "Traceback" not in start.stdout + start.stderr


# --- disconnect_after_expire --------------------------------------------------------------------

def test_a_client_is_disconnected_when_its_token_expires(clients, broker):
    """EMQX's default (disconnect_after_expire = true): connected with a token that ends in a
    few seconds, the client is disconnected then (MQTT 5: 0x87)."""
    cid = uid("jwt-")
    token = jwt.encode({"sub": cid, "exp": int(time.time()) + 3}, SECRET, algorithm="HS256")
    c = clients(cid, version=5, username="u", password=token, port=broker.ports["strict"])
    rc, _ = c.wait_disconnected(timeout=WAIT + 4)
    assert int(rc.value) == NOT_AUTHORIZED
    assert f"client {cid}: its token expired: disconnecting it" in broker.log()


def test_disconnect_after_expire_false_keeps_the_client(clients):
    config = HS_CONFIG.replace('superuser_claim = "is_superuser"',
                               'superuser_claim = "is_superuser"\n'
                               'disconnect_after_expire = false')
    with checked_broker(config) as b:
        cid = uid("jwt-")
        token = jwt.encode({"sub": cid, "exp": int(time.time()) + 2}, SECRET,
                           algorithm="HS256")
        c = clients(cid, broker=b, version=5, username="u", password=token,
                    port=b.ports["strict"])
        time.sleep(3.5)  # past the token's end (bounded: a fixed wait)
        topic = uid("t/")
        assert c.subscribe(topic, 1) == [1]
        assert c.disconnected is None
