"""The banned table and flapping detection (mqttd/access/banned.py, flapping.py).

Unit tests of the table (keys, CIDR networks IPv4 and IPv6, ends, the file) and of the
flapping counter on hand-driven clocks; then end to end on real brokers with real clients
(paho-mqtt, mosquitto_pub, raw sockets): a client banned by client id, user name or
address is refused with CONNACK 0x8A (3.1/3.1.1: 5), a connected client is kicked when a
ban covers it, ``mqttd ctl banned`` (human and --json), bans survive a restart, and a
client that reconnects too fast is banned for ``ban_time`` and admitted again after it.
"""

from __future__ import annotations

import contextlib
import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, uid
from support.clients import Client, prop
from support.ctlrun import ctl, ctl_json, ok
from support.process import BrokerProcess, broker_fixture, checked_broker, run_mqttd, wait_log
from support.raw import RawClient

from mqttd.access import flapping as flapping_mod
from mqttd.access.authn import AccessError
from mqttd.access.banned import BannedTable, normalize
from mqttd.access.flapping import Flapping
from mqttd.config import FlappingSettings
from mqttd.core.services import ClientInfo
from mqttd.mqtt.packets import Disconnect

pytest_plugins = ["support.fixtures"]

BANNED = 0x8A


class Clock:
    """A hand-driven clock (wall-clock seconds for the table, monotonic for flapping)."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def info(client_id: str = "c", username: str | None = None, peer: str = "192.0.2.7:5000"
         ) -> ClientInfo:
    return ClientInfo(client_id, username, peer)


# --- the table ----------------------------------------------------------------------------------

def test_normalize() -> None:
    assert normalize("clientid", "a b/#") == "a b/#"
    assert normalize("peerhost", "192.0.2.7") == "192.0.2.7"
    assert normalize("peerhost", " 2001:DB8:0:0::1 ") == "2001:db8::1"
    assert normalize("peerhost", "::ffff:192.0.2.7") == "192.0.2.7"  # dual-stack view
    assert normalize("peerhost", "192.0.2.7/32") == "192.0.2.7"
    assert normalize("peerhost", "10.0.0.0/8") == "10.0.0.0/8"
    assert normalize("peerhost", "2001:db8::/32") == "2001:db8::/32"
    with pytest.raises(ValueError, match=r"host bits set \(did you mean 10.0.0.0/8\?\)"):
        normalize("peerhost", "10.1.2.3/8")
    with pytest.raises(ValueError, match="not an IP address or a CIDR network"):
        normalize("peerhost", "example.com")
    with pytest.raises(ValueError, match="not an IP address"):
        normalize("peerhost", "10.0.0.0/33")
    with pytest.raises(ValueError, match="empty"):
        normalize("username", "")
    with pytest.raises(ValueError, match="not one of clientid, username, peerhost"):
        normalize("ip", "1.2.3.4")


def test_each_key_and_networks() -> None:
    t = BannedTable()
    assert t.admit(info()) is None
    t.add("clientid", "bad", reason="loops")
    t.add("username", "eve")
    t.add("peerhost", "198.51.100.9")
    t.add("peerhost", "203.0.113.0/24")
    t.add("peerhost", "2001:db8:1::/48")
    refused = t.admit(info("bad"))
    assert refused is not None and refused.code == BANNED
    assert refused.reason == "banned (clientid bad: loops)"
    assert t.admit(info("ok", "eve")).code == BANNED  # type: ignore[union-attr]
    assert t.admit(info("ok", "eve2")) is None
    assert t.admit(info("ok", None, "198.51.100.9:1")).code == BANNED  # type: ignore[union-attr]
    assert t.admit(info("ok", None, "198.51.100.10:1")) is None
    assert t.match("x", None, "203.0.113.200").who == "203.0.113.0/24"  # type: ignore[union-attr]
    assert t.match("x", None, "203.0.114.1") is None
    assert t.match("x", None, "::ffff:203.0.113.5").who == "203.0.113.0/24"  # type: ignore
    assert t.match("x", None, "::ffff:198.51.100.9").who == "198.51.100.9"  # type: ignore
    assert t.match("x", None, "2001:db8:1:ffff::1").who == "2001:db8:1::/48"  # type: ignore
    assert t.match("x", None, "2001:db8:2::1") is None
    assert t.match("x", None, "not-an-address") is None
    assert len(t) == 5
    # re-adding replaces; deleting a network takes it out of the walk too
    t.add("peerhost", "203.0.113.0/24", reason="again")
    assert len(t) == 5 and t.get("peerhost", "203.0.113.0/24").reason == "again"  # type: ignore
    assert t.delete("peerhost", "203.0.113.0/24") is not None
    assert t.match("x", None, "203.0.113.200") is None
    assert t.delete("peerhost", "203.0.113.0/24") is None
    assert [b.who for b in t.all()] == ["bad", "eve", "198.51.100.9", "2001:db8:1::/48"]


def test_bans_end() -> None:
    clock = Clock()
    t = BannedTable(clock=clock)
    t.add("clientid", "a", until=clock.t + 10)
    t.add("peerhost", "203.0.113.0/24", until=clock.t + 10)
    t.add("username", "u", until=clock.t + 20)
    t.add("clientid", "forever")
    assert t.match("a", None, "203.0.113.1") is not None
    clock.t += 10  # "until" is the first second the ban no longer applies
    assert t.match("a", None, "") is None
    assert t.match("z", None, "203.0.113.1") is None
    assert len(t) == 2  # both dropped on the way (lazily)
    assert {b.who for b in t.all()} == {"u", "forever"}
    clock.t += 10
    assert [b.who for b in t.all()] == ["forever"]  # listed only while in force
    assert t.sweep() == 1 and len(t) == 1  # the periodic sweep drops the rest
    assert t.sweep() == 0


def test_file_round_trip_and_mode(tmp_path: Path) -> None:
    clock = Clock(time.time())
    path = tmp_path / "data" / "banned.json"  # the directory is created when written
    t = BannedTable(str(path), clock)
    t.add("clientid", "a", by="op", reason="r", until=clock.t + 100)
    t.add("peerhost", "2001:db8::/32")
    t.add("username", "gone", until=clock.t + 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["banned.json"]  # no temporary left
    data = json.loads(path.read_text())
    assert data["version"] == 1 and len(data["banned"]) == 3
    assert data["banned"][0] == {"as": "clientid", "who": "a", "by": "op", "reason": "r",
                                 "at": clock.t, "until": clock.t + 100}
    clock.t += 1
    again = BannedTable(str(path), clock)
    again.load()
    assert [(b.kind, b.who, b.by, b.reason) for b in again.all()] == [
        ("clientid", "a", "op", "r"), ("peerhost", "2001:db8::/32", "", "")]
    assert len(again) == 2  # the ended ban was not loaded
    assert again.match("x", None, "2001:db8::5") is not None
    assert BannedTable(str(tmp_path / "missing.json")).load() is None  # no file: empty


class ManualTimers:
    """The core's Timers by hand: ``fire()`` runs what is due."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[list[Any]] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        entry = [self.clock.t + delay, callback, args]
        self.pending.append(entry)

        class Handle:
            def cancel(_self) -> None:
                if entry in self.pending:
                    self.pending.remove(entry)

        return Handle()

    def fire(self) -> None:
        due = [e for e in self.pending if e[0] <= self.clock.t]
        for e in due:
            self.pending.remove(e)
            e[1](*e[2])


