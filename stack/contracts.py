"""Message contracts between stages: one pydantic model each, JSON Schema generated from them.

- :class:`VitalsEvent` — topic ``vitals.raw``, key = ``patient_id``. Any vital may be missing.
- :class:`OutcomeEvent` — topic ``outcomes``, key = ``patient_id``.
- :class:`AdmissionEvent` — topic ``admissions`` (the ward's ADT feed), key = ``patient_id``.

Validation is strict: a heart rate sent as ``"72"`` is a contract violation, not a number.
Physiological plausibility is *not* part of the contract (an SpO2 of 140 is a valid
message carrying a faulty reading); the ETL's expectations judge that.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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


# A vital is a finite number or absent; NaN and infinities are not readings.
_VITAL: Any = Field(None, allow_inf_nan=False)


class VitalsEvent(_Contract):
    """One reading of a bedside monitor (units: bpm, mmHg, %, breaths/min, °C)."""

    event_id: UUID
    schema_version: Literal[1]
    patient_id: str
    device_id: str
    ts: AwareDatetime
    heart_rate: float | None = _VITAL
    systolic_bp: float | None = _VITAL
    diastolic_bp: float | None = _VITAL
    spo2: float | None = _VITAL
    resp_rate: float | None = _VITAL
    temperature: float | None = _VITAL
    consciousness: Avpu | None = None
    on_oxygen: bool | None = None


class OutcomeEvent(_Contract):
    """A deterioration outcome (e.g. ICU transfer) and the kind of deterioration behind it."""

    outcome_id: UUID
    schema_version: Literal[1]
    patient_id: str
    ts: AwareDatetime
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
    patient_id: str
    ts: AwareDatetime
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


def violation_reason(exc: ValidationError) -> tuple[str, str]:
    """``(reason_code, detail)`` for the first error of a failed validation.

    Codes: ``bad_json``, ``missing_field``, ``unknown_field``, ``wrong_type``,
    ``invalid_value``; the detail names the field.
    """
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<message>"
    kind = err["type"]
    if kind in {"json_invalid", "json_type"}:
        code = "bad_json"
    elif kind == "missing":
        code = "missing_field"
    elif kind == "extra_forbidden":
        code = "unknown_field"
    elif kind in _WRONG_TYPE or kind.endswith("_type"):
        code = "wrong_type"
    else:
        code = "invalid_value"
    return code, f"{loc}: {err['msg']}"


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


# The champion's reference sample for drift monitoring: a Parquet artifact of the training
# run holding ``patient_id``, ``ts``, every feature, ``label``, ``risk`` (out-of-sample:
# out-of-fold for training patients, the refit model for held-out ones) and ``split``.
REFERENCE_ARTIFACT = "reference/reference.parquet"

# Landed outcome events in the lake (written by the landing, read by features and monitoring).
RAW_OUTCOMES_ZONE = "raw/outcomes"
