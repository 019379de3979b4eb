"""What authorization costs ``Channel.deliver``: one QoS 0 delivery on the shared-bytes fast
path, with and without an authorization chain.

A real Broker and a real Channel (no sockets, no event loop: the core runs on a stub
timer), connected and subscribed to ``#``. Cases:

* ``no authorizer``: no ``[authz]`` source, the channel's ``acl_deliver`` is None;
* ``superuser``: a chain exists but the client is a superuser (``acl_deliver`` None too);
* ``cached``: an ACL file of ``--rules`` rules, the same topic again (a dict lookup in the
  client's decision cache);
* ``uncached``: a new topic each time (cache_size 0: every delivery walks the rules).

    python bench/bench_acl_deliver.py            # 200,000 deliveries, best of 7
    python bench/bench_acl_deliver.py --quick
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mqttd.access.acl_file import AclFile  # noqa: E402
from mqttd.access.authn import AuthChain  # noqa: E402
from mqttd.access.authz import AuthzChain  # noqa: E402
from mqttd.config import AuthSettings, AuthzSettings, Settings  # noqa: E402
from mqttd.core.broker import Broker  # noqa: E402
from mqttd.core.channel import Channel  # noqa: E402
from mqttd.core.message import Message  # noqa: E402
from mqttd.core.services import AuthResult, ClientInfo  # noqa: E402
from mqttd.hooks import Hooks  # noqa: E402
from mqttd.metrics import Metrics  # noqa: E402
from mqttd.mqtt.packets import Connect, SubOpts, Subscribe  # noqa: E402


class _Handle:
    def cancel(self) -> None:
        pass


class _Timers:
    """Timers that never fire: the benchmark runs no loop."""

    def call_later(self, delay: float, callback: Any, *args: Any) -> _Handle:
        return _Handle()


class _Root:
    """Grants superuser to the user name ``root``."""

    kind = "sync"
    description = "bench"

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        return AuthResult(0, superuser=client.username == "root")

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass


def acl_text(rules: int) -> str:
    """``rules`` rules for user bench, the matching one last."""
    lines = ["user bench"]
    lines += [f"topic read other{i}/+/x" for i in range(rules - 2)]
    lines += ["topic deny secret/#", "topic read sensors/#"]
    return "\n".join(lines) + "\n"


def channel(broker: Broker, username: str) -> Channel:
    ch = Channel(broker, broker_zone(broker), "127.0.0.1:1")
    ch.handle_in(Connect("MQTT", 5, True, 0, "c-" + username, None, username, None, {}))
    ch.handle_in(Subscribe(1, [("#", SubOpts(0))]))
    ch.out.clear()
    return ch


def broker_zone(broker: Broker) -> Any:
    return broker._zones["default"]


def make_broker(acl: Path | None, cache_size: int = 32) -> Broker:
    broker = Broker(Settings(), Metrics(), Hooks(), _Timers())
    if acl is not None:
        settings = AuthzSettings(cache_size=cache_size, cache_ttl=3600)
        broker.authorizer = AuthzChain(settings, [AclFile(str(acl))])
        broker.authenticator = AuthChain(AuthSettings(), [_Root()])
    return broker


def run(ch: Channel, topics: list[str], n: int, repeat: int) -> float:
    """Best ns per delivery over ``repeat`` runs of ``n``."""
    deliveries = [(Message(t, b"payload", 0, False), 0, False, (), None) for t in topics]
    # one encoded-bytes cache per message, as the dispatcher shares one per publish among
    # its subscribers: after the first round every delivery reuses the bytes
    encoded: list[dict[tuple[bool, bool], bytes]] = [{} for _ in topics]
    k = len(deliveries)
    out = ch.out
    deliver = ch.deliver
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        t0 = time.perf_counter_ns()
        for i in range(n):
            deliver(deliveries[i % k], encoded[i % k])
            if len(out) > 1000:
                out.clear()
        t1 = time.perf_counter_ns()
        gc.enable()
        out.clear()
        best = min(best, (t1 - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rules", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n, a.repeat = 20_000, 3
    with tempfile.TemporaryDirectory() as d:
        acl = Path(d) / "acl"
        acl.write_text(acl_text(a.rules))
        plain = channel(make_broker(None), "bench")
        root = channel(make_broker(acl), "root")
        cached = channel(make_broker(acl), "bench")
        uncached = channel(make_broker(acl, cache_size=0), "bench")
        assert plain.acl_deliver is None and root.acl_deliver is None
        assert cached.acl_deliver is not None
        one = ["sensors/a/temp"]
        many = [f"sensors/{i}/temp" for i in range(1000)]
        results = [
            ("no authorizer", run(plain, one, a.n, a.repeat)),
            ("superuser (chain configured)", run(root, one, a.n, a.repeat)),
            ("ACL, cached decision", run(cached, one, a.n, a.repeat)),
            (f"ACL, uncached ({a.rules} rules)", run(uncached, many, a.n, a.repeat)),
        ]
    base = results[0][1]
    print(f"Channel.deliver, QoS 0 shared-bytes path, best of {a.repeat} x {a.n:,} "
          f"(Python {sys.version.split()[0]})")
    for name, ns in results:
        print(f"  {name:<32} {ns:7.1f} ns/delivery  ({ns - base:+6.1f} ns)")


if __name__ == "__main__":
    main()
