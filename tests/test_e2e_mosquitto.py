"""Interoperability with Debian's mosquitto clients (libmosquitto 2.0): publish/subscribe at
each QoS over 3.1.1 and 5.0, retained messages, persistent sessions, MQTT 5 properties,
and mixing them with paho clients."""

from __future__ import annotations

import pytest
from support import uid
from support.clients import MosquittoSub, PacketTypes, mosquitto_pub, prop, props
from support.process import broker_fixture

pytest_plugins = ["support.fixtures"]

broker = broker_fixture()

VERSIONS = ["mqttv311", "mqttv5"]


@pytest.fixture
def subs():
    made = []

    def make(broker, *args):
        s = MosquittoSub(broker, *args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub(broker, subs, version, qos):
    topic = uid("mq/")
    s = subs(broker, "-V", version, "-t", topic, "-q", str(qos), "-C", "2", "-W", "10")
    s.wait_subscribed()
    mosquitto_pub(broker, "-V", version, "-t", topic, "-m", "first", "-q", str(qos))
    mosquitto_pub(broker, "-V", version, "-t", topic, "-m", "second", "-q", str(qos))
    assert s.message() == (topic, qos, 0, "first")
    assert s.message() == (topic, qos, 0, "second")
    assert s.wait() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_downgraded_to_subscription(broker, subs, version):
    topic = uid("mq/")
    s = subs(broker, "-V", version, "-t", topic, "-q", "1", "-C", "1", "-W", "10")
    s.wait_subscribed()
    mosquitto_pub(broker, "-V", version, "-t", topic, "-m", "x", "-q", "2")
    assert s.message() == (topic, 1, 0, "x")


@pytest.mark.parametrize("version", VERSIONS)
def test_retained(broker, subs, version):
    topic = uid("mqr/")
    mosquitto_pub(broker, "-V", version, "-t", topic, "-m", "kept", "-q", "1", "-r")
    s = subs(broker, "-V", version, "-t", topic, "-q", "1", "-C", "1", "-W", "10")
    assert s.message() == (topic, 1, 1, "kept")
    assert s.wait() == 0
    mosquitto_pub(broker, "-V", version, "-t", topic, "-r", "-n")  # -n: empty, deletes
    s = subs(broker, "-V", version, "-t", topic, "-t", topic + "/sentinel", "-C", "1",
             "-W", "10")
    s.wait_subscribed()
    mosquitto_pub(broker, "-V", version, "-t", topic + "/sentinel", "-m", "s")
    assert s.message() == (topic + "/sentinel", 0, 0, "s")  # nothing retained came first


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_queues_qos2(broker, subs, version):
    topic, cid = uid("mqp/"), uid("mosq-")
    session = ["-c", "-i", cid] + (["-x", "60"] if version == "mqttv5" else [])
    s = subs(broker, "-V", version, *session, "-t", topic, "-q", "2", "-E")
    s.wait_subscribed()
    assert s.wait() == 0  # -E: exits once subscribed, leaving the session behind
    for i in range(3):
        mosquitto_pub(broker, "-V", version, "-t", topic, "-m", f"offline-{i}", "-q", "2")
    s = subs(broker, "-V", version, *session, "-t", topic, "-q", "2", "-C", "3", "-W", "10")
    assert [s.message() for _ in range(3)] == [(topic, 2, 0, f"offline-{i}") for i in range(3)]
    assert s.wait() == 0


def test_v5_properties_between_mosquitto_and_paho(broker, subs, clients):
    topic = uid("mq5/")
    c = clients(version=5)
    c.subscribe(topic, 1)
    mosquitto_pub(broker, "-V", "mqttv5", "-t", topic, "-m", "props", "-q", "1",
                  "-D", "publish", "user-property", "k", "v",
                  "-D", "publish", "content-type", "text/plain",
                  "-D", "publish", "response-topic", "r/t",
                  "-D", "publish", "message-expiry-interval", "60")
    m = c.expect_message()
    assert m.payload == b"props"
    assert prop(m.properties, "UserProperty") == [("k", "v")]
    assert prop(m.properties, "ContentType") == "text/plain"
    assert prop(m.properties, "ResponseTopic") == "r/t"
    assert 59 <= prop(m.properties, "MessageExpiryInterval") <= 60
    s = subs(broker, "-V", "mqttv5", "-t", topic, "-C", "1", "-W", "10",
             "-F", "MSG|%t|%q|%r|%P")
    s.wait_subscribed()
    c.publish(topic, b"ignored", 1,
              properties=props(PacketTypes.PUBLISH, UserProperty=[("from", "paho")]))
    assert s.message() == (topic, 0, 0, "from:paho")  # subscribed at QoS 0


def test_mosquitto_and_paho_across_versions(broker, subs, clients):
    topic = uid("mqx/")
    paho311 = clients(version=4)
    paho311.subscribe(topic, 2)
    s = subs(broker, "-V", "mqttv5", "-t", topic, "-q", "2", "-C", "1", "-W", "10")
    s.wait_subscribed()
    mosquitto_pub(broker, "-V", "mqttv311", "-t", topic, "-m", "from 3.1.1", "-q", "2")
    assert s.message() == (topic, 2, 0, "from 3.1.1")
    m = paho311.expect_message()
    assert (m.payload, m.qos) == (b"from 3.1.1", 2)
