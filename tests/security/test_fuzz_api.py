"""schemathesis against the running daemon, from its own OpenAPI document: no 5xx, no crash, no garbage kept."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import pytest

from relay.domain.model import Report
from tests.support.relay import DESK_TOKEN, OPERATOR_TOKEN, RunningRelay

ST = shutil.which("st", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(ST is None, reason="schemathesis is in the dev extra; ./scripts/test installs it")
@pytest.mark.parametrize("token", [OPERATOR_TOKEN, DESK_TOKEN], ids=["operator", "desk"])
async def test_fuzzing_the_api_finds_no_server_error(relay: RunningRelay, tmp_path: Path, token: str) -> None:
    assert ST is not None
    proc = await asyncio.create_subprocess_exec(
        ST, "run", f"{relay.url}/api/v1/openapi.json", "--url", relay.url,
        # one worker: with several, hypothesis describes schemathesis' filters with ast.parse from several threads at
        # once, which CPython 3.11.7 can fail with "SystemError: AST constructor recursion depth mismatch" (a
        # CPython bug, not ours; it failed this test twice in one run once the CAP routes added query patterns)
        "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "1", "--workers", "1",
        "--exclude-path", "/api/v1/events",  # a stream that never ends by design
        "--header", f"Authorization: Bearer {token}", "--request-timeout", "10",
        "--report-dir", str(tmp_path), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    status, _ = await relay.get("/healthz", token=None)
    assert status == 200
    # whatever it got accepted is a valid report, as the model says at the time it was accepted
    _, listing = await relay.get("/api/v1/alerts?limit=1000", OPERATOR_TOKEN)
    for alert in listing["alerts"]:
        Report.model_validate_json(json.dumps(alert["report"]),
                                   context={"now": datetime.fromisoformat(alert["created_at"])})
