"""Real MQTT clients for the end-to-end tests: a paho-mqtt 2.x wrapper with bounded waits,
and Debian's ``mosquitto_pub``/``mosquitto_sub``.

Every wait ends on an event (a paho callback, a line from a subprocess) and is bounded.
Negative checks ("nothing else arrived") use a sentinel: the broker keeps a subscriber's
messages in order, so once a later sentinel has arrived, anything that should have come
before it would have.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import WAIT, uid
from .process import BrokerProcess

__all__ = ["Client", "Clients", "MosquittoSub", "PacketTypes", "mosquitto_pub", "prop", "props",
           "sub_opts"]


# --- paho-mqtt -----------------------------------------------------------------------------

_PROTOCOLS = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}


def props(packet_type: int, **values: Any) -> Properties:
    """paho Properties, e.g. ``props(PacketTypes.PUBLISH, MessageExpiryInterval=5)``."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def sub_opts(qos: int = 0, *, no_local: bool = False, rap: bool = False, rh: int = 0
             ) -> SubscribeOptions:
    return SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap,
                            retainHandling=rh)


def prop(properties: Any, name: str, default: Any = None) -> Any:
    """One property of a paho Properties object (or ``default`` when absent)."""
    if properties is None:
        return default
    return getattr(properties, name, default)


class Client:
    """A paho-mqtt 2.x client running its network loop on its own thread.

    Results of the callbacks are kept by packet id (SUBACK, UNSUBACK, acks of our
    publishes) or queued (messages), and every ``expect``/``wait`` is bounded.
    Automatic reconnection is off: a kicked client must stay kicked.
    """

    def __init__(self, broker: BrokerProcess, client_id: str = "", *, version: int = 4,
                 clean: bool = True, keepalive: int = 60, will: dict[str, Any] | None = None,
                 username: str | None = None, password: str | None = None,
                 properties: Properties | None = None, port: int | None = None,
                 transport: str = "tcp", ws_path: str = "/mqtt",
                 tls: dict[str, Any] | None = None) -> None:
        """``transport``: "tcp" or "websockets" (paho's own WebSocket client, at
        ``ws_path``); ``tls``: keyword arguments of paho's ``tls_set`` (TLS when given)."""
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": _PROTOCOLS[version],
                                  "reconnect_on_failure": False, "transport": transport}
        if version != 5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if tls is not None:
            self.c.tls_set(**tls)
        self.version = version
        self.broker = broker
        self.port = port or broker.port
        self.clean = clean
        self.keepalive = keepalive
        self.connect_properties = properties
        if will is not None:
            self.c.will_set(**will)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self._subacks: dict[int, tuple[list[Any], Any]] = {}
        self._unsubacks: dict[int, tuple[list[Any], Any]] = {}
        self._pubacks: dict[int, tuple[Any, Any]] = {}
        self.connack: tuple[Any, Any, Any] | None = None
        self.disconnected: tuple[Any, Any] | None = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message

    # callbacks (network thread)
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, properties: Any) -> None:
        with self._cond:
            self.connack = (flags, rc, properties)
            self._cond.notify_all()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, properties: Any) -> None:
        with self._cond:
            self.disconnected = (rc, properties)
            self._cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = (rcs, properties)
            self._cond.notify_all()

    def _on_unsubscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], properties: Any) -> None:
        with self._cond:
            self._unsubacks[mid] = (rcs, properties)
            self._cond.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, properties: Any) -> None:
        with self._cond:
            self._pubacks[mid] = (rc, properties)
            self._cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    # actions
    def connect(self, *, clean_start: bool | None = None, expect_ok: bool = True
                ) -> tuple[Any, Any, Any]:
        """Connect and wait for CONNACK; returns (flags, reason code, properties)."""
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == 5:
            kwargs["clean_start"] = self.clean if clean_start is None else clean_start
            kwargs["properties"] = self.connect_properties
        self.c.connect(self.broker.host, self.port, **kwargs)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnected is not None,
                   "CONNACK")
        assert self.connack is not None, f"closed before CONNACK: {self.disconnected}"
        if expect_ok:
            assert self.connack[1] == 0, self.connack
        return self.connack

    @property
    def session_present(self) -> bool:
        assert self.connack is not None
        return bool(self.connack[0].session_present)

    def subscribe(self, topic: str | list[tuple[str, Any]], qos: int = 0, *,
                  options: SubscribeOptions | None = None, properties: Properties | None = None
                  ) -> list[int]:
        """Subscribe and wait for SUBACK; returns the reason codes as ints."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        elif options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self._subacks, "SUBACK")
        with self._cond:
            rcs, _ = self._subacks.pop(mid)
        return [int(r.value) if hasattr(r, "value") else int(r) for r in rcs]

    def unsubscribe(self, topic: str | list[str], properties: Properties | None = None
                    ) -> list[int]:
        rc, mid = self.c.unsubscribe(topic, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self._unsubacks, "UNSUBACK")
        with self._cond:
            rcs, _ = self._unsubacks.pop(mid)
        return [int(r.value) if hasattr(r, "value") else int(r) for r in rcs]

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                properties: Properties | None = None, *, wait: bool = True) -> int:
        """Publish; for QoS 1/2 wait for the flow to complete and return the ack's reason
        code (0 on 3.1.1); for QoS 0 wait until written."""
        info = self.c.publish(topic, payload, qos, retain, properties)
        if not wait:
            # Fire and forget, typically a packet the broker refuses by closing: its
            # DISCONNECT can reach paho's network thread, which then marks this very
            # message "not connected", before this thread reads the result (seen both
            # for a bad topic alias and for deny_action = "disconnect").
            assert info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN), info.rc
            return 0
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        mid = info.mid
        self._wait(lambda: mid in self._pubacks, f"ack of publish {mid}")
        with self._cond:
            rc, _ = self._pubacks.pop(mid)
        return int(rc.value) if hasattr(rc, "value") else int(rc)

    def expect_message(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message arrived") from None

    def expect_messages(self, n: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        return [self.expect_message(timeout) for _ in range(n)]

    def assert_no_message(self) -> None:
        """Nothing is queued right now (use after a sentinel has arrived)."""
        assert self.messages.empty(), self.messages.get_nowait().topic

    def wait_disconnected(self, timeout: float = WAIT) -> tuple[Any, Any]:
        """Wait until the broker closed the connection; returns (reason code, properties)."""
        self._wait(lambda: self.disconnected is not None, "disconnect", timeout)
        assert self.disconnected is not None
        self.c.loop_stop()
        return self.disconnected

    def disconnect(self, reason_code: int | None = None,
                   properties: Properties | None = None) -> None:
        """A normal DISCONNECT (optionally with a 5.0 reason code), then stop the loop."""
        if reason_code is not None:
            from paho.mqtt.reasoncodes import ReasonCode
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            self.c.disconnect(reasoncode=rc, properties=properties)
        else:
            self.c.disconnect(properties=properties)
        self._wait(lambda: self.disconnected is not None, "disconnect")
        self.c.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (an abnormal disconnect)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._wait(lambda: self.disconnected is not None, "connection loss")
        self.c.loop_stop()

    def close(self) -> None:
        """Best-effort cleanup for fixtures: stop the thread whatever the state."""
        if self.disconnected is None and self.connack is not None:
            self.c.disconnect()
            with self._cond:
                self._cond.wait_for(lambda: self.disconnected is not None, 2.0)
        self.c.loop_stop()
        # paho closes its wake-up socket pair only in __del__; the client sits in a reference
        # cycle with our callbacks, so the garbage collector may finalize the sockets first
        # and warn (an error under filterwarnings=error). Close them now.
        self.c._reset_sockets()


class Clients:
    """Makes paho clients and stops every one of them at the end of a test."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.made: list[Client] = []

    def __call__(self, client_id: str | None = None, *, connect: bool = True,
                 broker: BrokerProcess | None = None, **kwargs: Any) -> Client:
        c = Client(broker or self.broker, uid("c-") if client_id is None else client_id,
                   **kwargs)
        self.made.append(c)
        if connect:
            c.connect()
        return c

    def close_all(self) -> None:
        for c in self.made:
            c.close()


