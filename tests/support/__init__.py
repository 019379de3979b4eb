"""Shared helpers for the tests that talk to a real broker, so there is one copy of each.

* ``builder``: the independent, hand-written packet builder (the bytes a test sends);
* ``process``: :class:`~support.process.BrokerProcess` (a real ``mqttd start`` on port-0
  loopback listeners), the checked fixture around it, log waits, ``mqttd`` CLI runs;
* ``raw``: :class:`~support.raw.RawClient`, the one raw-socket MQTT client; what the broker
  sends back is decoded with the *pure* parser (``ParserPy``), never the compiled one, so
  the compiled codec the broker runs is not what checks its own output;
* ``clients``: a paho-mqtt client wrapper and Debian's ``mosquitto_pub``/``mosquitto_sub``;
* ``sysreader``: readers of a running broker's ``$SYS`` metrics and stats;
* ``httpapi``: an HTTP client of the ``[http]`` API (API key or basic), its server-sent
  event streams, and ``mqttd ctl --json`` run in-process to compare with;
* ``certs``: a real PKI written by the tests (CA, server and client certificates, an expired
  one, a mismatched key, an encrypted key, an unrelated CA) and server renewal for reloads;
* ``wsclient``: a raw WebSocket client for frame-level tests; ``browser``: MQTT.js in a
  headless Chromium; ``mosquitto``: Debian's mosquitto as the reference these were proven on;
* ``httpserver``: a real aiohttp service (an auth server, a JWKS endpoint) on a thread of
  its own beside the broker;
* ``mass``: for thousands of clients at once: room for their sockets, and a watcher that
  sees whether another client was answered in the middle of the mass;
* ``fixtures``: the pytest plugin (``pytest_plugins = ["support.fixtures"]``) with the
  ``clients`` and ``raws`` fixtures and the per-test log check.

Test modules import it as ``support`` (pytest puts ``tests/`` on ``sys.path``, as it does
for every module here). This file holds only what every helper shares.
"""

from __future__ import annotations

import uuid

#: Seconds any single expected event (a packet, a callback, a log line) may take.
WAIT = 5.0


def uid(prefix: str = "") -> str:
    """A fresh name, so tests sharing a broker never share a client id or topic."""
    return prefix + uuid.uuid4().hex[:12]
