#!/usr/bin/env python3
"""What the HTTP listener costs MQTT: fan-in with ``/metrics`` scraped every second and the
dashboard's API polling running, against the same with neither.

    python bench/bench_http.py [--repeat 5] [--scenarios fanin-qos0,fanin-qos1] [--quick]
                               [--duration S] [--wait-idle MINUTES]

bench/run.py's pieces do the measuring: the same mqttd start (a fresh broker per run, pinned
to the broker core; the package copied at the start of the sitting), the same Cython load
generator on the other core and the same fan-in scenarios (4 publishers → 1 subscriber on
``bench/#``, 64-byte payloads). Every run enables ``[http]`` (port 0) and makes an API key;
the two variants differ only in what reads it during the measured interval:

* ``quiet``: nothing;
* ``http``: a poller process (on the load core) that every second does what Prometheus and
  an open dashboard do: ``GET /metrics`` (the text format), and the dashboard's poll,
  ``GET /api/v1/status``, ``/stats``, ``/metrics`` and ``/clients?limit=100``, each with the
  key (``Authorization: Bearer``), each answer read whole.

The variants alternate within each repetition; each figure is the median of ``--repeat``
runs; the goal is http ≥ 97 % of quiet. ``--quick``: tiny counts, one repetition (a CI smoke
run of the harness, not a measurement).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import brokers  # noqa: E402
import run  # noqa: E402
from brokers import BrokerProcess, BrokerSpec  # noqa: E402

GOAL = 0.97
SCENARIOS = ("fanin-qos0", "fanin-qos1")
_HTTP_ON = re.compile(r"http api on [0-9.]+:(\d+)")
#: What the poller asks every second: Prometheus's scrape, then the dashboard's poll.
POLL_PATHS = ("/metrics", "/api/v1/status", "/api/v1/stats", "/api/v1/metrics",
              "/api/v1/clients?limit=100")


# --- the poller (a process of its own, so the load generator keeps its core's time) --------

def poller(port: int, key: str, seconds: float) -> int:
    """GET every path of POLL_PATHS once a second for ``seconds``; print a JSON summary."""
    headers = {"Authorization": f"Bearer {key}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # kept alive, as browsers
    done = failed = 0
    worst = 0.0
    t_end = time.monotonic() + seconds
    tick = time.monotonic()
    while time.monotonic() < t_end:
        for path in POLL_PATHS:
            t0 = time.monotonic()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            worst = max(worst, time.monotonic() - t0)
            done += ok
            failed += not ok
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    conn.close()
    print(json.dumps({"requests": done, "failed": failed, "slowest_ms": worst * 1000}))
    return 0


# --- the runs ----------------------------------------------------------------------------------

class HttpRunner(run.Runner):
    """bench/run.py's runner with ``[http]`` on, and a poller during the ``http`` runs."""

    def __init__(self, args: argparse.Namespace, lg: Any, sizes: run.Sizes) -> None:
        super().__init__(args, lg, sizes)
        self.poll = False
        self.poll_result: dict[str, Any] | None = None

    def _throughput(self, broker: BrokerProcess, *a: Any, **kw: Any) -> dict[str, Any]:
        port, key = http_setup(broker, self.mqttd_src)
        proc = None
        if self.poll:
            sz = self.sizes
            # from the warm-up to past the measured interval (and the drain)
            proc = subprocess.Popen(
                [sys.executable, __file__, "--poller", str(port), key,
                 str(sz.warmup + sz.duration + 1.0)],
                stdout=subprocess.PIPE, text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {self.args.load_core}))  # noqa: PLW1509
        try:
            r = super()._throughput(broker, *a, **kw)
        finally:
            if proc is not None:
                out, _ = proc.communicate(timeout=60)
                self.poll_result = json.loads(out.strip().splitlines()[-1]) if out.strip() \
                    else {"error": f"poller exited with {proc.returncode}"}
        if proc is not None:
            r["poller"] = self.poll_result
        return r


def http_setup(broker: BrokerProcess, src: Path | None) -> tuple[int, str]:
    """The broker's HTTP port (from its log) and a new API key (``mqttd ctl apikey add``)."""
    m = None
    for _ in range(100):
        m = _HTTP_ON.search(broker.log())
        if m:
            break
        time.sleep(0.05)
    if m is None:
        raise RuntimeError("the broker did not log 'http api on HOST:PORT'")
    env = {**os.environ, "PYTHONPATH": str(src or run.ROOT)}
    out = subprocess.run([sys.executable, "-m", "mqttd", "ctl", "--data-dir",
                          str(broker.data_dir), "--json", "apikey", "add", "bench"],
                         capture_output=True, text=True, env=env, timeout=30, check=True)
    return int(m.group(1)), json.loads(out.stdout)["key"]


