"""End-to-end benchmark of uav-relay: `.venv/bin/python -m bench` from the repo root (see bench/README.md)."""
