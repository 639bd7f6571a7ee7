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
    with tempfile.TemporaryDirectory(prefix="vigil-bento-") as ctx:
        bento = _build(bm, name, version, stamp, Path(ctx))
    return {
        "bento": str(bento.tag),
        "model": str(bm.tag),
        "mlflow_version": version,
        "path": str(Path(bento.path)),
        "requirements": len(serving_requirements()),
    }


def _build(bm: Any, name: str, version: str, stamp: str, ctx: Path) -> Any:
    """``bentoml build`` from a context of the service's own code and requirements.

    BentoML takes the requirements file relative to the build context (it refuses an
    absolute path), and the context holds only what the service runs: its packages, the
    configuration and :func:`serving_requirements`, not the whole lock (Airflow, PySpark
    and Great Expectations are not served).
    """
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    for package in SERVED_PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, ctx / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (ctx / REQUIREMENTS).write_text("\n".join(serving_requirements()) + "\n")
    return bentoml.bentos.build(
        "serving.service:Vigil",
        name="vigil",
        version=f"v{version}-{stamp}",
        description=f"Vigil deterioration risk: {name} v{version} ({FEATURE_SET_VERSION})",
        labels={
            "mlflow_model": name,
            "mlflow_version": version,
            "feature_set_version": FEATURE_SET_VERSION,
        },
        include=[f"{p}/*.py" for p in SERVED_PACKAGES if p != "conf"] + ["conf/*.yaml"],
        models=[str(bm.tag)],
        python={"requirements_txt": REQUIREMENTS},
        envs=[  # inside a container the service listens on all interfaces
            BentoEnvSchema(name="VIGIL__SERVING__MODEL_SOURCE", value="bento"),
            BentoEnvSchema(name="VIGIL__SERVING__HOST", value="0.0.0.0"),
        ],
        build_ctx=str(ctx),
    )


SERVED_PACKAGES = ("serving", "features", "stack", "conf")
REQUIREMENTS = "requirements-serving.txt"
# What the service imports, directly or through features/ and stack/; the rest of the
# lock (Airflow, PySpark, Great Expectations, MLflow's server, dev tools) is not served.
SERVING_ROOTS = (
    "bentoml", "fastapi", "httpx", "numpy", "orjson", "pandas", "prometheus-client",
    "psutil", "pyarrow", "pydantic", "pydantic-core", "pyyaml", "scikit-learn", "scipy",
    "skops", "xgboost-cpu",
)  # fmt: skip


def serving_requirements(roots: tuple[str, ...] = SERVING_ROOTS) -> list[str]:
    """The service's own requirements, pinned: ``roots`` and everything they require, at
    the installed versions (which are the lock's), markers evaluated for this platform."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in pinned:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional requirement that is not installed
        pinned[key] = f"{dist.metadata['Name']}=={dist.version}"
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(pinned.values(), key=str.lower)


def main() -> None:
    out = package(load_settings())
    typer.echo(
        f"built Bento {out['bento']} with {out['model']} (MLflow v{out['mlflow_version']})\n"
        f"  at {out['path']}\n"
        f"  run it: bentoml serve {out['bento']}\n"
        f"  image (where Docker exists): bentoml containerize {out['bento']}"
    )