def spec() -> BrokerSpec:
    s = brokers.builtin_specs()["mqttd"]
    s.env = {**s.env, "MQTTD_HTTP__ENABLED": "true", "MQTTD_HTTP__PORT": "0"}
    s.description += ", [http] enabled on port 0 with an API key"
    return s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (5; --quick 1)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (CI)")
    ap.add_argument("--duration", type=float, default=5.0,
                    help="measured seconds per run (5: five scrapes and polls)")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="MINUTES",
                    help="first wait until no pytest runs, at most this long (10; --quick 0)")
    ap.add_argument("--json", metavar="FILE", help="raw results (default bench/out/http-*.json)")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 10.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--poller"]:
        return poller(int(argv[1]), argv[2], float(argv[3]))
    args = parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        print(f"error: unknown scenario(s) {', '.join(bad)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    # bench/run.py's own arguments, for its runner (cores, window, gates)
    # (with --wait-idle 0, under the lock, no run waits for other pytest runs either: run.py's
    # per-run gate would wait up to 60 s before each)
    rargs = run.parse_args(["--quick"] if args.quick else
                           ["--gate", "0"] if args.wait_idle == 0 else [])
    try:
        lg = run.engine()
    except run.BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    lg.set_timer_slack_1ns()
    os.sched_setaffinity(0, {rargs.load_core})
    sizes = run.QUICK if args.quick else run.Sizes(**{**run.FULL.__dict__,
                                                       "duration": args.duration})
    quiet_note = run.wait_until_quiet(args.wait_idle, run.log) if args.wait_idle > 0 else (
        "did not wait for other test runs")
    runner = HttpRunner(rargs, lg, sizes)
    runner.mqttd_src = brokers.snapshot_mqttd(runner.run_dir / "src")
    s = spec()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {"quiet": {}, "http": {}}
    failed = False
    for rep in range(args.repeat):
        for scen in scenarios:
            # alternate which variant goes first, so drift does not favour one
            order = ("quiet", "http") if rep % 2 == 0 else ("http", "quiet")
            for variant in order:
                runner.poll = variant == "http"
                t0 = time.monotonic()
                try:
                    res = runner.run(s, scen, rep)
                except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
                    res = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
                    failed = True
                poll = res.get("poller") or {}
                if variant == "http" and (poll.get("failed") or not poll.get("requests")):
                    res.setdefault("error", f"poller: {poll}")
                    failed = True
                raw[variant].setdefault(scen, []).append(res)
                run.log(f"{variant:5} {scen} #{rep}: "
                        + (res["error"] if res.get("error") else
                           f"{res['rate']:,.0f} msg/s"
                           + (f", {poll['requests']} HTTP requests, slowest "
                              f"{poll['slowest_ms']:.1f} ms" if poll else "")
                           + (" (pytest running)" if res.get("pytest_running") else ""))
                        + f" [{time.monotonic() - t0:.1f} s]")
    rows = []
    for scen in scenarios:
        q = run.median_of(raw["quiet"].get(scen, []), "rate")
        h = run.median_of(raw["http"].get(scen, []), "rate")
        ratio = h / q if q and h else None
        rows.append({"scenario": scen, "quiet": q, "http": h, "ratio": ratio,
                     "verdict": "—" if ratio is None else ("ok" if ratio >= GOAL else "FAIL")})
    noisy = sum(1 for v in raw.values() for runs in v.values() for r in runs
                if r.get("pytest_running"))
    total = sum(len(runs) for v in raw.values() for runs in v.values())
    cmd = "python bench/bench_http.py " + " ".join(argv)
    print()
    print(f"`{cmd.strip()}` — medians of {args.repeat}, {sizes.duration:g} s measured per run; "
          f"{noisy} of {total} runs had other pytest processes running ({quiet_note})\n")
    print("| scenario | quiet (msg/s) | /metrics + dashboard polling (msg/s) | ratio | goal ≥ "
          f"{GOAL:.0%} |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['scenario']} | {fmt(r['quiet'])} | {fmt(r['http'])} | "
              f"{'—' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
              f"{r['verdict']} |")
    path = Path(args.json) if args.json else runner.run_dir.with_name(
        runner.run_dir.name.replace("run-", "http-")).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": cmd, "rows": rows, "raw": raw, "noisy": noisy,
                                "quiet_note": quiet_note}, indent=1, default=str) + "\n")
    run.log(f"raw results: {path}")
    return 1 if failed else 0


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
