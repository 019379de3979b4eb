"""Brokers under test: how each is configured, started on a loopback port, pinned and stopped.

Every broker gets the same settings where it has them (see ``bench/README.md``):
a deep outgoing queue (1,000,000 messages, no byte limit), 20 QoS 1/2 messages
in flight per client (mosquitto's default), 127.0.0.1 only, anonymous clients.
Persistence differs by name: mqttd keeps persistent sessions in its store
(``[store] durability``: "process" for ``mqttd``, "off" for ``mqttd-nostore``,
"power" for ``mqttd-power``); mosquitto runs without persistence except as
``mosquitto-persist*``. Each is started fresh for every scenario run, with an
empty data directory of its own, pinned to one core, and stopped by its PID.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"
NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
AMQTT_VENV = Path("/tmp/amqtt-venv")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

_MQTTD_LISTENING = re.compile(r"listener \S+ on [0-9.]+:(\d+)")
#: mqttd's start log line saying which durability is in force.
_MQTTD_DURABILITY = re.compile(r"durability (off|process|power)(?: \(|:)")

MQTTD_CONFIG = """\
# mosquitto runs with connection_messages false (MOSQUITTO_CONFIG): the same here, or
# mqttd alone pays a formatted log line and a write() per connect and per disconnect
[log]
connection_messages = false

[mqtt]
# as mosquitto's max_inflight_messages default, which the reference uses
max_inflight = 20
# as mosquitto's max_queued_messages in the reference configuration
max_mqueue_len = 1000000
# mosquitto has no such limit (mqttd's default, 10,000, refuses 90 % of "filters")
max_subscriptions = 0

[listeners.default]
bind = "127.0.0.1"
port = 0
"""

#: Appended for a spec with ``durability`` set (older checkouts run with ``NAME@DIR`` may not
#: know the table, so it is left out otherwise; mqttd's default is "process").
MQTTD_STORE = """
[store]
durability = "{durability}"
"""

MOSQUITTO_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
{persistence}
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 20
log_dest stderr
log_type error
log_type warning
connection_messages false
"""

#: mosquitto-persist*: mosquitto acknowledges from memory and writes a snapshot of its whole
#: state every autosave_interval seconds (default 1800, kept: no snapshot inside a run) and at
#: exit, so what a kill -9 loses is up to the last snapshot.
MOSQUITTO_PERSIST = """persistence true
persistence_location {dir}/
persistence_file mosquitto.db"""

#: NATS's MQTT listener (Go, compiled): MQTT 3.1.1 over JetStream (sessions, QoS 1 and retained
#: messages are JetStream streams in the run's data directory). ``max_ack_pending`` is its
#: in-flight window per subscription, set to the other brokers' 20. It has no queue-length
#: setting (JetStream's stream limits hold what waits). QoS 2 is not supported by it.
NATS_CONFIG = """\
listen: 127.0.0.1:{client_port}
server_name: bench
jetstream {{
  store_dir: "{dir}"
}}
mqtt {{
  listen: 127.0.0.1:{port}
  max_ack_pending: 20
}}
"""

AMQTT_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
    max_connections: 0
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


@dataclass
class BrokerSpec:
    """How to run one broker: ``kind`` picks the recipe, ``command`` is for ``kind == "cmd"``."""

    name: str
    kind: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    command: str = ""
    nodelay: bool = False
    #: For ``NAME@DIR``: run the mqttd package found in DIR (another checkout, extensions
    #: built in place), e.g. the commit before a change, side by side with this tree.
    src: str = ""
    #: mqttd: ``[store] durability`` ("off", "process", "power"); "" leaves the table out.
    durability: str = ""
    #: mosquitto: ``persistence true`` with its file in the run's data directory.
    persistence: bool = False
    #: mqttd: a node of a cluster ([cluster] nats_url) whose nats-server (JetStream, in the
    #: run's directory, pinned to the load's core) the run starts and stops beside it.
    cluster: bool = False

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        if self.kind == "mosquitto" and not os.access(MOSQUITTO, os.X_OK):
            return f"{MOSQUITTO} not found (apt-get install mosquitto)"
        if self.kind == "nats" and not os.access(NATS_SERVER, os.X_OK):
            return f"{NATS_SERVER} not found (apt-get install nats-server)"
        if self.kind == "amqtt" and not (AMQTT_VENV / "bin" / "amqtt").exists():
            return (f"amqtt not installed in {AMQTT_VENV} (python -m venv {AMQTT_VENV} && "
                    f"{AMQTT_VENV}/bin/pip install amqtt==0.12.1)")
        return None


