"""The MLflow model registry: the only module that talks to it.

One registered model, aliases :data:`CHAMPION` and :data:`CHALLENGER`. Stages are
deprecated in MLflow 3; Vigil uses aliases for roles and version tags for evidence.

What a version *is* for the platform is one typed object, :class:`ModelRef`: version,
threshold, feature-set version, calibration, the sealed digest and signature
(``stack.modelsafety``), family and lineage. It is written once, at registration, as the
version's tags (:data:`REF_TAGS`), and read back whole by training's gate, serving,
monitoring and packaging; nobody parses a tag on their own.

Evidence written later: the gate's verdict (``gate_decision``, ``gate_checks``,
``gate_at``, the full JSON as an artifact of the version's run); promotions
(``promoted_at``, ``previous_champion``, ``retired_at``) so that a rollback walks back one
step at a time; rollbacks (``rolled_back_at``, ``restored_at``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stack.calibration import Calibration, read_calibration
from stack.localstack import mlflow_tracking_uri
from stack.modelsafety import (
    DIGEST_TAG,
    SIGNATURE_TAG,
    check_seal,
    load_sklearn,
    seal_tags,
    signing_key,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from stack.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
# The tags that make a ModelRef, written at registration.
THRESHOLD_TAG = "threshold"
FEATURE_SET_TAG = "feature_set_version"
CALIBRATION_TAG = "calibration"
FAMILY_TAG = "family"
RUN_TAG = "run_id"
REF_TAGS = (THRESHOLD_TAG, FEATURE_SET_TAG, CALIBRATION_TAG, FAMILY_TAG, DIGEST_TAG,
            SIGNATURE_TAG, RUN_TAG)  # fmt: skip


class RegistryError(RuntimeError):
    """The registry is not in a state the requested action needs."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as every part of the platform reads it.

    ``threshold`` is the operating point the alerts use; ``calibration`` how the risk was
    calibrated (``none`` until training calibrates); ``digest`` and ``signature`` the seal
    checked before any load; ``tags`` every tag, for evidence and history.
    """

    name: str
    version: str
    run_id: str
    threshold: float
    feature_set_version: str
    calibration: str
    family: str
    digest: str
    signature: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, mv: ModelVersion, aliases: tuple[str, ...] | None = None) -> ModelRef:
        tags = dict(mv.tags or {})
        try:
            threshold = float(tags.get(THRESHOLD_TAG, "nan"))
        except ValueError:
            threshold = float("nan")
        return cls(
            name=str(mv.name),
            version=str(mv.version),
            run_id=mv.run_id or tags.get(RUN_TAG, ""),
            threshold=threshold,
            feature_set_version=tags.get(FEATURE_SET_TAG, ""),
            calibration=tags.get(CALIBRATION_TAG, "none"),
            family=tags.get(FAMILY_TAG, ""),
            digest=tags.get(DIGEST_TAG, ""),
            signature=tags.get(SIGNATURE_TAG, ""),
            aliases=tuple(mv.aliases or ()) if aliases is None else aliases,
            tags=tags,
        )

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class SealedModel:
    """A loaded version: the estimator (raw scores) and the map that makes them risks."""

    estimator: Any
    calibration: Calibration

    def risk(self, x: Any) -> Any:
        """Calibrated risk of each row of the feature frame ``x``."""
        return self.calibration.apply(self.estimator.predict_proba(x)[:, 1])


class ModelRegistry:
    """Aliases, versions, evidence and verified loading of ``training.registered_model``."""

    def __init__(self, settings: Settings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.name = settings.training.registered_model
        self.uri = mlflow_tracking_uri(settings)
        self.client: MlflowClient = MlflowClient(self.uri, registry_uri=self.uri)

    # ------------------------------------------------------------------ reading
    def alias_version(self, alias: str) -> str | None:
        """The version an alias points to (one cheap call: the service polls it)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def by_alias(self, alias: str) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            return ModelRef.of(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def ref(self, version: str) -> ModelRef:
        return ModelRef.of(self.client.get_model_version(self.name, version))

    def versions(self) -> list[ModelRef]:
        """Every version, oldest first, with its aliases (search results omit them)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
            aliases = self.client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        refs = [ModelRef.of(v, tuple(sorted(by_version.get(str(v.version), [])))) for v in found]
        return sorted(refs, key=lambda r: int(r.version))

    def download(self, version: str, dst: Path) -> Path:
        """The artifacts of ``version`` under ``dst`` (asked of this server by location:
        a ``models:/`` URI would resolve against the process's global registry URI)."""
        import mlflow

        location = self.client.get_model_version_download_uri(self.name, version)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(dst), tracking_uri=self.uri
            )
        )

    def load(self, ref: ModelRef) -> SealedModel:
        """The estimator of ``ref`` and its calibration map, only if the seal over both
        verifies and the format is safe.

        Raises:
            UnsafeModelError: not loaded, and why (``stack.modelsafety``).
            CalibrationError: the sealed calibration map is not a valid one.
        """
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(ref.version, Path(tmp))
            check_seal(local, ref.tags, signing_key(self.settings), ref.label)
            return SealedModel(load_sklearn(local, ref.label), read_calibration(local))

    def run_json(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run (e.g. ``split.json``)."""
        return json.loads(self.run_artifact(run_id, path).read_text())

    def run_artifact(self, run_id: str, path: str, dst: Path | None = None) -> Path:
        """A run's artifact, downloaded (to ``dst``, else a temporary folder kept by the
        caller's process).

        Raises:
            RegistryError: the run has no such artifact.
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        target = dst if dst is not None else Path(tempfile.mkdtemp(prefix="vigil-artifact-"))
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=str(target), tracking_uri=self.uri
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"run {run_id} has no artifact {path}: {exc}") from exc
        return Path(local)

    # ------------------------------------------------------------------ writing
    def register(
        self,
        model_uri: str,
        *,
        run_id: str,
        threshold: float,
        feature_set_version: str,
        family: str,
        calibration: str = "none",
        tags: dict[str, str] | None = None,
    ) -> ModelRef:
        """A new version from ``model_uri``, sealed and aliased ``challenger``.

        The reference (threshold, feature set, calibration, family, digest, signature)
        is written here, once; ``tags`` adds evidence (data range, metrics, lineage).
        """
        import mlflow

        ref_tags = {
            THRESHOLD_TAG: f"{threshold:.6f}", FEATURE_SET_TAG: feature_set_version,
            CALIBRATION_TAG: calibration, FAMILY_TAG: family, RUN_TAG: run_id,
        }  # fmt: skip
        mlflow.set_registry_uri(self.uri)
        mv = mlflow.register_model(model_uri, self.name, tags={**(tags or {}), **ref_tags})
        version = str(mv.version)
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(version, Path(tmp))
            seal = seal_tags(
                local, ref_tags[THRESHOLD_TAG], feature_set_version, signing_key(self.settings)
            )
        for key, value in {**seal, "registered_at": _now()}.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return self.ref(version)

    def record_gate(self, version: str, evidence: dict[str, Any]) -> None:
        """Tag ``version`` with the gate's verdict and log the evidence with its run."""
        ref = self.ref(version)
        stamp = _now()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"gate-{stamp.replace(':', '')}.json"
            path.write_text(json.dumps(evidence, indent=1, default=str))
            self.client.log_artifact(ref.run_id, str(path), artifact_path="gate")
        checks = ",".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in evidence["checks"].items())
        for key, value in {
            "gate_decision": "promote" if evidence["promote"] else "reject",
            "gate_checks": checks,
            "gate_at": stamp,
            "gate_evidence": f"gate/{path.name}",
        }.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        """Add evidence to ``version`` (never a tag of its reference: those are sealed)."""
        sealed = set(REF_TAGS) & set(tags)
        if sealed:
            raise RegistryError(f"{sorted(sealed)} are written once, at registration")
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def drop_alias(self, alias: str) -> None:
        self.client.delete_registered_model_alias(self.name, alias)

    def promote(self, version: str) -> str | None:
        """Move ``champion`` to ``version``; returns the previous champion's version."""
        previous = self.by_alias(CHAMPION)
        prev = previous.version if previous else None
        if prev == version:
            return prev
        self.set_alias(CHAMPION, version)
        self.client.set_model_version_tag(self.name, version, "promoted_at", _now())
        self.client.set_model_version_tag(self.name, version, "previous_champion", prev or "none")
        if prev is not None:
            self.client.set_model_version_tag(self.name, prev, "retired_at", _now())
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.drop_alias(CHALLENGER)
        return prev

    def rollback(self) -> tuple[str, str]:
        """Restore the champion before the current one; returns (from, to).

        Raises:
            RegistryError: there is no champion, or it has no predecessor.
        """
        current = self.by_alias(CHAMPION)
        if current is None:
            raise RegistryError(f"{self.name} has no @{CHAMPION}: nothing to roll back")
        prev = current.tags.get("previous_champion", "none")
        if prev == "none":
            raise RegistryError(
                f"{self.name} v{current.version} was the first champion: nothing to restore"
            )
        self.set_alias(CHAMPION, prev)
        stamp = _now()
        self.client.set_model_version_tag(self.name, current.version, "rolled_back_at", stamp)
        self.client.set_model_version_tag(self.name, prev, "restored_at", stamp)
        return current.version, prev
