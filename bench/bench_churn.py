"""Churn soak: clients that connect, subscribe, publish, receive and leave, over and over,
against a real mqttd daemon; the broker's RSS is sampled as it goes.

Usage::

    python bench/bench_churn.py                    # 200,000 cycles (a few minutes)
    python bench/bench_churn.py --quick            # smoke run, 2,000 cycles
    python bench/bench_churn.py --cycles 40000 --concurrency 16 --every 10000

One cycle, on its own TCP connection (MQTT 3.1.1, a client id never used before): CONNECT
(clean session), SUBSCRIBE ``churn/<n>/#`` at QoS 1, PUBLISH QoS 1 to ``churn/<n>/t``,
wait for the PUBACK and the message back (acknowledged), DISCONNECT, close. ``--concurrency``
such clients run at once. RSS (``/proc/<pid>/status`` VmRSS) is read every ``--every``
cycles; growth is reported from the end of the warm-up (the first 10 %, at least one
sample) to the end, with the least-squares slope per 100,000 cycles. The broker runs with
its defaults (store on, in a temporary data directory) and ``--log-level warning``.
Exit 1 if a cycle fails or the broker dies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _vbi(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    n, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, await reader.readexactly(n)


async def cycle(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        cid = f"churn-{n}"
        writer.write(_packet(0x10, _str("MQTT") + b"\x04\x02\x00\x3c" + _str(cid)))
        first, body = await _read(reader)
        assert first >> 4 == 2 and body[1] == 0, f"CONNACK {body!r}"
        writer.write(_packet(0x82, b"\x00\x01" + _str(f"churn/{n}/#") + b"\x01"))
        first, body = await _read(reader)
        assert first >> 4 == 9 and body == b"\x00\x01\x01", f"SUBACK {body!r}"
        writer.write(_packet(0x32, _str(f"churn/{n}/t") + b"\x00\x02" + b"x" * 32))
        acked = received = False
        while not (acked and received):
            first, body = await _read(reader)
            if first >> 4 == 4:
                acked = True
            elif first >> 4 == 3:
                received = True
                tlen = struct.unpack("!H", body[:2])[0]
                writer.write(_packet(0x40, body[2 + tlen:4 + tlen]))  # PUBACK its id
            else:
                raise AssertionError(f"unexpected packet type {first >> 4}")
        writer.write(b"\xe0\x00")
        await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def soak(port: int, pid: int, cycles: int, concurrency: int, every: int
               ) -> list[tuple[int, int, float]]:
    samples = [(0, rss_kib(pid), 0.0)]
    print("cycles    RSS MiB   s", flush=True)
    print(f"{0:>8}  {samples[0][1] / 1024:8.1f}  {0:5.0f}", flush=True)
    counter = iter(range(cycles))
    done = 0
    t0 = time.monotonic()

    async def worker() -> None:
        nonlocal done
        for n in counter:
            await asyncio.wait_for(cycle(port, n), 30)
            done += 1
            if done % every == 0:
                samples.append((done, rss_kib(pid), time.monotonic() - t0))
                c, r, t = samples[-1]
                print(f"{c:>8}  {r / 1024:8.1f}  {t:5.0f}", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per cycle."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--every", type=int, default=10_000, help="cycles between RSS samples")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 cycles")
    ap.add_argument("--port", type=int, help="use the broker already listening on this port "
                    "of 127.0.0.1 (with --pid, its process id, for RSS) instead of starting one")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--durability", default="process", choices=["off", "process", "power"],
                    help="[store] durability of the broker started (default: the default)")
    args = ap.parse_args()
    if args.quick:
        args.cycles, args.every = 2_000, 500
    if args.port:
        if not args.pid:
            ap.error("--port needs --pid")
        t0 = time.monotonic()
        samples = asyncio.run(soak(args.port, args.pid, args.cycles, args.concurrency,
                                   args.every))
        report(args, samples, time.monotonic() - t0)
        return 0
    with tempfile.TemporaryDirectory(prefix="mqttd-churn-") as tmp:
        port = free_port()
        cfg = Path(tmp) / "mqttd.toml"
        cfg.write_text(f'[listeners.default]\nbind = "127.0.0.1"\nport = {port}\n\n'
                       f'[store]\ndurability = "{args.durability}"\n')
        log = open(Path(tmp) / "mqttd.log", "wb")  # noqa: SIM115 (as long as the broker)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqttd", "start", "-c", str(cfg), "--data-dir",
             str(Path(tmp) / "data"), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print((Path(tmp) / "mqttd.log").read_text(), file=sys.stderr)
                        return 1
                    time.sleep(0.05)
            t0 = time.monotonic()
            samples = asyncio.run(soak(port, proc.pid, args.cycles, args.concurrency,
                                       args.every))
            secs = time.monotonic() - t0
            if proc.poll() is not None:
                print("the broker died", file=sys.stderr)
                return 1
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
            log.close()
    report(args, samples, secs)
    return 0


def report(args: argparse.Namespace, samples: list[tuple[int, int, float]], secs: float
           ) -> None:
    warm = max(args.cycles // 10, args.every)
    after = [(c, r) for c, r, _ in samples if c >= warm]
    print(f"{args.cycles} cycles, {args.concurrency} at once, {secs:.0f} s "
          f"({args.cycles / secs:.0f} cycles/s)")
    if len(after) >= 2:
        grow = (after[-1][1] - after[0][1]) / 1024
        per = slope(after) * 100_000 / 1024
        print(f"after warm-up ({after[0][0]} cycles): {grow:+.1f} MiB to the end, "
              f"slope {per:+.2f} MiB per 100,000 cycles")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
