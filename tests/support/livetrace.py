"""A running ``mqttd ctl trace client|topic ...`` (the real command line, a process of its
own), read line by line as it prints."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time

from . import WAIT
from .process import MQTTD, BrokerProcess

__all__ = ["LiveTrace"]


def _ctrl_c_default() -> None:
    """SIGINT as a terminal's Ctrl-C would find it: a shell starting the test run in the
    background (``pytest &``) leaves SIGINT ignored, the child inherits that, and
    :meth:`LiveTrace.interrupt` would then not reach the trace at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LiveTrace:
    """``mqttd ctl trace <kind> <args>`` against ``broker``, handed over once it printed its
    banner (the trace is in place). ``seen``: every stdout line so far; ``errors``: what it
    said on stderr after the banner."""

    def __init__(self, broker: BrokerProcess, kind: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*MQTTD, "ctl", "--data-dir", str(broker.data_dir), "trace", kind, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_ctrl_c_default)  # noqa: PLW1509 - no threads touch it
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._read, daemon=True)]
        self.threads[0].start()
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()  # printed once the trace is in place
        self.threads.append(threading.Thread(target=self._read_err, daemon=True))
        self.threads[1].start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, text: str) -> list[str]:
        """The lines from here up to and including the first one containing ``text``."""
        got: list[str] = []
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not traced:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"trace ended before {text!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            got.append(line)
            if text in line:
                return got

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, then :meth:`finish`."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[int, str]:
        """Once it exits (killed if it does not within WAIT): its exit code and what it said
        on stderr after the banner."""
        try:
            code = self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        for thread in self.threads:  # both pipes are at their end once it exited
            thread.join(WAIT)
        self.proc.stderr.close()
        self.proc.stdout.close()
        return code, "".join(self.errors)
