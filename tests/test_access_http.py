"""HTTP authentication end to end: a real aiohttp server on 127.0.0.1 (port 0, its own
event loop on a thread) answers as EMQX 5's HTTP authenticator expects; a real broker with
``type = "http"`` asks it; real paho and raw-socket clients connect.

The server's answer depends on the user name: ``allow``, ``deny``, ``ignore``, ``super``
(is_superuser), ``acl`` (an ACL in the answer), ``nocontent`` (204), ``err500``, ``text``
(200 with a text body), ``slow`` (waits for the test to release it) and ``hang`` (never
answers within the provider's timeout). The listener refuses anonymous clients, so
*ignore* shows as 0x86 from ``allow_anonymous``, *deny* as the server's 0x87.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from support import builder as B, uid
from support.certs import make_pki
from support.httpserver import ThreadedHttpServer
from support.process import BrokerProcess, checked_broker, log_size, run_mqttd, wait_log

from mqttd.mqtt.packets import Connack

pytest_plugins = ["support.fixtures"]

BAD_USER = 0x86
NOT_AUTHORIZED = 0x87
PASSED = {0, 0x10}
TIMEOUT = 1.0


class AuthServer(ThreadedHttpServer):
    """The authentication server: aiohttp on its own loop and thread; ``requests`` keeps
    what each request carried (method, path, query, headers, body)."""

    NAME = "the auth server"

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release: asyncio.Event | None = None
        self.waiting = threading.Event()
        super().__init__(ssl_context)

    def routes(self, app: web.Application) -> None:
        self.release = asyncio.Event()
        app.router.add_route("*", "/auth/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw and request.content_type == "application/json" else \
            dict(await request.post()) if raw else {}
        self.requests.append({"method": request.method, "path": request.path,
                              "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        user = body.get("username") or request.query.get("username", "")
        kind = user.split("-")[0]
        if kind == "slow":
            self.waiting.set()
            assert self.release is not None
            await asyncio.wait_for(self.release.wait(), 10)
            return web.json_response({"result": "allow"})
        if kind == "hang":
            await asyncio.sleep(TIMEOUT * 3)
            return web.json_response({"result": "allow"})
        if kind == "err500":
            return web.json_response({"result": "allow"}, status=500)
        if kind == "nocontent":
            return web.Response(status=204)
        if kind == "text":
            return web.Response(text="allow")
        if kind == "super":
            return web.json_response({"result": "allow", "is_superuser": True,
                                      "acl": [{"permission": "deny", "action": "all",
                                               "topic": "#"}]})
        if kind == "acl":
            return web.json_response({"result": "allow", "acl": [
                {"permission": "allow", "action": "publish", "topic": "http/${clientid}"},
                {"permission": "deny", "action": "all", "topic": "#"}]})
        if kind == "badacl":
            return web.json_response({"result": "allow", "acl": [{"permission": "allow"}]})
        if kind in ("allow", "deny", "ignore"):
            if body.get("password", request.query.get("password")) != "pw":
                return web.json_response({"result": "deny"})
            return web.json_response({"result": kind})
        return web.json_response({})  # no result: ignore

    def unblock(self) -> None:
        def go() -> None:
            assert self.release is not None
            self.release.set()
        self.loop.call_soon_threadsafe(go)


@pytest.fixture(scope="module")
def server() -> Iterator[AuthServer]:
    s = AuthServer()
    yield s
    s.close()


def config(url: str, extra: str = "") -> str:
    return f"""
[[auth.providers]]
type = "http"
url = "{url}"
timeout = "{TIMEOUT}s"
{extra}

