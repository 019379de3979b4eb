"""The control socket's wire format, shared by the daemon and ``mqttd ctl``.

One request, then a stream of responses, each a JSON object on its own line
(UTF-8, ``\\n``-terminated):

request (client → daemon), exactly one line::

    {"proto": "mqttd-ctl", "v": 1, "argv": ["clients", "list"], "json": false, "width": 120}

responses (daemon → client), in order::

    {"t": "hello", "v": 1, "version": "0.1.0", "node": "mqttd@127.0.0.1"}   always first
    {"t": "out", "s": "text"}            text for stdout, written as is
    {"t": "err", "s": "text"}            text for stderr
    {"t": "table", "columns": [...]}     a table starts: [{"header", "justify"}, ...]
    {"t": "rows", "rows": [[...], ...]}  one page of rows (cells are strings)
    {"t": "table_end", "footer": "..."}  the table is complete
    {"t": "follow"}                      a live stream starts: no idle timeout from here
    {"t": "exit", "code": 0}             always last

In ``--json`` mode the daemon sends only ``out`` frames holding JSON text (one
document, or JSON Lines for live streams), so the client needs no knowledge of
any command. A daemon that does not speak the client's ``v`` answers ``hello``
with its own ``v``, an ``err`` and ``exit`` 1; the client checks ``hello`` too.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL = "mqttd-ctl"
#: Bumped on any incompatible change of the frames above.
VERSION = 1
#: Versions of the request this daemon can answer.
SUPPORTED = frozenset({1})

SOCKET_NAME = "mqttd.sock"
PID_NAME = "mqttd.pid"
LOG_NAME = "mqttd.log"

#: Longest request line the daemon reads.
MAX_REQUEST = 1 << 20

# Exit codes (sysexits.h for "unavailable").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as a line of compact JSON."""
    return (json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)
            + "\n").encode()
