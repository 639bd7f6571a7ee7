"""Only sealed, safely serialised models load (``stack.modelsafety``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from stack.modelsafety import (
    DIGEST_TAG,
    SIGNATURE_TAG,
    SKOPS_TRUSTED_TYPES,
    UnsafeModelError,
    artifact_digest,
    check_seal,
    load_sklearn,
    seal_tags,
    signing_key,
)
from stack.settings import Settings

KEY = b"k" * 32


def _save(tmp: Path, fmt: str) -> Path:
    import mlflow

    x = np.random.default_rng(0).normal(size=(50, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    out = tmp / f"model-{fmt}"
    mlflow.sklearn.save_model(
        model, out, serialization_format=fmt, skops_trusted_types=list(SKOPS_TRUSTED_TYPES)
    )
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("m"), "skops")


def _tags(folder: Path, threshold: str = "0.250000") -> dict[str, str]:
    return {
        "threshold": threshold, "feature_set_version": "v2",
        **seal_tags(folder, threshold, "v2", KEY),
    }  # fmt: skip


def test_a_sealed_skops_model_loads(saved: Path) -> None:
    tags = _tags(saved)
    check_seal(saved, tags, KEY, "m v1")
    model = load_sklearn(saved, "m v1")
    assert model.predict_proba(np.zeros((1, 3))).shape == (1, 2)


def test_changed_artifacts_are_refused(saved: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    tags = _tags(copy)
    (copy / "extra.txt").write_text("a file slipped in")
    with pytest.raises(UnsafeModelError, match="artifacts changed since registration"):
        check_seal(copy, tags, KEY, "m v1")


@pytest.mark.parametrize(
    "edit",
    [
        {"threshold": "0.990000"},  # alerts silenced by editing a tag
        {"feature_set_version": "v1"},
        {SIGNATURE_TAG: "0" * 64},
    ],
)
def test_edited_tags_or_a_forged_signature_are_refused(saved: Path, edit: dict[str, str]) -> None:
    tags = {**_tags(saved), **edit}
    with pytest.raises(UnsafeModelError, match="signature does not verify"):
        check_seal(saved, tags, KEY, "m v1")


def test_another_platforms_key_is_refused_and_an_unsealed_model_too(saved: Path) -> None:
    with pytest.raises(UnsafeModelError, match="signature does not verify"):
        check_seal(saved, _tags(saved), b"another key", "m v1")
    with pytest.raises(UnsafeModelError, match="no signed digest"):
        check_seal(saved, {"threshold": "0.25"}, KEY, "m v1")
    digest_only = {DIGEST_TAG: artifact_digest(saved)}
    check_seal(saved, digest_only, None, "a Bento's model")  # integrity without the key


def test_a_pickled_model_is_never_loaded(tmp_path: Path) -> None:
    folder = _save(tmp_path, "cloudpickle")
    with pytest.raises(UnsafeModelError, match="runs code when loaded"):
        load_sklearn(folder, "m v9")


def test_a_model_file_outside_the_artifact_is_refused(saved: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    spec = yaml.safe_load((copy / "MLmodel").read_text())
    spec["flavors"]["sklearn"]["pickled_model"] = "../../etc/passwd"
    (copy / "MLmodel").write_text(yaml.safe_dump(spec))
    with pytest.raises(UnsafeModelError, match="outside the artifact"):
        load_sklearn(copy, "m v1")


def test_the_signing_key_is_made_once_owner_only(settings: Settings) -> None:
    key = signing_key(settings)
    path = settings.run_path / "model-signing.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert signing_key(settings) == key
    assert len(key) == 64
    configured = settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"signing_key": "from-a-vault"})}
    )
    assert signing_key(configured) == b"from-a-vault"
