"""The `relay` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

import tomli_w

from relay.domain.config import ConfigError, Settings, hash_token, load_settings
from relay.operations import logs
from relay.operations.config_warnings import config_warnings
from relay.operations.daemon import Relay

log = logging.getLogger("relay.cli")

EXIT_BAD_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="UAV sighting relay: 112 operators -> airfield.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help="TOML config file (default: $RELAY_CONFIG, else built-in defaults)")
    check = sub.add_parser("check-config", help="validate and print the effective config, secrets masked")
    check.add_argument("--config")
    sub.add_parser("hash-token", help="read a token on stdin, print its token_sha256 for the config")
    demo = sub.add_parser("demo", help="the whole relay on this machine, with a failover, in a minute")
    demo.add_argument("--reports", type=int, default=6)
    demo.add_argument("--pause", type=float, default=2.0, help="seconds between sample reports")
    demo.add_argument("--embedded-broker", action="store_true",
                      help="use amqtt in this process even where Mosquitto is installed (MQTT 3.1.1)")
    test = sub.add_parser("test-channels", help="send a marked test message over each channel to each desk")
    test.add_argument("--config")
    test.add_argument("--wait", type=float, default=20.0, help="seconds to wait for receipts (default 20)")
    args = parser.parse_args(argv)

    if args.command == "hash-token":
        return _hash_token()
    if args.command == "demo":
        from relay.operations.demo.run import run_demo

        logs.configure("error")
        return asyncio.run(run_demo(args.reports, args.pause, args.embedded_broker))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("config invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command == "check-config":
        print(render_config(settings), end="")
        for warning in config_warnings(settings):
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if args.command == "test-channels":
        from relay.operations.channel_test import run_channel_test, table

        logs.configure("warning")
        results = asyncio.run(run_channel_test(settings, args.wait))
        print(table(results))
        return 0 if results and all(r.accepted for r in results) else 1
    logs.configure(settings.relay.log_level)
    for warning in config_warnings(settings):
        log.warning("config: %s", warning, extra={"event": "config_warning"})
    # The stdlib loop, not uvloop: measured again after the MQTT fix of issue 12, uvloop's gain in CPU and latency
    # was lost in the noise (bench/README.md, "Event loop"), and where a library mishandles a descriptor, libuv
    # aborts the whole process while the stdlib loop logs an error and carries on.
    return asyncio.run(_run(settings))


def render_config(settings: Settings) -> str:
    """The effective config as TOML; secrets show as '**********' (pydantic masks SecretStr in JSON mode)."""
    data = settings.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(json.loads(json.dumps(data)))


def _hash_token() -> int:
    token = sys.stdin.readline().strip()
    if len(token) < 16:
        print("a token must be at least 16 characters", file=sys.stderr)
        return 1
    print(hash_token(token))
    return 0


async def _run(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed: list[BaseException] = []
    try:
        await Relay(settings).run(stop)
    except* OSError as group:  # a port taken, a data directory not writable
        failed.extend(group.exceptions)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(sig)
    for exc in failed:
        log.error("cannot start: %s", exc, extra={"event": "relay_failed"})
    return 1 if failed else 0
