"""MLflow experiment tracking: the one place stages log runs, parameters, metrics, files.

Training (a run per training, nested runs per study and per Optuna trial), monitoring (a
run per drift report) and the EDA report log here. A :class:`TrackedRun` logs to its own
run by id, so nested runs made from tuning threads never land in another's; the model
itself is logged by :meth:`TrackedRun.log_sklearn` (skops, with Vigil's trusted types)
and registered by ``stack.registry``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stack.localstack import mlflow_tracking_uri
from stack.modelsafety import SKOPS_TRUSTED_TYPES

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from stack.settings import Settings


def experiment_name(settings: Settings, experiment: str) -> str:
    """The MLflow experiment of one kind of run (``<prefix>-<experiment>``)."""
    return f"{settings.mlflow.experiment_prefix}-{experiment}"


@dataclass(frozen=True)
class TrackedRun:
    """One MLflow run; everything it logs goes to this run, whatever the thread."""

    run_id: str
    client: MlflowClient
    uri: str

    def tags(self, tags: Mapping[str, Any]) -> None:
        self._batch(tags=tags)

    def params(self, params: Mapping[str, Any]) -> None:
        self._batch(params=params)

    def metrics(self, metrics: Mapping[str, float]) -> None:
        self._batch(metrics=metrics)

    def _batch(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def artifacts(self, folder: Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def log_sklearn(
        self,
        model: Any,
        example: pd.DataFrame,
        *,
        requirements: list[str],
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Log a fitted classifier of this run, saved with skops (no pickle); its URI."""
        import mlflow
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.uri)  # the logged-model record is made by the fluent API
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            serialization_format="skops",  # no arbitrary code on load, unlike pickle
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pyfunc_predict_fn="predict_proba",
            pip_requirements=requirements,
            metadata=dict(metadata or {}),
            run_id=self.run_id,
        )
        return str(info.model_uri)


class Tracking:
    """Runs of one experiment on the configured tracking server."""

    def __init__(self, settings: Settings, experiment: str) -> None:
        from mlflow import MlflowClient

        self.uri = mlflow_tracking_uri(settings)
        self.client = MlflowClient(self.uri)
        self.experiment = experiment_name(settings, experiment)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(self.experiment))
        except MlflowException:  # made meanwhile by another process
            again = self.client.get_experiment_by_name(self.experiment)
            assert again is not None
            return str(again.experiment_id)

    @contextlib.contextmanager
    def run(
        self, name: str, *, parent: TrackedRun | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[TrackedRun]:
        """A run (a child of ``parent`` when given), finished when the block ends: FINISHED,
        or FAILED if it raised."""
        run_tags = {"mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent is not None:
            run_tags["mlflow.parentRunId"] = parent.run_id
        created = self.client.create_run(self._experiment_id(), tags=run_tags, run_name=name)
        run = TrackedRun(created.info.run_id, self.client, self.uri)
        try:
            yield run
        except BaseException:
            self.client.set_terminated(run.run_id, status="FAILED")
            raise
        self.client.set_terminated(run.run_id, status="FINISHED")
