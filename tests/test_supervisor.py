"""The supervisor (mqttd.supervisor): a crashed worker is restarted, the intensity limit stops
a crash loop, and stopping is clean. Run on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from mqttd.supervisor import Supervisor

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to completion on a fresh loop of the parametrized kind; anything
    that reaches the loop's exception handler fails the test."""

    def _run(coro: Coroutine[Any, Any, Any]) -> Any:
        escaped: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.get_loop().set_exception_handler(lambda loop, ctx: escaped.append(ctx))
            result = runner.run(asyncio.wait_for(coro, 10))
        assert not escaped, escaped
        return result

    return _run


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_crashed_worker_is_restarted_and_counted(run: Any, caplog: pytest.LogCaptureFixture
                                                 ) -> None:
    restarts = []
    starts = []

    async def worker() -> None:
        starts.append(1)
        await asyncio.sleep(0.01)
        if len(starts) <= 2:
            raise RuntimeError(f"crash {len(starts)}")
        await asyncio.sleep(3600)

    async def main() -> None:
        sup = Supervisor(on_restart=lambda: restarts.append(1))
        sup.start_child("flaky", worker)
        await _until(lambda: len(starts) == 3)
        info = sup.workers()[0]
        assert info["name"] == "flaky" and info["state"] == "running"
        assert info["restarts"] == 2 and info["crashes"] == 2
        assert info["last_error"] == "RuntimeError: crash 2"
        await sup.stop()
        assert sup.workers()[0]["state"] == "stopped"

    with caplog.at_level(logging.INFO, logger="mqttd.supervisor"):
        run(main())
    assert len(restarts) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info for r in errors)
    assert "worker flaky crashed" in errors[0].getMessage()
    assert sum("restarting worker flaky" in r.getMessage() for r in caplog.records) == 2


