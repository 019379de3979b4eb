"""mqttd/transport"""
