"""CONNECT rate with a password file: mqttd against mosquitto, the same file, side by side.

Every client is a different user of one mosquitto-format password file (PBKDF2-SHA512, made
by Debian's ``mosquitto_passwd`` or with ``--iterations`` by mqttd's own writer), so every
CONNECT costs one hash on both brokers. The clients come from bench/run.py's Cython load
generator (``bench/loadgen``, ``Engine.set_credentials``), which keeps ``--concurrency``
handshakes in flight and saturates either broker (an asyncio client could not): all
``--users`` connect, each waiting for its CONNACK, then all send DISCONNECT. The rate is
users ÷ the time to the last CONNACK; the broker's CPU per CONNECT covers connect and
disconnect. A second pass with the same users measures what mqttd's cache of successful
checks saves (mosquitto has none). Meanwhile one more client (a separate process) sends
PINGREQ every 5 ms from the load core with SCHED_FIFO (so its own wait for the core is not
counted): its worst round trip is the longest the broker's event loop stood still, given
for the whole pass and apart for its two phases (while the clients connect, the storm
with hashing; while they leave).

Brokers run pinned to ``--broker-core``, the load (this process) to ``--load-core``.

    python bench/bench_auth.py                   # 3,000 users, mosquitto's default 101 iterations
    python bench/bench_auth.py --iterations 210000 --users 100
    python bench/bench_auth.py --quick               # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MOSQUITTO = "/usr/sbin/mosquitto"
#: Source addresses the generator spreads connections over (each its own port range).
SOURCES = [0x7F000001 + i for i in range(1, 9)]  # 127.0.0.2 .. 127.0.0.9
#: Seconds after the DISCONNECTs before the broker's CPU is read (it closes them meanwhile).
SETTLE = 0.5

#: The PINGREQ client: its own process, since the generator holds the GIL while it runs;
#: on the load core with SCHED_FIFO (as bench_pauses.py's), so what it measures is the
#: broker's pauses, not its own wait behind the load generator for the core. Around each
#: round trip it reads the broker main thread's schedstat: ``net`` is the worst round trip
#: less the time the broker stood runnable without a CPU (preempted by other work on its
#: core), ``asleep`` the round trips over 5 ms in which it neither ran nor waited for a CPU
#: (blocked in the kernel, or on a lock).
PINGER = r"""
import json, os, socket, sys, time, select
try:
    os.sched_setaffinity(0, {int(sys.argv[3])})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except (OSError, AttributeError):
    pass  # not root: the figure carries the generator's scheduling noise
pid = int(sys.argv[4])
try:  # the broker's main thread: ns run and ns waited for a CPU so far
    fd = os.open(f"/proc/{pid}/task/{pid}/schedstat", os.O_RDONLY)
except OSError:
    fd = -1
def sched():
    if fd < 0:
        return 0, 0
    run, wait = os.pread(fd, 64, 0).split()[:2]
    return int(run), int(wait)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(bytes.fromhex(sys.argv[2]))
assert len(s.recv(4)) == 4
sys.stdout.write("ready\n"); sys.stdout.flush()
worst = (0.0, 0.0, 0.0)
net = 0.0
asleep = 0
phase = 0  # 0 while the clients connect, 1 once the generator said "leave" (DISCONNECTs)
by_phase = [0.0, 0.0]
while True:
    if select.select([sys.stdin], [], [], 0.005)[0]:
        if sys.stdin.readline() == "leave\n":
            phase = 1
            continue
        break
    r0, w0 = sched()
    t = time.perf_counter()
    s.sendall(b"\xc0\x00")
    got = b""
    while len(got) < 2:
        got += s.recv(2 - len(got))
    rtt = time.perf_counter() - t
    r1, w1 = sched()
    ran, waited = (r1 - r0) / 1e9, (w1 - w0) / 1e9
    if rtt > worst[0]:
        worst = (rtt, ran, waited)
    by_phase[phase] = max(by_phase[phase], rtt)
    net = max(net, rtt - waited)
    if rtt > 0.005 and ran + waited < 0.001:
        asleep += 1
print(json.dumps({"worst": worst[0] * 1000, "ran": worst[1] * 1000, "waited": worst[2] * 1000,
                  "net": net * 1000, "asleep": asleep, "connecting": by_phase[0] * 1000,
                  "leaving": by_phase[1] * 1000}))
