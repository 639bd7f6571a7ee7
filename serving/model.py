"""The served model: loaded from the MLflow registry by alias, checked, hot-swapped.

A :class:`ModelSlot` holds the :class:`LoadedModel` currently serving one alias. It is an
immutable record replaced by a single reference assignment, so a request that has taken
the slot's model keeps a consistent model, threshold and version for its whole batch,
while the next request sees the new one: a swap never fails or drops a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION
from stack.calibration import Calibration, read_calibration
from stack.localstack import mlflow_tracking_uri as tracking_uri
from stack.modelsafety import DIGEST_TAG, check_seal, load_sklearn
from stack.registry import ModelRegistry
from stack.settings import Settings

log = logging.getLogger("vigil.serving")


class ModelUnavailableError(RuntimeError):
    """The registry has no usable model for the alias; the message says what to do."""


_FEATURES = list(FEATURE_NAMES)
Risk = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: str
    threshold: float  # on the calibrated scale
    feature_set_version: str
    model: Any
    calibration: Calibration = field(default_factory=Calibration)
    _direct: Risk | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_direct", direct_risk(self.model))

    def raw(self, x: pd.DataFrame) -> npt.NDArray[np.float64]:
        """The estimator's positive-class score of each row of ``x`` (its feature columns)."""
        if self._direct is not None:
            same = list(x.columns) == _FEATURES
            return self._direct((x if same else x[_FEATURES]).to_numpy(dtype=np.float64))
        return np.asarray(self.model.predict_proba(x[_FEATURES])[:, 1], dtype=float)

    @property
    def risk_of(self) -> str:
        """What :meth:`risk` means: ``risk of deterioration … within 4 h``."""
        if not self.calibration.calibrated:
            return "uncalibrated score (model trained before calibration): not a probability"
        return self.calibration.describe()

    def risk(self, x: pd.DataFrame) -> npt.NDArray[np.float64]:
        """The calibrated risk of each row of ``x`` (``calibration.describe()`` says of
        what, within which horizon); the raw score for a model trained before calibration."""
        return self.calibration.apply(self.raw(x))


