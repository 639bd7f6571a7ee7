from __future__ import annotations

import uuid

import orjson
import pytest
from pydantic import ValidationError

from pipelines.simulator.engine import MALFORMED_KINDS, _malform
from stack.contracts import (
    OutcomeEvent,
    VitalsEvent,
    json_schemas,
    violation_reason,
)

EVENT = {
    "event_id": str(uuid.uuid4()),
    "schema_version": 1,
    "patient_id": "pt-1",
    "device_id": "dev-1",
    "ts": "2026-01-05T10:00:00.123Z",
    "heart_rate": 88,
    "systolic_bp": None,
    "diastolic_bp": None,
    "spo2": 95,
    "resp_rate": 18,
    "temperature": 37.2,
    "consciousness": "A",
    "on_oxygen": False,
}


def _reason(raw: bytes) -> str:
    with pytest.raises(ValidationError) as e:
        VitalsEvent.model_validate_json(raw)
    return violation_reason(e.value)[0]


def test_a_valid_event_parses_with_missing_vitals() -> None:
    ev = VitalsEvent.model_validate_json(orjson.dumps(EVENT))
    assert ev.heart_rate == 88.0
    assert ev.systolic_bp is None
    assert ev.ts.utcoffset() is not None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bad_json", "bad_json"),
        ("missing_field", "missing_field"),
        ("wrong_type", "wrong_type"),
        ("invalid_value", "invalid_value"),
    ],
)
def test_each_simulated_malformation_gets_its_reason(kind: str, reason: str) -> None:
    assert kind in MALFORMED_KINDS
    assert _reason(_malform(dict(EVENT), kind)) == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe\x00", "bad_json"),
        (b"[1, 2]", "wrong_type"),
        (orjson.dumps({**EVENT, "heart_rate": "88"}), "wrong_type"),
        (orjson.dumps({**EVENT, "on_oxygen": "yes"}), "wrong_type"),
        (orjson.dumps({**EVENT, "ts": "2026-01-05T10:00:00"}), "invalid_value"),
        (orjson.dumps({**EVENT, "schema_version": 2}), "invalid_value"),
        (orjson.dumps({**EVENT, "event_id": "not-a-uuid"}), "invalid_value"),
        (orjson.dumps({**EVENT, "extra": 1}), "unknown_field"),
    ],
)
def test_contract_is_strict(raw: bytes, reason: str) -> None:
    assert _reason(raw) == reason


def test_the_reason_detail_names_the_field() -> None:
    with pytest.raises(ValidationError) as e:
        VitalsEvent.model_validate_json(orjson.dumps({**EVENT, "spo2": "low"}))
    assert violation_reason(e.value)[1].startswith("spo2:")


def test_json_schema_is_generated_from_the_models() -> None:
    schemas = json_schemas()
    vitals = schemas["vitals.raw"]
    assert set(vitals["required"]) == {
        "event_id", "schema_version", "patient_id", "device_id", "ts",
    }  # fmt: skip
    assert vitals["additionalProperties"] is False
    assert set(schemas["outcomes"]["properties"]) == set(OutcomeEvent.model_fields)
