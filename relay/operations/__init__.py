"""Operations: the command line, the daemon's wiring, logs, systemd, the canary, the channel test, retention,
the demo."""
