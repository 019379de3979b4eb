"""A real ``mqttd start`` process on port-0 loopback listeners, and the checks around it.

Every test that needs a broker process starts it through :class:`BrokerProcess`, so there is
one place that knows how it is started, how its listeners' ports are learnt (from its log:
the port is 0 in the config) and how it is stopped (by its PID). Fixtures that also demand a
clean exit use :func:`checked_broker` or :func:`broker_fixture`.

Only the broker's log is polled, having no event to wait on (the ports of its listeners,
the sign of a timer's work); every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import pytest

from . import WAIT

_LISTENING = re.compile(r"listener (\S+) on ([0-9.]+):(\d+)")

#: ``python -m mqttd``: the real command line, run by this interpreter.
MQTTD = (sys.executable, "-m", "mqttd")


class BrokerProcess:
    """Start ``python -m mqttd start`` with a config and wait until every listener listens.

    ``config`` is TOML text; without a ``[listeners.*]`` table one listener ``default`` on
    127.0.0.1 port 0 is added. ``ports`` maps each listener's name to its port and ``port``
    is the ``default`` one (else the first that started). The log goes to a file; ``log()``
    reads it. The temporary directory (config, log, ``data/``) stays until ``cleanup()``, so
    a test can still read the log of a stopped broker.
    """

    def __init__(self, config: str = "", *, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 15.0,
                 wrapper: list[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqttd-test-"))
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "mqttd.toml"
        text = config
        if "[listeners." not in text:
            text += '\n[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
        self.config_path.write_text(text)
        self.log_path = self.dir / "mqttd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (open as long as the process)
        # ``wrapper`` execs the broker (e.g. ``prlimit --nofile=N:N``): the PID stays its own.
        args = [*(wrapper or []), *MQTTD, "start", "-c", str(self.config_path),
                "--data-dir", str(self.data_dir), "--log-level", "debug", *(extra_args or [])]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.host = "127.0.0.1"
        self.ports: dict[str, int] = {}
        names = set(tomllib.loads(text).get("listeners", {}))
        try:
            self._wait_listening(names, timeout)
        except BaseException:
            # Whatever ends the wait (the broker's exit, the deadline, the test's timeout)
            # ends the process: no one holds this object, and a broker left running would
            # outlive its test (its Popen's ResourceWarning then fails another one).
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            raise
        self.port = self.ports.get("default", next(iter(self.ports.values())))

    def _wait_listening(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, _host, port in _LISTENING.findall(self.log()):
                self.ports[name] = int(port)
            if self.ports and names <= set(self.ports):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mqttd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"listeners {sorted(names - set(self.ports))} did not start:"
                                   f"\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process by its PID (SIGKILL if ``sig`` does not end it); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        """Remove the temporary directory (config, log, data)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()


def assert_clean_log(broker: BrokerProcess) -> None:
    """No traceback and no ERROR line: nothing a test did may have broken the broker."""
    log = broker.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


@contextmanager
def checked_broker(config: str = "", *, extra_args: list[str] | None = None,
                   env: dict[str, str] | None = None) -> Iterator[BrokerProcess]:
    """A broker that must exit 0 on SIGTERM with a clean log (:func:`assert_clean_log`) once
    the block is done; its directory is removed after those checks."""
    b = BrokerProcess(config, extra_args=extra_args, env=env)
    try:
        yield b
    finally:
        try:
            code = b.stop()
            assert_clean_log(b)
            assert code == 0, b.log()
        finally:
            b.cleanup()


def broker_fixture(config: str = "", *, scope: str = "module",
                   extra_args: list[str] | None = None) -> Any:
    """A fixture running :func:`checked_broker` with ``config`` (TOML); assign it to a module
    name, e.g. ``broker = broker_fixture()``."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _broker() -> Iterator[BrokerProcess]:
        with checked_broker(config, extra_args=extra_args) as b:
            yield b

    return _broker


@contextmanager
def stopped(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """The process SIGSTOPped for the block (a broker or peer that does not answer; what is
    sent to it meanwhile waits in the kernel, found in one poll when it goes on), SIGCONT
    after it, even if the block fails."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def wait_log(broker: BrokerProcess, text: str, timeout: float = WAIT, start: int = 0) -> int:
    """Wait until the broker's log holds ``text`` after offset ``start``; returns the offset
    just past it. (A log line is the only outward sign of some timer-driven work.)"""
    deadline = time.monotonic() + timeout
    while True:
        log = broker.log()
        i = log.find(text, start)
        if i >= 0:
            return i + len(text)
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged in time:\n{log[start:]}")
        time.sleep(0.02)


def log_size(broker: BrokerProcess) -> int:
    """The log's length now: a ``start`` for :func:`wait_log` that skips what came before."""
    return len(broker.log())


def run_mqttd(*args: str, env: dict[str, str] | None = None, timeout: float = 40.0
              ) -> subprocess.CompletedProcess[str]:
    """The real ``python -m mqttd <args>`` run to its end, output captured (never raises on
    the exit code: the tests check it)."""
    return subprocess.run([*MQTTD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
