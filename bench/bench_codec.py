#!/usr/bin/env python3
"""Codec micro-benchmark: the pure-Python MQTT codec against the compiled (Cython) one.

    python bench/bench_codec.py [--quick] [--repeat N] [--json FILE] [--markdown]
                                [--allow-pure] [--cpu N | --no-pin]
    python bench/bench_codec.py --from-json run1.json run2.json ...

Measures, for ``ParserPy``/``encode_py`` and ``ParserC``/``encode_c`` side by
side:

* parse and encode of single packets (PUBLISH 16 B / 1 KiB / 64 KiB at QoS 0
  and 1 on 3.1.1 and 5.0, CONNECT 5.0 with properties and a will, SUBSCRIBE
  with 10 filters, the small acks), one packet per ``feed()`` / ``encode()``;
* a stream of 10,000 mixed small packets fed in one buffer and in 1,460-byte
  chunks (one TCP segment's worth);
* the floor: building the same ``Publish`` objects in a Python loop without
  parsing, and the ratio "parse a stream of small PUBLISH / build them".

Method: every figure is the median of ``--repeat`` samples (default 5); a
sample runs enough iterations to last ``--sample-ms`` (100 ms; ``--quick``:
2 ms samples, 3 per figure, a few seconds in all) and is timed with
``time.perf_counter_ns`` with the garbage collector disabled; the process is
pinned to one core (the least busy one, unless ``--cpu``). Timed loops include
the Python ``for`` loop and call overhead (about 20-40 ns per call), the same
for both sides: that is how the broker calls the codec.

Before timing, both sides are checked to produce the same packets and the same
bytes; a mismatch is reported loudly (the timings would compare different
work).

Exit status: 0; 1 when the compiled codec is not loaded (0 with
``--allow-pure``); 2 with ``--fail-on-goals`` when a goal fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout: measure this tree, not an installed copy

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mqttd import _accel  # noqa: E402
from mqttd.mqtt import codec  # noqa: E402
from mqttd.mqtt.packets import (  # noqa: E402
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    SubOpts,
    Subscribe,
    Unsuback,
    Will,
)

perf_counter_ns = time.perf_counter_ns
repeat_ = itertools.repeat

SIDES = ("py", "c")
SIDE_NAMES = {"py": "pure", "c": "compiled"}

GOAL_SPEEDUP = 10.0  # compiled parser >= 10x the pure one on small PUBLISH
GOAL_FLOOR = 3.0  # parse a stream of small PUBLISH <= 3x building the same objects

STREAM_PACKETS = 10_000
CHUNK = 1460
TOPIC = "sensors/building-7/floor-3/room-42/temperature"


# --- machine -------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _cpu_idle() -> dict[int, int]:
    idle: dict[int, int] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                # idle + iowait
                idle[int(fields[0][3:])] = int(fields[4]) + int(fields[5])
    return idle


def pin(cpu: int | None, no_pin: bool, probe_s: float) -> tuple[int | None, str]:
    """Pin to ``cpu`` or to the least busy allowed core; returns (core, note)."""
    if no_pin:
        return None, "not pinned (--no-pin)"
    if not hasattr(os, "sched_setaffinity"):
        return None, "not pinned (no os.sched_setaffinity on this platform)"
    try:
        allowed = sorted(os.sched_getaffinity(0))
        if cpu is None:
            how = "least busy"
            try:
                a = _cpu_idle()
                time.sleep(probe_s)
                b = _cpu_idle()
                cpu = max(allowed, key=lambda c: (b.get(c, 0) - a.get(c, 0), c))
            except (OSError, ValueError, IndexError):
                cpu, how = allowed[-1], "last allowed"
        else:
            how = "--cpu"
        os.sched_setaffinity(0, {cpu})
        return cpu, f"pinned to core {cpu} ({how} of {len(allowed)})"
    except OSError as err:
        return None, f"not pinned ({err})"


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        rev = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "mqttd"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def cython_version() -> str:
    try:
        import Cython
        return Cython.__version__
    except ImportError:
        return "-"


# --- workloads -----------------------------------------------------------------------------

def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


V5_PUB_PROPS = {
    "message_expiry_interval": 600,
    "content_type": "application/json",
    "user_property": [("trace-id", "4bf92f3577b34da6")],
}


def single_packets() -> list[tuple[str, int, Any]]:
    """(label, version, packet) for the per-packet parse/encode rows."""
    rows: list[tuple[str, int, Any]] = []
    for size, size_name in ((16, "16 B"), (1024, "1 KiB"), (65536, "64 KiB")):
        data = payload(size)
        for version in (4, 5):
            for qos in (0, 1):
                rows.append((f"PUBLISH {size_name} QoS{qos}", version,
                             Publish(TOPIC, data, qos, False, False, 4242 if qos else 0, {})))
    rows.append(("PUBLISH 16 B QoS1 +props", 5,
                 Publish(TOPIC, payload(16), 1, False, False, 4242, dict(V5_PUB_PROPS))))
    will = Will("clients/bench-client-0001/status", b'{"online":false}', 1, True, {
        "will_delay_interval": 30,
        "message_expiry_interval": 3600,
        "content_type": "application/json",
        "user_property": [("reason", "unexpected-disconnect")],
    })
    rows.append(("CONNECT +props +will +auth", 5, Connect(
        "MQTT", 5, True, 60, "bench-client-0001", will, "bench-user", b"s3cr3t-p4ssw0rd", {
            "session_expiry_interval": 3600,
            "receive_maximum": 100,
            "maximum_packet_size": 1048576,
            "topic_alias_maximum": 16,
            "user_property": [("region", "eu-west-1"), ("app", "mqttd-bench")],
        })))
    filters = [f"site/{i}/+/telemetry/#" if i % 3 == 0 else f"site/{i}/device/{i * 7}/state"
               for i in range(10)]
    rows.append(("SUBSCRIBE 10 filters", 5, Subscribe(
        17, [(f, SubOpts(i % 3, i % 2 == 1, i % 4 == 0, i % 3)) for i, f in enumerate(filters)],
        {"subscription_identifier": [7], "user_property": [("k", "v")]})))
    rows.append(("SUBSCRIBE 10 filters", 4, Subscribe(
        17, [(f, SubOpts(i % 3)) for i, f in enumerate(filters)], {})))
    rows.append(("CONNACK +props", 5, Connack(False, 0, {
        "session_expiry_interval": 3600, "receive_maximum": 32, "topic_alias_maximum": 16,
        "assigned_client_identifier": "auto-3F2504E0-4F89", "retain_available": 1})))
    rows.append(("PUBACK", 4, Puback(4242)))
    rows.append(("PUBACK 0x10", 5, Puback(4242, 0x10)))
    rows.append(("PUBREC", 4, Pubrec(4242)))
    rows.append(("PUBREL", 4, Pubrel(4242)))
    rows.append(("PUBCOMP", 4, Pubcomp(4242)))
    rows.append(("SUBACK 10 codes", 5, Suback(17, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0x80], {})))
    rows.append(("UNSUBACK 2 codes", 5, Unsuback(18, [0, 0x11], {})))
    rows.append(("PINGREQ", 4, Pingreq()))
    rows.append(("PINGRESP", 4, Pingresp()))
    rows.append(("DISCONNECT", 5, Disconnect(0, {})))
    return rows


def _topics(rng: random.Random, n: int) -> list[str]:
    kinds = ("temperature", "humidity", "pressure", "state", "battery")
    return [f"sensors/b{rng.randrange(20)}/f{rng.randrange(8)}/r{rng.randrange(100)}/"
            f"{rng.choice(kinds)}" for _ in range(n)]


def mixed_stream(version: int, n: int, seed: int = 20240611) -> list[Any]:
    """n mixed small packets: mostly PUBLISH QoS 0/1, PUBACKs, PINGREQs, some SUBSCRIBEs."""
    rng = random.Random(seed)
    topics = _topics(rng, 64)
    out: list[Any] = []
    pid = 0
    for _ in range(n):
        x = rng.random()
        if x < 0.80:  # PUBLISH: 55 % QoS 0, 25 % QoS 1, 8-64 B
            qos = 0 if x < 0.55 else 1
            if qos:
                pid = pid % 65535 + 1
            out.append(Publish(rng.choice(topics), rng.randbytes(rng.randint(8, 64)), qos,
                               False, False, pid if qos else 0, {}))
        elif x < 0.92:
            out.append(Puback(rng.randint(1, 65535)))
        elif x < 0.97:
            out.append(Pingreq())
        else:
            k = rng.randint(1, 3)
            pid = pid % 65535 + 1
            if version == 5:
                topics_ = [(f"sensors/b{rng.randrange(20)}/+/#", SubOpts(rng.randint(0, 2),
                            rng.random() < 0.3, rng.random() < 0.3, rng.randint(0, 2)))
                           for _ in range(k)]
            else:
                topics_ = [(f"sensors/b{rng.randrange(20)}/+/#", SubOpts(rng.randint(0, 2)))
                           for _ in range(k)]
            out.append(Subscribe(pid, topics_, {}))
    return out


def publish_stream(n: int, seed: int = 7) -> list[Publish]:
    """n small PUBLISH (QoS 0 and 1, 8-32 B payloads): the floor workload."""
    rng = random.Random(seed)
    topics = _topics(rng, 64)
    out = []
    for i in range(n):
        qos = i % 3 == 2  # one in three at QoS 1
        out.append(Publish(rng.choice(topics), rng.randbytes(rng.randint(8, 32)), int(qos),
                           False, False, (i % 65535) + 1 if qos else 0, {}))
    return out


def chunks(buf: bytes, size: int) -> list[bytes]:
    return [buf[i:i + size] for i in range(0, len(buf), size)]


# --- timing --------------------------------------------------------------------------------

def _sample(run: Callable[[int], int], n: int) -> int:
    gc.disable()
    try:
        return run(n)
    finally:
        gc.enable()


def measure(run: Callable[[int], int], target_ns: int, repeat: int) -> dict[str, Any]:
    """``run(n)`` times n iterations and returns ns. Calibrate n, then take ``repeat`` samples.

    The collector is off during a sample (the timed loops make no cycles, so
    nothing piles up); one collection per figure, before it, starts each clean.
    """
    gc.collect()
    n = 1
    while True:
        t = max(_sample(run, n), 1)
        if t >= target_ns // 5 or n >= 1 << 30:
            break
        n = min(n * 10, max(n * 2, n * target_ns // (5 * t)))
    n = max(1, round(n * target_ns / t))
    samples = [_sample(run, n) for _ in range(repeat)]
    return {"iterations": n, "samples_ns": samples}


def parse_runner(parser_cls: Any, version: int, data: bytes) -> Callable[[int], int]:
    def run(n: int) -> int:
        feed = parser_cls(version=version).feed
        it = repeat_(data, n)
        t0 = perf_counter_ns()
        for d in it:
            feed(d)
        return perf_counter_ns() - t0
    return run


def encode_runner(encode: Any, version: int, packet: Any) -> Callable[[int], int]:
    def run(n: int) -> int:
        it = repeat_(packet, n)
        t0 = perf_counter_ns()
        for p in it:
            encode(p, version)
        return perf_counter_ns() - t0
    return run


def stream_runner(parser_cls: Any, version: int, parts: list[bytes]) -> Callable[[int], int]:
    def run(n: int) -> int:
        feed = parser_cls(version=version).feed
        t0 = perf_counter_ns()
        for _ in repeat_(None, n):
            for part in parts:
                feed(part)
        return perf_counter_ns() - t0
    return run


def construct_runner(specs: list[tuple[str, bytes, int, int]]) -> Callable[[int], int]:
    def run(n: int) -> int:
        pub = Publish
        t0 = perf_counter_ns()
        for _ in repeat_(None, n):
            [pub(t, pl, q, False, False, pid, {}) for t, pl, q, pid in specs]
        return perf_counter_ns() - t0
    return run


# --- the benchmark -------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.target_ns = int(args.sample_ms * 1e6)
        self.parsers: dict[str, Any] = {"py": codec.ParserPy}
        self.encoders: dict[str, Any] = {"py": codec.encode_py}
        if hasattr(codec, "ParserC"):
            self.parsers["c"] = codec.ParserC
            self.encoders["c"] = codec.encode_c
        self.sides = [s for s in SIDES if s in self.parsers]
        self.cases: list[dict[str, Any]] = []
        self.mismatches: list[str] = []

    # each case: {"section", "name", "version", "bytes", "packets" (per iteration),
    #             "py": {...}, "c": {...}}
    def _case(self, section: str, name: str, version: int | None, nbytes: int, packets: int,
              runners: dict[str, Callable[[int], int]]) -> dict[str, Any]:
        case: dict[str, Any] = {"section": section, "name": name, "version": version,
                                "bytes": nbytes, "packets": packets}
        for side, run in runners.items():
            m = measure(run, self.target_ns, self.args.repeat)
            med = statistics.median(m["samples_ns"])
            m["ns_per_packet"] = med / (m["iterations"] * packets)
            m["spread"] = (max(m["samples_ns"]) - min(m["samples_ns"])) / med if med else 0.0
            case[side] = m
        self.cases.append(case)
        return case

    def _check(self, what: str, results: dict[str, Any]) -> None:
        vals = list(results.values())
        if len(vals) > 1 and any(v != vals[0] for v in vals[1:]):
            self.mismatches.append(what)

    def _parse_all(self, side: str, version: int, parts: list[bytes]) -> Any:
        parser = self.parsers[side](version=version)
        out: list[Any] = []
        try:
            for part in parts:
                out += parser.feed(part)
        except Exception as err:  # noqa: BLE001 - reported as a mismatch, not a crash
            return ("error", repr(err))
        return out

    def run_single(self) -> None:
        for label, version, pkt in single_packets():
            data = codec.encode_py(pkt, version)
            pversion = 0 if isinstance(pkt, Connect) else version
            name = f"{label}"
            # Parsing the bytes must give back the packet, the same on both sides.
            parsed = {s: self._parse_all(s, pversion, [data]) for s in self.sides}
            if parsed["py"] != [pkt]:
                self.mismatches.append(f"parse {name} v{version}: pure codec does not round-trip")
            self._check(f"parse {name} v{version}", parsed)
            self._check(f"encode {name} v{version}",
                        {s: self.encoders[s](pkt, version) for s in self.sides})
            self._case("parse", name, version, len(data), 1,
                       {s: parse_runner(self.parsers[s], pversion, data) for s in self.sides})
            self._case("encode", name, version, len(data), 1,
                       {s: encode_runner(self.encoders[s], version, pkt) for s in self.sides})

    def run_streams(self) -> None:
        for version in (4, 5):
            pkts = mixed_stream(version, STREAM_PACKETS)
            buf = b"".join(codec.encode_py(p, version) for p in pkts)
            for how, parts in (("one buffer", [buf]), (f"{CHUNK} B chunks", chunks(buf, CHUNK))):
                name = f"mixed {STREAM_PACKETS:,} pkts, {how}"
                parsed = {s: self._parse_all(s, version, parts) for s in self.sides}
                if parsed["py"] != pkts:
                    self.mismatches.append(f"{name} v{version}: pure codec does not round-trip")
                self._check(f"{name} v{version}", parsed)
                self._case("stream", name, version, len(buf), STREAM_PACKETS,
                           {s: stream_runner(self.parsers[s], version, parts) for s in self.sides})

    def run_floor(self) -> None:
        pubs = publish_stream(STREAM_PACKETS)
        specs = [(p.topic, p.payload, p.qos, p.packet_id) for p in pubs]
        for version in (4, 5):
            buf = b"".join(codec.encode_py(p, version) for p in pubs)
            name = f"small PUBLISH {STREAM_PACKETS:,} pkts, one buffer"
            parsed = {s: self._parse_all(s, version, [buf]) for s in self.sides}
            if parsed["py"] != pubs:
                self.mismatches.append(f"{name} v{version}: pure codec does not round-trip")
            self._check(f"{name} v{version}", parsed)
            self._case("floor", f"parse {name}", version, len(buf), STREAM_PACKETS,
                       {s: stream_runner(self.parsers[s], version, [buf]) for s in self.sides})
        self._case("floor", f"construct the same {STREAM_PACKETS:,} Publish", None, 0,
                   STREAM_PACKETS, {"py": construct_runner(specs)})

    def run(self) -> None:
        self.run_single()
        self.run_streams()
        self.run_floor()


# --- results -------------------------------------------------------------------------------

def _ns(case: dict[str, Any], side: str) -> float | None:
    m = case.get(side)
    return m["ns_per_packet"] if m else None


def goals(cases: list[dict[str, Any]], compiled: bool) -> list[dict[str, Any]]:
    out = []
    small = [c for c in cases if c["section"] == "parse"
             and c["name"] in ("PUBLISH 16 B QoS0", "PUBLISH 16 B QoS1")]
    ratios = {f"{c['name']} v{c['version']}": _ns(c, "py") / _ns(c, "c")
              for c in small if _ns(c, "c")}
    g1: dict[str, Any] = {
        "goal": f"compiled parser ≥ {GOAL_SPEEDUP:g}× the pure one on small PUBLISH "
                "(16 B, QoS 0/1, v4/v5, one packet per feed; worst row counts)",
        "detail": ratios,
    }
    if compiled and ratios:
        worst = min(ratios.values())
        g1.update(value=worst, verdict="PASS" if worst >= GOAL_SPEEDUP else "FAIL")
    else:
        g1.update(value=None, verdict="N/A")
    out.append(g1)

    floor = next((c for c in cases if c["section"] == "floor" and c["version"] is None), None)
    parses = [c for c in cases if c["section"] == "floor" and c["version"] is not None]
    side = "c" if compiled else "py"
    fr = {f"v{c['version']}": _ns(c, side) / _ns(floor, "py") for c in parses} if floor else {}
    g2: dict[str, Any] = {
        "goal": f"parse a stream of {STREAM_PACKETS:,} small PUBLISH ≤ {GOAL_FLOOR:g}× "
                "constructing the same Publish objects (compiled parser; worst of v4/v5 counts)",
        "detail": fr,
    }
    if compiled and fr:
        worst = max(fr.values())
        g2.update(value=worst, verdict="PASS" if worst <= GOAL_FLOOR else "FAIL")
    else:
        g2.update(value=None, verdict="N/A")
        if fr:
            g2["note"] = "pure parser / floor, for information: " + ", ".join(
                f"{k} {v:.1f}×" for k, v in fr.items())
    out.append(g2)
    return out


def fmt_ns(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100_000:
        return f"{v / 1000:,.0f} µs"
    if v >= 10_000:
        return f"{v / 1000:,.1f} µs"
    return f"{v:,.0f} ns"


def fmt_rate(ns: float | None) -> str:
    if not ns:
        return "-"
    r = 1e9 / ns
    if r >= 1e6:
        return f"{r / 1e6:.2f} M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f} k/s"
    return f"{r:.0f} /s"


def fmt_bytes(n: int) -> str:
    if not n:
        return "-"
    if n >= 10_000:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,} B"


SECTION_TITLES = {
    "parse": "Parse: one packet per Parser.feed()",
    "encode": "Encode: one packet per encode()",
    "stream": f"Stream: {STREAM_PACKETS:,} mixed small packets (ns and rate per packet)",
    "floor": "Floor: parse small PUBLISH vs merely constructing them (per packet)",
}
HEADERS = ["case", "v", "wire size", "pure", "compiled", "ratio", "pure pkt/s", "compiled pkt/s"]


def rows_for(cases: list[dict[str, Any]], section: str) -> list[list[str]]:
    rows = []
    floor = next((c for c in cases if c["section"] == "floor" and c["version"] is None), None)
    for c in cases:
        if c["section"] != section:
            continue
        py, cc = _ns(c, "py"), _ns(c, "c")
        if section == "floor" and c["version"] is None:
            ratio = "1.0× (floor)"
        elif section == "floor" and floor:
            fl = _ns(floor, "py")
            ratio = f"{py / fl:.1f}× / {cc / fl:.1f}× floor" if cc else f"{py / fl:.1f}× floor"
        else:
            ratio = f"{py / cc:.1f}×" if cc else "-"
        rows.append([c["name"], f"{c['version']}" if c["version"] else "-",
                     fmt_bytes(c["bytes"]) if section != "floor" or c["version"] else "-",
                     fmt_ns(py), fmt_ns(cc), ratio, fmt_rate(py), fmt_rate(cc)])
    return rows


def render(console: Console, cases: list[dict[str, Any]], gls: list[dict[str, Any]]) -> None:
    for section, title in SECTION_TITLES.items():
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, h in enumerate(HEADERS):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i > 0)
        for row in rows_for(cases, section):
            table.add_row(*row)
        console.print(table)
    console.print("[dim]pure/compiled columns: median time per packet; ratio = pure / compiled "
                  "(speedup); floor rows: time / construction floor (pure / compiled).[/dim]")
    for g in gls:
        style = {"PASS": "bold green", "FAIL": "bold red"}.get(g["verdict"], "bold yellow")
        console.print(goal_line(g), soft_wrap=True, style=style, highlight=False)


def goal_line(g: dict[str, Any]) -> str:
    detail = ", ".join(f"{k} {v:.1f}×" for k, v in g["detail"].items())
    if g["verdict"] == "N/A":
        extra = "compiled codec not loaded"
        if g.get("note"):
            extra += "; " + g["note"]
        return f"GOAL {g['verdict']}: {g['goal']} ({extra})"
    if g.get("runs"):
        runs = "/".join(f"{v:.1f}×" for v in g["runs"])
        return (f"GOAL {g['verdict']}: {g['goal']}: worst {g['value']:.1f}× (median of the "
                f"{len(g['runs'])} runs' {runs}; per case, medians: {detail})")
    return f"GOAL {g['verdict']}: {g['goal']}: worst {g['value']:.1f}× ({detail})"


def markdown(cases: list[dict[str, Any]], gls: list[dict[str, Any]]) -> str:
    out = []
    for section, title in SECTION_TITLES.items():
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|")
        for row in rows_for(cases, section):
            out.append("| " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
        out.append("")
    for g in gls:
        out.append(f"- {goal_line(g)}")
    return "\n".join(out) + "\n"


def merge_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, per case and side, of several runs' per-packet medians."""
    merged: list[dict[str, Any]] = []
    first = runs[0]["cases"]
    for i, case in enumerate(first):
        key = (case["section"], case["name"], case["version"])
        same = [r["cases"][i] for r in runs]
        if any((c["section"], c["name"], c["version"]) != key for c in same):
            raise SystemExit("--from-json: the runs do not contain the same cases")
        out = {k: case[k] for k in ("section", "name", "version", "bytes", "packets")}
        for side in SIDES:
            vals = [c[side]["ns_per_packet"] for c in same if c.get(side)]
            if vals:
                out[side] = {"ns_per_packet": statistics.median(vals), "runs": vals}
        merged.append(out)
    return merged


