"""A real HTTP client for the ``[http]`` API of a :class:`~support.process.BrokerProcess`:
the standard library's ``http.client`` (one connection per call), every call bounded by
``WAIT``, with an API key or basic credentials, and ``mqttd ctl`` run in this process to
compare with."""

from __future__ import annotations

import base64
import http.client
import json
import re
from dataclasses import dataclass
from typing import Any

from . import WAIT
from .ctlrun import ctl, ctl_json  # to compare with (re-exported)
from .process import BrokerProcess, wait_log

__all__ = ["EventReader", "HttpApi", "Reply", "ctl", "ctl_json", "http_port"]

_HTTP_ON = re.compile(r"http api on ([0-9.]+):(\d+)")


def http_port(broker: BrokerProcess) -> int:
    """The port the broker's HTTP API bound (logged as ``http api on HOST:PORT``)."""
    wait_log(broker, "http api on ")
    m = _HTTP_ON.search(broker.log())
    assert m is not None, broker.log()
    return int(m.group(2))


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class HttpApi:
    """Calls on one broker's HTTP API, as ``key`` (Bearer) or ``basic`` (user, password)."""

    def __init__(self, broker: BrokerProcess, key: str | None = None,
                 basic: tuple[str, str] | None = None) -> None:
        self.broker = broker
        self.port = http_port(broker)
        self.key = key
        self.basic = basic

    def auth_header(self) -> dict[str, str]:
        if self.key is not None:
            return {"Authorization": f"Bearer {self.key}"}
        if self.basic is not None:
            token = base64.b64encode(":".join(self.basic).encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        """One request; ``body`` is sent as JSON, ``raw`` as it is."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            data = raw if raw is not None else (
                json.dumps(body).encode() if body is not None else None)
            hdrs = {**self.auth_header(), **(headers or {})}
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        """The JSON of a GET that must succeed."""
        r = self.call("GET", path)
        assert r.status == 200, (path, r.status, r.body)
        return r.json

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = self.call(method, path, body)
        assert r.status == 200, (method, path, r.status, r.body)
        return r.json

    def events(self, path: str) -> EventReader:
        """Open a ``text/event-stream`` (a live trace); 200 or an AssertionError."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        conn.request("GET", path, headers={**self.auth_header(),
                                           "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read()
            conn.close()
            raise AssertionError((path, resp.status, body))
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return EventReader(conn, resp)


class EventReader:
    """Server-sent events of one response, read one at a time (each bounded by ``WAIT``)."""

    def __init__(self, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp

    def next(self) -> tuple[str, Any] | None:
        """The next event as (name, its JSON data); None when the stream has ended.
        Comment lines (keep-alives) are skipped."""
        name, data = "message", ""
        while True:
            line = self.resp.readline().decode()
            if not line:
                return None
            line = line.rstrip("\n")
            if not line:
                if data:
                    return name, json.loads(data)
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data += value

    def until(self, name: str, test: Any = None, limit: int = 1000) -> Any:
        """Data of the first event called ``name`` (whose data passes ``test``), reading
        at most ``limit`` events."""
        for _ in range(limit):
            ev = self.next()
            assert ev is not None, f"the stream ended before a {name!r} event"
            if ev[0] == name and (test is None or test(ev[1])):
                return ev[1]
        raise AssertionError(f"no {name!r} event in {limit} events")

    def close(self) -> None:
        self.conn.close()
