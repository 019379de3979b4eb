"""``mqttd ctl`` run in this process against a :class:`~support.process.BrokerProcess`
(``mqttd.cli.ctl.main`` with stdout and stderr captured: the entry point's own code)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

from mqttd.cli.ctl import main as ctl_main

from .process import BrokerProcess

__all__ = ["Result", "ctl", "ctl_json", "ok"]

#: The answer a test waits for at most unless it passes its own ``--timeout`` (ctl's own
#: default is 60 s): a daemon that does not answer fails the test with ctl's message, well
#: inside pytest's time limit, instead of holding a polling ``until`` far past its own.
TEST_TIMEOUT = "20"


class Result(NamedTuple):
    code: int
    out: str
    err: str


def ctl(where: BrokerProcess | str | Path, *args: str) -> Result:
    """``mqttd ctl --data-dir <the broker's, or the directory given> <args>``: exit code,
    stdout, stderr."""
    data_dir = where.data_dir if isinstance(where, BrokerProcess) else where
    if "--timeout" not in args:
        args = ("--timeout", TEST_TIMEOUT, *args)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl_main(["--data-dir", str(data_dir), *args])
    return Result(code, out.getvalue(), err.getvalue())


def ok(where: BrokerProcess | str | Path, *args: str) -> str:
    """stdout of a command that must succeed."""
    r = ctl(where, *args)
    assert r.code == 0, r
    return r.out


def ctl_json(where: BrokerProcess | str | Path, *args: str) -> Any:
    """The parsed ``--json`` answer of a command that must succeed."""
    return json.loads(ok(where, "--json", *args))
