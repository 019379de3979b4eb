"""A real ``mqttd start`` process on a port-0 loopback listener, for end-to-end tests."""

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
from pathlib import Path

_LISTENING = re.compile(r"listener (\S+) on ([0-9.]+):(\d+)")


class BrokerProcess:
    """Start ``python -m mqttd start`` with a config and wait until it listens.

    ``config`` is TOML text appended to a minimal file (listener on
    127.0.0.1 port 0). The log goes to a file; ``log()`` reads it.
    """

    def __init__(self, config: str = "", *, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 15.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqttd-test-"))
        self.config_path = self.dir / "mqttd.toml"
        text = config
        if "[listeners." not in text:
            text += '\n[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
        self.config_path.write_text(text)
        self.log_path = self.dir / "mqttd.log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, "-m", "mqttd", "start", "-c", str(self.config_path),
                "--data-dir", str(self.dir / "data"), "--log-level", "debug"]
        args += extra_args or []
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.ports: dict[str, int] = {}
        expected = len(tomllib.loads(text).get("listeners", {})) or 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, _host, port in _LISTENING.findall(self.log()):
                self.ports[name] = int(port)
            if len(self.ports) >= expected:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"mqttd exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError(f"mqttd did not start listening:\n{self.log()}")
        self.host = "127.0.0.1"
        self.port = next(iter(self.ports.values()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process by its PID; returns its exit code."""
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

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()
