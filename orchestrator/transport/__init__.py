"""MQTT adapter: commands out, results in."""
