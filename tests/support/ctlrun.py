"""``mqttd ctl`` run in this process against a :class:`~support.process.BrokerProcess`
(``mqttd.cli.ctl.main`` with stdout and stderr captured: the entry point's own code)."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, NamedTuple

from mqttd.cli.ctl import main as ctl_main

from .process import BrokerProcess

__all__ = ["Result", "ctl", "ctl_json", "ok"]


class Result(NamedTuple):
    code: int
    out: str
    err: str


def ctl(broker: BrokerProcess, *args: str) -> Result:
    """``mqttd ctl --data-dir <the broker's> <args>``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl_main(["--data-dir", str(broker.data_dir), *args])
    return Result(code, out.getvalue(), err.getvalue())


def ok(broker: BrokerProcess, *args: str) -> str:
    """stdout of a command that must succeed."""
    r = ctl(broker, *args)
    assert r.code == 0, r
    return r.out


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    """The parsed ``--json`` answer of a command that must succeed."""
    return json.loads(ok(broker, "--json", *args))
