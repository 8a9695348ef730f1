"""Delivery channels: each delivers rendered messages and reports receipts and acks. Knows nothing of drones."""