[zones.default]
allow_anonymous = false
"""


@pytest.fixture(scope="module")
def broker(server: AuthServer) -> Iterator[BrokerProcess]:
    extra = 'headers = { x-listener = "${listener}", x-client = "${clientid}" }\n' \
            'body = { clientid = "${clientid}", username = "${username}", ' \
            'password = "${password}", peer = "${peerhost}", port = "${sockport}", ' \
            'nested = { id = "${clientid}", n = 1 } }'
    with checked_broker(config(f"http://127.0.0.1:{server.port}/auth/post", extra)) as b:
        yield b


def connect_rc(clients: Any, broker: BrokerProcess, username: str, password: str = "pw",
               client_id: str | None = None) -> int:
    c = clients(client_id or uid("h-"), broker=broker, connect=False, version=5,
                username=username, password=password)
    _, rc, _ = c.connect(expect_ok=False)
    return int(rc.value)


def test_allow_deny_ignore_and_no_result(clients, broker, server):
    assert connect_rc(clients, broker, "allow") == 0
    assert connect_rc(clients, broker, "allow", "wrong") == NOT_AUTHORIZED  # the server's deny
    assert connect_rc(clients, broker, "deny") == NOT_AUTHORIZED
    assert connect_rc(clients, broker, "ignore") == BAD_USER  # nobody vouched: refused
    assert connect_rc(clients, broker, "nothing") == BAD_USER
    assert connect_rc(clients, broker, "nocontent") == 0      # 204 allows


def test_request_carries_the_templates_filled_in(clients, broker, server):
    cid = uid("tpl-")
    before = len(server.requests)
    assert connect_rc(clients, broker, "allow", client_id=cid) == 0
    req = next(r for r in server.requests[before:] if r["body"].get("clientid") == cid)
    assert req["method"] == "POST" and req["path"] == "/auth/post"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["x-listener"] == "default" and req["headers"]["x-client"] == cid
    assert req["body"] == {"clientid": cid, "username": "allow", "password": "pw",
                           "peer": "127.0.0.1", "port": str(broker.port),
                           "nested": {"id": cid, "n": 1}}


def test_failures_are_ignored_and_logged_without_the_password(clients, broker, server):
    secret = uid("pw-")
    start = log_size(broker)
    assert connect_rc(clients, broker, "err500", secret) == BAD_USER
    wait_log(broker, "answered 500; ignoring client", start=start)
    assert connect_rc(clients, broker, "text", secret) == BAD_USER
    wait_log(broker, "text/plain body that is not a JSON object or form data", start=start)
    t0 = time.monotonic()
    assert connect_rc(clients, broker, "hang", secret) == BAD_USER
    assert TIMEOUT * 0.9 < time.monotonic() - t0 < TIMEOUT + 3
    wait_log(broker, f"no answer within {TIMEOUT:g}s; ignoring client", start=start)
    log = broker.log()[start:]
    assert " WARNING " in log
    assert secret not in log


def test_connect_waits_while_the_broker_serves_others(clients, broker, server, raws):
    """A slow answer holds only its own CONNECT: another client connects, pings and
    publishes meanwhile; the slow client's CONNACK follows the answer."""
    server.waiting.clear()
    slow = raws(broker, 5)
    slow.send(B.connect(uid("slow-"), level=5, username="slow-1", password=b"pw"))
    assert server.waiting.wait(5), "the broker did not ask the server"
    other = raws(broker, 5)
    other.connect(uid("other-"), username="allow", password=b"pw")
    for _ in range(3):
        reaction = other.sync(timeout=2)
        assert reaction.end == "open" and reaction.packets == (), reaction
    with pytest.raises(AssertionError, match="nothing arrived"):
        slow.recv(timeout=0.2)  # still waiting for the server
    server.unblock()
    ack = slow.expect(Connack)
    assert ack.reason_code == 0


def test_superuser_and_acl_from_the_answer(clients, broker, server):
    su = clients(uid("su-"), version=5, username="super", password="pw")
    assert su.publish(uid("any/"), b"1", 1) in PASSED  # superuser: its deny-all ACL is skipped
    cid = uid("acl-")
    c = clients(cid, version=5, username="acl", password="pw")
    assert c.publish(f"http/{cid}", b"1", 1) in PASSED
    assert c.publish("http/other", b"1", 1) == NOT_AUTHORIZED
    assert c.subscribe("http/#", 1) == [NOT_AUTHORIZED]
    assert connect_rc(clients, broker, "badacl") == BAD_USER


def test_get_with_query_parameters(clients, server):
    url = f"http://127.0.0.1:{server.port}/auth/get?static=1"
    extra = 'method = "get"\nbody = { username = "${username}", password = "${password}", ' \
            'id = "${clientid}" }'
    with checked_broker(config(url, extra)) as b:
        cid = uid("get-")
        before = len(server.requests)
        assert connect_rc(clients, b, "allow", client_id=cid) == 0
        req = next(r for r in server.requests[before:] if r["query"].get("id") == cid)
        assert req["method"] == "GET"
        assert req["query"] == {"static": "1", "username": "allow", "password": "pw", "id": cid}