"""


def _vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, user: str, password: str) -> bytes:
    """A 3.1.1 CONNECT with user name and password, built by hand (not with mqttd's codec)."""
    body = (_s(b"MQTT") + b"\x04" + bytes([0x02 | 0x80 | 0x40]) + (60).to_bytes(2, "big")
            + _s(client_id.encode()) + _s(user.encode()) + _s(password.encode()))
    return b"\x10" + _vbi(len(body)) + body


def write_password_file(path: Path, users: int, iterations: int) -> None:
    """``user:$7$iter$salt$hash`` lines (PBKDF2-HMAC-SHA512) with mqttd's own writer, the
    format both brokers read (tests/test_access_password.py proves mosquitto reads it)."""
    sys.path.insert(0, str(ROOT))
    from mqttd.access.password_file import hash_password

    with open(path, "w") as f:
        for i in range(users):
            f.write(f"user{i}:{hash_password(f'pw-{i}'.encode(), iterations).encode()}\n")
    path.chmod(0o644)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(kind: str, workdir: Path, passwd: Path, core: int, hash_threads: int = 2
                 ) -> tuple[subprocess.Popen[bytes], int]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "broker.log", "wb")  # noqa: SIM115 - lives as long as the process

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    if kind == "mosquitto":
        port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {passwd}\npersistence false\nlog_dest stderr\n"
                        "log_type error\nconnection_messages false\n")
        conf.chmod(0o644)
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log,
                                preexec_fn=pin)  # noqa: PLW1509
    else:
        port = free_port()
        conf = workdir / "mqttd.toml"
        # Every client of the load comes from 127.0.0.1: no per-address bound (mosquitto
        # has none either), or most would be refused busy.
        conf.write_text(f'[auth]\npassword_file = "{passwd}"\nhash_threads = {hash_threads}\n'
                        'max_pending_per_address = 0\n\n'
                        f'[mqtt]\nallow_anonymous = false\n\n'
                        f'[listeners.default]\nbind = "127.0.0.1"\nport = {port}\n')
        # NAME@DIR: the mqttd of another checkout (its extensions built), for a before/after
        # comparison in one sitting; plain "mqttd" is this checkout's.
        src = kind.split("@", 1)[1] if "@" in kind else str(ROOT)
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH"))
                                             if p)}
        # cwd: `python -m` puts the working directory first on sys.path, so started from a
        # checkout's root every NAME@DIR would import that checkout's mqttd, not DIR's.
        proc = subprocess.Popen([sys.executable, "-m", "mqttd", "start", "-c", str(conf),
                                 "--data-dir", str(workdir / "data"), "--log-level", "warning"],
                                stdout=log, stderr=log, env=env, cwd=workdir,
                                preexec_fn=pin)  # noqa: PLW1509
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {(workdir / 'broker.log').read_text()}"
                                   ) from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not listen")