def merge_goals(per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal's ratios are taken within one run; report their median over the runs."""
    out = []
    for gs in zip(*per_run, strict=True):  # every run has the same goals
        g = dict(gs[0])
        g["detail"] = {k: statistics.median(x["detail"][k] for x in gs) for k in g["detail"]}
        vals = [x["value"] for x in gs if x["value"] is not None]
        if vals:
            g["value"] = statistics.median(vals)
            g["verdict"] = ("PASS" if (g["value"] >= GOAL_SPEEDUP if "≥" in g["goal"]
                                       else g["value"] <= GOAL_FLOOR) else "FAIL")
            g["runs"] = vals
        out.append(g)
    return out


# --- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short samples (CI smoke test: a few seconds)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="samples per figure, the median is reported (default 5, 3 with --quick)")
    ap.add_argument("--sample-ms", type=float, default=None,
                    help="target duration of one sample (default 100, 2 with --quick)")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures to FILE")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    ap.add_argument("--allow-pure", action="store_true",
                    help="exit 0 even when the compiled codec is not loaded")
    ap.add_argument("--fail-on-goals", action="store_true", help="exit 2 when a goal fails")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core (default: least busy)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="do not measure: print the medians of earlier --json runs")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.sample_ms is None:
        args.sample_ms = 2.0 if args.quick else 100.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Not a terminal (CI log, redirected to a file): wide enough for the tables.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140)

    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json]
        cases = merge_runs(runs)
        compiled = all(r["meta"]["compiled_loaded"] for r in runs)
        gls = merge_goals([goals(r["cases"], compiled) for r in runs])
        m = runs[0]["meta"]
        console.print(f"[bold]Codec micro-benchmark[/bold]: median of {len(runs)} runs "
                      f"({', '.join(r['meta']['date'] for r in runs)})", highlight=False)
        console.print(m["machine"], highlight=False, soft_wrap=True)
        console.print("cores of the runs: " + ", ".join(str(r["meta"]["core"]) for r in runs)
                      + "; codec: " + ", ".join(str(r["meta"]["loaded"].get("codec"))
                                                 for r in runs), highlight=False)
        render(console, cases, gls)
        if args.markdown:
            print()
            print(markdown(cases, gls))
        return 0

    t_start = time.perf_counter()
    core, pin_note = pin(args.cpu, args.no_pin, 0.05 if args.quick else 0.25)
    compiled = hasattr(codec, "ParserC")
    machine = (f"cpu: {cpu_model()} ({os.cpu_count()} logical), {pin_note} | "
               f"Python {platform.python_version()} ({platform.python_implementation()}, "
               f"{platform.python_compiler()}) | Cython {cython_version()} | "
               f"{platform.system()} {platform.release()} | mqttd {git_rev()}")
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    console.print(f"[bold]Codec micro-benchmark[/bold] {date}  "
                  f"(repeat {args.repeat}, {args.sample_ms:g} ms/sample"
                  f"{', quick' if args.quick else ''})", highlight=False)
    console.print(machine, highlight=False, soft_wrap=True)
    console.print(f"mqttd._accel.LOADED = {_accel.LOADED}", highlight=False)
    if not compiled:
        why = ("MQTTD_NO_EXTENSIONS is set" if _accel.NO_EXTENSIONS else
               "mqttd._speedups._codec is not importable (not built? "
               "run: python setup.py build_ext --inplace)")
        console.print(f"[bold red]COMPILED CODEC NOT LOADED[/bold red] ({why}): "
                      "measuring the pure-Python side only.", highlight=False, soft_wrap=True)

    bench = Bench(args, console)
    bench.run()
    gls = goals(bench.cases, compiled)
    render(console, bench.cases, gls)
    elapsed = time.perf_counter() - t_start
    if bench.mismatches:
        console.print(f"[bold red]MISMATCH[/bold red] between the pure and compiled codec "
                      f"({len(bench.mismatches)}): " + "; ".join(bench.mismatches),
                      highlight=False)
    noisy = [f"{c['section']} {c['name']}{' v%d' % c['version'] if c['version'] else ''} "
             f"{SIDE_NAMES[s]} ±{c[s]['spread'] * 50:.0f}%"
             for c in bench.cases for s in SIDES if c.get(s) and c[s]["spread"] > 0.2]
    if noisy:
        console.print(f"[yellow]noisy figures[/yellow] (samples spread over more than ±10% of "
                      f"the median; a busy machine?): {len(noisy)}: " + "; ".join(noisy[:8])
                      + (" ..." if len(noisy) > 8 else ""), highlight=False, soft_wrap=True)
    console.print(f"[dim]{elapsed:.1f} s[/dim]")
    if args.markdown:
        print()
        print(markdown(bench.cases, gls))

    if args.json:
        doc = {
            "meta": {"date": date, "machine": machine, "cpu": cpu_model(), "core": core,
                     "python": sys.version, "cython": cython_version(), "mqttd": git_rev(),
                     "loaded": _accel.LOADED, "compiled_loaded": compiled,
                     "repeat": args.repeat, "sample_ms": args.sample_ms, "quick": args.quick,
                     "argv": sys.argv, "elapsed_s": elapsed},
            "cases": bench.cases, "goals": gls, "mismatches": bench.mismatches,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")

    if not compiled and not args.allow_pure:
        Console(stderr=True).print(
            "[bold red]error:[/bold red] the compiled codec (mqttd._speedups._codec) was not "
            "loaded; only the pure-Python codec was measured. Build it with "
            "'python setup.py build_ext --inplace', or pass --allow-pure to accept a pure-only "
            "run.", highlight=False, soft_wrap=True)
        return 1
    if args.fail_on_goals and any(g["verdict"] == "FAIL" for g in gls):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
