"""Who may do what over HTTP: 401 without a known token, 403 for the wrong role or someone else's alert."""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)


async def test_no_token_or_an_unknown_one_gets_401(relay: RunningRelay) -> None:
    for token in (None, "not-a-real-token-at-all"):
        status, body = await relay.post_report(report(), token=token)
        assert status == 401
        assert body["error"] == "unauthorized"
    async with relay.http.get(f"{relay.url}/api/v1/alerts", headers={"Authorization": "Basic abc"}) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_desk_may_not_file_reports(relay: RunningRelay) -> None:
    status, body = await relay.post_report(report(), token=DESK_TOKEN)
    assert status == 403
    assert body["error"] == "forbidden"


async def test_an_operator_may_not_acknowledge(relay: RunningRelay) -> None:
    _, accepted = await relay.post_report(report())
    status, _ = await relay.ack(accepted["alert_id"], token=OPERATOR_TOKEN)
    assert status == 403
    assert (await relay.alert(accepted["alert_id"]))["ack"] is None


async def test_an_operator_sees_only_its_own_reports(relay: RunningRelay) -> None:
    _, mine = await relay.post_report(report("mine"))
    _, theirs = await relay.post_report(report("theirs"), token=OPERATOR2_TOKEN)
    status, _ = await relay.get(f"/api/v1/alerts/{theirs['alert_id']}")
    assert status == 403
    status, _ = await relay.get(f"/api/v1/alerts/{theirs['alert_id']}/history")
    assert status == 403
    _, listing = await relay.get("/api/v1/alerts")
    assert [a["alert_id"] for a in listing["alerts"]] == [mine["alert_id"]]


async def test_report_ids_are_per_operator(relay: RunningRelay) -> None:
    status, _ = await relay.post_report(report("same-id"))
    assert status == 201
    status, _ = await relay.post_report(report("same-id"), token=OPERATOR2_TOKEN)
    assert status == 201


async def test_a_desk_sees_and_acks_only_alerts_sent_to_it(relay: RunningRelay) -> None:
    _, west = await relay.post_report(report("west"))
    status, _ = await relay.get(f"/api/v1/alerts/{west['alert_id']}", DESK2_TOKEN)
    assert status == 403
    status, _ = await relay.ack(west["alert_id"], token=DESK2_TOKEN)
    assert status == 403
    _, listing = await relay.get("/api/v1/alerts", DESK2_TOKEN)
    assert listing["alerts"] == []
    status, _ = await relay.get(f"/api/v1/alerts/{west['alert_id']}", DESK_TOKEN)
    assert status == 200


async def test_unknown_alert_is_404(relay: RunningRelay) -> None:
    status, body = await relay.get("/api/v1/alerts/01NOTHINGHERE0000000000000", DESK_TOKEN)
    assert status == 404
    assert body["error"] == "not_found"


async def test_over_the_token_rate_gets_429_with_retry_after(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = settings_dict(broker.port, tmp_path / "data", http={"rate_per_s": 0.5, "rate_burst": 3})
    async with running_relay(cfg) as relay:
        for n in range(3):
            status, _ = await relay.post_report(report(f"burst-{n}"))
            assert status == 201
        async with relay.http.post(f"{relay.url}/api/v1/reports", json=report("burst-3"),
                                   headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"] == "rate_limited"
        # the bucket is per token: another operator is not held up
        status, _ = await relay.post_report(report("other"), token=OPERATOR2_TOKEN)
        assert status == 201
        assert await relay.metric('relay_reports_rejected_total{reason="rate_limited"}') == 1


async def test_monitoring_endpoints_need_no_token(relay: RunningRelay) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
        status, _ = await relay.get(path, token=None)
        assert status == 200, path
