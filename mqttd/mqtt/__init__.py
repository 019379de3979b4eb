"""The MQTT wire protocol, sans-I/O: packets, properties, reason codes, topics and the codec.

Imports nothing else of mqttd but the accelerator switch (``mqttd._accel``) and the
compiled codec it selects.
"""
