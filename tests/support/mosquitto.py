"""Debian's mosquitto broker as a reference peer for the tests of the test-support helpers
(certificates, the browser, the WebSocket client): what a helper does against mosquitto is
known to be right before it is pointed at mqttd.

mosquitto needs an explicit port, so a free one is probed (bind port 0, close) and the start
is retried on another if something took it meanwhile. It is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from . import WAIT

__all__ = ["MOSQUITTO", "Mosquitto", "free_port"]

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller must cope with a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``mosquitto -c`` with a listener on 127.0.0.1: ``listener_lines`` are the settings
    that follow ``listener PORT 127.0.0.1`` (e.g. ``["protocol websockets"]`` or the TLS
    ones). ``port`` is where it listens; ``tcp_port`` is a plain MQTT listener beside it,
    always opened because mosquitto 2.0.11 exits ("Unable to start any listening sockets")
    when its only listener is a websockets one. ``log()`` is its log so far."""

    def __init__(self, listener_lines: list[str] | tuple[str, ...] = (), *,
                 attempts: int = 5) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-test-"))
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start(list(listener_lines), attempts)
        except BaseException:
            self.stop()  # the error carries the log; nothing is left behind
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _start(self, listener_lines: list[str], attempts: int) -> None:
        for _ in range(attempts):
            self.port, self.tcp_port = free_port(), free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text("\n".join([
                "per_listener_settings false", "allow_anonymous true", "persistence false",
                "log_type all", "log_dest stderr",  # unbuffered
                # Started as root it would read its files as the "mosquitto" user.
                *(["user root"] if os.geteuid() == 0 else []),
                f"listener {self.tcp_port} 127.0.0.1",
                f"listener {self.port} 127.0.0.1", *listener_lines, ""]))
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                             stderr=subprocess.STDOUT)
            deadline = time.monotonic() + WAIT * 2
            while b" running" not in self.log_path.read_bytes() and self.proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start:\n" + self.log())
                time.sleep(0.02)
            if self.proc.poll() is None:
                return
            # A taken port: "Address already in use" (plain) or, for websockets, only this.
            if not any(m in self.log_path.read_bytes() for m in (
                    b"Address already in use", b"Unable to start any listening sockets")):
                raise RuntimeError("mosquitto exited:\n" + self.log())
        raise RuntimeError("mosquitto found no free port:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
