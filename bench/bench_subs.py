"""Memory per subscription: one session subscribing to N filters, measured with tracemalloc.

Usage::

    python bench/bench_subs.py             # 100,000 filters in one session
    python bench/bench_subs.py --quick     # smoke run, 2,000 filters
    python bench/bench_subs.py --filters 100000 --wildcards 0.25
    python bench/bench_subs.py --daemon      # RSS of a real daemon, 3 SUBSCRIBEs of 100,000

What is counted is everything the subscriptions keep alive once the SUBSCRIBE has been
handled: the filter strings, the session's subscriptions dict, the route table (Route
objects and their subscriber dicts), the trie nodes of wildcard filters and the options.
Each filter arrives with its own SubOpts instance, as the parser gives them. Runs the
real broker core (Broker, Dispatcher, Router, Session) without sockets or an event loop.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqttd.config import Settings, Zone  # noqa: E402
from mqttd.core.dispatch import Dispatcher  # noqa: E402
from mqttd.core.session import Session  # noqa: E402
from mqttd.hooks import Hooks  # noqa: E402
from mqttd.metrics import Metrics  # noqa: E402
from mqttd.mqtt.packets import SubOpts  # noqa: E402


def filters(n: int, wildcards: float) -> list[str]:
    every = int(1 / wildcards) if wildcards else 0
    out = []
    for i in range(n):
        if every and i % every == 0:
            out.append(f"site{i % 200}/+/dev{i:07d}/#")
        else:
            out.append(f"site{i % 200}/meter/dev{i:07d}/temp")
    return out


def measure(n: int, wildcards: float) -> tuple[float, int]:
    Settings(zones={"default": Zone()})  # imports settled before the baseline
    dispatcher = Dispatcher(Metrics(), Hooks())
    session = Session("bench-client")
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    # One decoded SUBSCRIBE's worth: fresh strings and one SubOpts per filter.
    topics = [(f, SubOpts(1)) for f in filters(n, wildcards)]
    for topic_filter, opts in topics:
        dispatcher.subscribe(session, topic_filter, opts, 0)
    del topics, topic_filter, opts
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(session.subscriptions) == n
    return used / n, len(dispatcher.router.routes)


def daemon(n: int, packets: int) -> None:
    """A real daemon's RSS growth as one client sends ``packets`` SUBSCRIBEs of ``n`` new
    filters each (what the issue measured: parse buffers and all)."""
    import socket
    import subprocess
    import tempfile
    import time

    from bench_churn import _packet, _str, free_port, rss_kib

    with tempfile.TemporaryDirectory(prefix="mqttd-subs-") as tmp:
        port = free_port()
        cfg = Path(tmp) / "mqttd.toml"
        cfg.write_text(f'[mqtt]\nmax_subscriptions = 0\nmax_packet_size = 8388608\n\n'
                       f'[listeners.default]\nbind = "127.0.0.1"\nport = {port}\n')
        proc = subprocess.Popen([sys.executable, "-m", "mqttd", "start", "-c", str(cfg),
                                 "--data-dir", str(Path(tmp) / "data"), "--log-level",
                                 "warning"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            for _ in range(400):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("the broker did not start")
            sock.sendall(_packet(0x10, _str("MQTT") + b"\x05\x02\x00\x00\x00" + _str("subs")))
            sock.recv(64)
            time.sleep(1)
            base = rss_kib(proc.pid)
            for k in range(packets):
                body = b"".join([(k + 1).to_bytes(2, "big"), b"\x00", *(
                    _str(f"site{i % 200}/meter/dev{k}{i:07d}/temp") + b"\x01"
                    for i in range(n))])
                sock.sendall(_packet(0x82, body))
                got = 0
                while got < n:  # the SUBACK: header, packet id, properties, n codes
                    got += len(sock.recv(1 << 20))
                time.sleep(1)
                grown = rss_kib(proc.pid) - base
                print(f"daemon RSS after {k + 1} x {n}: +{grown / 1024:.1f} MiB, "
                      f"{grown * 1024 / ((k + 1) * n):.0f} B per subscription")
            sock.close()
        finally:
            proc.terminate()
            proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filters", type=int, default=100_000)
    ap.add_argument("--wildcards", type=float, default=0.0,
                    help="share of wildcard filters (0.25: every 4th)")
    ap.add_argument("--quick", action="store_true", help="smoke run, 2,000 filters")
    ap.add_argument("--daemon", action="store_true",
                    help="measure a real daemon's RSS instead (3 SUBSCRIBEs of --filters)")
    args = ap.parse_args()
    n = 2_000 if args.quick else args.filters
    if args.daemon:
        daemon(n, 3)
        return
    for share in sorted({0.0, args.wildcards}):
        per, routes = measure(n, share)
        print(f"{n} filters, {share:.0%} wildcard: {per:.0f} B per subscription "
              f"({routes} routes)")


if __name__ == "__main__":
    main()
