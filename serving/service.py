"""The BentoML service: the registry's ``@champion`` behind a strict HTTP API.

``make serve`` runs ``bentoml serve serving.service:Vigil`` on loopback. Endpoints:

- ``POST /predict``: ``{"rows": [{<every feature>: number | null}, ...]}`` → one
  prediction per row (risk, alert flag, threshold, model name, version, role). Every
  feature of the declared feature set must be present (``null`` = not observed); an
  unknown or missing field, a wrong type or more than ``MAX_ROWS`` rows is a 400 that
  names the field. Adaptive batching merges concurrent requests.
- ``POST /predict_shadow``: the same for the ``@challenger`` (409 when there is none).
- ``POST /predict_columns``: the same rows sent column by column,
  ``{"columns": {<every feature>: [number | null, ...]}, "shadow": false}`` →
  ``{"risk": [...], "alert": [...], "threshold", "model_name", "model_version", "role"}``.
  No per-row objects on either side (for 1,000 rows the body is built ~4x and validated
  ~3x faster than ``/predict``'s); not adaptively batched, since its callers send large
  batches already.
- ``POST /arrow/predict``: the same as ``/predict_columns`` with the columns sent as an
  Arrow IPC stream (``application/vnd.apache.arrow.stream``, ``serving.wire``), and
  ``?shadow=true`` / ``?explain=true`` as query parameters; the answer is
  ``/predict_columns``'s JSON. The scorer's transport: the numbers are read as bytes, not
  parsed from text one by one. The same strictness (400 naming the column and row; 415 for
  another content type); a FastAPI app mounted on the service, so it is not in
  ``/docs.json`` but in ``/arrow/openapi.json``.
- ``POST /explain``: the same rows → each row's top contributing features.
- ``POST /score_vitals``: raw vital-sign events of one or more patients (the
  ``vitals.raw`` contract) → features computed by the *same* cleaning and feature code as
  the scorer → predictions, for clients that do not compute features.
- BentoML's own ``/livez``, ``/readyz``, ``/metrics`` (Prometheus) and ``/docs.json``
  (OpenAPI).

The champion is loaded at start (the service refuses to start without one, or when its
feature-set version differs from this code's); a background thread polls the registry
and swaps in a moved alias atomically (``serving.model``). ``serving.api_key`` turns on
an ``X-API-Key`` check for the scoring endpoints; bodies over ``max_request_bytes`` get
413 before they are parsed.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from http import HTTPStatus
from typing import Annotated, Any, Self

import bentoml
import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from features.online import OnlineFeatures
from features.spec import FEATURE_NAMES
from serving import wire
from serving.explain import is_cheap, top_features
from serving.guard import Guard
from serving.model import LoadedModel, ModelSlot
from stack.contracts import AdmissionEvent, Id, VitalsEvent
from stack.gctune import freeze_startup_heap
from stack.logs import RedactInputs, redact_inputs_everywhere
from stack.settings import load_settings

log = logging.getLogger("vigil.serving")
# BentoML logs each 400's ValidationError with its traceback, inputs and all: the request
# body. Filtered where it is logged, and on every handler once the server has set them up.
logging.getLogger("bentoml._internal.server.http_app").addFilter(RedactInputs())

SETTINGS = load_settings()  # the service module is an entry point: it reads its config
CFG = SETTINGS.serving
MAX_ROWS = 10_000  # rows per request; larger batches should be split by the client
MAX_EVENTS = 50_000  # raw events per /score_vitals request
# No feature comes near this magnitude (the largest are minute counts of a stay); a value
# beyond it is garbage, and 1e308 would overflow the model's scaling into a 500.
MAX_MAGNITUDE = 1e9
Value = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)] | None

# --------------------------------------------------------------------------- schemas
FeatureRow = create_model(  # type: ignore[call-overload]
    "FeatureRow",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    **{name: (Value, Field(...)) for name in FEATURE_NAMES},
)
FeatureRow.__doc__ = "One feature vector of the declared feature set; null = not observed."


class _SameLength(BaseModel):
    """Feature columns of one request: all of the same length (one value per row)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _same_length(self) -> Self:
        lengths = {name: len(getattr(self, name)) for name in FEATURE_NAMES}
        rows = max(set(lengths.values()), key=list(lengths.values()).count)
        odd = [name for name, n in lengths.items() if n != rows]
        if odd:
            raise ValueError(
                f"every column needs one value per row: {len(odd)} column(s) differ from the "
                f"{rows} rows of the others, first {odd[0]!r} with {lengths[odd[0]]}"
            )
        return self


