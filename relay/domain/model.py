"""The contract's report, and the relay's alert, delivery and ack, as the API shows them."""

from __future__ import annotations

import enum
import json
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from relay.domain.contacts import Phone
from relay.domain.text import normalise

MAX_FUTURE = timedelta(minutes=5)
MAX_PAST = timedelta(hours=24)
# A drone covers 2.5 to 3 km a minute: an older sighting is relayed, but flagged.
STALE_AFTER = timedelta(minutes=10)


class UavType(enum.StrEnum):
    FIXED_WING = "fixed_wing"
    MULTIROTOR = "multirotor"
    HELICOPTER = "helicopter"
    MISSILE_LIKE = "missile_like"
    UNKNOWN = "unknown"


class Movement(enum.StrEnum):
    TRANSIT = "transit"
    HOVERING = "hovering"
    CIRCLING = "circling"
    ERRATIC = "erratic"
    UNKNOWN = "unknown"


class Altitude(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    UNKNOWN = "unknown"


class Speed(enum.StrEnum):
    SLOW = "slow"
    FAST = "fast"
    UNKNOWN = "unknown"


class Sound(enum.StrEnum):
    PISTON = "piston"
    ELECTRIC = "electric"
    JET = "jet"
    NONE = "none"
    UNKNOWN = "unknown"


class Perception(enum.StrEnum):
    SEEN = "seen"
    HEARD = "heard"
    SEEN_AND_HEARD = "seen_and_heard"
    UNKNOWN = "unknown"


class ReportStatus(enum.StrEnum):
    ACTUAL = "actual"
    EXERCISE = "exercise"
    TEST = "test"


class Priority(enum.StrEnum):
    FLASH = "flash"
    IMMEDIATE = "immediate"
    ROUTINE = "routine"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, str_strip_whitespace=True)


def _one_line(v: object) -> object:
    return normalise(v) if isinstance(v, str) else v


def _lines(v: object) -> object:
    return normalise(v, multiline=True) if isinstance(v, str) else v


# Free text is normalised before its length is checked: what is stored, shown and compared for a replay is the
# normalised text (CONTRACT.md, "Free text is normalised").
Text = Annotated[str, BeforeValidator(_one_line)]
MultilineText = Annotated[str, BeforeValidator(_lines)]


class Location(_Strict):
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    accuracy_m: float | None = Field(None, gt=0, le=1_000_000, allow_inf_nan=False)
    address: Text | None = Field(None, max_length=200)
    district: Text | None = Field(None, max_length=100)


class Caller(_Strict):
    phone: Phone | None = None
    name: Text | None = Field(None, max_length=100)


class Report(_Strict):
    """One sighting from one call, as a 112 operator flags it."""

    report_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    observed_at: AwareDatetime
    location: Location
    uav_type: UavType = UavType.UNKNOWN
    count: int = Field(1, ge=1, le=1000)
    heading_deg: int | None = Field(None, ge=0, le=359)
    bearing_deg: int | None = Field(None, ge=0, le=359)
    movement: Movement = Movement.UNKNOWN
    altitude: Altitude = Altitude.UNKNOWN
    altitude_m: int | None = Field(None, ge=0, le=10_000)
    speed: Speed = Speed.UNKNOWN
    sound: Sound = Sound.UNKNOWN
    perception: Perception = Perception.UNKNOWN
    status: ReportStatus = ReportStatus.ACTUAL
    priority: Priority = Priority.IMMEDIATE
    caller: Caller | None = None
    notes: MultilineText | None = Field(None, max_length=1000)

    @field_validator("observed_at")
    @classmethod
    def _recent(cls, v: datetime, info: ValidationInfo) -> datetime:
        now: datetime = (info.context or {}).get("now") or datetime.now(UTC)
        if v > now + MAX_FUTURE:
            raise ValueError("more than 5 minutes in the future (check the workstation clock)")
        if v < now - MAX_PAST:
            raise ValueError("more than 24 hours in the past")
        return v

    def is_stale(self, accepted_at: datetime) -> bool:
        return accepted_at - self.observed_at > STALE_AFTER

    def as_submitted(self, *, caller: bool = True) -> dict[str, Any]:
        """The fields the operator gave, as JSON values (what the store keeps and the API shows); without the
        caller's phone and name if not `caller`."""
        return self.model_dump(mode="json", exclude_unset=True, exclude=None if caller else _CALLER)


_CALLER = {"caller"}


def validate_report(body: bytes | str, now: datetime) -> Report:
    return Report.model_validate_json(body, context={"now": now})


# ---- the report as an alert keeps it ---------------------------------------------------------------------
#
# An alert's report is stored as `as_submitted()` JSON and read back whenever the alert is (each backup send,
# each API read). It was validated once, at intake, and is not validated again: a stored report must load
# however old it is (the 24-hour rule is the intake's) and whatever rule was tightened since, and its text as it
# was normalised then. It is rebuilt as pydantic's `model_construct` would (the same attributes, the same fields
# set, so `as_submitted()` gives back the stored JSON), without that method's per-field default handling,
# which made it as dear as validating again. How a JSON value becomes a field's value follows from the field's
# type: a field added to Report, Location or Caller is read back without a change here, and a type this does
# not know is refused at import.

