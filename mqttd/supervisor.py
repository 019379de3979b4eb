"""Supervision of background workers (EMQX's ``*_sup``, one_for_one with an intensity).

Every long-running background job of the node (the stats tick, the ``$SYS``
publisher, expiry sweeps, trace writers) is an asyncio task started through
:meth:`Supervisor.start_child`. When a worker crashes (its coroutine raises),
the supervisor logs the traceback, counts the restart and starts the worker
again at once: a bug in the ``$SYS`` publisher must not silently stop ``$SYS``
for the rest of the node's life, and must not take the broker down either.

A worker that keeps crashing is not restarted forever. As in OTP, a restart
intensity bounds it: more than ``intensity`` restarts within ``period`` seconds
(EMQX's kernel supervisor uses 10 in 100 s, our default) and the supervisor
gives up on that worker: it logs a CRITICAL line naming the worker, marks it
``failed`` and leaves it stopped. The broker keeps serving clients; what the
worker did (stats, ``$SYS``, ...) stops until an operator restarts it
(:meth:`Supervisor.restart_child`) or the node is restarted.

One difference from OTP, on purpose: the intensity is counted per worker, and
giving up stops only that worker. An OTP supervisor over its intensity
terminates itself and every sibling; here that would mean a crash-looping
trace writer stops the stats tick, for no benefit.

Restart policies (OTP's): ``permanent`` restarts after a crash and after a
normal return, ``transient`` only after a crash, ``temporary`` never.

Connections are not workers: a crash in one connection's handling is caught
in the connection itself, which closes that connection only (see
``mqttd/connection.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Supervisor", "Worker"]

log = logging.getLogger("mqttd.supervisor")

#: EMQX's kernel supervisor: at most 10 restarts in 100 seconds (per worker here).
INTENSITY = 10
PERIOD = 100.0

_POLICIES = ("permanent", "transient", "temporary")

WorkerFun = Callable[[], Awaitable[Any]]


class Worker:
    """One supervised background task and its restart history."""

    __slots__ = ("_history", "crashes", "func", "intensity", "last_error", "name", "period",
                 "restart", "restarts", "started_at", "state", "task")

    def __init__(self, name: str, func: WorkerFun, restart: str, intensity: int,
                 period: float) -> None:
        self.name = name
        self.func = func
        self.restart = restart
        self.intensity = intensity
        self.period = period
        self.task: asyncio.Task[Any] | None = None
        #: running | stopped (by us, or returned) | failed (gave up after crashes)
        self.state = "stopped"
        #: Restarts since the worker was first started.
        self.restarts = 0
        #: Crashes since the worker was first started.
        self.crashes = 0
        self.started_at = 0.0
        self.last_error = ""
        #: loop.time() of each recent restart, for the intensity window
        self._history: deque[float] = deque()

    def info(self) -> dict[str, Any]:
        """What ``mqttd ctl`` shows about this worker."""
        return {
            "name": self.name,
            "state": self.state,
            "restart": self.restart,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "started_at": self.started_at,
            "uptime": round(time.time() - self.started_at, 3)
            if self.state == "running" else 0.0,
            "last_error": self.last_error,
            "intensity": f"{self.intensity}/{self.period:g}s",
        }


class Supervisor:
    """Starts background workers and restarts the ones that crash (one_for_one)."""

    def __init__(self, name: str = "mqttd", *, intensity: int = INTENSITY,
                 period: float = PERIOD, on_restart: Callable[[], None] | None = None) -> None:
        self.name = name
        self.intensity = intensity
        self.period = period
        #: Called on every restart (the node counts ``workers.restarted``).
        self.on_restart = on_restart
        self._workers: dict[str, Worker] = {}
        self._stopping = False

    def start_child(self, name: str, func: WorkerFun, *, restart: str = "permanent",
                    intensity: int | None = None, period: float | None = None) -> Worker:
        """Start ``func()`` (a coroutine function) as the worker ``name``; needs a running loop."""
        if restart not in _POLICIES:
            raise ValueError(f"restart policy must be one of {', '.join(_POLICIES)}")
        old = self._workers.get(name)
        if old is not None and old.state == "running":
            raise ValueError(f"a worker named {name!r} is already running")
        worker = Worker(name, func, restart,
                        self.intensity if intensity is None else intensity,
                        self.period if period is None else period)
        self._workers[name] = worker
        self._stopping = False
        self._spawn(worker)
        return worker

    def _spawn(self, worker: Worker) -> None:
        task = asyncio.ensure_future(worker.func())
        worker.task = task
        worker.state = "running"
        worker.started_at = time.time()
        task.add_done_callback(functools.partial(self._done, worker))

    def _done(self, worker: Worker, task: asyncio.Task[Any]) -> None:
        if worker.task is not task:
            return  # an earlier incarnation
        worker.task = None
        if task.cancelled():
            worker.state = "stopped"
            return
        exc = task.exception()
        if exc is None:
            if worker.restart != "permanent" or self._stopping:
                log.info("worker %s finished", worker.name)
                worker.state = "stopped"
                return
            worker.last_error = "returned"
            log.warning("worker %s returned; it is permanent, so it is restarted", worker.name)
        else:
            worker.crashes += 1
            worker.last_error = f"{type(exc).__name__}: {exc}"
            log.error("worker %s crashed", worker.name, exc_info=exc)
            if worker.restart == "temporary" or self._stopping:
                worker.state = "failed"
                return
        self._restart(worker)

    def _restart(self, worker: Worker) -> None:
        now = asyncio.get_running_loop().time()
        history = worker._history
        while history and now - history[0] > worker.period:
            history.popleft()
        if len(history) >= worker.intensity:
            worker.state = "failed"
            log.critical("worker %s: %d restarts within %gs, giving up; it stays stopped "
                         "(last error: %s) until restarted by an operator or the node restarts",
                         worker.name, len(history), worker.period, worker.last_error)
            return
        history.append(now)
        worker.restarts += 1
        if self.on_restart is not None:
            self.on_restart()
        log.warning("restarting worker %s (restart %d)", worker.name, worker.restarts)
        self._spawn(worker)

    def restart_child(self, name: str) -> bool:
        """Start a stopped or failed worker again (its restart history is forgotten)."""
        worker = self._workers.get(name)
        if worker is None or worker.state == "running":
            return False
        worker._history.clear()
        self._spawn(worker)
        return True

    def stop_child(self, name: str) -> bool:
        """Cancel a worker (no restart); True if it was running."""
        worker = self._workers.get(name)
        if worker is None or worker.task is None:
            return False
        task = worker.task
        worker.task = None
        worker.state = "stopped"
        task.cancel()
        return True

    def delete_child(self, name: str) -> bool:
        """Stop a worker and forget it."""
        self.stop_child(name)
        return self._workers.pop(name, None) is not None

    async def stop(self, timeout: float = 2.0) -> None:
        """Cancel every worker and wait (bounded) for them to finish."""
        self._stopping = True
        tasks = []
        for worker in self._workers.values():
            if worker.task is not None:
                tasks.append(worker.task)
                worker.task = None
                worker.state = "stopped"
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def worker(self, name: str) -> Worker | None:
        return self._workers.get(name)

    def workers(self) -> list[dict[str, Any]]:
        """One info dict per worker (name, state, restarts, crashes, ...), by name."""
        return [w.info() for _, w in sorted(self._workers.items())]
