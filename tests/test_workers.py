"""`mqttd start --workers 2` end to end: a real supervisor, two real worker processes
sharing one port-0 listener (SO_REUSEPORT), the nats-server the supervisor starts, real
paho clients; which worker holds a client is read from that worker's own control socket."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT
from support.clients import Client
from support.cluster import until
from support.process import MQTTD, BrokerProcess, run_mqttd, wait_log

from mqttd.cli.ctl import main as ctl_main


def ctl_json(data_dir: Path, *args: str) -> Any:
    """``mqttd ctl --data-dir DIR --json ARGS`` in this process; the parsed answer."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl_main(["--data-dir", str(data_dir), "--json", *args])
    assert code == 0, (code, out.getvalue(), err.getvalue())
    return json.loads(out.getvalue())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pid(broker: BrokerProcess, index: int) -> int:
    return int(ctl_json(broker.data_dir / f"w{index}", "status")["pid"])


def clients_of(broker: BrokerProcess, index: int) -> set[str]:
    return {row["clientid"] for row in ctl_json(broker.data_dir / f"w{index}", "clients",
                                                 "list", "--local")}


@pytest.fixture
def workers() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(extra_args=["--workers", "2"], timeout=2 * WAIT)
    try:
        wait_log(broker, "workers ready", timeout=2 * WAIT)
        yield broker
    finally:
        broker.stop(timeout=40.0)
        log = broker.log()
        broker.cleanup()
        assert "Traceback" not in log, log


def one_on_each(broker: BrokerProcess, prefix: str) -> tuple[Client, Client, list[Client]]:
    """Connect clients until one is on worker 1 and one on worker 2 (the kernel's choice);
    (the one on w1, the one on w2, every client connected)."""
    made: list[Client] = []
    on: dict[int, tuple[str, Client]] = {}
    for i in range(40):
        cid = f"{prefix}{i}"
        c = Client(broker, cid, version=5)
        c.connect()
        made.append(c)
        on.setdefault(1 if cid in clients_of(broker, 1) else 2, (cid, c))
        if len(on) == 2:
            break
    assert len(on) == 2, "40 connections all landed on one worker"
    assert on[2][0] in clients_of(broker, 2)
    return on[1][1], on[2][1], made


def routes_known(broker: BrokerProcess, at: int, of: int, count: int) -> bool:
    rows = ctl_json(broker.data_dir / f"w{at}", "cluster", "nodes")
    return any(r["node"].endswith(f"-w{of}") and r["status"] == "up" and r["routes"] >= count
               for r in rows)


def exchange(broker: BrokerProcess, sub: Client, pub: Client, sub_worker: int,
             pub_worker: int, topic: str) -> None:
    """QoS 0 and 1 from ``pub`` reach ``sub`` across workers."""
    sub.subscribe(f"{topic}/#", qos=1)
    until("the route reaching the other worker",
          lambda: routes_known(broker, pub_worker, sub_worker, 1))
    pub.publish(f"{topic}/q0", b"zero", qos=0)
    m = sub.expect_message()
    assert (m.topic, m.payload, m.qos) == (f"{topic}/q0", b"zero", 0)
    pub.publish(f"{topic}/q1", b"one", qos=1)
    m = sub.expect_message()
    assert (m.topic, m.payload, m.qos) == (f"{topic}/q1", b"one", 1)


def test_two_workers_one_port_one_broker(workers: BrokerProcess) -> None:
    a, b, made = one_on_each(workers, "e2e-")
    try:
        exchange(workers, a, b, 1, 2, "w2to1")
        exchange(workers, b, a, 2, 1, "w1to2")
        # A retained message published on worker 2 is seen by a new subscriber on worker 1.
        b.publish("keep/it", b"retained", qos=1, retain=True)
        until("the retained message on worker 1",
              lambda: any(r.get("topic") == "keep/it"
                          for r in ctl_json(workers.data_dir / "w1", "retained", "list")))
        a.subscribe("keep/#", qos=1)
        m = a.expect_message()
        assert (m.topic, m.payload, m.retain) == ("keep/it", b"retained", True)
        # `mqttd ctl` at the data directory answers (through a worker) for the cluster.
        nodes = {r["node"] for r in ctl_json(workers.data_dir, "cluster", "nodes")}
        assert {n[-3:] for n in nodes} == {"-w1", "-w2"}
        listed = ctl_json(workers.data_dir, "clients", "list")["clients"]
        where = {r["clientid"]: r["node"][-3:] for r in listed}
        assert where[a.c._client_id.decode()] == "-w1"
        assert where[b.c._client_id.decode()] == "-w2"
    finally:
        for c in made:
            c.close()


