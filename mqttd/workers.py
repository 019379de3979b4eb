"""`mqttd start --workers N`: a supervisor process and N worker processes.

Each worker is a whole mqttd node (``python -m mqttd start`` with the same options) named
``<name>-w<i>``, with its own data directory ``<data_dir>/w<i>`` (store, control socket,
pid file), listening on the configured addresses with SO_REUSEPORT so the kernel spreads
connections among the workers. The workers form one broker as cluster nodes over NATS
(docs/CLUSTER.md): ``[cluster] nats_url`` if set, else a nats-server this supervisor starts
(JetStream, 127.0.0.1, a free port, its store in ``<data_dir>/nats``).

The supervisor holds ``<data_dir>/mqttd.pid`` and answers ``<data_dir>/mqttd.sock``: it
passes each `mqttd ctl` request to the first running worker (the cluster commands answer
for every node), answers ``status`` itself (itself and every worker, each worker's own
status asked of its socket) and ``stop`` by stopping everything. It restarts a worker
that exits on its own (with back-off), forwards SIGTERM/SIGINT/SIGHUP, and exits once the
workers have stopped. (Not :mod:`mqttd.supervisor`: that one restarts in-process services.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import __version__, logsetup
from .config import Settings
from .ctl import protocol as P
from .ctl.server import bind_socket, lock_pid_file, prepare_data_dir
from .mgmt.listing import iso
from .mgmt.status import uptime_text

log = logging.getLogger("mqttd")

#: The environment variable carrying a worker's part (JSON) from the supervisor.
WORKER_ENV = "MQTTD_WORKER"
#: Restart back-off: first delay, cap; a worker that ran this long starts the count again.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
BACKOFF_RESET = 60.0
#: Seconds to wait for the workers (and nats-server) to be ready, and to stop.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Seconds ``mqttd ctl status`` waits for each worker's own status.
STATUS_TIMEOUT = 2.0


class WorkersError(Exception):
    """The workers cannot be started (nats-server missing or failing, a worker failing)."""


def apply_worker(settings: Settings, spec: dict[str, Any]) -> None:
    """A worker's own settings from the supervisor's ``spec`` (at start and each reload)."""
    index = int(spec["index"])
    settings.node = f"{settings.node}-w{index}"
    settings.data_dir = str(spec["data_dir"])
    if spec.get("nats_url"):
        settings.cluster.nats_url = str(spec["nats_url"])
    ports = spec.get("ports", {})
    for listener in settings.listeners:
        if listener.name in ports:
            listener.port = int(ports[listener.name])
    if index != 1:
        # One HTTP port and one of each bridge (its client id) for the whole broker.
        settings.http.enabled = False
        settings.bridges = []


def worker_spec() -> dict[str, Any] | None:
    """This process's worker spec, when the supervisor started it."""
    text = os.environ.get(WORKER_ENV)
    return json.loads(text) if text else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In a child: SIGTERM when the supervisor dies (even by SIGKILL), no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    ready_fd: int | None = None
    ready: bool = False
    history: list[int] = field(default_factory=list)
    #: Times started again after exiting by itself, and how it last exited.
    restarts: int = 0
    last_exit: str | None = None
    #: Wall-clock time of the last start (``started`` is monotonic).
    started_at: float = 0.0


