"""mqttd/trace"""
