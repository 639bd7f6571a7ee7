"""Message contracts between stages: one pydantic model each, JSON Schema generated from them.

- :class:`VitalsEvent` — topic ``vitals.raw``, key = ``patient_id``. Any vital may be missing.
- :class:`OutcomeEvent` — topic ``outcomes``, key = ``patient_id``.
- :class:`AdmissionEvent` — topic ``admissions`` (the ward's ADT feed), key = ``patient_id``.

Validation is strict: a heart rate sent as ``"72"`` is a contract violation, not a number.
Physiological plausibility is *not* part of the contract (an SpO2 of 140 is a valid
message carrying a faulty reading); the ETL's expectations judge that.

Everything from outside is hostile, so the contract also bounds what is *parseable but
dangerous* before any stage indexes, partitions, stores or names anything by it:

- ids (``patient_id``, ``device_id``) are 1-64 characters of ``[A-Za-z0-9._:-]``, starting
  with a letter or digit: no control characters (a NUL fails PostgreSQL's ``COPY``), no
  path separators, no whitespace;
- event times lie in ``[1970-01-01, 2200-01-01)`` (what nanosecond clocks, pandas and
  Parquet readers hold), and — checked by :class:`EventTimeBounds`, which needs the
  receiver's clock and the configuration — not before ``contract.earliest_event_time``
  nor more than ``contract.max_future_minutes`` ahead of the receiver;
- numbers are finite and of magnitude at most :data:`MAX_READING` (no unit of any vital
  comes near it; ``1e308`` would overflow the features' sums of squares);
- Kafka timestamps are the producer's to set: :func:`sane_kafka_ts_ms` turns those
  outside :data:`KAFKA_TS_RANGE_MS` into "unknown" before anyone reads them as times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
AVPU = ("A", "C", "V", "P", "U")
Avpu = Literal["A", "C", "V", "P", "U"]
DeteriorationKind = Literal["sepsis", "respiratory", "hypovolaemic", "cardiac"]
OutcomeEventKind = Literal["icu_transfer", "emergency_response", "cardiac_arrest"]

VITAL_FIELDS = (
    "heart_rate",
    "systolic_bp",
    "diastolic_bp",
    "spo2",
    "resp_rate",
    "temperature",
)


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- hostile input
ID_MAX_LENGTH = 64
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
ID_FIELDS = ("patient_id", "device_id")
# Event times any part of the platform can hold: nanosecond clocks (pandas, Spark's
# conversions) end in 2262; before 1970 an epoch is negative, which some readers refuse.
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
# Kafka timestamps (ms) that are read as times; others are "unknown" (see sane_kafka_ts_ms).
KAFKA_TS_RANGE_MS = (0, int(TIME_MAX.timestamp() * 1000))
MAX_READING = 1e6  # |value| of any vital in any unit stays far below this


def _within_time_range(value: datetime) -> datetime:
    if not TIME_MIN <= value < TIME_MAX:
        raise PydanticCustomError(
            "time_out_of_bounds",
            "event time must lie in [{lo}, {hi})",
            {"lo": TIME_MIN.date().isoformat(), "hi": TIME_MAX.date().isoformat()},
        )
    return value


time_range_check = _within_time_range  # the marker the columnar validator looks for
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
EventTime = Annotated[AwareDatetime, AfterValidator(_within_time_range)]
# A vital is a finite number of bounded magnitude, or absent; NaN and infinities are not
# readings.
Reading = Annotated[float, Field(ge=-MAX_READING, le=MAX_READING, allow_inf_nan=False)]
_VITAL: Any = Field(None)


class VitalsEvent(_Contract):
    """One reading of a bedside monitor (units: bpm, mmHg, %, breaths/min, °C)."""

    event_id: UUID
    schema_version: Literal[1]
    patient_id: Id
    device_id: Id
    ts: EventTime
    heart_rate: Reading | None = _VITAL
    systolic_bp: Reading | None = _VITAL
    diastolic_bp: Reading | None = _VITAL
    spo2: Reading | None = _VITAL
    resp_rate: Reading | None = _VITAL
    temperature: Reading | None = _VITAL
    consciousness: Avpu | None = None
    on_oxygen: bool | None = None


class OutcomeEvent(_Contract):
    """A deterioration outcome (e.g. ICU transfer) and the kind of deterioration behind it."""

    outcome_id: UUID
    schema_version: Literal[1]
    patient_id: Id
    ts: EventTime
    kind: DeteriorationKind
    event: OutcomeEventKind


class AdmissionEvent(_Contract):
    """A patient admitted to the ward, with what the NEWS2 chart needs to know of them.

    ``spo2_scale`` is the SpO2 scale prescribed on the chart (RCP NEWS2, 2017): 2 for
    patients with hypercapnic respiratory failure whose target saturation is 88-92 %,
    decided by a clinician; 1 for everyone else.
    """

    admission_id: UUID
    schema_version: Literal[1]
    patient_id: Id
    ts: EventTime
    age: int = Field(ge=0, le=120)
    sex: Literal["F", "M"]
    spo2_scale: Literal[1, 2]


# Reason codes for dead letters, from pydantic error types. Stable: dashboards count them.
_WRONG_TYPE = {
    "int_type",
    "float_type",
    "bool_type",
    "string_type",
    "uuid_type",
    "datetime_type",
    "model_type",
    "dict_type",
    "int_from_float",
}


_BAD_ID = {"string_pattern_mismatch", "string_too_long", "string_too_short"}
_OUT_OF_BOUNDS = {"greater_than_equal", "less_than_equal"}


def violation_reason(exc: ValidationError) -> tuple[str, str]:
    """``(reason_code, detail)`` for the first error of a failed validation.

    Codes: ``bad_json``, ``missing_field``, ``unknown_field``, ``wrong_type``, ``bad_id``
    (an id outside the charset or length), ``time_out_of_bounds``, ``out_of_bounds`` (a
    number beyond its bounds), ``invalid_value``. The detail names the field and the rule,
    never the value (dead letters keep the original bytes; details reach logs).
    """
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<message>"
    kind = err["type"]
    field = str(err["loc"][0]) if err["loc"] else ""
    if kind in {"json_invalid", "json_type"}:
        code = "bad_json"
    elif kind == "missing":
        code = "missing_field"
    elif kind == "extra_forbidden":
        code = "unknown_field"
    elif kind in _WRONG_TYPE or kind.endswith("_type"):
        code = "wrong_type"
    elif field in ID_FIELDS and kind in _BAD_ID:
        return "bad_id", (
            f"{loc}: an id is 1-{ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    elif kind == "time_out_of_bounds":
        code = "time_out_of_bounds"
    elif kind in _OUT_OF_BOUNDS:
        code = "out_of_bounds"
    else:
        code = "invalid_value"
    return code, f"{loc}: {err['msg']}"


@dataclass(frozen=True)
class EventTimeBounds:
    """The configured window of acceptable event times, relative to the receiver's clock.

    Events before ``earliest`` (older than any record this hospital will load) or more
    than ``max_future`` ahead of ``now`` (a clock gone wrong, or a forged message) are
    dead letters with reason ``time_out_of_bounds``. Inside the window, the stages' own
    rules still apply (the ETL quarantines events a few minutes in the future).
    """

    earliest: datetime
    max_future: timedelta

    def violations(
        self, ts_us: npt.NDArray[np.int64], now: datetime
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Per event time (UTC microseconds): ``(too_early, too_late)``."""
        lo = int(self.earliest.timestamp() * 1_000_000)
        hi = int((now + self.max_future).timestamp() * 1_000_000)
        return ts_us < lo, ts_us > hi

    def detail(self, too_early: bool) -> str:
        if too_early:
            return f"ts: before contract.earliest_event_time ({self.earliest.isoformat()})"
        minutes = self.max_future.total_seconds() / 60
        return f"ts: more than {minutes:g} minutes ahead of the receiver's clock"


def sane_kafka_ts_ms(ts_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Kafka timestamps (ms) with those outside :data:`KAFKA_TS_RANGE_MS` set to -1.

    The producer sets a record's timestamp: year 20000 is as easy to send as now. Every
    reader treats a negative value as "unknown" (null), never as a time to convert,
    partition or compute a latency by.
    """
    lo, hi = KAFKA_TS_RANGE_MS
    out: npt.NDArray[np.int64] = np.where((ts_ms >= lo) & (ts_ms < hi), ts_ms, -1)
    return out


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every contract, generated from the models (never written by hand)."""
    return {
        "vitals.raw": VitalsEvent.model_json_schema(),
        "outcomes": OutcomeEvent.model_json_schema(),
        "admissions": AdmissionEvent.model_json_schema(),
    }


def ts_of(value: datetime) -> str:
    """The contract's timestamp format: UTC ISO-8601 with milliseconds and ``Z``."""
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    print(json.dumps(json_schemas(), indent=2))
