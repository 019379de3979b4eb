"""The log's formatters write what the standard library's would: ``TextFormatter`` (the date
and time of a second formatted once, a plain record in one %-operation) gives the same
lines as ``logging.Formatter(TEXT_FORMAT)``, and ``JsonFormatter``'s cached stamp says the
record's own second, across second boundaries and with exceptions and stacks."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from mqttd.logsetup import TEXT_FORMAT, JsonFormatter, TextFormatter


def _record(created: float, msg: str = "client %s connected from %s (keepalive %d)",
            args: tuple[object, ...] = ("c-1", "127.0.0.1:5000", 60), level: int = logging.INFO,
            exc: bool = False, stack: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord("mqttd.clients", level, __file__, 1, msg, args, exc_info,
                          sinfo="Stack (most recent call last):\n  here" if stack else None)
    r.created = created
    r.msecs = int((created - int(created)) * 1000) + 0.0
    return r


def _times() -> list[float]:
    base = float(int(time.time()))
    # Within one second, across boundaries, back to an earlier second, a day and a year on.
    return [base + 0.001, base + 0.5, base + 0.999, base + 1.0, base + 1.25, base + 0.75,
            base + 86_400.5, base + 366 * 86_400.0, base + 2.0009]


@pytest.mark.parametrize("tag", ["", "mqttd-w1", "odd%(name)s%"])
def test_text_lines_are_the_standard_formatters_lines(tag: str) -> None:
    ours = TextFormatter(tag)
    # A worker's lines name its node before the logger's (logsetup.set_node_tag).
    fmt = TEXT_FORMAT.replace(" %(name)s", " [" + tag.replace("%", "%%") + "] %(name)s", 1) \
        if tag else TEXT_FORMAT
    reference = logging.Formatter(fmt)
    cases = [{}, {"level": logging.WARNING}, {"args": ()}, {"msg": "100%% sure %s", "args": ("x",)},
             {"exc": True}, {"stack": True}, {"exc": True, "stack": True}]
    for created in _times():
        for case in cases:
            expected = reference.format(_record(created, **case))  # type: ignore[arg-type]
            got = ours.format(_record(created, **case))  # type: ignore[arg-type]
            assert got == expected, (created, case)


def test_json_time_is_the_records_second() -> None:
    fmt = JsonFormatter()
    for i, created in enumerate(_times()):
        line = json.loads(fmt.format(_record(created, exc=i % 2 == 1)))
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) \
            + ".%03dZ" % int((created - int(created)) * 1000)
        assert line["time"] == expected
        assert line["message"] == "client c-1 connected from 127.0.0.1:5000 (keepalive 60)"
