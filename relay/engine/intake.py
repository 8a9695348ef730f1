"""Taking a report in, from HTTP or MQTT alike: validate, store, answer. The answer names every bad field."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from relay.domain.clock import Clock, to_datetime
from relay.domain.model import FieldProblem, validate_report
from relay.domain.records import AcceptOutcome, AlertRecord
from relay.engine.engine import Engine
from relay.engine.metrics import Metrics
from relay.store.base import StoreUnavailable

log = logging.getLogger("relay.intake")


class Outcome(enum.StrEnum):
    CREATED = "created"
    REPLAY = "replay"
    CONFLICT = "conflict"
    INVALID = "invalid"
    UNAVAILABLE = "store_unavailable"


@dataclass(frozen=True, slots=True)
class IntakeResult:
    outcome: Outcome
    alert: AlertRecord | None = None
    problems: list[FieldProblem] = field(default_factory=list)
    detail: str = ""


class Intake:
    def __init__(self, engine: Engine, clock: Clock, metrics: Metrics) -> None:
        self._engine, self._clock, self._metrics = engine, clock, metrics

    async def submit(self, operator_id: str, body: bytes, source: str) -> IntakeResult:
        try:
            report = validate_report(body, to_datetime(self._clock.now()))
        except ValidationError as exc:
            problems = field_problems(exc)
            self.reject("invalid", operator_id, source, problems=[p.model_dump() for p in problems])
            return IntakeResult(Outcome.INVALID, problems=problems)
        try:
            accepted = await self._engine.accept(operator_id, report, source)
        except StoreUnavailable as exc:
            self.reject("store_unavailable", operator_id, source, report_id=report.report_id, error=str(exc))
            return IntakeResult(Outcome.UNAVAILABLE, detail="the report could not be stored; it was not accepted")
        if accepted.outcome is AcceptOutcome.CONFLICT:
            self.reject("conflict", operator_id, source, report_id=report.report_id)
            return IntakeResult(
                Outcome.CONFLICT, accepted.alert,
                detail=f"report_id {report.report_id!r} was already used for a report with other content",
            )
        return IntakeResult(Outcome(accepted.outcome.value), accepted.alert)

    def reject(self, reason: str, operator_id: str, source: str, **detail: Any) -> None:
        self._metrics.reports_rejected.labels(reason).inc()
        log.warning(
            "report rejected",
            extra={"event": "report_rejected", "reason": reason, "operator_id": operator_id, "source": source,
                   **detail},
        )


# Answers name the fields but never echo a hostile body back: long names are cut, and the list is capped.
MAX_PROBLEMS, MAX_FIELD_NAME = 50, 80


def field_problems(exc: ValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        if len(loc) > MAX_FIELD_NAME:
            loc = loc[: MAX_FIELD_NAME - 1] + "…"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "json_invalid":
            msg = f"not valid JSON: {err.get('ctx', {}).get('error', msg)}"
        problems.append(FieldProblem(field=loc, problem=msg))
    return problems