# --- Debian's mosquitto clients ----------------------------------------------------------

def mosquitto_pub(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``mosquitto_pub`` against the broker; it must succeed."""
    done = subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *args],
                          capture_output=True, text=True, timeout=WAIT * 2, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


class MosquittoSub:
    """A running ``mosquitto_sub -d``; ``wait_subscribed()`` returns once its SUBACK came,
    ``message()`` returns the next "topic|qos|retain|payload" line it printed."""

    FORMAT = "MSG|%t|%q|%r|%p"

    def __init__(self, broker: BrokerProcess, *args: str) -> None:
        fmt = self.FORMAT
        if "-F" in args:  # a test's own format (still starting "MSG|") replaces ours
            i = args.index("-F")
            fmt, args = args[i + 1], args[:i] + args[i + 2:]
        # stdbuf: mosquitto_sub writes through stdio, block-buffered into a pipe.
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-d",
             "-F", fmt, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next(self, timeout: float = WAIT) -> str | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("mosquitto_sub printed nothing in time:\n"
                                 + "\n".join(self.output)) from None
        if line is not None:
            self.output.append(line)
        return line

    def wait_subscribed(self) -> None:
        while True:
            line = self._next()
            if line is None:
                raise AssertionError("mosquitto_sub ended:\n" + "\n".join(self.output))
            if line.startswith("Subscribed"):
                return

    def message(self) -> tuple[str, int, int, str]:
        """The next message it printed: (topic, qos, retain, payload)."""
        while True:
            line = self._next()
            if line is None:
                raise AssertionError("mosquitto_sub ended:\n" + "\n".join(self.output))
            if line.startswith("MSG|"):
                _, topic, qos, retain, payload = line.split("|", 4)
                return topic, int(qos), int(retain), payload

    def wait(self) -> int:
        """Wait for it to exit by itself (-C/-W); returns the exit code."""
        return self.proc.wait(WAIT * 2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self._reader.join(WAIT)  # it ends at EOF; then the pipe can be closed
        if self.proc.stdout is not None:
            self.proc.stdout.close()
