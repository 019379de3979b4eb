"""mqttd: a single-node MQTT 3.1 / 3.1.1 / 5.0 broker on asyncio."""

__version__ = "0.1.0"
#: What the broker says it is: $SYS's ``sysdescr``, ``mqttd ctl broker``, ``mqttd --help``.
SYSDESCR = "mqttd: an MQTT 3.1/3.1.1/5.0 broker"
