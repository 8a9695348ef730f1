"""One report all the way through a running relay, narrated: what scripts/run shows a newcomer.

Plays both ends: a 112 operator's workstation (HTTP) and an airfield desk's console (MQTT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime

import aiohttp
import aiomqtt

API = "http://127.0.0.1:8080"


def step(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')}  {text}", flush=True)


async def wait_ready(http: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{API}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the relay did not become ready within 20 s (see its log lines above)")


async def main(operator_token: str) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http)
        print("\nA report, all the way through:")
        async with aiomqtt.Client("127.0.0.1", 1883, identifier="walkthrough-console") as console:
            await console.subscribe("uav/alerts/airfield-1", qos=1)
            report = {
                "report_id": f"walkthrough-{int(time.time())}",
                "observed_at": datetime.now(UTC).isoformat(),
                "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
                "uav_type": "fixed_wing", "count": 1, "heading_deg": 315, "altitude": "low",
                "sound": "piston", "perception": "seen_and_heard",
                "caller": {"phone": "+79001234567", "name": "Петров"},
            }
            started = time.perf_counter()
            async with http.post(f"{API}/api/v1/reports", json=report,
                                 headers={"Authorization": f"Bearer {operator_token}"}) as r:
                accepted = await r.json()
                if r.status != 201:
                    raise SystemExit(f"report refused: {r.status} {accepted}")
            step(f"operator op-1 filed {report['report_id']}: 201 after "
                 f"{(time.perf_counter() - started) * 1000:.1f} ms (on disk), short code {accepted['short_code']}")
            async with asyncio.timeout(10):
                message = await anext(aiter(console.messages))
            alert = json.loads(message.payload if isinstance(message.payload, bytes) else b"{}")
            elapsed = (time.perf_counter() - started) * 1000
            step(f"desk airfield-1 console got it on {message.topic.value} after {elapsed:.1f} ms "
                 f"(caller's phone and name left out: {'caller' not in alert['report']})")
            ack_topic = alert["ack_topic"]
            await console.publish(ack_topic, json.dumps({"alert_id": alert["alert_id"], "kind": "received"}), qos=1)
            step("console confirmed it is on screen (received)")
            await console.publish(ack_topic, json.dumps(
                {"alert_id": alert["alert_id"], "kind": "ack", "by": "оперативный дежурный"}), qos=1)
            step("dispatcher acknowledged (ack)")
            async with asyncio.timeout(10):
                while True:
                    async with http.get(accepted["status_url"].replace("http://127.0.0.1:8080", API),
                                        headers={"Authorization": f"Bearer {operator_token}"}) as r:
                        state = await r.json()
                    if state["state"] == "acknowledged":
                        break
                    await asyncio.sleep(0.05)
            step(f"operator sees: state {state['state']}, by {state['ack']['by']!r} over {state['ack']['channel']}, "
                 f"{state['ack']['latency_s']} s after acceptance; delivery {state['deliveries'][0]['state']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operator-token", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.operator_token))
    except (aiomqtt.MqttError, aiohttp.ClientError, TimeoutError) as exc:
        sys.exit(f"walkthrough failed: {exc}")
