"""The domain: the contract's data (report, config, records) and the pure rules on it (states, transitions,
escalation, routing, short codes, rendering). Imports nothing above it."""
