"""A small HTTP client of the Vigil service, used by the scorer (and handy in notebooks)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from features.spec import FEATURE_NAMES
from serving import wire


def feature_matrix(x: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The feature columns of ``x`` as a rows x ``FEATURE_NAMES`` float matrix, as sent."""
    values: npt.NDArray[np.float64] = x[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    return values


class ServiceUnavailableError(ConnectionError):
    """The service did not answer usefully (down, timing out, or a 5xx): retry later."""


class ServiceRejectedError(ValueError):
    """The service refused the request (4xx): retrying the same request will not help."""


class NoShadowModelError(LookupError):
    """The service has no shadow (challenger) model right now."""


class ServiceClient:
    def __init__(self, url: str, *, timeout_s: float = 10.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: bytes, **kw: Any) -> Any:
        try:
            r = self._http.post(f"{self.url}{path}", content=body, **kw)
        except httpx.HTTPError as exc:  # connect errors, timeouts, broken connections
            raise ServiceUnavailableError(f"{self.url}{path}: {exc!r}") from exc
        if r.status_code == 409:  # the only conflict: a shadow asked for, none served
            raise NoShadowModelError(r.text)
        if r.status_code >= 500:
            raise ServiceUnavailableError(f"{self.url}{path}: HTTP {r.status_code} {r.text[:200]}")
        if r.status_code >= 400:
            raise ServiceRejectedError(f"{self.url}{path}: HTTP {r.status_code} {r.text[:500]}")
        return orjson.loads(r.content)

    @staticmethod
    def _rows(x: pd.DataFrame) -> bytes:
        names = list(FEATURE_NAMES)
        values = x[names].to_numpy(dtype=float).tolist()
        return orjson.dumps({"rows": [dict(zip(names, v, strict=True)) for v in values]})

    def predict(self, x: pd.DataFrame, *, shadow: bool = False) -> list[dict[str, Any]]:
        """One prediction per row of ``x`` (NaN is sent as null: not observed)."""
        out: list[dict[str, Any]] = self._post(
            "/predict_shadow" if shadow else "/predict", self._rows(x)
        )
        return out

    def predict_columns(
        self, x: pd.DataFrame, *, shadow: bool = False, explain: bool = False
    ) -> pd.DataFrame:
        """``predict`` sent column by column, as an Arrow IPC stream (``/arrow/predict``):
        a frame of risk, alert, threshold, model_name, model_version and role, one row per
        row of ``x``. With ``explain``, also ``top_features``: the
        explanation of each row that crossed the threshold (``None`` for the others), or
        ``None`` throughout when the service left it to ``/explain`` (a model whose
        explanations are not cheap)."""
        return self.predict_matrix(feature_matrix(x), shadow=shadow, explain=explain)

    def predict_matrix(
        self, values: npt.NDArray[np.float64], *, shadow: bool = False, explain: bool = False
    ) -> pd.DataFrame:
        """:meth:`predict_columns` of a rows x features matrix in ``FEATURE_NAMES`` order
        (:func:`feature_matrix`): the scorer's path."""
        out = self._post(
            "/arrow/predict",
            wire.encode(values, FEATURE_NAMES),  # NaN: not observed
            params={"shadow": "true" if shadow else "false",
                    "explain": "true" if explain else "false"},
            headers={"content-type": wire.MEDIA_TYPE},
        )  # fmt: skip
        n = len(out["risk"])
        if n != len(values):
            raise RuntimeError(f"{self.url}: {n} predictions for {len(values)} rows")
        cols: dict[str, Any] = {
            "risk": np.asarray(out["risk"], dtype=float),
            "alert": np.asarray(out["alert"], dtype=bool),
            "threshold": np.full(n, out["threshold"], dtype=float),
            "model_name": np.full(n, out["model_name"], dtype=object),
            "model_version": np.full(n, str(out["model_version"]), dtype=object),
            "role": np.full(n, out["role"], dtype=object),
            "risk_of": np.full(n, str(out.get("risk_of", "")), dtype=object),
        }
        if explain:
            tops = out.get("top_features") or [None] * n
            cols["top_features"] = pd.Series(tops, dtype=object)
        return pd.DataFrame(cols)

    def explain(self, x: pd.DataFrame) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._post("/explain", self._rows(x))
        return out

    def model(self) -> dict[str, Any]:
        out: dict[str, Any] = self._post("/model", b"{}")
        return out

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False