def direct_risk(model: Any, probe_rows: int = 256) -> Risk | None:
    """For an XGBoost classifier, its booster's prediction straight from a float matrix
    (features in ``FEATURE_NAMES`` order), else None.

    ``predict_proba`` on a frame spends ~3 ms a call whatever its size converting the
    frame (``_transform_pandas_df``), and more per row than the booster's own prediction:
    for the scorer's 1,000-row calls 7.5 ms against 4.4 ms, for one row 2.3 ms against
    0.2 ms. The shortcut is taken only if it gives ``predict_proba``'s numbers on a probe
    of random rows (with missing values), so a model it does not fit (another objective,
    an early-stopped iteration range it misreads) keeps the general path.
    """
    from xgboost import XGBClassifier

    if type(model) is not XGBClassifier or model.n_classes_ != 2:
        return None
    booster = model.get_booster()
    if booster.feature_names not in (None, _FEATURES):
        return None
    best = getattr(model, "best_iteration", None)  # set by early stopping only
    iterations = (0, best + 1) if isinstance(best, int) else (0, 0)

    def risk(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        p = booster.inplace_predict(
            values, iteration_range=iterations, missing=model.missing, validate_features=False
        )
        return np.asarray(p, dtype=float)

    rng = np.random.default_rng(0)
    probe = rng.normal(0.0, 50.0, size=(probe_rows, len(_FEATURES)))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    expected = np.asarray(
        model.predict_proba(pd.DataFrame(probe, columns=_FEATURES))[:, 1], dtype=float
    )
    if not np.array_equal(risk(probe), expected):
        log.warning("XGBoost's direct prediction differs from predict_proba: not used")
        return None
    return risk


def load_version(settings: Settings, alias: str, version: str) -> LoadedModel:
    """Load ``version`` of the registered model, refusing a feature-set mismatch.

    Raises:
        ModelUnavailableError: the version was trained on another feature-set version
            (serving it would feed it features it does not know), or has no threshold.
        UnsafeModelError: its seal does not verify or its format is unsafe.
    """
    registry = ModelRegistry(settings)
    ref = registry.ref(version)
    if ref.feature_set_version != FEATURE_SET_VERSION:
        raise ModelUnavailableError(
            f"{ref.label} (@{alias}) was trained on feature set {ref.feature_set_version!r}, "
            f"but this code computes {FEATURE_SET_VERSION!r}: retrain (`make train`) or "
            "deploy matching code"
        )
    if ref.threshold != ref.threshold:  # NaN: no threshold tag
        raise ModelUnavailableError(f"{ref.label} has no threshold tag: not a Vigil model")
    sealed = registry.load(ref)
    return LoadedModel(
        name=ref.name,
        alias=alias,
        version=ref.version,
        threshold=ref.threshold,
        feature_set_version=ref.feature_set_version,
        model=sealed.estimator,
        calibration=sealed.calibration,
    )


def load_packaged(settings: Settings, alias: str) -> LoadedModel:
    """The model packaged into this Bento by ``make package`` (no registry needed)."""
    import bentoml

    bm = bentoml.models.get(f"{settings.training.registered_model}:latest")
    meta = bm.info.metadata
    if meta.get("feature_set_version") != FEATURE_SET_VERSION:
        raise ModelUnavailableError(
            f"packaged model {bm.tag} uses features {meta.get('feature_set_version')!r}, "
            f"this code {FEATURE_SET_VERSION!r}"
        )
    folder = Path(bm.path_of("mlflow_model"))
    return LoadedModel(
        name=settings.training.registered_model,
        alias=alias,
        version=str(meta["mlflow_version"]),
        threshold=float(str(meta["threshold"])),
        feature_set_version=str(meta["feature_set_version"]),
        model=_load_packaged_model(folder, meta, str(bm.tag)),
        calibration=read_calibration(folder),  # inside the folder the digest just covered
    )


def _load_packaged_model(folder: Path, meta: dict[str, Any], what: str) -> Any:
    """The packaged model, if it still hashes to the digest recorded when it was packaged
    (the registry's signature was verified then; the key need not travel with the Bento)."""
    check_seal(folder, {DIGEST_TAG: str(meta.get(DIGEST_TAG, ""))}, None, what)
    return load_sklearn(folder, what)


class ModelSlot:
    """The model serving one alias, refreshed from the registry on demand.

    Args:
        required: raise at start when the alias does not exist (the champion); an
            optional slot (the shadow challenger) is simply empty.
    """

    def __init__(self, settings: Settings, alias: str, *, required: bool) -> None:
        self.settings = settings
        self.alias = alias
        self.required = required
        self.registry = ModelRegistry(settings)
        self.current: LoadedModel | None = None
        self.reloads = 0
        self._lock = threading.Lock()  # one refresh at a time; readers never wait
        self.packaged = settings.serving.model_source == "bento"
        if self.packaged:
            # A Bento serves the model it was built with; only the champion is packaged.
            self.current = load_packaged(settings, alias) if required else None
            return
        self.refresh()
        if required and self.current is None:
            name = settings.training.registered_model
            raise ModelUnavailableError(
                f"{name} has no @{alias} in the registry at {tracking_uri(settings)}: "
                "run `make train` and `make promote` first"
            )

    def refresh(self) -> bool:
        """Load the alias's version if it moved; True when the served model changed.

        A version that cannot be served (feature-set mismatch, load error) is logged
        and refused; the previous model keeps serving.
        """
        if self.packaged:
            return False
        with self._lock:
            name = self.settings.training.registered_model
            version = self.registry.alias_version(self.alias)
            have = self.current.version if self.current else None
            if version == have:
                return False
            if version is None:
                if self.required:
                    log.error("@%s disappeared from %s; keeping v%s", self.alias, name, have)
                    return False
                self.current = None
                return True
            try:
                loaded = load_version(self.settings, self.alias, version)
            except Exception as exc:
                if self.current is None and self.required:
                    raise
                log.error("refusing %s v%s for @%s: %s", name, version, self.alias, exc)
                return False
            self.current = loaded  # the atomic swap
            self.reloads += 1
            log.info("serving %s v%s as @%s", name, version, self.alias)
            return True
