"""The MLflow model registry: one registered model, aliases ``champion`` and ``challenger``.

Stages are deprecated in MLflow 3; Vigil uses aliases for roles and version tags for
evidence and history:

- every version carries ``feature_set_version``, ``threshold``, its data range, the ETL
  validation runs and the git commit (set at registration);
- the gate tags the challenger with ``gate_decision``, ``gate_checks`` and ``gate_at``
  (the full evidence is a JSON artifact of the version's run);
- a promotion tags the new champion with ``promoted_at`` and ``previous_champion``, so
  ``rollback`` can walk back one step at a time, and each step is tagged as well.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from stack.localstack import mlflow_tracking_uri as tracking_uri
from stack.modelsafety import download_registered, load_registered, seal_tags, signing_key
from stack.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    """The registry is not in a state the requested action needs."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @classmethod
    def of(cls, mv: ModelVersion) -> VersionInfo:
        return cls(str(mv.version), mv.run_id or "", tuple(mv.aliases or ()), dict(mv.tags))


class Registry:
    """Aliases, tags and loading for ``training.registered_model``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.training.registered_model
        self.experiment_name = f"{settings.mlflow.experiment_prefix}-{settings.training.experiment}"
        self.client = MlflowClient(tracking_uri(settings))

    # ------------------------------------------------------------------ reading
    def by_alias(self, alias: str) -> VersionInfo | None:
        try:
            return VersionInfo.of(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def get(self, version: str) -> VersionInfo:
        return VersionInfo.of(self.client.get_model_version(self.name, version))

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first, with its aliases (search results omit them)."""
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
            aliases = self.client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        out = [
            VersionInfo(
                str(v.version),
                v.run_id or "",
                tuple(sorted(by_version.get(str(v.version), []))),
                dict(v.tags),
            )
            for v in found
        ]
        return sorted(out, key=lambda v: int(v.version))

    def load(self, version: str) -> Any:
        """The fitted sklearn-compatible estimator of ``version``, if its signed digest
        verifies and it is saved safely (``stack.modelsafety``)."""
        return load_registered(self.settings, self.name, version, self.get(version).tags)

    def run_json(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run (e.g. ``split.json``)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=path,
                dst_path=tmp,
                tracking_uri=tracking_uri(self.settings),
            )
            return json.loads(Path(local).read_text())

    # ------------------------------------------------------------------ writing
    def register(self, model_uri: str, *, run_id: str, tags: dict[str, str]) -> str:
        """A new version from ``model_uri`` with ``tags``, aliased ``challenger``."""
        mlflow.set_tracking_uri(tracking_uri(self.settings))
        mv = mlflow.register_model(model_uri, self.name, tags={**tags, "run_id": run_id})
        # Sealed: the digest of what was registered, signed with how it is to be served.
        with tempfile.TemporaryDirectory() as tmp:
            local = download_registered(self.settings, self.name, str(mv.version), Path(tmp))
            seal = seal_tags(
                local, tags["threshold"], tags["feature_set_version"], signing_key(self.settings)
            )
        for key, value in seal.items():
            self.client.set_model_version_tag(self.name, mv.version, key, value)
        self.client.set_model_version_tag(self.name, mv.version, "registered_at", _now())
        self.client.set_registered_model_alias(self.name, CHALLENGER, mv.version)
        return str(mv.version)

    def record_gate(self, version: str, evidence: dict[str, Any]) -> None:
        """Tag ``version`` with the gate's verdict and log the evidence with its run."""
        info = self.get(version)
        stamp = _now()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"gate-{stamp.replace(':', '')}.json"
            path.write_text(json.dumps(evidence, indent=1, default=str))
            self.client.log_artifact(info.run_id, str(path), artifact_path="gate")
        checks = ",".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in evidence["checks"].items())
        for key, value in {
            "gate_decision": "promote" if evidence["promote"] else "reject",
            "gate_checks": checks,
            "gate_at": stamp,
            "gate_evidence": f"gate/{path.name}",
        }.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def promote(self, version: str) -> str | None:
        """Move ``champion`` to ``version``; returns the previous champion's version."""
        previous = self.by_alias(CHAMPION)
        prev = previous.version if previous else None
        if prev == version:
            return prev
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.client.set_model_version_tag(self.name, version, "promoted_at", _now())
        self.client.set_model_version_tag(self.name, version, "previous_champion", prev or "none")
        if prev is not None:
            self.client.set_model_version_tag(self.name, prev, "retired_at", _now())
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
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
        self.client.set_registered_model_alias(self.name, CHAMPION, prev)
        stamp = _now()
        self.client.set_model_version_tag(self.name, current.version, "rolled_back_at", stamp)
        self.client.set_model_version_tag(self.name, prev, "restored_at", stamp)
        return current.version, prev