def builtin_specs() -> dict[str, BrokerSpec]:
    return {
        "mqttd": BrokerSpec("mqttd", "mqttd", "mqttd (this tree), compiled speedups, uvloop, "
                            'store durability = "process" (the default)', durability="process"),
        "mqttd-nostore": BrokerSpec("mqttd-nostore", "mqttd",
                                    'mqttd with [store] durability = "off" (memory only)',
                                    durability="off"),
        "mqttd-power": BrokerSpec("mqttd-power", "mqttd",
                                  'mqttd with [store] durability = "power" (fsync per commit)',
                                  durability="power"),
        "mqttd-pure": BrokerSpec("mqttd-pure", "mqttd",
                                 "mqttd with MQTTD_NO_EXTENSIONS=1 (pure-Python codec and trie)",
                                 env={"MQTTD_NO_EXTENSIONS": "1"}),
        "mqttd-cluster": BrokerSpec(
            "mqttd-cluster", "mqttd", "mqttd as a cluster node (one, alone: local traffic) "
            "over a nats-server with JetStream started beside it on the load's core, store "
            'durability = "process"', durability="process", cluster=True),
        "mosquitto": BrokerSpec("mosquitto", "mosquitto",
                                "mosquitto (Debian), default: Nagle on"),
        "mosquitto-nodelay": BrokerSpec("mosquitto-nodelay", "mosquitto",
                                        "mosquitto (Debian), set_tcp_nodelay true", nodelay=True),
        "mosquitto-persist": BrokerSpec(
            "mosquitto-persist", "mosquitto", "mosquitto (Debian), Nagle on, persistence true "
            "(autosave_interval default 1800 s)", persistence=True),
        "mosquitto-persist-nodelay": BrokerSpec(
            "mosquitto-persist-nodelay", "mosquitto", "mosquitto (Debian), set_tcp_nodelay true, "
            "persistence true (autosave_interval default 1800 s)", nodelay=True,
            persistence=True),
        "nats": BrokerSpec("nats", "nats", "nats-server (Debian) with its MQTT listener "
                           "(JetStream in the run's data directory, max_ack_pending 20)"),
        "amqtt": BrokerSpec("amqtt", "amqtt", f"amqtt 0.12.1 (venv {AMQTT_VENV})"),
    }


def parse_spec(text: str, known: dict[str, BrokerSpec]) -> BrokerSpec:
    """A built-in name, ``NAME=COMMAND`` with ``{port}`` (and optionally ``{dir}``) in it, or
    ``NAME@DIR``: mqttd from the checkout in DIR (its ``mqttd/`` with extensions built; a
    NAME ending in ``-cluster`` runs it as ``mqttd-cluster`` does, one ending in
    ``-nostore`` or ``-power`` with that store durability, as ``mqttd-nostore`` and
    ``mqttd-power`` do)."""
    if "@" in text and "=" not in text:
        name, src = text.split("@", 1)
        name = name.strip()
        if not (Path(src) / "mqttd" / "__init__.py").is_file():
            raise ValueError(f"broker {name!r}: {src} holds no mqttd package")
        cluster = name.endswith("-cluster")  # as mqttd-cluster, from that checkout
        durability = ("process" if cluster else "off" if name.endswith("-nostore")
                      else "power" if name.endswith("-power") else "")
        return BrokerSpec(name, "mqttd", f"mqttd from {src}"
                          + (" as a cluster node (as mqttd-cluster)" if cluster else "")
                          + (f', store durability = "{durability}"'
                             if durability and not cluster else ""),
                          src=str(Path(src).resolve()), cluster=cluster,
                          durability=durability)
    if "=" in text:
        name, cmd = text.split("=", 1)
        if "{port}" not in cmd:
            raise ValueError(f"broker command for {name!r} must contain {{port}}")
        return BrokerSpec(name.strip(), "cmd", f"command: {cmd}", command=cmd)
    if text not in known:
        raise ValueError(f"unknown broker {text!r} (known: {', '.join(known)}, or NAME=COMMAND)")
    return known[text]


