"""Restore at start: what the store read back becomes sessions, routes, queues, retained
messages and pending wills again.

Messages are read with the broker's own parser (they are stored as MQTT 5 PUBLISH
packets); their expiry, kept as wall-clock time, becomes a monotonic deadline again.
In-flight deliveries keep their packet ids, so the client gets them again with DUP
and the same id when it resumes; a QoS 2 delivery whose PUBREC had come gets PUBREL.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Zone
from ..core.message import Message
from ..core.registry import Registry
from ..core.retainer import Retainer
from ..core.router import Route
from ..core.services import Delivery
from ..core.session import Session
from ..mqtt.codec import Parser
from ..mqtt.packets import Publish, SubOpts
from ..mqtt.topics import parse_shared
from .base import Restored, StoredMessage
from .journal import Journal

log = logging.getLogger("mqttd.store")

__all__ = ["RestoreReport", "restore"]


@dataclass(slots=True)
class RestoreReport:
    sessions: int = 0
    expired: int = 0
    subscriptions: int = 0
    queued: int = 0
    inflight: int = 0
    retained: int = 0
    wills: int = 0
    expired_messages: int = 0
    seconds: float = 0.0


class _Reader:
    """Stored PUBLISH packets back into messages."""

    def __init__(self) -> None:
        self.parser = Parser(max_packet_size=268_435_460, version=5)
        self.wall = time.time()
        self.mono = time.monotonic()

    def message(self, stored: StoredMessage) -> Message | None:
        return self.packet(stored.packet, stored.sender, stored.timestamp, stored.expiry_at)

    def packet(self, packet: bytes, sender: str | None, timestamp: float,
               expiry_at: float) -> Message | None:
        try:
            packets = self.parser.feed(packet)
        except Exception as err:  # a row this code cannot read: skipped, and said
            log.warning("store: skipping an unreadable stored message: %s", err)
            self.parser = Parser(max_packet_size=268_435_460, version=5)
            return None
        if len(packets) != 1 or not isinstance(packets[0], Publish):
            log.warning("store: skipping a stored message that is not one PUBLISH")
            return None
        p = packets[0]
        msg = Message(p.topic, p.payload, p.qos, p.retain, p.properties, sender)
        msg.timestamp = timestamp
        msg.expiry = self.mono + (expiry_at - self.wall) if expiry_at else 0.0
        return msg


def _opts(byte: int) -> SubOpts:
    return SubOpts(byte & 3, bool(byte & 4), bool(byte & 8), (byte >> 4) & 3)


def restore(restored: Restored, journal: Journal, registry: Registry, retainer: Retainer,
            zones: Mapping[str, Zone]) -> RestoreReport:
    """Install ``restored`` in the registry (sessions, routes, timers, wills) and the
    retainer. Each session gets the limits of the zone it last connected through (the
    default zone's if that zone is gone from the configuration). Runs before any listener
    opens; the operations it issues (expired sessions, wills sent) go to the journal like
    any other."""
    # Millions of objects and no cycles: the cyclic collector would walk them again and
    # again for nothing (measured: 8.5 s -> 4.7 s for 1,000,000 queued messages).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _restore(restored, journal, registry, retainer, zones)
    finally:
        if collecting:
            gc.enable()


def _restore(restored: Restored, journal: Journal, registry: Registry, retainer: Retainer,
             zones: Mapping[str, Zone]) -> RestoreReport:
    start = time.perf_counter()
    report = RestoreReport()
    reader = _Reader()
    now = reader.wall
    for topic, stored in restored.retained.items():
        msg = reader.message(stored)
        if msg is None or msg.expired(reader.mono):
            journal.unretain(topic)
            continue
        retainer.restore(msg)
        report.retained += 1
    # A delivery whose message expired while mqttd was down goes (as it would have when it
    # was due to be sent), unless its PUBREC came: then only PUBREL is owed, and the client
    # holds the packet id until it gets it.
    messages: dict[int, Message] = {}
    refs: dict[int, int] = {}
    for mid, stored in restored.messages.items():
        msg = reader.message(stored)
        if msg is not None:
            messages[mid] = msg
    entries: list[tuple[Session, list[tuple[str, SubOpts, int]], Message | None, int, float]]
    entries = []
    shares: dict[Session, dict[int, str]] = {}
    inline: list[tuple[Message, int]] = []
    default_zone = zones.get("default") or next(iter(zones.values()))
    for row in restored.sessions:
        zone = zones.get(row.zone, default_zone)
        session = Session(row.client_id, expiry_interval=row.expiry_interval,
                          max_inflight=zone.max_inflight or 65535,
                          max_mqueue_len=zone.max_mqueue_len,
                          mqueue_store_qos0=zone.mqueue_store_qos0,
                          await_rel_timeout=zone.await_rel_timeout)
        session.zone = zone.name
        session.own_maps()
        session.set_overflow(zone.mqueue_overflow, zone.mqueue_backpressure_fallback)
        session.created_at = row.created_at
        session.persistent = True
        subs = [(f, _opts(o), subid) for f, o, subid in row.subscriptions]
        report.subscriptions += len(subs)
        qseq = 0
        for q in row.queue:
            qseq = q.qseq
            if q.message is not None:  # inline: the row's own copy
                msg = reader.message(q.message)
            else:
                msg = messages.get(q.msg_id)
            if msg is not None and not q.released and msg.expired(reader.mono):
                msg = None
                report.expired_messages += 1
            if msg is None:  # its message was unreadable or has expired: the row goes
                journal.forget_row(row.client_id, q.qseq)
                continue
            if q.message is not None:
                inline.append((msg, q.msg_id))
            delivery: Delivery = (msg, q.qos, q.retain, q.subids, None)
            if q.share is not None:
                shares.setdefault(session, {})[id(delivery)] = q.share
            if q.packet_id:
                session.inflight[q.packet_id] = delivery
                if q.released:
                    if session.wait_comp is None:
                        session.wait_comp = set()
                    session.wait_comp.add(q.packet_id)
                report.inflight += 1
            else:
                session.queue_for().append(delivery)
                report.queued += 1
            session.refs[id(delivery)] = q.qseq
            if q.message is None:
                refs[q.msg_id] = refs.get(q.msg_id, 0) + 1
        session._qseq = qseq
        for pid in row.awaiting_rel:
            session.awaiting_rel[pid] = reader.mono  # its timeout counts from now
        will = None
        if row.will is not None:
            will = reader.packet(row.will, row.client_id, now, 0.0)
            if will is not None:
                will.restamp()  # its expiry counts from publication
                report.wills += 1
        if row.disconnected_at:
            offline = max(now - row.disconnected_at, 0.0)
        else:
            # Connected when mqttd stopped or died: disconnected now, for good (a later
            # restart must not give it its full expiry again).
            offline = 0.0
            journal.save_session(row.client_id, row.expiry_interval, row.created_at, now,
                                 will, row.will_delay, zone.name)
        entries.append((session, subs, will, row.will_delay, offline))
    for mid in restored.orphans:
        journal.forget_message(mid)
    for mid, msg in messages.items():
        n = refs.get(mid, 0)
        if n:
            journal.adopt(msg, mid, n)
        else:  # no row uses it any more (all expired, or the rows gone): it goes too
            journal.forget_message(mid)
    for msg, mid in inline:
        journal.adopt(msg, mid, 1, inline=True)
    registry.restore(entries)
    _resolve_shares(registry, shares)
    report.sessions = registry.resume_restored(entries)
    report.expired = len(entries) - report.sessions
    report.seconds = time.perf_counter() - start
    return report


def _resolve_shares(registry: Registry, shares: dict[Session, dict[int, str]]) -> None:
    """Shared deliveries point at their group again (so that they are handed to another
    member if their session ends before they are acknowledged). ``shares``: per session,
    id(delivery) -> ``$share/group/filter``."""
    routes = registry.dispatcher.router.routes
    for session, names in shares.items():
        for pid, d in list(session.inflight.items()):
            session.inflight[pid] = _with_group(session, names, routes, d)
        if session.mqueue:
            queued = [_with_group(session, names, routes, d) for d in session.mqueue]
            session.mqueue.clear()
            session.mqueue.extend(queued)


def _with_group(session: Session, names: dict[int, str], routes: dict[str, Route],
                delivery: Delivery) -> Delivery:
    name = names.get(id(delivery))
    parsed = parse_shared(name) if name is not None else None
    if parsed is None:
        return delivery
    route = routes.get(parsed[1])
    group = route.groups.get(parsed[0]) if route is not None else None
    if group is None:
        return delivery
    new = (delivery[0], delivery[1], delivery[2], delivery[3], group)
    qseq = session.refs.pop(id(delivery), 0)
    if qseq:
        session.refs[id(new)] = qseq
    return new