class WorkerSupervisor:
    """Starts the nats-server (if needed) and the workers, and keeps them running."""

    def __init__(self, settings: Settings, count: int, argv: list[str],
                 on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.count = count
        #: ``mqttd start``'s options for a worker (no --workers, --daemon, --data-dir).
        self.argv = argv
        self.on_ready = on_ready
        self.data_dir = os.path.abspath(os.path.expanduser(settings.data_dir))
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self.nats: subprocess.Popen[bytes] | None = None
        self.nats_url = settings.cluster.nats_url
        self.ports: dict[str, int] = {}
        #: Port 0 listeners: a bound (not listening) SO_REUSEPORT socket holds the port the
        #: workers share, for the supervisor's life (a restarted worker gets it again).
        self._holders: list[socket.socket] = []
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._ctl: asyncio.base_events.Server | None = None
        self._pid_fd: int | None = None
        #: `mqttd ctl` connections being answered (a `stop` is answered once all stopped).
        self._handlers: set[asyncio.Task[Any]] = set()
        self._all_stopped = asyncio.Event()
        self.started_at = time.time()

    # --- start ------------------------------------------------------------------------

    def _start_nats(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise WorkersError(
                "nats-server not found on PATH: `mqttd start --workers N` starts one when "
                "[cluster] nats_url is not set; install it (Debian: apt install nats-server) "
                "or set [cluster] nats_url to an existing NATS system with JetStream")
        store = os.path.join(self.data_dir, "nats")
        os.makedirs(store, mode=0o700, exist_ok=True)
        port = _free_port()
        out = open(os.path.join(store, "nats-server.log"), "ab")  # noqa: SIM115
        try:
            self.nats = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store,
                 "-n", f"{self.settings.node}-nats"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        finally:
            out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.nats.poll() is not None:
                raise WorkersError(f"nats-server ({binary}) exited with code "
                                   f"{self.nats.returncode}; its log: {store}/nats-server.log")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise WorkersError(f"nats-server did not listen on 127.0.0.1:{port} within "
                                   f"{START_TIMEOUT:g}s")
            time.sleep(0.05)
        self.nats_url = f"nats://127.0.0.1:{port}"
        log.info("nats-server started (pid %d) on %s, JetStream store %s", self.nats.pid,
                 self.nats_url, store)

    def _hold_ports(self) -> None:
        for listener in self.settings.listeners:
            infos = socket.getaddrinfo(listener.bind, listener.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if listener.port == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Without SO_REUSEPORT for a configured port: a port another mqttd's workers
            # listen on (with SO_REUSEPORT, as ours would) is refused here, not shared.
            try:
                sock.bind(address)
            except OSError as err:
                sock.close()
                raise WorkersError(f"cannot listen on {listener.bind}:{listener.port} "
                                   f"(listener {listener.name}): {err.strerror or err}"
                                   ) from None
            if listener.port != 0:
                sock.close()
                continue
            self._holders.append(sock)
            self.ports[listener.name] = int(sock.getsockname()[1])

    def _spawn(self, worker: _Worker) -> None:
        spec = {"index": worker.index, "data_dir": os.path.join(self.data_dir,
                                                                 f"w{worker.index}"),
                "nats_url": self.nats_url, "ports": self.ports}
        env = dict(os.environ)
        env[WORKER_ENV] = json.dumps(spec)
        env.pop("MQTTD_READY_FD", None)
        read_fd, write_fd = os.pipe()
        env["MQTTD_READY_FD"] = str(write_fd)
        cmd = [sys.executable, "-m", "mqttd", "start", *self.argv]
        try:
            worker.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env,
                                           pass_fds=(write_fd,), preexec_fn=_die_with_parent)
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker.ready_fd = read_fd
        worker.ready = False
        worker.started = time.monotonic()
        worker.started_at = time.time()
        worker.restart_at = None
        log.info("worker w%d started (pid %d)", worker.index, worker.proc.pid)

    def _poll_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is None:
            return
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        if data.startswith(b"ready"):
            worker.ready = True
        os.close(worker.ready_fd)
        worker.ready_fd = None

    # --- the control socket -------------------------------------------------------------

    async def _start_ctl(self) -> None:
        prepare_data_dir(self.data_dir)
        self._pid_fd = lock_pid_file(os.path.join(self.data_dir, P.PID_NAME), self.data_dir)
        sock = bind_socket(os.path.join(self.data_dir, P.SOCKET_NAME))
        self._ctl = await asyncio.start_unix_server(self._ctl_client, sock=sock,
                                                    limit=P.MAX_REQUEST)

    async def _ctl_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                argv = request.get("argv", [])
            except (ValueError, AttributeError):
                request, argv = {}, []
            if argv[:1] == ["stop"]:
                self.request_stop("mqttd ctl stop")
                await self._all_stopped.wait()
                await self._answer(writer, f"mqttd stopped ({self.count} workers)\n")
                return
            if argv == ["status"] and request.get("v") in P.SUPPORTED:
                data = await self.status()
                text = (json.dumps(data, indent=2, ensure_ascii=False) + "\n"
                        if request.get("json") else status_text(data))
                await self._answer(writer, text)
                return
            for worker in self.workers:
                if worker.ready and worker.proc is not None and worker.proc.poll() is None:
                    path = os.path.join(self.data_dir, f"w{worker.index}", P.SOCKET_NAME)
                    try:
                        up_r, up_w = await asyncio.open_unix_connection(path,
                                                                        limit=P.MAX_REQUEST)
                    except OSError:
                        continue
                    up_w.write(line)
                    await up_w.drain()
                    while chunk := await up_r.read(65536):
                        writer.write(chunk)
                        await writer.drain()
                    up_w.close()
                    return
            await self._answer(writer, "no worker is running (restarting)\n", err=True)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def status(self) -> dict[str, Any]:
        """``mqttd ctl status``: the supervisor (pid, uptime, nats-server) and every worker
        (state, pid, restarts, uptime, last exit, and its own ``status`` as it answers it)."""
        now = time.time()
        up = max(0.0, now - self.started_at)
        answers = await asyncio.gather(*(self._worker_status(w) for w in self.workers))
        workers = []
        for worker, (own, reason) in zip(self.workers, answers, strict=True):
            proc = worker.proc
            running = proc is not None and proc.poll() is None
            state = ("running" if running and worker.ready else "starting" if running
                     else "stopping" if self._stopping
                     else "restarting" if worker.restart_at is not None else "stopped")
            w_up = max(0.0, now - worker.started_at) if running else None
            workers.append({
                "name": f"w{worker.index}", "node": f"{self.settings.node}-w{worker.index}",
                "state": state, "pid": proc.pid if running and proc is not None else None,
                "restarts": worker.restarts, "last_exit": worker.last_exit,
                "started_at": iso(worker.started_at) if running else None,
                "uptime": uptime_text(w_up) if w_up is not None else None,
                "uptime_seconds": round(w_up, 3) if w_up is not None else None,
                "status": own, "reason": reason})
        nats = self.nats
        return {
            "node": self.settings.node, "role": "supervisor", "version": __version__,
            "status": "started", "pid": os.getpid(), "uptime": uptime_text(up),
            "uptime_seconds": round(up, 3), "started_at": iso(self.started_at),
            "data_dir": self.data_dir,
            "nats": {"url": _safe_url(self.nats_url or ""),
                     "pid": nats.pid if nats is not None else None,
                     "started_here": nats is not None},
            "workers": workers}

    async def _worker_status(self, worker: _Worker) -> tuple[dict[str, Any] | None, str]:
        """A worker's own ``mqttd ctl --json status`` through its socket, or why not."""
        proc = worker.proc
        if proc is None or proc.poll() is not None:
            return None, "not running"
        if not worker.ready:
            return None, "starting"
        path = os.path.join(self.data_dir, f"w{worker.index}", P.SOCKET_NAME)
        request = {"proto": P.PROTOCOL, "v": P.VERSION, "argv": ["status"], "json": True}

        async def ask() -> dict[str, Any]:
            reader, writer = await asyncio.open_unix_connection(path, limit=P.MAX_REQUEST)
            try:
                writer.write(P.encode(request))
                await writer.drain()
                out: list[str] = []
                while line := await reader.readline():
                    frame = json.loads(line)
                    if frame.get("t") == "out":
                        out.append(str(frame.get("s", "")))
                    elif frame.get("t") == "exit":
                        break
                data = json.loads("".join(out))
                if not isinstance(data, dict):
                    raise ValueError("not a status")
                return data
            finally:
                writer.close()

        try:
            return await asyncio.wait_for(ask(), STATUS_TIMEOUT), ""
        except TimeoutError:
            return None, f"no answer within {STATUS_TIMEOUT:g} s"
        except (OSError, ValueError) as err:
            return None, f"no answer: {err}"

    async def _answer(self, writer: asyncio.StreamWriter, text: str, err: bool = False) -> None:
        writer.write(P.encode({"t": "hello", "v": P.VERSION, "node": self.settings.node}))
        writer.write(P.encode({"t": "err" if err else "out", "s": text}))
        writer.write(P.encode({"t": "exit", "code": P.EXIT_UNAVAILABLE if err else 0}))
        await writer.drain()

    # --- running ------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stopping:
            log.info("%s: stopping the workers", reason)
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_hup(self) -> None:
        logsetup.reopen()
        log.info("SIGHUP received: passed to the workers")
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    async def run(self) -> int:
        self._stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, "signal received")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            await self._start_ctl()
            self._hold_ports()
            if not self.nats_url:
                self._start_nats()
            for worker in self.workers:
                self._spawn(worker)
            await self._wait_ready()
            listeners = ", ".join(f"{name} port {port}" for name, port in self.ports.items())
            log.info("workers ready: %d workers (pids %s) on %s%s", self.count,
                     " ".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
                     self.nats_url, f"; shared {listeners}" if listeners else "")
            if self.on_ready is not None:
                self.on_ready()
            await self._supervise()
            return 0
        finally:
            await self._stop_all()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            for worker in self.workers:
                self._poll_ready(worker)
                if not worker.ready and worker.proc is not None and \
                        worker.proc.poll() is not None:
                    raise WorkersError(f"worker w{worker.index} exited with code "
                                       f"{worker.proc.returncode} while starting (its log "
                                       "lines are above)")
            if self._stopping:
                return
            if time.monotonic() > deadline:
                raise WorkersError(f"the workers were not ready within {START_TIMEOUT:g}s")
            await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        assert self._stop_event is not None
        while not self._stopping:
            now = time.monotonic()
            for worker in self.workers:
                self._poll_ready(worker)
                proc = worker.proc
                if proc is not None and proc.poll() is not None:
                    code = proc.returncode
                    why = f"signal {-code}" if code < 0 else f"code {code}"
                    if now - worker.started > BACKOFF_RESET:
                        worker.failures = 0
                    delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** worker.failures)
                    worker.failures += 1
                    worker.proc = None
                    worker.ready = False
                    worker.restart_at = now + delay
                    worker.last_exit = why
                    log.warning("worker w%d (pid %d) exited with %s; restarting it in %gs",
                                worker.index, proc.pid, why, delay)
                elif worker.proc is None and worker.restart_at is not None and \
                        now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), 0.1)

    async def _stop_all(self) -> None:
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.warning("worker w%d (pid %d) did not stop within %gs: killed",
                            worker.index, proc.pid, STOP_TIMEOUT)
                proc.kill()
                proc.wait()
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
        if self.nats is not None and self.nats.poll() is None:
            self.nats.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(self.nats.wait), 10.0)
            except TimeoutError:
                self.nats.kill()
                self.nats.wait()
            log.info("nats-server (pid %d) stopped", self.nats.pid)
        for sock in self._holders:
            sock.close()
        if self._ctl is not None:
            self._ctl.close()
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.data_dir, P.SOCKET_NAME))
        if self._pid_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.data_dir, P.PID_NAME))
            os.close(self._pid_fd)
        log.info("mqttd supervisor stopped")
        self._all_stopped.set()
        if self._handlers:  # a `mqttd ctl stop` is told
            await asyncio.wait(set(self._handlers), timeout=2.0)