_M = TypeVar("_M", bound=BaseModel)
_ABSENT: Any = object()
_new = object.__new__
_set = object.__setattr__


def _from_json(annotation: Any) -> Callable[[Any], Any] | None:
    """What turns a stored JSON value of a field of this type into the field's value; None: the value is it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _from_json(args[0])
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        (inner,) = (a for a in args if a is not type(None))  # X | None: None stays None
        return _from_json(inner)
    if annotation in (str, int, float, bool):
        return None
    if annotation is AwareDatetime or (isinstance(annotation, type) and issubclass(annotation, datetime)):
        return datetime.fromisoformat
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {m.value: m for m in annotation}.__getitem__  # a third of what calling the enum costs
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _trusted(annotation)
    raise TypeError(f"a stored report cannot hold a {annotation!r}: teach relay.domain.model._from_json")


def _trusted(cls: type[_M]) -> Callable[[dict[str, Any]], _M]:
    """Builds a `cls` from already validated JSON values, without validating."""
    for name, f in cls.model_fields.items():
        if f.default_factory is not None:
            raise TypeError(f"{cls.__name__}.{name}: a default factory is not supported for a stored report")
    # Every field, in the fields' order (a model is dumped in its __dict__'s order); the defaults are immutable.
    defaults = {name: _ABSENT if f.is_required() else f.default for name, f in cls.model_fields.items()}
    convert = {name: _from_json(f.annotation) for name, f in cls.model_fields.items()}
    required = frozenset(name for name, f in cls.model_fields.items() if f.is_required())
    names = frozenset(defaults)

    def build(values: dict[str, Any]) -> _M:
        if not values.keys() >= required:
            raise ValueError(f"stored {cls.__name__} without {', '.join(sorted(required - values.keys()))}")
        attrs = defaults.copy()
        for name, v in values.items():
            if name in convert:  # a key no field has is left out, as model_construct does
                c = convert[name]
                attrs[name] = v if c is None or v is None else c(v)
        m = _new(cls)
        _set(m, "__dict__", attrs)
        _set(m, "__pydantic_fields_set__", set(values) if names.issuperset(values) else values.keys() & names)
        _set(m, "__pydantic_extra__", None)
        _set(m, "__pydantic_private__", None)
        return m

    return build


_stored = _trusted(Report)


def stored_report(text: str | bytes) -> Report:
    """A report from its stored JSON (`as_submitted()`), trusted: it was validated when it came in."""
    return _stored(json.loads(text))


# ---- what the API answers ------------------------------------------------------------------------------


class DeliveryView(BaseModel):
    desk_id: str
    channel: str
    target: str
    state: str
    attempts: int
    sent_at: datetime | None
    delivered_at: datetime | None
    error: str | None


class AckView(BaseModel):
    desk_id: str
    channel: str
    by: str
    at: datetime
    latency_s: float
    via_track: bool = False  # the desk acknowledged the alert's track, not this alert by itself


class AlertView(BaseModel):
    alert_id: str
    report_id: str
    operator_id: str
    short_code: str
    state: str
    priority: Priority
    stale: bool
    created_at: datetime
    report: dict[str, Any]
    desks: list[str]
    deliveries: list[DeliveryView]
    ack: AckView | None
    track_id: str


class AcceptedView(BaseModel):
    alert_id: str
    report_id: str
    short_code: str
    state: str
    status_url: str
    desks: list[str]


class FieldProblem(BaseModel):
    field: str
    problem: str


class ErrorView(BaseModel):
    error: str
    detail: Any = None


class AckRequest(_Strict):
    by: Text = Field("", max_length=100)


class EventView(BaseModel):
    """One alert state change, as SSE `data:` and `uav/events/{operator_id}` carry it (`ack` only once acked)."""

    alert_id: str
    report_id: str
    operator_id: str
    state: str
    at: datetime
    short_code: str
    desks: list[str]
    ack: AckView | None = None
    track_id: str | None = None


TRACK_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class TrackPosition(BaseModel):
    lat: float
    lon: float


class TrailPoint(BaseModel):
    lat: float
    lon: float
    at: datetime  # the report's observed_at


class TrackDeskView(BaseModel):
    desk_id: str
    acknowledged: bool
    distance_km: float | None  # from the desk's airfield (its area's centre); null without an area
    bearing_deg: int | None
    eta_s: int | None  # to the airfield at the estimated speed, when the track approaches it


class TrackView(BaseModel):
    """Several reports the relay holds to be one object in flight (CONTRACT.md, "Tracks")."""

    track_id: str
    state: str  # open | acknowledged | closed
    alert_ids: list[str]
    reports: int
    first_seen: datetime
    last_seen: datetime
    position: TrackPosition
    heading_deg: int | None
    speed_kmh: float | None
    uav_type: str
    count: int
    status: str
    priority: str
    desks: list[TrackDeskView]
    # (extension) where its latest reports placed it, oldest first: the dispatcher's plot draws it as a fading trail
    trail: list[TrailPoint] = []


class MergeRequest(_Strict):
    into: str = Field(pattern=TRACK_ID_PATTERN)
    by: Text = Field("", max_length=100)


class SplitRequest(_Strict):
    by: Text = Field("", max_length=100)