Column = Annotated[list[Value], Field(min_length=1, max_length=MAX_ROWS)]
FeatureColumns = create_model(  # type: ignore[call-overload]
    "FeatureColumns",
    __base__=_SameLength,
    **{name: (Column, Field(...)) for name in FEATURE_NAMES},
)
FeatureColumns.__doc__ = "Feature rows column by column: every feature, one value per row."


_RISK = (
    "calibrated probability of the outcome named by risk_of (the raw score of a model "
    "trained before calibration: then risk_of says so)"
)
_RISK_OF = "what the risk is a risk of, and within which horizon"


class Prediction(BaseModel):
    risk: float = Field(description=_RISK)
    alert: bool = Field(description="risk >= the model's operating threshold")
    threshold: float
    model_name: str
    model_version: str
    role: str = Field(description="champion, or shadow for the challenger")
    risk_of: str = Field("", description=_RISK_OF)


class Contribution(BaseModel):
    feature: str
    value: float | None
    contribution: float


class PredictionColumns(BaseModel):
    """Predictions of a column request, column by column (one model scored them all)."""

    risk: list[float] = Field(description=_RISK)
    alert: list[bool] = Field(description="risk >= the model's operating threshold")
    threshold: float
    model_name: str
    model_version: str
    role: str = Field(description="champion, or shadow for the challenger")
    risk_of: str = Field("", description=_RISK_OF)
    top_features: list[list[Contribution] | None] | None = Field(
        None,
        description="with explain=true and a model whose explanations are cheap (linear, "
        "XGBoost): per row, the features that pushed its risk up most for a row that "
        "crossed the threshold, else null (as /explain gives them). Null as a whole when "
        "not asked for or not cheap: ask /explain for the rows that need it",
    )


class Explanation(BaseModel):
    risk: float
    model_version: str
    top_features: list[Contribution]


class Admission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: int | None = Field(None, ge=0, le=120)
    sex: str | None = Field(None, pattern="^[FM]$")
    spo2_scale: int | None = Field(None, ge=1, le=2)