def test_intensity_limit_gives_up(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    starts = []

    async def always_crashes() -> None:
        starts.append(1)
        raise ValueError("broken")

    async def steady() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        sup = Supervisor(intensity=3, period=60)
        sup.start_child("steady", steady)
        sup.start_child("loop", always_crashes)
        await _until(lambda: sup.worker("loop").state == "failed")  # type: ignore[union-attr]
        await asyncio.sleep(0.05)  # no further restart happens
        info = {w["name"]: w for w in sup.workers()}
        assert info["loop"]["restarts"] == 3 and info["loop"]["crashes"] == 4
        # the other worker is untouched: the limit stops only the crashing worker
        assert info["steady"]["state"] == "running" and info["steady"]["restarts"] == 0
        # an operator may start it again: a fresh intensity window
        assert sup.restart_child("loop")
        await _until(lambda: sup.worker("loop").state == "failed"  # type: ignore[union-attr]
                     and len(starts) == 8)
        await sup.stop()

    with caplog.at_level(logging.WARNING, logger="mqttd.supervisor"):
        run(main())
    assert len(starts) == 8
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 2
    assert "worker loop: 3 restarts within 60s, giving up" in critical[0].getMessage()
    assert "ValueError: broken" in critical[0].getMessage()


def test_restarts_outside_the_period_do_not_count(run: Any) -> None:
    starts = []

    async def crashes_slowly() -> None:
        starts.append(1)
        await asyncio.sleep(0.03)
        if len(starts) < 6:
            raise RuntimeError("again")
        await asyncio.sleep(3600)

    async def main() -> None:
        sup = Supervisor(intensity=2, period=0.05)  # 2 restarts per 50 ms
        sup.start_child("slow", crashes_slowly)
        await _until(lambda: len(starts) == 6)
        assert sup.worker("slow").state == "running"  # type: ignore[union-attr]
        await sup.stop()

    run(main())


@pytest.mark.parametrize("policy,restarted", [("permanent", True), ("transient", False),
                                              ("temporary", False)])
def test_restart_policies_on_normal_return(run: Any, policy: str, restarted: bool) -> None:
    starts = []

    async def returns() -> None:
        starts.append(1)
        if len(starts) > 1:
            await asyncio.sleep(3600)

    async def main() -> None:
        sup = Supervisor()
        sup.start_child("w", returns, restart=policy)
        await asyncio.sleep(0.05)
        worker = sup.worker("w")
        assert worker is not None
        assert worker.state == ("running" if restarted else "stopped")
        await sup.stop()

    run(main())
    assert len(starts) == (2 if restarted else 1)


def test_temporary_worker_is_not_restarted_after_a_crash(run: Any) -> None:
    async def crash() -> None:
        raise RuntimeError("once")

    async def main() -> None:
        sup = Supervisor()
        sup.start_child("t", crash, restart="temporary")
        await asyncio.sleep(0.02)
        assert sup.workers()[0]["state"] == "failed"
        assert sup.workers()[0]["restarts"] == 0

    run(main())


def test_stop_child_and_duplicates(run: Any) -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        sup = Supervisor()
        sup.start_child("a", forever)
        with pytest.raises(ValueError, match="already running"):
            sup.start_child("a", forever)
        with pytest.raises(ValueError, match="restart policy"):
            sup.start_child("b", forever, restart="sometimes")
        assert sup.stop_child("a")
        assert not sup.stop_child("a")
        await asyncio.sleep(0.01)
        assert sup.workers()[0]["state"] == "stopped"
        assert sup.restart_child("a")
        assert sup.workers()[0]["state"] == "running"
        assert sup.delete_child("a")
        assert sup.workers() == []
        await sup.stop()

    run(main())


def test_node_supervises_stats_and_sys(run: Any) -> None:
    """The node's own workers run under its supervisor, and a restart is counted."""
    from mqttd.config import Settings
    from mqttd.node import Node

    async def main() -> None:
        node = Node(Settings(sys_interval=0.05))
        node.start()
        names = [w["name"] for w in node.supervisor.workers()]
        assert names == ["stats", "sys"]
        # a crash inside the $SYS worker: make publishing fail once
        original = node.sys.publish_all
        state = {"n": 0}

        def flaky() -> None:
            state["n"] += 1
            if state["n"] == 2:
                raise RuntimeError("sys bug")
            original()

        node.sys.publish_all = flaky  # type: ignore[method-assign]
        await _until(lambda: state["n"] >= 3)
        sys_info = next(w for w in node.supervisor.workers() if w["name"] == "sys")
        assert sys_info["restarts"] == 1 and sys_info["state"] == "running"
        assert node.metrics.snapshot()["workers.restarted"] == 1
        await node.stop()
        assert {w["state"] for w in node.supervisor.workers()} == {"stopped"}

    run(main())


# --- a crash in one connection's handling ----------------------------------------------------

FAULT_PLUGIN = '''
from mqttd.plugins import Plugin


class Fault(Plugin):
    """Fault injection: publishing to "boom" raises inside the channel's handling (a bug)."""

    def load(self):
        self.hook("client.check_acl", self.check_acl)

    def check_acl(self, client, action, topic, acc):
        # Not a reason code: the broker's int() of the fold's result raises mid-PUBLISH.
        return "injected bug" if topic == "boom" else None
'''


def test_a_crashing_connection_closes_alone(tmp_path: Any) -> None:
    import os

    from support.clients import Client
    from support.process import BrokerProcess
    from support.sysreader import SysMetrics

    (tmp_path / "fault_plugin.py").write_text(FAULT_PLUGIN)
    b = BrokerProcess('plugins = ["fault_plugin:Fault"]\n[node]\nsys_interval = 0.1\n',
                      env={"PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                          os.environ.get("PYTHONPATH", "")])})
    reader = None
    clients: list[Client] = []
    try:
        reader = SysMetrics(b)
        other = Client(b, "bystander", version=5)
        other.connect()
        clients.append(other)
        other.subscribe("ok/#", 1)
        victim = Client(b, "victim", version=5)
        victim.connect()
        clients.append(victim)
        victim.publish("boom", b"x", qos=0, wait=False)
        victim.wait_disconnected()
        # the broker and every other client go on
        assert other.publish("ok/1", b"still here", qos=1) == 0
        assert other.expect_message().payload == b"still here"
        again = Client(b, "victim", version=5)
        again.connect()
        clients.append(again)
        reader.wait_for({"connections.crashed": 1})
        log = b.log()
        assert log.count("connection of victim crashed while handling its input") == 1
        assert "ValueError: invalid literal for int() with base 10: 'injected bug'" in log
    finally:
        for c in clients:
            c.close()
        if reader is not None:
            reader.close()
        assert b.stop() == 0
