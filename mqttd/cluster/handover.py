"""A session as it travels between nodes (docs/CLUSTER.md, "Session hand-over").

The node that holds a session sends it as JSON parts, each well under NATS's default
maximum payload: the first carries the session's own fields and subscriptions, every part
some of its deliveries (in flight first, in send order, then queued), the last says so.
Messages travel as the durable store keeps them (``store/journal.py``): their MQTT 5
PUBLISH packet, sender, timestamp and wall-clock expiry, read back by the store's own
reader, so topic, payload, QoS, retain flag and every property cross unchanged. A delivery
keeps its packet id and whether its PUBREC came, so the new node resends it with DUP under
the same id (or PUBREL), as after a restart.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from ..core.services import Delivery
from ..core.session import Session
from ..mqtt.packets import SubOpts
from ..store.journal import _share_name, message_packet, options_byte, wall_expiry
from ..store.restore import _opts, _Reader

__all__ = ["PART_BYTES", "parts", "session_from"]

#: A part is sent once its deliveries reach this many bytes (NATS: 1 MiB by default).
PART_BYTES = 256 * 1024


def _row(delivery: Delivery, packet_id: int, released: bool) -> list[Any]:
    msg, qos, retain, subids, group = delivery
    return [packet_id, int(released), qos, int(retain), list(subids), _share_name(group),
            base64.b64encode(message_packet(msg)).decode(), msg.sender, msg.timestamp,
            wall_expiry(msg)]


def parts(session: Session) -> list[bytes]:
    """The session as the parts of a hand-over answer."""
    wait_comp = session.wait_comp or ()
    rows = [_row(d, pid, pid in wait_comp) for pid, d in session.inflight.items()]
    rows += [_row(d, 0, False) for d in session.mqueue]
    head: dict[str, Any] = {
        "client": session.client_id, "expiry": session.expiry_interval,
        "created": session.created_at, "zone": session.zone,
        "subs": [[f, options_byte(opts), subid]
                 for f, (opts, subid) in session.subscriptions.items()],
        "rel": list(session.awaiting_rel)}
    out: list[bytes] = []
    part: dict[str, Any] = head
    size = 0
    batch: list[list[Any]] = []
    for row in rows:
        batch.append(row)
        size += len(row[6]) + 64
        if size >= PART_BYTES:
            part["q"] = batch
            out.append(json.dumps(part, separators=(",", ":")).encode())
            part, batch, size = {}, [], 0
    part["q"] = batch
    part["end"] = True
    out.append(json.dumps(part, separators=(",", ":")).encode())
    return out


def session_from(received: list[dict[str, Any]]
                 ) -> tuple[Session, list[tuple[str, SubOpts, int]], dict[int, str], int]:
    """A session (offline, not yet installed) from the parts received; with its
    subscriptions, its shared deliveries' ``$share/group/filter`` by id(delivery), and the
    number of messages that could not be read (skipped, and said by the caller)."""
    head = received[0]
    session = Session(str(head["client"]), expiry_interval=int(head["expiry"]))
    session.own_maps()
    session.created_at = float(head["created"])
    session.zone = str(head.get("zone") or "default")
    session.persistent = True
    subs = [(str(f), _opts(int(o)), int(subid)) for f, o, subid in head["subs"]]
    reader = _Reader()
    shares: dict[int, str] = {}
    unreadable = 0
    for part in received:
        for pid, released, qos, retain, subids, share, packet, sender, ts, expiry_at in \
                part.get("q", ()):
            msg = reader.packet(base64.b64decode(packet), sender, float(ts), float(expiry_at))
            if msg is None:
                unreadable += 1
                continue
            delivery: Delivery = (msg, int(qos), bool(retain), tuple(subids), None)
            if share:
                shares[id(delivery)] = str(share)
            if pid:
                session.inflight[int(pid)] = delivery
                if released:
                    if session.wait_comp is None:
                        session.wait_comp = set()
                    session.wait_comp.add(int(pid))
            else:
                session.queue_for().append(delivery)
    now = time.monotonic()
    for pid in head.get("rel", ()):
        session.awaiting_rel[int(pid)] = now  # its timeout counts from now
    return session, subs, shares, unreadable
