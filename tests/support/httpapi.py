"""A real HTTP client for the ``[http]`` API of a :class:`~support.process.BrokerProcess`:
the standard library's ``http.client`` (one connection per call), every call bounded by
``WAIT``, with an API key or basic credentials, and ``mqttd ctl`` run in this process to
compare with."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from mqttd.cli.ctl import main as ctl_main

from . import WAIT
from .process import BrokerProcess, wait_log

__all__ = ["HttpApi", "Reply", "ctl", "ctl_json", "http_port"]

_HTTP_ON = re.compile(r"http api on ([0-9.]+):(\d+)")


def http_port(broker: BrokerProcess) -> int:
    """The port the broker's HTTP API bound (logged as ``http api on HOST:PORT``)."""
    wait_log(broker, "http api on ")
    m = _HTTP_ON.search(broker.log())
    assert m is not None, broker.log()
    return int(m.group(2))


def ctl(broker: BrokerProcess, *args: str) -> tuple[int, str, str]:
    """``mqttd ctl --data-dir <dir> <args>`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl_main(["--data-dir", str(broker.data_dir), *args])
    return code, out.getvalue(), err.getvalue()


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    code, out, err = ctl(broker, "--json", *args)
    assert code == 0, (args, code, out, err)
    return json.loads(out)


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
