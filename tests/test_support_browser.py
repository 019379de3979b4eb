"""``support.browser`` works: headless Chromium running MQTT.js gets its own message back
through Debian's mosquitto's WebSocket listener, over ws:// (MQTT 3.1.1 and 5) and wss://
(the server certificate of ``support.certs`` trusted by its key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import uid
from support.browser import CHROMIUM, browser_round_trip, mqttjs_bundle
from support.certs import make_pki
from support.mosquitto import MOSQUITTO, Mosquitto

pytestmark = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO) or not os.path.exists(CHROMIUM),
    reason="Debian's mosquitto and chromium are not installed")


def test_bundle_is_the_pinned_mqttjs() -> None:
    assert b"MQTT" in mqttjs_bundle()  # cached and verified after the first call


@pytest.mark.parametrize("version", [4, 5])
def test_round_trip_over_ws(version: int) -> None:
    with Mosquitto(["protocol websockets"]) as broker:
        topic = uid("browser/")
        result = browser_round_trip(f"ws://127.0.0.1:{broker.port}/mqtt", topic,
                                    f"hello v{version}", protocol_version=version, timeout=20)
        assert result["error"] is None, (result, broker.log())
        assert (result["topic"], result["payload"]) == (topic, f"hello v{version}")
        assert result["origin"].startswith("http://127.0.0.1:")


def test_round_trip_over_wss(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    lines = ["protocol websockets", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}"]
    with Mosquitto(lines) as broker:
        topic = uid("browser/")
        result = browser_round_trip(f"wss://127.0.0.1:{broker.port}/mqtt", topic, "secure",
                                    timeout=20, trust_certs=(pki.server_cert,),
                                    options={"clientId": uid("chromium-")})
        assert result["error"] is None, (result, broker.log())
        assert (result["topic"], result["payload"]) == (topic, "secure")


def test_unreachable_url_reports_the_error() -> None:
    with Mosquitto(["protocol websockets"]) as broker:
        port = broker.port
    result = browser_round_trip(f"ws://127.0.0.1:{port}/mqtt", "t", "x", timeout=20)
    assert result["error"], result
