"""CONNECT rate with a password file: mqttd against mosquitto, the same file, side by side.

Every client is a different user of one mosquitto-format password file (PBKDF2-SHA512, made
by Debian's ``mosquitto_passwd`` or with ``--iterations`` by mqttd's own writer), so every
CONNECT costs one hash on both brokers. Clients connect ``--concurrency`` at a time, wait
for CONNACK and disconnect. A second pass with the same users measures what mqttd's cache
of successful checks saves (mosquitto has none). Meanwhile one more client sends PINGREQ
every 5 ms: its worst round trip is the longest the broker's event loop stood still.

Brokers run pinned to ``--broker-core``, the load (this process) to ``--load-core``.

    python bench/bench_auth.py                       # 500 users, mosquitto's default 101 iterations
    python bench/bench_auth.py --iterations 210000 --users 100
    python bench/bench_auth.py --quick               # CI smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"


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
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "mqttd", "start", "-c", str(conf),
                                 "--data-dir", str(workdir / "data"), "--log-level", "warning"],
                                stdout=log, stderr=log, env=env, preexec_fn=pin)  # noqa: PLW1509
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


async def one_client(port: int, i: int, tag: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(connect_packet(f"{tag}-{i}", f"user{i}", f"pw-{i}"))
        ack = await asyncio.wait_for(reader.readexactly(4), 30)
        writer.write(b"\xe0\x00")
        return ack[3]
    finally:
        writer.close()


async def pinger(port: int, stop: asyncio.Event, rtts: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet("pinger", "user0", "pw-0"))
    await reader.readexactly(4)
    while not stop.is_set():
        t = time.perf_counter()
        writer.write(b"\xc0\x00")
        await reader.readexactly(2)
        rtts.append(time.perf_counter() - t)
        await asyncio.sleep(0.005)
    writer.close()


async def storm(port: int, users: int, concurrency: int, tag: str) -> tuple[float, int, float]:
    """(connects per second, refused, worst PING round trip in ms) for one pass."""
    stop = asyncio.Event()
    rtts: list[float] = []
    ping = asyncio.create_task(pinger(port, stop, rtts))
    await asyncio.sleep(0.05)
    sem = asyncio.Semaphore(concurrency)
    refused = 0

    async def run(i: int) -> None:
        nonlocal refused
        async with sem:
            if await one_client(port, i, tag):
                refused += 1

    t = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(users)))
    elapsed = time.perf_counter() - t
    stop.set()
    await ping
    return users / elapsed, refused, max(rtts, default=0.0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=101,
                    help="PBKDF2 iterations (mosquitto_passwd 2.0 writes 101, 2.1 210,000)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--broker-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--brokers", default="mqttd,mosquitto")
    ap.add_argument("--hash-threads", type=int, default=2, help="mqttd's [auth] hash_threads")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (CI)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.quick:
        args.users, args.repeat = 20, 1
    brokers = [b for b in args.brokers.split(",")
               if b != "mosquitto" or os.access(MOSQUITTO, os.X_OK)]
    os.sched_setaffinity(0, {args.load_core})
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mqttd-bench-auth-") as tmp:
        # mosquitto started as root reads its files as the "mosquitto" user
        os.chmod(tmp, 0o755)
        passwd = Path(tmp) / "passwd"
        write_password_file(passwd, args.users, args.iterations)
        for rep in range(args.repeat):
            for kind in brokers:
                proc, port = start_broker(kind, Path(tmp) / f"{kind}-{rep}", passwd,
                                          args.broker_core, args.hash_threads)
                try:
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                    cold = asyncio.run(storm(port, args.users, args.concurrency, "a"))
                    cpu = 100 * (cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0)
                    warm = asyncio.run(storm(port, args.users, args.concurrency, "b"))
                finally:
                    proc.terminate()
                    proc.wait(10)
                if cold[1] or warm[1]:
                    print(f"error: {kind} refused {cold[1]} + {warm[1]} good clients",
                          file=sys.stderr)
                    return 1
                r = results.setdefault(kind, {"cold": [], "warm": [], "stall_ms": [],
                                              "cpu": []})
                r["cpu"].append(cpu)
                r["cold"].append(cold[0])
                r["warm"].append(warm[0])
                r["stall_ms"].append(max(cold[2], warm[2]))
                print(f"  {kind:<10} #{rep + 1}: first pass {cold[0]:,.0f} conn/s (broker CPU "
                      f"{cpu:.0f} %), second "
                      f"{warm[0]:,.0f} conn/s, worst PING {max(cold[2], warm[2]):.1f} ms")
    print(f"\n{args.users} users, PBKDF2-SHA512 {args.iterations:,} iterations, "
          f"{args.concurrency} at a time; medians of {args.repeat}\n")
    print("| broker | first pass (conn/s) | broker CPU, first pass | CPU per CONNECT | "
          "second pass (conn/s) | worst PING round trip |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        per = [c / 100 / rate * 1e6 for c, rate in zip(r["cpu"], r["cold"], strict=True)]
        r["cpu_us_per_connect"] = per
        print(f"| {kind} | {statistics.median(r['cold']):,.0f} | "
              f"{statistics.median(r['cpu']):.0f} % | {statistics.median(per):.0f} µs | "
              f"{statistics.median(r['warm']):,.0f} | {statistics.median(r['stall_ms']):.1f} ms |")
    if "mqttd" in results and "mosquitto" in results:
        m, q = results["mqttd"], results["mosquitto"]
        # Below 100 % CPU the rate is the load generator's (an asyncio client), not the
        # broker's: the broker CPU each CONNECT costs is then the comparable figure.
        mine = statistics.median(m["cpu_us_per_connect"])
        if mine > 0:  # a tiny run (--quick) may see no clock tick of CPU at all
            capacity = statistics.median(q["cpu_us_per_connect"]) / mine
            print(f"\nCPU per CONNECT, mosquitto ÷ mqttd: {capacity:.2f}× (the capacity "
                  "ratio when a broker is the bottleneck)")
        print(f"\nmqttd ÷ mosquitto: first pass "
              f"{statistics.median(m['cold']) / statistics.median(q['cold']):.2f}×, second pass "
              f"{statistics.median(m['warm']) / statistics.median(q['warm']):.2f}×")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
