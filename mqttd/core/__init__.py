"""mqttd/core"""