def test_kill_9_of_a_worker_is_restarted(workers: BrokerProcess) -> None:
    a, b, made = one_on_each(workers, "k9-")
    try:
        old = worker_pid(workers, 1)
        start = len(workers.log())
        os.kill(old, signal.SIGKILL)
        wait_log(workers, f"worker w1 (pid {old}) exited with signal 9; restarting", start=start)
        a.wait_disconnected()
        wait_log(workers, "worker w1 started (pid", start=start)
        until("worker 1 back", lambda: os.path.exists(workers.data_dir / "w1" / "mqttd.sock")
              and _pid_or_none(workers, 1) not in (None, old))
        # The dropped client comes back (on whichever worker) and works with b.
        a.close()
        a2 = Client(workers, "k9-back", version=5)
        a2.connect()
        made.append(a2)
        # and a new connection can land on the restarted worker again.
        back, other, more = one_on_each(workers, "k9-again-")
        made += more
        exchange(workers, back, other, 1, 2, "after")
    finally:
        for c in made:
            c.close()


def _pid_or_none(broker: BrokerProcess, index: int) -> int | None:
    try:
        return worker_pid(broker, index)
    except AssertionError:
        return None


def test_sigterm_stops_every_process(workers: BrokerProcess) -> None:
    pids = [worker_pid(workers, 1), worker_pid(workers, 2)]
    nats = re.search(r"nats-server started \(pid (\d+)\)", workers.log())
    assert nats is not None
    pids.append(int(nats.group(1)))
    assert all(alive(p) for p in pids)
    assert workers.stop(signal.SIGTERM, timeout=40.0) == 0
    assert [p for p in pids if alive(p)] == []
    assert not (workers.data_dir / "mqttd.pid").exists()
    assert not (workers.data_dir / "mqttd.sock").exists()
    assert "mqttd supervisor stopped" in workers.log()


def test_without_nats_server_a_readable_error() -> None:
    path = os.pathsep.join(d for d in (os.path.dirname(sys.executable), "/usr/bin", "/bin")
                           if not os.path.exists(os.path.join(d, "nats-server")))
    with tempfile.TemporaryDirectory() as tmp:
        r = run_mqttd("start", "--workers", "2", "--port", "0", "--data-dir",
                      str(Path(tmp) / "data"), env={"PATH": path})
    assert r.returncode == 1, r
    assert "nats-server not found on PATH" in r.stderr, r.stderr
    assert "[cluster] nats_url" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_a_port_in_use_is_refused_not_shared(workers: BrokerProcess) -> None:
    """Another `--workers` start on a port that workers listen on (SO_REUSEPORT) fails
    instead of joining the kernel's group as a second, separate broker."""
    with tempfile.TemporaryDirectory() as tmp:
        r = run_mqttd("start", "--workers", "2", "--port", str(workers.port), "--data-dir",
                      str(Path(tmp) / "data"))
    assert r.returncode == 1, r
    assert f"cannot listen on 127.0.0.1:{workers.port} (listener default)" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_status_shows_the_supervisor_and_every_worker(workers: BrokerProcess) -> None:
    data = ctl_json(workers.data_dir, "status")
    assert data["role"] == "supervisor" and data["pid"] == workers.proc.pid
    assert data["nats"]["started_here"] is True and alive(data["nats"]["pid"])
    node = data["node"]
    rows = {w["name"]: w for w in data["workers"]}
    assert list(rows) == ["w1", "w2"]
    for i in (1, 2):
        w = rows[f"w{i}"]
        assert (w["node"], w["state"], w["restarts"], w["last_exit"]) == \
            (f"{node}-w{i}", "running", 0, None)
        assert w["pid"] == worker_pid(workers, i)
        # each worker's own status, as its socket answers it
        assert w["status"]["node"] == f"{node}-w{i}" and w["status"]["pid"] == w["pid"]
    text = ctl_text(workers.data_dir, "status")
    assert text.splitlines()[0].endswith("is started (supervisor of 2 workers)")
    assert f"pid       : {workers.proc.pid}" in text
    for i in (1, 2):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"w{i} "))
        assert f"{node}-w{i}" in line and "running" in line and str(rows[f"w{i}"]["pid"]) in line
    # A worker killed: restarted, and the status says so.
    old = rows["w2"]["pid"]
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        w = ctl_json(workers.data_dir, "status")["workers"][1]
        return bool(w["state"] == "running" and w["restarts"] == 1 and w["pid"] != old
                    and w["status"] is not None)

    until("worker 2 restarted in the status", restarted)
    w2 = ctl_json(workers.data_dir, "status")["workers"][1]
    assert w2["last_exit"] == "signal 9"
    assert "signal 9" in next(ln for ln in ctl_text(workers.data_dir, "status").splitlines()
                              if ln.startswith("w2 "))