def test_changes_without_an_operator_are_written_soon(tmp_path: Path) -> None:
    clock = Clock(time.time())
    timers = ManualTimers(clock)
    path = tmp_path / "banned.json"
    t = BannedTable(str(path), clock)
    t.start(timers)  # type: ignore[arg-type]
    t.add("clientid", "flap", reason="flapping", until=clock.t + 300, save=False)
    t.add("clientid", "flap2", reason="flapping", until=clock.t + 5, save=False)
    assert not path.exists() and len(timers.pending) == 2  # the sweep, one write for both
    clock.t += 1.0
    timers.fire()
    assert [b["who"] for b in json.loads(path.read_text())["banned"]] == ["flap", "flap2"]
    clock.t += 60.0  # the sweep drops the ended ban, and the file follows
    timers.fire()
    assert len(t) == 1 and len(timers.pending) == 2
    clock.t += 1.0
    timers.fire()
    assert [b["who"] for b in json.loads(path.read_text())["banned"]] == ["flap"]
    t.add("clientid", "late", save=False)
    t.close()  # what is not written yet is written at close
    assert len(json.loads(path.read_text())["banned"]) == 2 and not timers.pending


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    t = BannedTable(str(tmp_path / "file" / "banned.json"))  # its directory is a file
    with pytest.raises(OSError):
        t.add("clientid", "a")
    assert len(t) == 0


