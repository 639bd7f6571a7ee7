"""``make package``: a versioned Bento of the service with the champion model inside.

The champion's MLflow model is copied into the BentoML model store (name = the
registered model, labels and metadata = its MLflow version, run, threshold and
feature-set version), then ``bentoml build`` packs the service code, the configuration,
the lock file and that model. The Bento runs with ``serving.model_source: bento`` (set
in its environment), so it serves exactly the packaged model and needs no registry.
``bentoml containerize vigil:<version>`` turns it into an OCI image where Docker exists.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from features.spec import FEATURE_SET_VERSION
from stack.modelsafety import DIGEST_TAG, check_seal, signing_key
from stack.registry import ModelRegistry
from stack.settings import REPO_ROOT, Settings, load_settings


def package(settings: Settings) -> dict[str, Any]:
    """Build the Bento; returns its tag and the MLflow version it contains.

    Raises:
        RuntimeError: there is no champion to package.
    """
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    registry = ModelRegistry(settings)
    alias = settings.serving.model_alias
    ref = registry.by_alias(alias)
    if ref is None:
        raise RuntimeError(
            f"{registry.name} has no @{alias}: run `make train` and `make promote` first"
        )
    name, version = ref.name, ref.version
    if ref.feature_set_version != FEATURE_SET_VERSION:
        raise RuntimeError(
            f"{ref.label} uses features {ref.feature_set_version!r}, this code "
            f"{FEATURE_SET_VERSION!r}"
        )
    meta = {
        "mlflow_version": version,
        "mlflow_run_id": ref.run_id,
        "threshold": ref.threshold,
        "feature_set_version": FEATURE_SET_VERSION,
        "git_commit": ref.tags.get("git_commit", "unknown"),
        DIGEST_TAG: ref.digest,
    }
    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download(version, Path(tmp))
        # Packaged only if signed by this platform; the Bento then checks the digest.
        check_seal(local, ref.tags, signing_key(settings), ref.label)
        with bentoml.models.create(
            name, labels={"mlflow_version": version, "alias": alias}, metadata=meta
        ) as bm:
            shutil.copytree(local, bm.path_of("mlflow_model"))
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    bento = bentoml.bentos.build(
        "serving.service:Vigil",
        name="vigil",
        version=f"v{version}-{stamp}",
        description=f"Vigil deterioration risk: {name} v{version} ({FEATURE_SET_VERSION})",
        labels={
            "mlflow_model": name,
            "mlflow_version": version,
            "feature_set_version": FEATURE_SET_VERSION,
        },
        include=["serving/*.py", "features/*.py", "stack/*.py", "conf/*.yaml"],
        models=[str(bm.tag)],
        python={"requirements_txt": str(REPO_ROOT / "requirements.lock")},
        envs=[  # inside a container the service listens on all interfaces
            BentoEnvSchema(name="VIGIL__SERVING__MODEL_SOURCE", value="bento"),
            BentoEnvSchema(name="VIGIL__SERVING__HOST", value="0.0.0.0"),
        ],
        build_ctx=str(REPO_ROOT),
    )
    return {
        "bento": str(bento.tag),
        "model": str(bm.tag),
        "mlflow_version": version,
        "path": str(Path(bento.path)),
    }


def main() -> None:
    out = package(load_settings())
    typer.echo(
        f"built Bento {out['bento']} with {out['model']} (MLflow v{out['mlflow_version']})\n"
        f"  at {out['path']}\n"
        f"  run it: bentoml serve {out['bento']}\n"
        f"  image (where Docker exists): bentoml containerize {out['bento']}"
    )
