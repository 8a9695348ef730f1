"""Structure a reader relies on: channels know nothing of the relay; the OpenAPI document matches the API."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.relay import RunningRelay

ROOT = Path(__file__).resolve().parent.parent


def test_channels_never_import_relay() -> None:
    offenders = []
    for path in (ROOT / "channels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "relay" or n.startswith("relay.")]
    assert offenders == []


# The layers of relay/, bottom up: each may import those below it and itself, never one above.
LAYERS = ("domain", "store", "engine", "edges", "operations")


def test_each_layer_imports_only_the_layers_below_it() -> None:
    rank = {layer: n for n, layer in enumerate(LAYERS)}
    upward = []
    loose = sorted(p.name for p in (ROOT / "relay").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    for layer in LAYERS:
        for path in (ROOT / "relay" / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "relay" and len(parts) > 1 and rank.get(parts[1], -1) > rank[layer]:
                        upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []
    assert loose == [], "every module of relay/ belongs to a layer"


async def test_openapi_document_describes_the_report_schema_and_every_route(relay: RunningRelay) -> None:
    status, doc = await relay.get("/api/v1/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    report = doc["components"]["schemas"]["Report"]
    assert report["additionalProperties"] is False
    assert set(report["required"]) == {"report_id", "observed_at", "location"}
    assert report["properties"]["count"]["maximum"] == 1000
    assert {"/api/v1/reports", "/api/v1/alerts", "/api/v1/alerts/{alert_id}", "/api/v1/alerts/{alert_id}/ack",
            "/api/v1/events", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])

    def refs(node: object) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    missing = {r for r in refs(doc) if r.split("/")[-1] not in doc["components"]["schemas"]}
    assert missing == set()


async def test_the_events_sent_are_what_the_openapi_document_says(relay: RunningRelay) -> None:
    import asyncio
    import json

    from tests.support.relay import DESK_TOKEN, OPERATOR_TOKEN, report

    status, doc = await relay.get("/api/v1/openapi.json", token=None)
    assert status == 200
    schema = doc["components"]["schemas"]["EventView"]
    ack_schema = doc["components"]["schemas"]["AckView"]
    async with relay.http.get(f"{relay.url}/api/v1/events",
                              headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as sse:
        _, accepted = await relay.post_report(report("r-openapi"))
        await relay.ack(accepted["alert_id"], DESK_TOKEN)
        seen: list[dict[str, object]] = []
        async with asyncio.timeout(5):
            while len(seen) < 2:
                line = (await sse.content.readline()).decode().strip()
                if line.startswith("data:"):
                    seen.append(json.loads(line.removeprefix("data:")))
    for event in seen:
        assert set(schema["required"]) <= set(event) <= set(schema["properties"]), (event, schema)
    acked = seen[-1]["ack"]
    assert isinstance(acked, dict) and set(ack_schema["required"]) <= set(acked) <= set(ack_schema["properties"])
    assert seen[0]["desks"] == accepted["desks"]