@pytest.mark.parametrize(("text", "error"), [
    ('{"version": 1, "banned": [\n', ":2: not valid JSON: Expecting value"),
    ('[1, 2]', ':1: expected {"version": 1, "banned": [...]}'),
    ('{"version": 7, "banned": []}', ":1: unsupported version 7 (this mqttd reads version 1)"),
    ('{"version": 1, "banned": [\n{"as": "clientid", "who": "a"},\n'
     '{"as": "ip", "who": "a"}\n]}', ":3: banned[1].as: expected one of clientid, username, "
                                     "peerhost, got 'ip'"),
    ('{"version": 1, "banned": [\n{"as": "peerhost", "who": "10.1.1.1/8"}]}',
     ":2: banned[0].who: '10.1.1.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
    ('{"version": 1, "banned": [{"as": "clientid", "who": "a", "until": "soon"}]}',
     ":1: banned[0].until: expected a number or null, got 'soon'"),
    ('{"version": 1, "banned": [{"as": "clientid", "who": "a", "extra": 1}]}',
     ":1: banned[0]: unknown keys extra"),
])
def test_bad_file_says_where(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "banned.json"
    path.write_text(text)
    with pytest.raises(AccessError) as exc:
        BannedTable(str(path)).load()
    assert exc.value.errors == [f"{path}{error}"]


# --- the flapping counter -------------------------------------------------------------------

def _flapping(max_count: int = 3, window: float = 2.0, ban_time: float = 1.0
              ) -> tuple[Flapping, BannedTable, Clock]:
    clock = Clock()
    banned = BannedTable(clock=clock)
    f = Flapping(FlappingSettings(True, max_count, window, ban_time), banned, clock)
    return f, banned, clock


def test_flapping_bans_past_max_count_within_the_window() -> None:
    f, banned, clock = _flapping()
    for _ in range(3):
        assert f.admit(info("flap")) is None
        clock.t += 0.5
    refused = f.admit(info("flap"))  # the 4th connect within 2 s
    assert refused is not None and refused.code == BANNED
    ban = banned.get("clientid", "flap")
    assert ban is not None and ban.reason == "flapping" and ban.until == clock.t + 1.0
    assert banned.admit(info("flap")) is not None
    assert len(f) == 0  # its count starts again after the ban
    clock.t += 1.0
    assert banned.admit(info("flap")) is None  # the ban ended
    assert f.admit(info("flap")) is None


def test_flapping_window_slides() -> None:
    f, banned, clock = _flapping()
    for _ in range(20):  # one connect every 0.7 s: never 4 within 2 s
        assert f.admit(info("steady")) is None
        clock.t += 0.7
    assert len(banned) == 0


def test_flapping_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    f, _, clock = _flapping(window=2.0)
    for i in range(50):
        f.admit(info(f"c{i}"))
    assert len(f) == 50
    clock.t += 1.5
    f.admit(info("late"))
    clock.t += 1.0  # the first 50 are older than a window now, "late" is not
    assert f.sweep() == 50 and len(f) == 1
    monkeypatch.setattr(flapping_mod, "MAX_TRACKED", 10)
    for i in range(100):
        f.admit(info(f"d{i}"))
    assert len(f) == 10  # a flood of distinct ids pushes the oldest out


# --- end to end -----------------------------------------------------------------------------

broker = broker_fixture()
STORE_OFF = '[store]\ndurability = "off"\n'


@contextlib.contextmanager
def banned(b: BrokerProcess, kind: str, who: str, *extra: str) -> Iterator[dict[str, Any]]:
    """A ban for the length of a block (lifted even if the block fails)."""
    row = ctl_json(b, "banned", "add", kind, who, *extra)
    try:
        yield row
    finally:
        ok(b, "banned", "del", kind, who)


def mosquitto_pub(b: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", "-h", b.host, "-p", str(b.port), "-t", "t",
                           "-m", "m", *args], capture_output=True, text=True,
                          timeout=WAIT * 2, check=False)


def refused_raw(b: BrokerProcess, version: int, client_id: str, **kwargs: Any) -> int:
    """CONNECT at ``version``: the CONNACK's code, and the broker must then close."""
    with RawClient(b, version) as r:
        ack = r.connect(client_id, expect_rc=None, **kwargs)
        r.expect_closed()
        return int(ack.reason_code)


KEYS = {  # kind -> (value to ban, CONNECT fields that hit it)
    "clientid": (lambda: uid("bc-"), lambda who: {"client_id": who}),
    "username": (lambda: uid("bu-"), lambda who: {"client_id": uid(), "username": who}),
    "peerhost": (lambda: "127.0.0.0/8", lambda who: {"client_id": uid()}),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_banned_client_is_refused_0x8a_or_5(broker: BrokerProcess, clients: Any,
                                            kind: str) -> None:
    value, fields = KEYS[kind]
    who = value()
    f = fields(who)
    with banned(broker, kind, who, "--reason", "tests"):
        for version, code in ((5, BANNED), (4, 5), (3, 5)):  # 3.1/3.1.1: not authorized
            assert refused_raw(broker, version, f["client_id"],
                               username=f.get("username")) == code
        user = ["-u", f["username"]] if "username" in f else []
        done = mosquitto_pub(broker, "-V", "mqttv5", "-i", f["client_id"], *user)
        assert done.returncode != 0 and "Banned" in done.stderr, done
        done = mosquitto_pub(broker, "-V", "mqttv311", "-i", f["client_id"], *user)
        assert done.returncode != 0 and "not authorised" in done.stderr, done
        c = clients(f["client_id"], version=5, username=f.get("username"), connect=False)
        assert c.connect(expect_ok=False)[1] == BANNED
        log = wait_log(broker, f"client {f['client_id']} refused from 127.0.0.1:")
        assert f"banned ({kind} {who}: tests)" in broker.log()[log:].splitlines()[0]
    # the ban lifted, the same client gets in
    assert refused_raw_ok(broker, f["client_id"], f.get("username"))


def refused_raw_ok(b: BrokerProcess, client_id: str, username: str | None) -> bool:
    with RawClient(b, 5) as r:
        return r.connect(client_id, username=username).reason_code == 0


def test_other_keys_are_not_refused(broker: BrokerProcess) -> None:
    with banned(broker, "peerhost", "10.0.0.0/8"), banned(broker, "peerhost", "::1"), \
            banned(broker, "username", "eve"), banned(broker, "clientid", "eve"):
        assert refused_raw_ok(broker, uid(), "eve2")
        assert refused_raw_ok(broker, "eve2", None)


@pytest.mark.parametrize("kind", list(KEYS))
def test_connected_client_is_kicked_when_banned(broker: BrokerProcess, clients: Any,
                                                kind: str) -> None:
    value, _ = KEYS[kind]
    who = value()
    client_id = who if kind == "clientid" else uid("k-")
    username = who if kind == "username" else None
    c5 = clients(client_id, version=5, username=username)
    other_id = uid("other-")
    other = clients(other_id, version=5)  # not covered, unless the ban is by address
    expected = {client_id}
    c4 = None
    if kind != "clientid":  # a 3.1.1 client covered by the same ban
        c4_id = uid("k4-")
        c4 = clients(c4_id, version=4, username=username)
        expected.add(c4_id)
    if kind == "peerhost":
        expected.add(other_id)
    with banned(broker, kind, who, "--reason", "abuse") as row:
        assert set(row["kicked"]) == expected
        rc, props = c5.wait_disconnected()
        assert rc == 0x98  # Administrative action: 0x8A is not a DISCONNECT code
        assert prop(props, "ReasonString") == "banned: abuse"
        if c4 is not None:
            c4.wait_disconnected()  # 3.1.1: the connection is closed
        if kind == "peerhost":
            other.wait_disconnected()
        assert refused_raw(broker, 5, client_id, username=username) == BANNED
    if kind != "peerhost":
        assert other.disconnected is None  # untouched
        other.publish("t", b"still here", 1)


def test_kick_raw_disconnect_packet(broker: BrokerProcess) -> None:
    client_id = uid("raw-")
    with RawClient(broker, 5) as r:
        r.connect(client_id)
        with banned(broker, "clientid", client_id):
            got = r.expect_closed()
        assert [(type(p), p.reason_code) for p in got] == [(Disconnect, 0x98)]
        assert got[0].properties["reason_string"] == "banned"


def test_ctl_banned_commands(broker: BrokerProcess) -> None:
    who = uid("ctl-")
    out = ok(broker, "banned", "add", "clientid", who, "--reason", "firmware loop",
             "--duration", "1h")
    assert out.startswith(f"Banned clientid {who} until 20") and "kicked" not in out
    row = ctl_json(broker, "banned", "add", "peerhost", "2001:DB8::/32", "--until",
                   "2099-01-01T00:00:00+00:00")
    assert row == {"as": "peerhost", "who": "2001:db8::/32", "by": "mqttd ctl", "reason": "",
                   "at": row["at"], "until": row["until"], "kicked": []}
    assert row["until"].startswith("2099-01-01") or row["until"].startswith("2098-12-31")
    listed = ctl_json(broker, "banned", "list")
    mine = {r["who"]: r for r in listed if r["who"] in (who, "2001:db8::/32")}
    assert mine[who]["reason"] == "firmware loop" and mine[who]["by"] == "mqttd ctl"
    until = time.mktime(time.strptime(mine[who]["until"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 3500 < until - time.time() < 3700
    table = ok(broker, "banned", "list").splitlines()
    assert table[0].split() == ["As", "Who", "Reason", "By", "At", "Until"]
    line = next(x for x in table if who in x)
    assert "firmware loop" in line and "mqttd ctl" in line
    assert table[-1].endswith("bans") or table[-1].endswith("ban")
    assert ok(broker, "banned", "del", "clientid", who) == "ok\n"
    assert ctl_json(broker, "banned", "del", "peerhost", "2001:db8:0::/32") == {
        "as": "peerhost", "who": "2001:db8::/32", "deleted": True}
    r = ctl(broker, "banned", "del", "clientid", who)
    assert (r.code, r.err) == (1, f"mqttd ctl: ban 'clientid {who}' not found\n")
    assert who not in {r["who"] for r in ctl_json(broker, "banned", "list")}
    # bad arguments: usage errors (exit 2), before anything changes
    for args, message in [
        (("peerhost", "10.1.2.3/8"), "has host bits set (did you mean 10.0.0.0/8?)"),
        (("ip", "1.2.3.4"), "'ip' is not one of clientid, username, peerhost"),
        (("clientid", "x", "--duration", "soon"), "not a duration: 'soon'"),
        (("clientid", "x", "--until", "2001-01-01"), "is not in the future"),
        (("clientid", "x", "--until", "2099-01-01", "--duration", "1h"), "not both"),
    ]:
        r = ctl(broker, "banned", "add", *args)
        assert r.code == 2 and message in r.err, r
    assert "x" not in {r["who"] for r in ctl_json(broker, "banned", "list")}


# --- persistence ----------------------------------------------------------------------------

def test_bans_survive_a_restart() -> None:
    """With durability off, in banned.json (with the store: test_access_banned_store.py)."""
    first = BrokerProcess(STORE_OFF)
    try:
        ok(first, "banned", "add", "clientid", "kept", "--reason", "r1")
        ok(first, "banned", "add", "peerhost", "127.0.0.1", "--duration", "1h")
        ok(first, "banned", "add", "username", "brief", "--duration", "1")
        path = first.data_dir / "banned.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert first.stop() == 0
        time.sleep(1.0)  # the 1 s ban ends while no broker runs
        with checked_broker(STORE_OFF, extra_args=["--data-dir", str(first.data_dir)]) \
                as second:
            second.data_dir = first.data_dir
            rows = ctl_json(second, "banned", "list")
            assert [(r["as"], r["who"], r["reason"]) for r in rows] == [
                ("clientid", "kept", "r1"), ("peerhost", "127.0.0.1", "")]
            assert refused_raw(second, 5, uid()) == BANNED  # by address
            ok(second, "banned", "del", "peerhost", "127.0.0.1")
            assert refused_raw(second, 5, "kept") == BANNED
            assert refused_raw_ok(second, uid(), "brief")
        assert [b["who"] for b in json.loads(path.read_text())["banned"]] == ["kept"]
    finally:
        first.stop()
        first.cleanup()


def test_a_bad_banned_file_stops_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "banned.json").write_text('{"version": 1, "banned": [\n{"as": "clientid"}\n]}\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data}"\n[listeners.default]\nbind = "127.0.0.1"\n'
                   'port = 0\n')
    done = run_mqttd("start", "-c", str(cfg))
    assert done.returncode == 1, done
    assert f"{data}/banned.json:2: banned[0].who: the clientid to ban is empty" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    done = run_mqttd("config", "check", "-c", str(cfg))
    assert done.returncode == 2
    assert done.stderr == f"{cfg}: {data}/banned.json:2: banned[0].who: the clientid to ban " \
                          "is empty\n"


# --- flapping -------------------------------------------------------------------------------

FLAPPING = """
[flapping]
enable = true
max_count = 3
window = "2s"
ban_time = "1s"
"""


def test_flapping_client_is_banned_then_admitted() -> None:
    with checked_broker(FLAPPING) as b:
        client_id = uid("flap-")
        steady = Client(b, uid("steady-"), version=5)
        steady.connect()
        start = time.monotonic()
        for _ in range(3):
            with RawClient(b, 5) as r:
                r.connect(client_id)
        assert refused_raw(b, 5, client_id) == BANNED  # the 4th within 2 s
        assert refused_raw(b, 4, client_id) == 5  # now the table refuses it
        done = mosquitto_pub(b, "-V", "mqttv5", "-i", client_id)
        assert done.returncode != 0 and "Banned" in done.stderr
        assert time.monotonic() - start < 2.0, "too slow to test a 2 s window"
        rows = [r for r in ctl_json(b, "banned", "list") if r["who"] == client_id]
        assert [(r["as"], r["reason"], r["by"]) for r in rows] == [
            ("clientid", "flapping", "flapping detection")]
        log = b.log()
        assert log.count(f"client {client_id} from 127.0.0.1:") == 1  # warned once
        assert f"WARNING mqttd.access: client {client_id} from 127.0.0.1:" in log
        metrics = ctl_json(b, "broker", "metrics")["metrics"]
        assert metrics["connections.flapping"] == 1
        assert metrics["connections.refused.banned"] == 3
        deadline = time.monotonic() + WAIT
        while True:  # ban_time is 1 s: admitted again after it
            with RawClient(b, 5) as r:
                if r.connect(client_id, expect_rc=None).reason_code == 0:
                    break
            assert time.monotonic() < deadline, "still banned"
            time.sleep(0.1)
        assert time.monotonic() - start >= 1.0
        assert steady.disconnected is None  # other clients never noticed
        steady.close()


def test_flapping_off_by_default(broker: BrokerProcess) -> None:
    client_id = uid("many-")
    for _ in range(20):
        assert refused_raw_ok(broker, client_id, None)
    assert not [r for r in ctl_json(broker, "banned", "list") if r["who"] == client_id]