def test_form_body_and_url_placeholders(clients, server):
    url = f"http://127.0.0.1:{server.port}/auth/u/${{clientid}}"
    extra = 'headers = { content-type = "application/x-www-form-urlencoded" }'
    with checked_broker(config(url, extra)) as b:
        cid = uid("f/orm ")  # quoted into the path
        before = len(server.requests)
        assert connect_rc(clients, b, "allow", client_id=cid) == 0
        req = next(r for r in server.requests[before:] if r["body"].get("clientid") == cid)
        assert req["path"] == f"/auth/u/{cid}"
        assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_is_ignored(clients):
    with checked_broker(config(f"http://127.0.0.1:{closed_port()}/auth")) as b:
        start = log_size(b)
        assert connect_rc(clients, b, "allow") == BAD_USER
        wait_log(b, "failed: ClientConnectorError", start=start)


def test_bad_options_fail_config_check(tmp_path):
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text("""
[[auth.providers]]
type = "http"
url = "ftp://127.0.0.1/${pass}"
method = "put"
timeout = "5 minutes"
pool = 3

[[auth.providers]]
type = "http"
url = "http://127.0.0.1:1/auth"
method = "get"
headers = { content-type = "application/json" }
body = { nested = { a = "b" } }

[[auth.providers]]
type = "http"
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    for text in ["auth.providers[0].url: unknown placeholder ${pass}",
                 "auth.providers[0].url: expected http://HOST[:PORT]/PATH",
                 "auth.providers[0].method: 'put' is not one of post, get",
                 "auth.providers[0].timeout: not a duration: '5 minutes'",
                 "auth.providers[0].pool: unknown key (did you mean pool_size?)",
                 "auth.providers[1].headers.content-type: a GET request has no body",
                 "auth.providers[1].body.nested: GET sends the body as query parameters",
                 "auth.providers[2].url: missing"]:
        assert text in done.stderr, (text, done.stderr)
    assert "Traceback" not in done.stderr


# --- HTTPS ------------------------------------------------------------------------------------


def test_https_server_verified_with_cafile_and_mutual_tls(clients, tmp_path):
    """An https:// authentication server: verified against ``cafile`` (the system's CAs do
    not know the test CA: refused, ignored, logged), and a server that wants a client
    certificate gets mqttd's ``certfile``/``keyfile``."""
    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: mqttd must show its certificate
    server = AuthServer(ctx)
    cert, key = pki.client("mqttd-broker")
    url = f"https://127.0.0.1:{server.port}/auth/tls"
    try:
        extra = f'cafile = "{pki.ca_cert}"\ncertfile = "{cert}"\nkeyfile = "{key}"'
        with checked_broker(config(url, extra)) as b:
            assert connect_rc(clients, b, "allow") == 0
            assert connect_rc(clients, b, "deny") == NOT_AUTHORIZED
        n = len(server.requests)
        with checked_broker(config(url)) as b:  # system CAs only: the server is not trusted
            start = log_size(b)
            assert connect_rc(clients, b, "allow") == BAD_USER
            wait_log(b, "failed: ClientConnectorCertificateError", start=start)
        with checked_broker(config(url, f'cafile = "{pki.ca_cert}"')) as b:  # no client cert
            start = log_size(b)
            assert connect_rc(clients, b, "allow") == BAD_USER
            wait_log(b, "http auth: POST", start=start)
        assert len(server.requests) == n  # neither request reached the handler
    finally:
        server.close()


def test_https_options_are_checked(tmp_path):
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text(f"""
[[auth.providers]]
type = "http"
url = "http://127.0.0.1:1/auth"
cafile = "ca.pem"

[[auth.providers]]
type = "http"
url = "https://127.0.0.1:1/auth"
cafile = "{tmp_path / 'missing.pem'}"
certfile = "client.pem"
""")
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2, done
    for text in ["auth.providers[0].cafile: only for an https:// url",
                 f"auth.providers[1].cafile: cannot load {tmp_path / 'missing.pem'}",
                 "auth.providers[1].keyfile: certfile and keyfile go together"]:
        assert text in done.stderr, (text, done.stderr)
    assert "Traceback" not in done.stderr
