"""The banned table (EMQX's emqx_banned): client ids, user names and peer addresses (an IP,
or a CIDR network, IPv4 or IPv6) that may not connect, each with a reason, who added it,
when, and an optional end.

It is the first :class:`~mqttd.access.authn.Gate` of the authentication chain: a banned
client gets CONNACK 0x8A (MQTT 3.1/3.1.1: 5, not authorized) before any provider runs.
A connect costs one dict lookup per key (client id, user name, address), plus a walk of
the banned networks when there are any. Ended bans are dropped when a lookup meets them
and by a periodic sweep.

A ban added while the node runs kicks the clients it covers at once (MQTT 5: DISCONNECT
0x98, Administrative action, with the reason as Reason String; 0x8A is a CONNACK-only
code that a DISCONNECT may not carry).

With the durable store on, the table lives there (BAN_PUT/BAN_DEL through the operation
log, a ``banned`` table in SQLite: ``persist``), and a ``banned.json`` left from before is
moved into it once (:meth:`BannedTable.adopt_file`). With durability off it lives in
``<data_dir>/banned.json`` (written atomically, mode 0600) so that bans survive a restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.channel import Channel
from ..core.services import AuthResult, ClientInfo, TimerHandle, Timers
from ..metrics import CONNECTIONS_REFUSED_BANNED
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError

if TYPE_CHECKING:
    from ..core.registry import Registry
    from ..metrics import Metrics

log = logging.getLogger("mqttd.access")

__all__ = ["BANNED_FILE", "KINDS", "Ban", "BannedTable", "kick_banned", "normalize"]

#: The file in the data directory that holds the table.
BANNED_FILE = "banned.json"
#: What a ban applies to (EMQX's ``as``).
KINDS = ("clientid", "username", "peerhost")
#: Seconds between sweeps of ended bans; seconds a table changed by flapping detection
#: waits before it is written (a burst of bans is one write).
SWEEP_INTERVAL = 60.0
SAVE_DELAY = 1.0
_FORMAT_VERSION = 1

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Ban:
    """One entry: ``kind`` (clientid, username or peerhost) and ``who`` (normalized: an
    address or network in its canonical form), who added it, why, when (epoch seconds),
    and when it ends (None: never)."""

    kind: str
    who: str
    by: str = ""
    reason: str = ""
    at: float = 0.0
    until: float | None = None

    def ended(self, now: float) -> bool:
        until = self.until
        return until is not None and until <= now

    def covers(self, client_id: str, username: str | None, host: str) -> bool:
        """Whether this ban applies to a client with these facts (its end aside)."""
        kind, who = self.kind, self.who
        if kind == "clientid":
            return client_id == who
        if kind == "username":
            return username == who
        if host == who:
            return True
        try:
            addr = _plain(ipaddress.ip_address(host))
        except ValueError:
            return False  # not an IP peer
        if "/" not in who:
            return str(addr) == who
        net = ipaddress.ip_network(who)
        return addr.version == net.version and addr in net

    def record(self) -> dict[str, Any]:
        """The entry as ``banned.json`` and management hold it (EMQX's field names)."""
        return {"as": self.kind, "who": self.who, "by": self.by, "reason": self.reason,
                "at": self.at, "until": self.until}


def normalize(kind: str, who: str) -> str:
    """``who`` in the form the table keys it by; ValueError saying what is wrong.

    A peer address is an IP (IPv4-mapped IPv6 becomes IPv4) or a CIDR network without
    host bits (``10.0.0.0/8``); a network of one address is that address.
    """
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(who, str) or not who:
        raise ValueError(f"the {kind} to ban is empty")
    if len(who) > 65535:
        raise ValueError(f"the {kind} is longer than 65535 characters")
    if kind != "peerhost":
        return who
    text = who.strip()
    try:
        if "/" not in text:
            return str(_plain(ipaddress.ip_address(text)))
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{who!r} is not an IP address or a CIDR network") from None
        raise ValueError(f"{who!r} has host bits set (did you mean {loose}?)") from None
    if net.prefixlen == net.max_prefixlen:
        return str(_plain(net.network_address))
    return str(net)


def _plain(addr: ipaddress.IPv4Address | ipaddress.IPv6Address
           ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) as IPv4."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def peerhost(peer: str) -> str:
    """The address of a ``host:port`` peer (as :attr:`ClientInfo.peerhost` computes it)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host.strip("[]")


class BannedTable:
    """The banned table; also the authentication chain's first gate (:meth:`admit`).

    ``path`` is the JSON file (None: kept in memory only, as for a node without a data
    directory). Operator changes (:meth:`add`, :meth:`delete`) are written before they
    return; changes from flapping detection and sweeps shortly after (``SAVE_DELAY``).
    """

    def __init__(self, path: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._by_kind: dict[str, dict[str, Ban]] = {k: {} for k in KINDS}
        self._clientid = self._by_kind["clientid"]
        self._username = self._by_kind["username"]
        #: Addresses and networks by their text; the networks again as objects, walked
        #: only when there are any.
        self._peerhost = self._by_kind["peerhost"]
        self._networks: list[tuple[IPNetwork, Ban]] = []
        #: Called with each new ban once the node runs (kicks the clients it covers).
        self.on_ban: Callable[[Ban], list[str]] | None = None
        self.metrics: Metrics | None = None
        self._timers: Timers | None = None
        self._sweep_handle: TimerHandle | None = None
        self._save_handle: TimerHandle | None = None
        self._dirty = False
        #: With the durable store: called with (ban, deleted) for every change, instead of
        #: writing ``path``.
        self.persist: Callable[[Ban, bool], None] | None = None

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_kind.values())

    # --- the gate -----------------------------------------------------------------------

    def admit(self, client: ClientInfo) -> AuthResult | None:
        """CONNACK 0x8A for a banned client, else None."""
        if not (self._clientid or self._username or self._peerhost):
            return None  # (nothing banned, the usual case: no peer address to work out)
        ban = self.match(client.client_id, client.username, client.peerhost)
        if ban is None:
            return None
        if self.metrics is not None:
            self.metrics.inc(CONNECTIONS_REFUSED_BANNED)
        return AuthResult(RC.BANNED, reason=f"banned ({ban.kind} {ban.who}"
                                            f"{': ' + ban.reason if ban.reason else ''})")

    def match(self, client_id: str, username: str | None, host: str) -> Ban | None:
        """The ban that covers a client with these facts, or None."""
        ban = self._clientid.get(client_id)
        if ban is not None and self._live(ban):
            return ban
        if username is not None:
            ban = self._username.get(username)
            if ban is not None and self._live(ban):
                return ban
        ban = self._peerhost.get(host)
        if ban is not None and self._live(ban):
            return ban
        if self._networks:
            return self._in_network(host)
        return None

    def _in_network(self, host: str) -> Ban | None:
        try:
            addr = _plain(ipaddress.ip_address(host))
        except ValueError:
            return None  # not an IP peer (a Unix socket, a test's fake peer)
        if str(addr) != host:  # an IPv4-mapped peer: the plain address may be banned
            ban = self._peerhost.get(str(addr))
            if ban is not None and self._live(ban):
                return ban
        for net, ban in self._networks:
            if addr.version == net.version and addr in net and self._live(ban):
                return ban
        return None

    def _live(self, ban: Ban) -> bool:
        """Whether ``ban`` is in force; an ended one is dropped on the way."""
        if ban.until is None or ban.until > self.clock():
            return True
        self._remove(ban)
        self._changed(ban)
        return False

    # --- changes ------------------------------------------------------------------------

    def add(self, kind: str, who: str, *, by: str = "", reason: str = "",
            until: float | None = None, save: bool = True, kick: bool = True
            ) -> tuple[Ban, list[str]]:
        """Ban ``who`` (replacing a ban of the same key), then kick the clients it covers;
        returns the ban and the client ids kicked.

        ValueError for a bad kind or value; OSError if the file cannot be written (nothing
        is changed then). ``save=False`` writes a little later (flapping detection).
        """
        who = normalize(kind, who)
        ban = Ban(kind, who, by, reason, self.clock(), until)
        old = self._by_kind[kind].get(who)
        self._put(ban)
        if self.persist is not None:
            self.persist(ban, False)
        elif save:
            try:
                self.save()
            except OSError:
                self._remove(ban)
                if old is not None:
                    self._put(old)
                raise
        else:
            self._changed()
        kicked = self.on_ban(ban) if kick and self.on_ban is not None else []
        return ban, kicked

    def delete(self, kind: str, who: str) -> Ban | None:
        """Lift the ban of ``who``; None if there is none. ValueError, OSError as add."""
        who = normalize(kind, who)
        ban = self._by_kind[kind].get(who)
        if ban is None:
            return None
        self._remove(ban)
        if self.persist is not None:
            self.persist(ban, True)
            return None if ban.ended(self.clock()) else ban
        try:
            self.save()
        except OSError:
            self._put(ban)
            raise
        return None if ban.ended(self.clock()) else ban

    def get(self, kind: str, who: str) -> Ban | None:
        """The ban in force for exactly this key (ValueError for a bad kind or value)."""
        ban = self._by_kind[kind].get(normalize(kind, who))
        return ban if ban is not None and not ban.ended(self.clock()) else None

    def all(self) -> list[Ban]:
        """Every ban in force, oldest first."""
        now = self.clock()
        return sorted((b for d in self._by_kind.values() for b in d.values()
                       if not b.ended(now)), key=lambda b: b.at)

    def sweep(self) -> int:
        """Drop every ended ban; returns how many."""
        now = self.clock()
        ended = [b for d in self._by_kind.values() for b in d.values() if b.ended(now)]
        for ban in ended:
            self._remove(ban)
            if self.persist is not None:
                self.persist(ban, True)
        if ended:
            log.debug("%d bans ended", len(ended))
            self._changed()
        return len(ended)

    def _put(self, ban: Ban) -> None:
        table = self._by_kind[ban.kind]
        old = table.get(ban.who)
        table[ban.who] = ban
        if ban.kind == "peerhost" and "/" in ban.who:
            net = ipaddress.ip_network(ban.who)
            self._networks = [(n, b) for n, b in self._networks if b is not old]
            self._networks.append((net, ban))

    def _remove(self, ban: Ban) -> None:
        table = self._by_kind[ban.kind]
        if table.get(ban.who) is ban:
            del table[ban.who]
        if ban.kind == "peerhost" and "/" in ban.who:
            self._networks = [(n, b) for n, b in self._networks if b is not ban]

    # --- the running node ---------------------------------------------------------------

    def start(self, timers: Timers) -> None:
        """Sweep ended bans every ``SWEEP_INTERVAL`` seconds and write changes made by
        flapping detection shortly after they happen."""
        self._timers = timers
        self._sweep_handle = timers.call_later(SWEEP_INTERVAL, self._sweep_tick)

    def _sweep_tick(self) -> None:
        assert self._timers is not None
        self._sweep_handle = self._timers.call_later(SWEEP_INTERVAL, self._sweep_tick)
        self.sweep()

    def _changed(self, ended: Ban | None = None) -> None:
        """The table changed without being written: write it soon (now, without timers);
        with the store, an ended ban is deleted there."""
        if ended is not None and self.persist is not None:
            self.persist(ended, True)
        if self.path is None:
            return
        self._dirty = True
        if self._timers is None:
            return  # not started (mqttd config check): nothing is written
        if self._save_handle is None:
            self._save_handle = self._timers.call_later(SAVE_DELAY, self._save_later)

    def _save_later(self) -> None:
        self._save_handle = None
        try:
            self.save()
        except OSError as err:
            log.error("cannot write the banned table to %s: %s", self.path,
                      err.strerror or err)

    def close(self) -> None:
        """Stop the timers; write what is not written yet."""
        for handle in (self._sweep_handle, self._save_handle):
            if handle is not None:
                handle.cancel()
        self._sweep_handle = self._save_handle = None
        if self._dirty and self._timers is not None:
            self._save_later()
        self._timers = None
        self.on_ban = None

    # --- the store ----------------------------------------------------------------------

    def load_rows(self, rows: list[tuple[str, str, str, str, float, float]]) -> None:
        """The bans the store held (until 0: for good); ended ones are deleted there."""
        now = self.clock()
        for kind, who, by, reason, at, until in rows:
            ban = Ban(kind, who, by, reason, at, until or None)
            if ban.ended(now):
                if self.persist is not None:
                    self.persist(ban, True)
            else:
                self._put(ban)

    def adopt_file(self, path: str) -> int:
        """Move the bans of a ``banned.json`` (from before the store kept them) into the
        table and the store; returns how many. A ban already in the table is kept (the
        store's is the newer). AccessError if the file is malformed."""
        old = BannedTable(path, self.clock)
        old.load()
        moved = 0
        for ban in old.all():
            if self._by_kind[ban.kind].get(ban.who) is not None:
                continue
            self._put(ban)
            if self.persist is not None:
                self.persist(ban, False)
            moved += 1
        return moved

    # --- the file -----------------------------------------------------------------------

    def save(self) -> None:
        """Write the bans in force to the file: a temporary file (0600) in the same
        directory, synced, then renamed over the old one (OSError if it cannot)."""
        self._dirty = False
        path = self.path
        if path is None:
            return
        records = [json.dumps(b.record(), ensure_ascii=False) for b in self.all()]
        text = ('{"version": %d, "banned": [\n' % _FORMAT_VERSION
                + ",\n".join(records) + ("\n" if records else "") + "]}\n")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".banned.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._dirty = True
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def load(self) -> None:
        """Read the file (a missing file is an empty table); ended bans are left out.
        AccessError with one ``FILE:LINE: what`` line per problem."""
        path = self.path
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise AccessError([f"{path}: cannot read: {why or err}"]) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise AccessError([f"{path}:{err.lineno}: not valid JSON: {err.msg}"]) from None
        errors: list[str] = []
        if not isinstance(data, dict) or not isinstance(data.get("banned"), list):
            raise AccessError([f'{path}:1: expected {{"version": 1, "banned": [...]}}'])
        if data.get("version", _FORMAT_VERSION) != _FORMAT_VERSION:
            raise AccessError([f"{path}:1: unsupported version {data.get('version')!r} "
                               f"(this mqttd reads version {_FORMAT_VERSION})"])
        lines = _element_lines(text)
        now = self.clock()
        bans: list[Ban] = []
        for i, entry in enumerate(data["banned"]):
            where = f"{path}:{lines[i] if i < len(lines) else 1}: banned[{i}]"
            ban = _ban_from(entry, where, errors)
            if ban is not None and not ban.ended(now):
                bans.append(ban)
        if errors:
            raise AccessError(errors)
        for ban in bans:
            self._put(ban)


def _ban_from(entry: object, where: str, errors: list[str]) -> Ban | None:
    """A ban from one record of the file, or None with its problem added to ``errors``."""
    if not isinstance(entry, dict):
        errors.append(f"{where}: expected an object")
        return None
    unknown = set(entry) - {"as", "who", "by", "reason", "at", "until"}
    if unknown:
        errors.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        return None
    kind = entry.get("as")
    if kind not in KINDS:
        errors.append(f"{where}.as: expected one of {', '.join(KINDS)}, got {kind!r}")
        return None
    try:
        who = normalize(kind, entry.get("who"))  # type: ignore[arg-type]  # checked inside
    except ValueError as err:
        errors.append(f"{where}.who: {err}")
        return None
    by, reason = entry.get("by", ""), entry.get("reason", "")
    at, until = entry.get("at", 0.0), entry.get("until")
    for key, value, ok in (("by", by, isinstance(by, str)),
                           ("reason", reason, isinstance(reason, str)),
                           ("at", at, _is_number(at)),
                           ("until", until, until is None or _is_number(until))):
        if not ok:
            want = "a string" if key in ("by", "reason") else "a number"
            errors.append(f"{where}.{key}: expected {want}"
                          f"{' or null' if key == 'until' else ''}, got {value!r}")
            return None
    return Ban(kind, who, by, reason, float(at), None if until is None else float(until))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_BANNED_ARRAY = re.compile(r'"banned"\s*:\s*\[')


def _element_lines(text: str) -> list[int]:
    """The line each element of the ``banned`` array starts on (for error messages);
    shorter than the array (or empty) if the text is laid out in an unexpected way."""
    m = _BANNED_ARRAY.search(text)
    if m is None:
        return []
    decoder = json.JSONDecoder()
    lines: list[int] = []
    i = m.end()
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        lines.append(text.count("\n", 0, i) + 1)
        i = end
    return lines


def kick_banned(registry: Registry, ban: Ban) -> list[str]:
    """Disconnect every connected client ``ban`` covers (MQTT 5: DISCONNECT 0x98 with the
    reason); returns their client ids. A user name or address ban walks the clients."""
    if ban.kind == "clientid":
        ids = [ban.who] if ban.who in registry.channels else []
    else:
        ids = [cid for cid, owner in list(registry.channels.items())
               if isinstance(owner, Channel) and not owner.closing
               and ban.covers(cid, owner.username, peerhost(owner.peer))]
    detail = "banned: " + ban.reason if ban.reason else "banned"
    for cid in ids:
        log.info("kicking %s: banned by %s %s", cid, ban.kind, ban.who)
        registry.kick(cid, RC.ADMINISTRATIVE_ACTION, detail)
    return ids
