"""The broker process: graceful shutdown on SIGTERM (MQTT 5 clients are told 0x8B, the
process exits 0) and a clear one-line failure when the port is taken."""

from __future__ import annotations

import signal

import pytest
from support import WAIT, uid
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, run_mqttd

from mqttd.mqtt.packets import Disconnect

pytest_plugins = ["support.fixtures"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_disconnects_clients_and_exits_zero(raws, loop):
    b = BrokerProcess(extra_args=["--no-uvloop"] if loop == "asyncio" else [])
    try:
        v5 = [Client(b, uid(), version=5) for _ in range(2)]
        v4 = Client(b, uid(), version=4)
        for c in (*v5, v4):
            c.connect()
        raw5 = raws(b, 5)
        raw5.connect(uid())
        raw4 = raws(b, 4)
        raw4.connect(uid())
        b.proc.send_signal(signal.SIGTERM)
        for c in v5:
            rc, _ = c.wait_disconnected()
            assert rc == 0x8B
        v4.wait_disconnected()
        packets = raw5.expect_closed()
        assert len(packets) == 1 and isinstance(packets[0], Disconnect)
        assert packets[0].reason_code == 0x8B
        assert raw4.expect_closed() == []
        for c in (*v5, v4):
            c.close()
        raw5.close()  # the broker waits (a little) for its clients to close their side
        raw4.close()
        assert b.proc.wait(WAIT) == 0, b.log()
    finally:
        b.stop()
    assert_clean_log(b)
    assert "mqttd stopped" in b.log()


def test_port_in_use_is_one_clear_line_and_exit_1():
    b = BrokerProcess()
    try:
        done = run_mqttd("start", "--bind", "127.0.0.1", "--port", str(b.port),
                         "--data-dir", str(b.dir / "data2"), timeout=WAIT * 2)
    finally:
        b.stop()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    failures = [line for line in done.stderr.splitlines() if "cannot listen" in line]
    assert len(failures) == 1, done.stderr
    assert f"127.0.0.1:{b.port}" in failures[0]
    assert "in use" in failures[0].lower()
