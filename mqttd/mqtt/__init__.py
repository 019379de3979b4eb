"""mqttd/mqtt"""
