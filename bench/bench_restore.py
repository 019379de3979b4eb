#!/usr/bin/env python3
"""Restart time of mqttd with a full store: 100,000 sessions and 1,000,000 queued messages.

The store file is built directly, without a broker: the store's own operation tuples
(``mqttd/store/base.py``) written with ``mqttd.store.sqlite.SqliteBackend.write()``, the
messages encoded by ``mqttd.store.journal.message_packet`` as the journal does. Every
session is offline (disconnected now, expiry 7 days) with one QoS 1 subscription and
``--per-session`` queued QoS 1 messages (10), not yet in flight. With ``--share 1`` (the
default) every queued row has its own message (1,000,000 message rows); ``--share K``
queues each message for K sessions (fewer, shared message rows, as after a fan-out).

Then, ``--repeat`` times (3), on a fresh copy of that file in an empty data directory:
``python -m mqttd start`` (pinned to ``--broker-core``) is timed from exec until

- its log line ``store: restored ...`` (the line's own timestamp; mqttd writes it when the
  store is read and installed, before any listener opens), and
- an MQTT CONNECT on its port gets CONNACK (probed every 5 ms from ``--load-core``).

Also taken: the broker's RSS once it serves (and its peak, VmHWM), its CPU time until then,
the store file's size, and the time SIGTERM takes to stop it. Each repeat then checks the
restore: the first and the last session connect with Clean Session 0 and must get their
queued messages, each exactly once. Figures are medians of the repeats; the file is in the
page cache (it was just copied): a warm-cache start.

    python bench/bench_restore.py                 # 100,000 sessions x 10 messages, 3 starts
    python bench/bench_restore.py --quick         # CI smoke: 1/100 of the sizes, 1 start
    python bench/bench_restore.py --sessions 20000 --per-session 50 --share 100

Exit status 1 when a start failed, restored other counts than built, or the check of the
queued messages failed; ``--fail-on-goals``: 2 when the median exec-to-serving time is over
the goal (10 s).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import brokers  # noqa: E402
from run import busy_other_pytest, cpu_model, git_rev, wait_until_quiet  # noqa: E402

OUT = HERE / "out"
#: The issue's goal for the restart with 100,000 sessions and 1,000,000 queued messages.
GOAL_S = 10.0
#: Session expiry of the built sessions (seconds): none expires during the bench.
EXPIRY = 7 * 24 * 3600
PAYLOAD = 64
PROBE_EVERY = 0.005

_RESTORED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+: store: restored (\d+) sessions"
    r".*?(\d+) subscriptions, (\d+) queued and (\d+) in-flight messages.*? in ([0-9.]+) s",
    re.M)


def client_id(i: int) -> str:
    return f"restore-{i:06d}"


def topic(group: int, k: int) -> str:
    return f"restore/{group}/m{k}"


def payload(group: int, k: int) -> bytes:
    return f"{group}:{k}:".encode().ljust(PAYLOAD, b"x")


# --- building the store ------------------------------------------------------------------

def build_store(path: Path, sessions: int, per: int, share: int, log: Any) -> dict[str, Any]:
    """Write the store file through SqliteBackend.write(); returns counts and timings."""
    from mqttd.core.message import Message
    from mqttd.mqtt.packets import SubOpts
    from mqttd.store.base import MSG_PUT, Q_PUT, SCHEMA_VERSION, SESSION_PUT, SUB_PUT
    from mqttd.store.journal import message_packet, options_byte
    from mqttd.store.sqlite import SqliteBackend

    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.monotonic()
    backend = SqliteBackend(str(path), "process")
    restored = backend.open()
    if restored.sessions or restored.messages:
        raise RuntimeError(f"{path}: not empty")
    now = time.time()
    opts = options_byte(SubOpts(qos=1))
    n_msgs = n_rows = n_tx = 0
    # One transaction per chunk of sessions, each op kind in one run (one executemany).
    chunk = 2000
    for first in range(0, sessions, chunk):
        sess, subs, msgs, rows = [], [], [], []
        for i in range(first, min(first + chunk, sessions)):
            cid = client_id(i)
            group = i // share
            sess.append((SESSION_PUT, cid, EXPIRY, now, now, None, 0, "default"))
            subs.append((SUB_PUT, cid, f"restore/{group}/#", opts, 0))
            for k in range(per):
                msg_id = group * per + k + 1
                if i % share == 0:  # the first session of its group brings the message
                    msg = Message(topic(group, k), payload(group, k), 1, False,
                                  sender="restore-publisher")
                    msgs.append((MSG_PUT, msg_id, message_packet(msg), msg.sender,
                                 msg.timestamp, 0.0))
                rows.append((Q_PUT, cid, k + 1, msg_id, 1, False, (), None, 0))
        backend.write(sess + subs + msgs + rows)
        n_msgs += len(msgs)
        n_rows += len(rows)
        n_tx += 1
        if log and (first // chunk) % 10 == 9:
            log(f"  built {first + chunk:,} of {sessions:,} sessions "
                f"({time.monotonic() - t0:.0f} s)")
    backend.close()  # checkpoints the WAL into the file
    seconds = time.monotonic() - t0
    return {"sessions": sessions, "subscriptions": sessions, "messages": n_msgs,
            "queued": n_rows, "transactions": n_tx, "build_s": seconds,
            "schema": SCHEMA_VERSION, "file_bytes": store_bytes(path)}


def store_bytes(path: Path) -> int:
    """The store file with its WAL and shared-memory file, if any."""
    return sum(os.path.getsize(str(path) + s) for s in ("", "-wal", "-shm")
               if os.path.exists(str(path) + s))


# --- one restart -------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def log_epoch(stamp: str) -> float:
    """A log line's timestamp (local time, ms) as epoch seconds."""
    return _dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def check_session(port: int, i: int, share: int, per: int, timeout: float = 30.0) -> str | None:
    """Resume session ``i`` (3.1.1, Clean Session 0) and take its queued messages: None when
    it had a session and got each of its ``per`` messages exactly once, else what was wrong."""
    cid = client_id(i).encode()
    body = b"\x00\x04MQTT\x04\x00\x00\x00" + len(cid).to_bytes(2, "big") + cid
    want = {(topic(i // share, k), payload(i // share, k)) for k in range(per)}
    got: list[tuple[str, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"\x10" + bytes([len(body)]) + body)
        ack = _read_exact(s, 4)
        if ack[:2] != b"\x20\x02" or ack[3] != 0:
            return f"CONNACK {ack.hex()}"
        if not ack[2] & 1:
            return "CONNACK without Session Present: the session was not restored"
        deadline = time.monotonic() + timeout
        while len(got) < per and time.monotonic() < deadline:
            b0 = _read_exact(s, 1)[0]
            rl, mult = 0, 1
            while True:
                byte = _read_exact(s, 1)[0]
                rl += (byte & 127) * mult
                mult *= 128
                if not byte & 128:
                    break
            pkt = _read_exact(s, rl)
            if b0 >> 4 != 3:
                continue
            tlen = int.from_bytes(pkt[:2], "big")
            name = pkt[2:2 + tlen].decode()
            off = 2 + tlen
            if (b0 >> 1) & 3:
                pid = pkt[off:off + 2]
                off += 2
                s.sendall(b"\x40\x02" + pid)
            got.append((name, pkt[off:]))
        s.sendall(b"\xe0\x00")
    if len(got) != per or set(got) != want:
        return (f"session {i}: got {len(got)} messages ({len(set(got) & want)} of the {per} "
                f"expected, {len(got) - len(set(got))} duplicates)")
    return None


def restart(store: Path, workdir: Path, args: argparse.Namespace, src: Path | None,
            expect: dict[str, Any]) -> dict[str, Any]:
    """Start mqttd on a fresh copy of ``store``; time it; check it; stop it."""
    data = brokers.fresh_dir(workdir / "data")
    shutil.copy2(store, data / "mqttd.db")
    conf = workdir / "mqttd.toml"
    conf.write_text(brokers.MQTTD_CONFIG + brokers.MQTTD_STORE.format(durability="process"))
    port = brokers.free_port()
    env = {**os.environ}
    env["PYTHONPATH"] = str(src or ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "mqttd", "start", "-c", str(conf), "--port", str(port),
           "--data-dir", str(data), "--log-level", "info"]
    log_path = workdir / "broker.log"
    core = args.broker_core

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    res: dict[str, Any] = {"port": port}
    with open(log_path, "wb") as logf:
        wall0 = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                preexec_fn=pin)  # noqa: PLW1509 - no threads here
        try:
            deadline = t0 + args.timeout
            match = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"mqttd exited with {proc.returncode}:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                if match is None:
                    match = _RESTORED.search(log_path.read_text(errors="replace"))
                    if match:
                        res["restored_seen_s"] = time.monotonic() - t0
                if brokers.mqtt_probe(port, timeout=5.0):
                    res["serving_s"] = time.monotonic() - t0
                    break
                time.sleep(PROBE_EVERY)
            else:
                raise RuntimeError(f"mqttd did not serve within {args.timeout:g} s:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            res["cpu_s"] = brokers.cpu_ticks(proc.pid) / brokers.CLK_TCK
            st = proc_status(proc.pid)
            res["rss_serving"] = st.get("VmRSS")
            time.sleep(args.settle)
            st = proc_status(proc.pid)
            res["rss"] = st.get("VmRSS")
            res["rss_peak"] = st.get("VmHWM")
            if match is None:
                match = _RESTORED.search(log_path.read_text(errors="replace"))
            if match is None:
                raise RuntimeError("no 'store: restored' line in the log")
            res["restored_s"] = log_epoch(match.group(1)) - wall0
            res["restore_reported_s"] = float(match.group(6))
            got = {"sessions": int(match.group(2)), "subscriptions": int(match.group(3)),
                   "queued": int(match.group(4)) + int(match.group(5))}
            res["restored"] = got
            wrong = [f"{k} {got[k]:,} (built {expect[k]:,})" for k in got if got[k] != expect[k]]
            problems = [f"restored {', '.join(wrong)}"] if wrong else []
            for i in sorted({0, args.sessions - 1}):
                why = check_session(port, i, args.share, args.per_session)
                if why:
                    problems.append(why)
            if problems:
                res["error"] = "; ".join(problems)
        finally:
            if proc.poll() is None:
                t1 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(args.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    res["stop_killed"] = True
                res["stop_s"] = time.monotonic() - t1
            res["exit"] = proc.returncode
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    return res


# --- report ------------------------------------------------------------------------------

def median(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None and not r.get("error")]
    return statistics.median(vals) if vals else None


def markdown(doc: dict[str, Any]) -> str:
    meta, built, runs = doc["meta"], doc["built"], doc["runs"]
    mib = 1024 * 1024

    def each(key: str, scale: float = 1.0, f: str = "{:.2f}") -> str:
        return " / ".join(f.format(r[key] / scale) if r.get(key) is not None else "-"
                          for r in runs)

    def med(key: str, scale: float = 1.0, f: str = "{:.2f}") -> str:
        v = median(runs, key)
        return f.format(v / scale) if v is not None else "-"

    serving = median(runs, "serving_s")
    full = built["sessions"] >= 100_000 and built["queued"] >= 1_000_000
    verdict = ("not judged at these sizes" if not full else "-" if serving is None
               else "**PASS**" if serving <= GOAL_S else "**FAIL**")
    lines = [
        "## Restart with a full store (bench/bench_restore.py)",
        "",
        f"- **Command**: `{meta['command']}`",
        f"- **Date**: {meta['date']}; mqttd {meta['mqttd_rev']}"
        + ("; every start ran a copy of the package taken at the start." if meta["snapshot"]
           else "; mqttd ran from the work tree."),
        f"- **Machine**: {meta['machine']}. Broker pinned to core {meta['broker_core']}, "
        f"the probe to core {meta['load_core']}.",
        f"- **Store**: {built['sessions']:,} offline sessions (expiry 7 days), one QoS 1 "
        f"subscription each, {meta['per_session']} queued QoS 1 messages each "
        f"({built['queued']:,} queue rows referencing {built['messages']:,} stored messages, "
        f"{PAYLOAD}-byte payloads); written through `SqliteBackend.write()` in "
        f"{built['transactions']:,} transaction(s) in {built['build_s']:.1f} s; "
        f"file {built['file_bytes'] / mib:,.1f} MiB (durability \"process\").",
        f"- **Shape**: {len(runs)} start(s), each on a fresh copy of the file (in the page cache: "
        f"a warm start); figures are medians. Noise: {meta['quiet_note']}.",
    ]
    if meta.get("quick"):
        lines.append("- **--quick**: 1/100 of the sizes: a smoke test, not a measurement.")
    lines += [
        "",
        "| figure | median | every start |",
        "|---|---:|---|",
        f"| exec → log line `store: restored` | {med('restored_s')} s | {each('restored_s')} |",
        f"| exec → CONNACK on the listener | **{med('serving_s')} s** | {each('serving_s')} |",
        f"| restore as mqttd reports it (`in … s`) | {med('restore_reported_s')} s | "
        f"{each('restore_reported_s')} |",
        f"| broker CPU time until serving | {med('cpu_s')} s | {each('cpu_s')} |",
        f"| RSS when serving | {med('rss_serving', mib, '{:,.0f}')} MiB | "
        f"{each('rss_serving', mib, '{:,.0f}')} |",
        f"| RSS {meta['settle']:g} s later / peak (VmHWM) | {med('rss', mib, '{:,.0f}')} / "
        f"{med('rss_peak', mib, '{:,.0f}')} MiB | {each('rss', mib, '{:,.0f}')} |",
        f"| SIGTERM → exit | {med('stop_s')} s | {each('stop_s')} |",
        "",
        f"Goal (issue 9): exec → serving ≤ {GOAL_S:g} s with 100,000 sessions and 1,000,000 "
        f"queued messages: {verdict}.",
    ]
    errors = [r["error"] for r in runs if r.get("error")]
    lines.append("Restore check (restored counts as built; the first and last session get "
                 "their queued messages exactly once): "
                 + ("every start passed." if not errors else "; ".join(errors)))
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=None, help="stored sessions (100,000)")
    ap.add_argument("--per-session", type=int, default=10,
                    help="queued QoS 1 messages per session (10)")
    ap.add_argument("--share", type=int, default=1,
                    help="sessions each stored message is queued for (1: a message per row)")
    ap.add_argument("--repeat", type=int, default=None, help="starts (3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1/100 of the sizes, 1 start (CI)")
    ap.add_argument("--broker-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds a start (and a stop) may take")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds after serving before the second RSS reading")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the store built by an earlier --reuse run with the same "
                         "sizes (bench/out/restore-SESSIONSxPERxSHARE.db, kept) instead of "
                         "building it again")
    ap.add_argument("--keep", action="store_true",
                    help="keep the built store and every start's data directory")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="MINUTES",
                    help="first wait until no pytest runs, at most this long (20; --quick 0)")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="build with and run the work tree's mqttd, not a copy taken first")
    ap.add_argument("--json", metavar="FILE", help="raw results (default bench/out/restore-*.json)")
    ap.add_argument("--fail-on-goals", action="store_true",
                    help="exit 2 when exec → serving is over the goal")
    args = ap.parse_args(argv)
    if args.sessions is None:
        args.sessions = 1_000 if args.quick else 100_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 20.0
    if args.sessions < 1 or args.per_session < 1 or args.share < 1 or args.per_session > 65535:
        ap.error("--sessions, --per-session and --share must be positive")

    def log(msg: str) -> None:
        print(msg, flush=True)

    cores = sorted(os.sched_getaffinity(0))
    if args.broker_core not in cores or args.load_core not in cores:
        ap.error(f"cores {args.broker_core}/{args.load_core} not available ({cores})")
    os.sched_setaffinity(0, {args.load_core})
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = OUT / f"restore-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    src: Path | None = None
    if not args.no_snapshot:
        src = brokers.snapshot_mqttd(out_dir / "src")
        log(f"mqttd copied to {src}/mqttd for this run")
    sys.path.insert(0, str(src or ROOT))

    sizes = f"{args.sessions}x{args.per_session}x{args.share}"
    store = OUT / f"restore-{sizes}.db"
    sidecar = store.with_suffix(".json")
    built: dict[str, Any] | None = None
    if args.reuse and store.exists() and sidecar.exists():
        built = json.loads(sidecar.read_text())
        from mqttd.store.base import SCHEMA_VERSION
        if built.get("schema") != SCHEMA_VERSION:
            log(f"{store}: schema {built.get('schema')}, this mqttd writes {SCHEMA_VERSION}: "
                "building again")
            built = None
        else:
            log(f"reusing {store} (built {built['build_s']:.0f} s)")
    if built is None:
        log(f"building {store}: {args.sessions:,} sessions x {args.per_session} queued "
            f"messages (share {args.share}) ...")
        built = build_store(store, args.sessions, args.per_session, args.share, log)
        sidecar.write_text(json.dumps(built) + "\n")
        log(f"built in {built['build_s']:.1f} s: {built['file_bytes'] / 2**20:,.1f} MiB")
    expect = {"sessions": built["sessions"], "subscriptions": built["subscriptions"],
              "queued": built["queued"]}

    quiet = wait_until_quiet(args.wait_idle, log) if args.wait_idle > 0 else (
        "did not wait for other test runs (--quick or --wait-idle 0)")
    runs = []
    failed = False
    for rep in range(args.repeat):
        try:
            res = restart(store, out_dir / f"start-{rep + 1}", args, src, expect)
        except Exception as err:  # noqa: BLE001 - one failed start must not lose the others
            res = {"error": f"{type(err).__name__}: {err}"[:2000]}
        res["pytest_running"] = busy_other_pytest()
        runs.append(res)
        if res.get("error"):
            failed = True
            log(f"  start {rep + 1}: ERROR {res['error']}")
        else:
            log(f"  start {rep + 1}: restored line {res['restored_s']:.2f} s, serving "
                f"{res['serving_s']:.2f} s (restore {res['restore_reported_s']:.2f} s, cpu "
                f"{res['cpu_s']:.2f} s), RSS {res['rss'] / 2**20:,.0f} MiB, stop "
                f"{res.get('stop_s', 0):.2f} s")
    if not args.keep and not args.reuse:  # --reuse keeps it for the next run
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)

    cmd = "python bench/bench_restore.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {
        "meta": {
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "command": cmd.strip(), "quick": args.quick, "per_session": args.per_session,
            "share": args.share, "settle": args.settle, "broker_core": args.broker_core,
            "load_core": args.load_core, "snapshot": src is not None, "mqttd_rev": git_rev(),
            "machine": (f"{cpu_model()} ({os.cpu_count()} logical cores), "
                        f"{platform.system()} {platform.release()}, Python "
                        f"{platform.python_version()}"),
            "quiet_note": quiet,
        },
        "built": built,
        "runs": runs,
    }
    path = Path(args.json) if args.json else out_dir.with_suffix(".json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(markdown(doc))
    log(f"raw results: {path}")
    if failed:
        return 1
    serving = median(runs, "serving_s")
    if args.fail_on_goals and (serving is None or serving > GOAL_S):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
