"""``/metrics`` against a real daemon under MQTT load, read with prometheus-client's own
parser: every metric and stat there, with HELP and TYPE, counters as ``_total``, ``node``
and ``listener`` labels, counters that only grow, values equal to ``mqttd ctl``'s once the
load stops."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import uid
from support.clients import Clients
from support.httpapi import HttpApi, ctl_json
from support.process import BrokerProcess, broker_fixture, checked_broker

from mqttd.http.prometheus import metric_name

pytest_plugins = ["support.fixtures"]

CONFIG = """
[http]
enabled = true
port = 0

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.other]
bind = "127.0.0.1"
port = 0
"""


broker = broker_fixture(CONFIG)


@pytest.fixture(scope="module")
def api(broker: BrokerProcess) -> HttpApi:
    return HttpApi(broker, ctl_json(broker, "apikey", "add", "prometheus")["key"])


def scrape(api: HttpApi) -> dict[str, Any]:
    """One scrape, parsed: family name -> family."""
    r = api.call("GET", "/metrics")
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(r.text):
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = family
    return families


def value(family: Any, **labels: str) -> float:
    for sample in family.samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"{family.name}: no sample with {labels}")


def test_scrapes_under_load(api: HttpApi, broker: BrokerProcess, clients: Clients) -> None:
    sub = clients(uid("msub-"))
    sub.subscribe("load/#", 0)
    pub = clients(uid("mpub-"))
    clients(uid("mother-"), port=broker.ports["other"])
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        while not stop.is_set() and sent[0] < 200_000:
            pub.c.publish(f"load/{sent[0] % 10}", b"x" * 32, 0)
            sent[0] += 1

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    node = "mqttd@127.0.0.1"
    scrapes = []
    try:
        for _ in range(8):
            scrapes.append(scrape(api))
            sub.expect_message()  # MQTT keeps flowing between scrapes
    finally:
        stop.set()
        thread.join(10)
    metrics = ctl_json(broker, "broker", "metrics")["metrics"]
    stats = ctl_json(broker, "broker", "stats")["stats"]
    for families in scrapes:
        for name in metrics:
            family = families[metric_name(name)]
            assert family.type == "counter", name
            assert family.documentation, name
            assert [s.name for s in family.samples] == [metric_name(name) + "_total"]
            assert family.samples[0].labels == {"node": node}
        for name in stats:
            family = families[metric_name(name)]
            assert family.type == "gauge" and family.documentation, name
            assert family.samples[0].labels == {"node": node}
        listeners = families["mqttd_listener_connections"]
        by_listener = {s.labels["listener"]: s.value for s in listeners.samples}
        assert set(by_listener) == {"default", "other"}
        assert by_listener["other"] == 1 and by_listener["default"] >= 2
        assert all(s.labels["node"] == node for s in listeners.samples)
        assert value(families["mqttd_listener_running"], listener="other") == 1
        assert value(families["mqttd_build_info"], node=node) == 1
    # counters only grow, and the load shows between the first scrape and the last
    first, last = scrapes[0], scrapes[-1]
    for name in metrics:
        fam = metric_name(name)
        assert value(last[fam]) >= value(first[fam]), name
    received = metric_name("messages.received")
    assert value(last[received]) > value(first[received])
    # once the load has stopped and been delivered, a scrape equals what ctl says
    pub.publish("load/end", b"end", 1)
    for _ in range(3):
        families = scrape(api)
        metrics = ctl_json(broker, "broker", "metrics")["metrics"]
        if all(value(families[metric_name(n)]) == v for n, v in metrics.items()):
            break
    assert {n: value(families[metric_name(n)]) for n in metrics} == {
        n: float(v) for n, v in metrics.items()}


def test_metrics_need_credentials(broker: BrokerProcess) -> None:
    r = HttpApi(broker).call("GET", "/metrics")
    assert r.status == 401 and r.json["code"] == "unauthorized"


def test_metrics_anonymous_when_configured() -> None:
    config = "[http]\nenabled = true\nport = 0\nmetrics_allow_anonymous = true\n"
    with checked_broker(config) as b:
        families = scrape(HttpApi(b))
        assert "mqttd_messages_received" in families
        assert HttpApi(b).call("GET", "/api/v1/status").status == 401
