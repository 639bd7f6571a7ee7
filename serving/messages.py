"""The messages the scorer publishes: one per prediction (``predictions``), one per new
alert (``alerts``), JSON, keyed by patient."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

_MESSAGE_COLUMNS = (
    "event_id", "patient_id", "ts", "as_of", "risk", "alert", "threshold", "model_name",
    "model_version", "role",
)  # fmt: skip


def _iso_ms(col: pd.Series) -> list[str | None]:
    """Times as ISO-8601 UTC text to the millisecond (``2026-11-29T05:00:00.000Z``)."""
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        col = pd.to_datetime(col, utc=True, cache=False)
    text = np.datetime_as_string(col.to_numpy("datetime64[ms]"), unit="ms").tolist()
    return [None if t == "NaT" else t + "Z" for t in text]


def prediction_messages(frame: pd.DataFrame) -> list[bytes]:
    """One JSON message per prediction row (built from columns, no per-row pandas)."""
    if frame.empty:
        return []
    cols = [
        _iso_ms(frame[c]) if c in ("ts", "as_of") else frame[c].tolist() for c in _MESSAGE_COLUMNS
    ]
    return [
        orjson.dumps(dict(zip(_MESSAGE_COLUMNS, row, strict=True)))
        for row in zip(*cols, strict=True)
    ]


def alert_message(a: pd.Series) -> bytes:
    return orjson.dumps(
        {
            "alert_id": a["event_id"], "patient_id": a["patient_id"],
            "ts": pd.Timestamp(a["ts"]).isoformat(), "risk": float(a["risk"]),
            "threshold": float(a["threshold"]), "reason": a["reason"],
            "model_name": a["model_name"], "model_version": a["model_version"],
            "risk_of": a.get("risk_of", ""), "top_features": a["top_features"],
        }
    )  # fmt: skip