def ctl_text(data_dir: Path, *args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl_main(["--data-dir", str(data_dir), *args])
    assert code == 0, (code, out.getvalue(), err.getvalue())
    return out.getvalue()


def test_log_lines_name_their_worker_and_sighup_reaches_each(workers: BrokerProcess) -> None:
    node = ctl_json(workers.data_dir, "status")["node"]
    log = workers.log()
    for i in (1, 2):
        assert re.search(rf"INFO \[{re.escape(node)}-w{i}\] mqttd[.\w]*: ", log), log
    # SIGHUP to the supervisor: every worker reloads the configuration file.
    with workers.config_path.open("a") as f:
        f.write("max_connections = 4321\n")  # in [listeners.default], the file's last table
    start = len(workers.log())
    os.kill(workers.proc.pid, signal.SIGHUP)
    for i in (1, 2):
        until(f"worker {i} to apply the reloaded file", lambda i=i: [
            r["max_conns"] for r in ctl_json(workers.data_dir / f"w{i}", "listeners", "list")
        ] == [4321])
        wait_log(workers, f"[{node}-w{i}] ", start=start)
    after = workers.log()[start:]
    assert "SIGHUP received: passed to the workers" in after
    for i in (1, 2):
        assert re.search(rf"\[{re.escape(node)}-w{i}\] [.\w]+: SIGHUP received", after), after


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def test_sighup_reopens_every_workers_log_file_after_a_rotation() -> None:
    """Each worker's own log file (a relative --log-file is in its data directory), moved
    away as logrotate does: after SIGHUP to the supervisor every worker writes a new one."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        out = open(Path(tmp) / "out.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [*MQTTD, "start", "--workers", "2", "--port", "0", "--data-dir", str(data),
             "--log-file", "node.log"], stdout=out, stderr=subprocess.STDOUT)
        try:
            until("the workers ready", lambda: "workers ready" in _read(data / "node.log"))
            files = [data / f"w{i}" / "node.log" for i in (1, 2)]
            for f in files:
                assert "control socket" in _read(f), _read(f)
                f.rename(f.with_suffix(".log.1"))
            os.kill(proc.pid, signal.SIGHUP)
            for f in files:
                until(f"{f} written again", lambda f=f: "SIGHUP received: log file reopened"
                      in _read(f))
                assert "SIGHUP received: log file reopened" not in _read(f.with_suffix(".log.1"))
            assert "SIGHUP received: passed to the workers" in _read(data / "node.log")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(40) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
        for f in [data / "node.log", *files]:
            assert "Traceback" not in _read(f), _read(f)