def status_text(data: dict[str, Any]) -> str:
    """The supervisor's ``mqttd ctl status`` for people: itself, then a line per worker."""
    nats = data["nats"]
    lines = [f"Node {data['node']} {data['version']} is started (supervisor of "
             f"{len(data['workers'])} workers)",
             f"{'pid':<10}: {data['pid']}", f"{'uptime':<10}: {data['uptime']}",
             f"{'nats':<10}: {nats['url']}" + (f" (nats-server pid {nats['pid']}, started by "
                                                "the supervisor)" if nats["started_here"]
                                                else ""),
             f"{'data_dir':<10}: {data['data_dir']}"]
    head = ("Worker", "Node", "State", "Pid", "Restarts", "Uptime", "Last exit")
    rows = [head] + [
        (w["name"], w["node"], w["state"] if not w["reason"] or w["state"] != "running"
         else f"{w['state']} ({w['reason']})", str(w["pid"] or "-"), str(w["restarts"]),
         w["uptime"] or "-", w["last_exit"] or "-") for w in data["workers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) if i not in (3, 4) else c.rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
    return "\n".join(lines) + "\n"


def _safe_url(url: str) -> str:
    """``url`` without any user or password in it (never shown)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if sep else url


def supervise(settings: Settings, count: int, argv: list[str],
              on_ready: Callable[[], None] | None = None) -> int:
    """Run the supervisor until it is told to stop; raises WorkersError if it cannot start."""
    return asyncio.run(WorkerSupervisor(settings, count, argv, on_ready).run())
