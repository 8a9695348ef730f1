"""The edges: the HTTP API and consoles, MQTT intake and events, authentication and rate limits."""