def storm(lg: Any, pid: int, port: int, users: int, concurrency: int, tag: str,
          load_core: int) -> tuple[float, int, dict[str, float], float]:
    """(connects per second, refused, the pinger's figures (PINGER), broker CPU seconds)
    for one pass of ``users`` clients (user i with password pw-i)."""
    pinger = subprocess.Popen([sys.executable, "-c", PINGER, str(port),
                               connect_packet("pinger-" + tag, "user0", "pw-0").hex(),
                               str(load_core), str(pid)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pinger.stdout is not None and pinger.stdin is not None
        pinger.stdout.readline()
        e = lg.Engine(port, users)
        e.set_credentials(b"user", b"pw-", users)
        c0 = cpu_seconds(pid)
        _first, ok, failed, ns = e.connect(users, SOURCES, concurrency, tag.encode() + b"-", 60,
                                           60.0)
        pinger.stdin.write("leave\n")  # the PINGs from here on are the leave's
        pinger.stdin.flush()
        e.close_all()
        time.sleep(SETTLE)
        cpu = cpu_seconds(pid) - c0
        pinger.stdin.close()
        out = pinger.stdout.read().strip()
        pings = json.loads(out) if out else {"worst": float("nan"), "ran": 0.0,
                                             "connecting": float("nan"),
                                             "leaving": float("nan"),
                                             "waited": 0.0, "net": float("nan"), "asleep": 0}
    finally:
        if pinger.poll() is None:
            pinger.kill()
        pinger.wait()
    refused = users - ok
    if refused:
        print(f"  {refused} of {users} not connected (failed {failed}, first error "
              f"{e.first_conn_error}: >1000 is 1000 + the CONNACK code)", file=sys.stderr)
    return (ok / ns * 1e9 if ns else 0.0), refused, pings, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Enough that a pass lasts ~0.5 s: CPU times come in 10 ms clock ticks.
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--iterations", type=int, default=101,
                    help="PBKDF2 iterations (mosquitto_passwd 2.0 writes 101, 2.1 210,000)")
    # Below mosquitto's listen backlog (100): past it, dropped SYNs wait out a 1 s retransmit.
    ap.add_argument("--concurrency", type=int, default=32,
                    help="CONNECTs in flight at once (the generator's handshake window)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--broker-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--brokers", default="mqttd,mosquitto",
                    help="comma-separated: mqttd, mosquitto, NAME@DIR (mqttd from checkout DIR)")
    ap.add_argument("--hash-threads", type=int, default=2, help="mqttd's [auth] hash_threads")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (CI)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.quick:
        args.users, args.repeat = 20, 1
    brokers = [b for b in args.brokers.split(",")
               if b != "mosquitto" or os.access(MOSQUITTO, os.X_OK)]
    os.sched_setaffinity(0, {args.load_core})
    sys.path.insert(0, str(HERE))
    from loadgen import engine

    lg = engine()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mqttd-bench-auth-") as tmp:
        # mosquitto started as root reads its files as the "mosquitto" user
        os.chmod(tmp, 0o755)
        passwd = Path(tmp) / "passwd"
        write_password_file(passwd, args.users, args.iterations)
        for rep in range(args.repeat):
            for kind in brokers:
                name = kind.split("@", 1)[0]
                proc, port = start_broker(kind, Path(tmp) / f"{name}-{rep}", passwd,
                                          args.broker_core, args.hash_threads)
                try:
                    cold = storm(lg, proc.pid, port, args.users, args.concurrency, "a",
                                 args.load_core)
                    warm = storm(lg, proc.pid, port, args.users, args.concurrency, "b",
                                 args.load_core)
                finally:
                    proc.terminate()
                    proc.wait(10)
                if cold[1] or warm[1]:
                    print(f"error: {name} refused {cold[1]} + {warm[1]} good clients",
                          file=sys.stderr)
                    return 1
                r = results.setdefault(name, {"cold": [], "warm": [], "stall_ms": [],
                                              "connecting_ms": [], "leaving_ms": [],
                                              "net_ms": [], "asleep": [],
                                              "cpu_us_per_connect": []})
                # Broker CPU per CONNECT (and its DISCONNECT), first pass, in µs.
                cpu_us = cold[3] / args.users * 1e6
                r["cpu_us_per_connect"].append(cpu_us)
                r["cold"].append(cold[0])
                r["warm"].append(warm[0])
                w = max(cold[2], warm[2], key=lambda p: p["worst"])
                r["stall_ms"].append(w["worst"])
                r["connecting_ms"].append(max(cold[2]["connecting"], warm[2]["connecting"]))
                r["leaving_ms"].append(max(cold[2]["leaving"], warm[2]["leaving"]))
                r["net_ms"].append(max(cold[2]["net"], warm[2]["net"]))
                r["asleep"].append(cold[2]["asleep"] + warm[2]["asleep"])
                print(f"  {name:<10} #{rep + 1}: first pass {cold[0]:,.0f} conn/s (broker CPU "
                      f"{cpu_us:.0f} µs per CONNECT+DISCONNECT), second "
                      f"{warm[0]:,.0f} conn/s, worst PING {w['worst']:.1f} ms (connecting "
                      f"{r['connecting_ms'][-1]:.1f}, leaving {r['leaving_ms'][-1]:.1f}; "
                      f"broker ran "
                      f"{w['ran']:.1f}, waited for a CPU {w['waited']:.1f}); worst net of "
                      f"waits {r['net_ms'][-1]:.1f} ms; {r['asleep'][-1]} PINGs > 5 ms asleep")
    print(f"\n{args.users} users, PBKDF2-SHA512 {args.iterations:,} iterations, "
          f"{args.concurrency} at a time; medians of {args.repeat}\n")
    print("| broker | first pass (conn/s) | CPU per CONNECT+DISCONNECT | "
          "second pass (conn/s) | worst PING round trip | while connecting | while leaving | "
          "less waits for a CPU | PINGs > 5 ms asleep |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        per = r["cpu_us_per_connect"]
        print(f"| {kind} | {statistics.median(r['cold']):,.0f} | "
              f"{statistics.median(per):.0f} µs | "
              f"{statistics.median(r['warm']):,.0f} | {statistics.median(r['stall_ms']):.1f} ms | "
              f"{statistics.median(r['connecting_ms']):.1f} ms | "
              f"{statistics.median(r['leaving_ms']):.1f} ms | "
              f"{statistics.median(r['net_ms']):.1f} ms | {statistics.median(r['asleep']):g} |")
    for kind in [k for k in results if k != "mosquitto"]:
        if "mosquitto" not in results:
            break
        m, q = results[kind], results["mosquitto"]
        # The rate is the goal's figure (the generator saturates the broker); the CPU each
        # CONNECT costs says how much of the broker's core it took.
        mine = statistics.median(m["cpu_us_per_connect"])
        if mine > 0:  # a tiny run (--quick) may see no clock tick of CPU at all
            capacity = statistics.median(q["cpu_us_per_connect"]) / mine
            print(f"\nCPU per CONNECT, mosquitto ÷ {kind}: {capacity:.2f}× (the capacity "
                  "ratio when a broker is the bottleneck)")
        print(f"\n{kind} ÷ mosquitto: first pass "
              f"{statistics.median(m['cold']) / statistics.median(q['cold']):.2f}×, second pass "
              f"{statistics.median(m['warm']) / statistics.median(q['warm']):.2f}×")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
