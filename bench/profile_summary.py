"""`python -m bench.profile_summary FILE`: where the relay's samples went, from `python -m bench --profile FILE`.

The profile holds py-spy's collapsed stacks (`--gil`: only the thread holding the GIL is sampled, so this is
the relay's Python CPU time). Each sample goes to the first bucket whose marker appears anywhere in its stack.
"""

from __future__ import annotations

import sys
from collections import Counter

BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("store writer thread: SQLite ops + commit", ("Thread._bootstrap",)),
    ("HTTP: report validation (pydantic)", ("validate_report",)),
    ("HTTP: Engine.accept (plan, hand-off to the store, wait)", ("Engine.accept",)),
    ("HTTP: aiohttp server + relay.edges.api (parse, auth, answer)",
     ("aiohttp/web_", "relay/edges/api/", "aiohttp/http_")),
    ("MQTT: dispatch worker (render, publish alert)", ("Engine._dispatch_worker",)),
    ("MQTT: events publisher (uav/events/...)", ("MqttEventPublisher",)),
    ("MQTT: paho/aiomqtt socket I/O, PUBACK handling", ("paho/", "aiomqtt/")),
    ("store: hand-off on the loop (SQLiteStore.run/_commit)", ("SQLiteStore",)),
    ("engine scheduler", ("Engine._scheduler",)),
]
OTHER = "asyncio event loop and the rest"


def bucket_of(stack: str) -> str:
    for name, markers in BUCKETS:
        if any(m in stack for m in markers):
            return name
    return OTHER


def summarize(path: str) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if stack and n.isdigit():
                counts[bucket_of(stack)] += int(n)
    return counts.most_common()


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rows = summarize(sys.argv[1])
    total = sum(n for _, n in rows) or 1
    for name, n in rows:
        print(f"{100 * n / total:5.1f} %  {n:7d}  {name}")
    print(f"{100.0:5.1f} %  {total:7d}  samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
