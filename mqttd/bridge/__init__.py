"""MQTT bridges to other brokers (mosquitto's ``connection`` blocks, EMQX's MQTT bridge):
one MQTT client connection per ``[bridges.<name>]``, built on mqttd's own codec."""

from __future__ import annotations

from .client import Bridge
from .manager import BridgeError, BridgeManager

__all__ = ["Bridge", "BridgeError", "BridgeManager"]