def fresh_dir(path: Path) -> Path:
    """``path`` as a new, empty directory of mode 0700, as mqttd wants its data directory
    (whatever was there is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    path.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


def give_to_mosquitto(path: Path) -> None:
    """Started as root, mosquitto drops to its own user (``user``, default "mosquitto")
    before writing its persistence file: that user must own the directory."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(path, user.pw_uid, user.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mqtt_probe(port: int, timeout: float = 1.0) -> bool:
    """True when a 3.1.1 CONNECT on 127.0.0.1:port gets CONNACK 0."""
    cid = b"bench-probe"
    connect = (b"\x10" + bytes([12 + len(cid)]) + b"\x00\x04MQTT\x04\x02\x00\x00"
               + len(cid).to_bytes(2, "big") + cid)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(connect)
            data = b""
            deadline = time.monotonic() + timeout
            while len(data) < 4 and time.monotonic() < deadline:
                chunk = s.recv(4)
                if not chunk:
                    return False
                data += chunk
            ok = data[:1] == b"\x20" and data[3:4] == b"\x00"
            if ok:
                s.sendall(b"\xe0\x00")
            return ok
    except OSError:
        return False


class BrokerProcess:
    """One running broker, pinned to ``core``; ``pid`` for /proc sampling."""

    def __init__(self, spec: BrokerSpec, workdir: Path, core: int | None,
                 timeout: float = 20.0, mqttd_src: Path | None = None) -> None:
        self.spec = spec
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "broker.log"
        self.port = 0
        #: The broker's data directory (mqttd's --data-dir, mosquitto's persistence_location):
        #: emptied here, so no state is carried from an earlier run.
        self.data_dir = fresh_dir(self.dir / "data")
        env = {**os.environ, **spec.env}
        #: The nats-server of a cluster node (mqttd-cluster), stopped with the broker.
        self.nats: subprocess.Popen[bytes] | None = None
        if spec.kind == "mqttd":
            conf = self.dir / "mqttd.toml"
            text = MQTTD_CONFIG
            if spec.durability:
                text += MQTTD_STORE.format(durability=spec.durability)
            if spec.cluster:
                text += self._start_nats(core)
            conf.write_text(text)
            # mqttd_src: a snapshot of the package taken when the sitting began (see
            # snapshot_mqttd), so edits to the tree during a run do not change what is measured.
            src = spec.src or mqttd_src or ROOT
            env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
            args = [sys.executable, "-m", "mqttd", "start", "-c", str(conf), "--port", "0",
                    "--data-dir", str(self.data_dir), "--log-level", "info"]
        elif spec.kind == "mosquitto":
            self.port = free_port()
            conf = self.dir / "mosquitto.conf"
            text = MOSQUITTO_CONFIG.format(
                port=self.port, persistence=MOSQUITTO_PERSIST.format(dir=self.data_dir)
                if spec.persistence else "persistence false")
            if spec.persistence:
                give_to_mosquitto(self.data_dir)
            if spec.nodelay:
                text += "set_tcp_nodelay true\n"
            conf.write_text(text)
            conf.chmod(0o644)
            args = [MOSQUITTO, "-c", str(conf)]
        elif spec.kind == "nats":
            self.port = free_port()
            conf = self.dir / "nats.conf"
            conf.write_text(NATS_CONFIG.format(port=self.port, client_port=free_port(),
                                               dir=self.data_dir))
            args = [NATS_SERVER, "-c", str(conf)]
        elif spec.kind == "amqtt":
            self.port = free_port()
            conf = self.dir / "amqtt.yaml"
            conf.write_text(AMQTT_CONFIG.format(port=self.port))
            args = [str(AMQTT_VENV / "bin" / "amqtt"), "-c", str(conf)]
        elif spec.kind == "cmd":
            self.port = free_port()
            args = shlex.split(spec.command.format(port=self.port, dir=self.dir))
        else:
            raise ValueError(spec.kind)
        self.args = args
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()

        def pin() -> None:
            if core is not None:
                os.sched_setaffinity(0, {core})

        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.dir,
                                     preexec_fn=pin)  # noqa: PLW1509 - no threads here
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{spec.name} exited with {self.proc.returncode}:\n"
                                   + self.log()[-3000:])
            if spec.kind == "mqttd" and not self.port:
                m = _MQTTD_LISTENING.search(self.log())
                if m:
                    self.port = int(m.group(1))
            if self.port and mqtt_probe(self.port):
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"{spec.name} did not accept MQTT connections within "
                               f"{timeout:.0f} s:\n" + self.log()[-3000:])
        if spec.kind == "mqttd" and spec.durability:
            m = _MQTTD_DURABILITY.search(self.log())
            if m is None or m.group(1) != spec.durability:
                self.stop()
                raise RuntimeError(f"{spec.name}: the log does not say durability "
                                   f"{spec.durability} is in force (found "
                                   f"{m.group(1) if m else 'no durability line'})")
        if spec.cluster:
            while "joined through NATS" not in self.log():
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{spec.name} did not join its NATS:\n"
                                       + self.log()[-3000:])
                time.sleep(0.05)
            # A node forwards everything for three heartbeat intervals (1 s) after it joins
            # (docs/CLUSTER.md): measure the settled node.
            time.sleep(3.5)
        # Let start-up work (imports, GC of start-up garbage) settle before any sample.
        time.sleep(0.2)

    def _start_nats(self, broker_core: int | None) -> str:
        """Start a nats-server for a cluster node; the node's ``[cluster]`` table."""
        port = free_port()
        store = fresh_dir(self.dir / "nats")
        load_core = None if broker_core is None else (broker_core + 1) % (os.cpu_count() or 1)

        def pin() -> None:
            if load_core is not None:
                os.sched_setaffinity(0, {load_core})

        self.nats = subprocess.Popen(  # noqa: S603 - our own arguments
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            preexec_fn=pin)  # noqa: PLW1509 - no threads here
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        return f'\n[cluster]\nnats_url = "nats://127.0.0.1:{port}"\n'

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.nats is not None and self.nats.poll() is None:
            self.nats.terminate()
            try:
                self.nats.wait(timeout)
            except subprocess.TimeoutExpired:
                self.nats.kill()
                self.nats.wait(timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def snapshot_mqttd(dest: Path, root: Path = ROOT) -> Path:
    """Copy the mqttd package (with its built extensions) to ``dest``/mqttd; returns ``dest``.

    The work tree may be edited by others while a sitting runs; every mqttd
    broker of the sitting then runs this copy.
    """
    import shutil

    target = dest / "mqttd"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root / "mqttd", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    return dest


# --- /proc sampling ----------------------------------------------------------------------

def cpu_ticks(pid: int | str = "self") -> int:
    """utime + stime of a process (all its threads), in clock ticks, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def core_times() -> dict[int, tuple[int, int]]:
    """Per core (busy, total) ticks from /proc/stat; busy includes irq and softirq."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                total = sum(v[:8])  # guest time is already in user
                out[int(line.split()[0][3:])] = (total - idle, total)
    return out


class CpuSampler:
    """CPU of the broker and the generator over a measured interval (mark 0 → mark 1)."""

    def __init__(self, broker_pid: int, cores: tuple[int | None, int | None]) -> None:
        self.broker_pid = broker_pid
        self.cores = cores
        self.samples: list[tuple[float, int, int, dict[int, tuple[int, int]]]] = []

    def __call__(self, _which: int) -> None:
        try:
            b = cpu_ticks(self.broker_pid)
        except OSError:
            b = 0
        self.samples.append((time.monotonic(), b, cpu_ticks(), core_times()))

    def result(self) -> dict[str, float]:
        if len(self.samples) < 2:
            return {}
        (t0, b0, l0, c0), (t1, b1, l1, c1) = self.samples[0], self.samples[-1]
        wall = t1 - t0
        out = {"broker_cpu": (b1 - b0) / CLK_TCK / wall * 100,
               "load_cpu": (l1 - l0) / CLK_TCK / wall * 100}
        for key, core in (("broker_core_busy", self.cores[0]), ("load_core_busy", self.cores[1])):
            if core is not None and core in c0 and core in c1:
                busy = c1[core][0] - c0[core][0]
                total = c1[core][1] - c0[core][1]
                out[key] = busy / total * 100 if total else 0.0
        return out