class PatientWindow(BaseModel):
    """A patient's recent raw events (ideally the last 4 hours; fewer give fewer features)."""

    model_config = ConfigDict(extra="forbid")
    patient_id: Id
    admission: Admission | None = None
    events: list[VitalsEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class VitalsPrediction(Prediction):
    patient_id: str
    as_of: str = Field(description="the feature time: the newest event's minute + 1")
    events_used: int


Rows = Annotated[list[FeatureRow], Field(min_length=1, max_length=MAX_ROWS)]


class NoShadowModel(bentoml.exceptions.BentoMLException):
    """409: there is no challenger to shadow-score with right now."""

    error_code = HTTPStatus.CONFLICT


# --------------------------------------------------------------------------- metrics
MODEL_INFO = bentoml.metrics.Gauge(
    name="vigil_model_info",
    documentation="1 for the model version currently served under each alias",
    labelnames=["model", "alias", "version"],
)
PREDICTIONS = bentoml.metrics.Counter(
    name="vigil_predictions_total",
    documentation="rows scored, by role and alert flag",
    labelnames=["role", "alert"],
)
RELOADS = bentoml.metrics.Counter(
    name="vigil_model_reloads_total",
    documentation="hot swaps of a served model after its alias moved",
    labelnames=["alias"],
)


_FEATURES = list(FEATURE_NAMES)
_values_of = operator.attrgetter(*_FEATURES)  # a row's values in feature order, in C


def _frame(rows: list[Any]) -> pd.DataFrame:
    """Validated rows → a float frame (``None`` → NaN); 2.5x faster than ``model_dump``."""
    values = [
        _values_of(r) if isinstance(r, BaseModel) else tuple(r[n] for n in _FEATURES) for r in rows
    ]
    return pd.DataFrame(np.array(values, dtype=float).reshape(len(rows), -1), columns=_FEATURES)


def _columns_frame(columns: BaseModel) -> pd.DataFrame:
    """Validated columns → a float frame (``None`` → NaN)."""
    values = np.array([getattr(columns, n) for n in _FEATURES], dtype=float)
    return pd.DataFrame(values.T, columns=_FEATURES)


def _risk(m: LoadedModel, x: pd.DataFrame, role: str) -> tuple[np.ndarray, np.ndarray]:
    risk = m.risk(x)
    alert = risk >= m.threshold
    PREDICTIONS.labels(role=role, alert="true").inc(int(alert.sum()))
    PREDICTIONS.labels(role=role, alert="false").inc(int((~alert).sum()))
    return risk, alert


def _predict(m: LoadedModel, x: pd.DataFrame, role: str) -> list[Prediction]:
    risk, alert = _risk(m, x, role)
    return [
        Prediction(
            risk=float(r), alert=bool(a), threshold=m.threshold, model_name=m.name,
            model_version=m.version, role=role, risk_of=m.risk_of,
        )
        for r, a in zip(risk.tolist(), alert.tolist(), strict=True)
    ]  # fmt: skip


ARROW = FastAPI(
    title="Vigil binary scoring",
    description="Feature columns as an Arrow IPC stream (the scorer's transport).",
    docs_url=None,
    redoc_url=None,
)


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@bentoml.service(
    name="vigil",
    workers=CFG.workers,
    traffic={"timeout": 60},
    http={"host": CFG.host, "port": CFG.port},
)
@bentoml.asgi_app(ARROW, path="/arrow")
class Vigil:
    """Deterioration risk from vital-sign features, served from the MLflow registry."""

    def __init__(self) -> None:
        redact_inputs_everywhere()
        self.champion = ModelSlot(SETTINGS, CFG.model_alias, required=True)
        self.shadow = (
            ModelSlot(SETTINGS, CFG.shadow_alias, required=False) if CFG.shadow_alias else None
        )
        self._published: set[tuple[str, str, str]] = set()
        self._publish_info()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="registry-watch", daemon=True).start()
        # Without this, each full collection walks the imports and the model: a ~0.1 s
        # pause on whichever request is running (the scorer saw it as a latency tail).
        log.info("startup heap frozen: %d objects", freeze_startup_heap())

    def _publish_info(self) -> None:
        # Multi-process metrics cannot drop a label set: a retired version is set to 0.
        served = set()
        for slot in (self.champion, self.shadow):
            if slot is not None and slot.current is not None:
                m = slot.current
                served.add((m.name, m.alias, m.version))
        for labels in self._published - served:
            MODEL_INFO.labels(*labels).set(0)
        for labels in served:
            MODEL_INFO.labels(*labels).set(1)
        self._published = served

    def _watch(self) -> None:
        while not self._stop.wait(CFG.reload_interval_s):
            for slot in (self.champion, self.shadow):
                if slot is None:
                    continue
                try:
                    if slot.refresh():
                        RELOADS.labels(alias=slot.alias).inc()
                        self._publish_info()
                except Exception as exc:  # the registry may be briefly away: keep serving
                    log.warning("registry check for @%s failed: %s", slot.alias, exc)

    @bentoml.api(
        batchable=True,
        max_batch_size=CFG.batching.max_batch_size,
        max_latency_ms=CFG.batching.max_latency_ms,
    )
    def predict(self, rows: Rows) -> list[Prediction]:
        """Risk, alert flag and model version for each feature row (champion)."""
        m = self.champion.current
        assert m is not None  # required slot: never empty after start
        return _predict(m, _frame(rows), "champion")

    def _shadow_model(self) -> LoadedModel:
        m = self.shadow.current if self.shadow is not None else None
        if m is None:
            raise NoShadowModel(f"no shadow model: the registry has no @{CFG.shadow_alias}")
        return m

    @bentoml.api
    def predict_shadow(self, rows: Rows) -> list[Prediction]:
        """The same rows scored by the challenger (role ``shadow``; never alerts upstream)."""
        return _predict(self._shadow_model(), _frame(rows), "shadow")

    @bentoml.api(route="/predict_columns")
    def predict_columns(
        self, columns: FeatureColumns, shadow: bool = False, explain: bool = False
    ) -> PredictionColumns:
        """The same as ``/predict`` (or ``/predict_shadow``) with the rows sent as columns.

        With ``explain``, rows that crossed the threshold also carry their top features
        (as ``/explain`` gives them, from the same model), so a client raising alerts
        needs one round trip, not two, when the model's explanations are cheap; for one
        whose are not (the forest's occlusion), ``top_features`` stays null.
        """
        return self._score_columns(_columns_frame(columns), shadow=shadow, explain=explain)

    @ARROW.post("/predict", response_model=PredictionColumns)
    async def predict_arrow(
        self, request: Request, shadow: bool = False, explain: bool = False
    ) -> Response:
        """``/predict_columns`` with the columns as an Arrow IPC stream (``serving.wire``)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != wire.MEDIA_TYPE:
            return _json(415, {"error": f"send the columns as {wire.MEDIA_TYPE}, not {kind!r}"})
        body = await request.body()

        def score() -> PredictionColumns:
            x = wire.decode(body, _FEATURES, max_rows=MAX_ROWS, max_magnitude=MAX_MAGNITUDE)
            frame = pd.DataFrame(x, columns=_FEATURES, copy=False)
            return self._score_columns(frame, shadow=shadow, explain=explain)

        try:
            out = await run_in_threadpool(score)
        except wire.WireError as exc:
            return _json(400, {"error": str(exc)})
        except NoShadowModel as exc:
            return _json(409, {"error": str(exc)})
        return _json(200, out.model_dump())

    def _score_columns(self, x: pd.DataFrame, *, shadow: bool, explain: bool) -> PredictionColumns:
        m = self._shadow_model() if shadow else self.champion.current
        assert m is not None  # required slot: never empty after start
        role = "shadow" if shadow else "champion"
        risk, alert = _risk(m, x, role)
        tops: list[list[Contribution] | None] | None = None
        if explain and is_cheap(m.model):
            tops = [None] * len(x)
            crossed = np.flatnonzero(alert)
            for i, t in zip(
                crossed.tolist(), top_features(m.model, x.iloc[crossed], CFG.top_features),
                strict=True,
            ):  # fmt: skip
                tops[i] = [Contribution(**c) for c in t]
        return PredictionColumns(
            risk=risk.tolist(), alert=alert.tolist(), threshold=m.threshold,
            model_name=m.name, model_version=m.version, role=role, top_features=tops,
            risk_of=m.risk_of,
        )  # fmt: skip

    @bentoml.api
    def explain(self, rows: Rows) -> list[Explanation]:
        """The features that pushed each row's risk up most (champion)."""
        m = self.champion.current
        assert m is not None
        x = _frame(rows)
        risk = m.risk(x)
        tops = top_features(m.model, x, CFG.top_features)
        return [
            Explanation(risk=float(r), model_version=m.version,
                        top_features=[Contribution(**c) for c in t])
            for r, t in zip(risk.tolist(), tops, strict=True)
        ]  # fmt: skip

    @bentoml.api
    def score_vitals(
        self, patients: Annotated[list[PatientWindow], Field(min_length=1, max_length=1000)]
    ) -> list[VitalsPrediction]:
        """Raw vital-sign events per patient → features (the scorer's code) → risk."""
        m = self.champion.current
        assert m is not None
        state = OnlineFeatures(capacity=len(patients))
        admissions = [
            {"patient_id": p.patient_id, **p.admission.model_dump()}
            for p in patients
            if p.admission is not None
        ]
        if admissions:
            state.admit(pd.DataFrame(admissions))
        rows: list[dict[str, Any]] = []
        for p in patients:
            wrong = [e.patient_id for e in p.events if e.patient_id != p.patient_id]
            if wrong:
                raise bentoml.exceptions.InvalidArgument(
                    f"patient {p.patient_id!r} has events of {wrong[0]!r}"
                )
            rows.extend(e.model_dump() for e in p.events)
        events = pd.DataFrame(rows)
        events["event_id"] = events["event_id"].astype(str)
        events["ts"] = pd.to_datetime(events["ts"], utc=True, cache=False).astype(
            "datetime64[us, UTC]"
        )
        events = events.sort_values("ts", kind="stable")
        # As the scorer does: events are folded in arrival order; here, time order.
        state.update(events, now=events["ts"].max())
        newest = events.groupby("patient_id")["ts"].max().dt.floor("min") + pd.Timedelta(minutes=1)
        pids = [p.patient_id for p in patients]
        as_of = pd.Series([newest.get(pid, pd.NaT) for pid in pids])
        used = events.groupby("patient_id").size()
        if as_of.isna().any():
            pid = pids[int(np.argmax(as_of.isna().to_numpy()))]
            raise bentoml.exceptions.InvalidArgument(f"no usable event for patient {pid!r}")
        x = state.features_at(pids, as_of)
        preds = _predict(m, x, "champion")
        return [
            VitalsPrediction(**p.model_dump(), patient_id=pid, as_of=t.isoformat(),
                             events_used=int(used.get(pid, 0)))
            for p, pid, t in zip(preds, pids, as_of, strict=True)
        ]  # fmt: skip

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Which versions are served, and when this worker last looked."""
        out: dict[str, Any] = {"checked_at": time.time()}
        for slot in (self.champion, self.shadow):
            if slot is not None:
                m = slot.current
                out[slot.alias] = (
                    None
                    if m is None
                    else {"name": m.name, "version": m.version, "threshold": m.threshold,
                          "feature_set_version": m.feature_set_version, "reloads": slot.reloads,
                          "calibration": m.calibration.method, "risk_of": m.risk_of}
                )  # fmt: skip
        return out


Vigil.add_asgi_middleware(Guard, api_key=CFG.api_key, max_bytes=CFG.max_request_bytes)  # type: ignore[attr-defined]
# Admissions are part of the contract module; re-exported for clients' convenience.
__all__ = [
    "Admission", "AdmissionEvent", "FeatureColumns", "FeatureRow", "PatientWindow", "Prediction",
    "PredictionColumns", "Vigil",
]  # fmt: skip
