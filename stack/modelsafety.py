"""Models are loaded only when they are what training registered, in a safe format.

The MLflow tracking server has no authentication of its own: anyone who can reach it can
register a version and move an alias, and the service hot-loads whatever ``@champion``
points to. So a model is loaded only if

1. its artifacts hash to the digest recorded at registration (``model_digest`` tag;
   SHA-256 over every file's path and bytes), and that digest — with the threshold and
   feature-set version it is served with — carries a valid HMAC-SHA256 signature
   (``model_signature`` tag) made with the platform's signing key, which the registry
   never sees (``mlflow.signing_key`` or the key file, see :func:`signing_key`);
2. it is an sklearn-flavoured model saved with ``skops`` (no pickle: loading runs no
   code of the file's choosing), loaded with *this* module's list of trusted types, not
   the list written inside the artifact.

Anything else is refused with :class:`UnsafeModelError`, and the previous model keeps
serving. A version registered before signing existed is refused too: retrain it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from stack.settings import Settings

DIGEST_TAG = "model_digest"
SIGNATURE_TAG = "model_signature"
SIGNING_KEY_FILE = "model-signing.key"  # under run_dir when no key is configured
# Types beyond skops' defaults that the families' fitted estimators contain.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)


class UnsafeModelError(RuntimeError):
    """A model that will not be loaded; the message says why and what to do."""


def artifact_digest(folder: Path) -> str:
    """SHA-256 over every file under ``folder``: its relative path, then its bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\x00")
    return h.hexdigest()


def signing_key(settings: Settings) -> bytes:
    """The key that signs registered models: ``mlflow.signing_key`` if set (from a secret
    store, ``VIGIL__MLFLOW__SIGNING_KEY``), else ``run_dir/model-signing.key``, made
    (random, owner-only) on first use. Training and serving must share it."""
    configured = settings.mlflow.signing_key
    if configured:
        return configured.encode()
    path = settings.run_path / SIGNING_KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:  # O_EXCL: two processes making it at once agree on the first one's key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


@dataclass(frozen=True)
class ModelSeal:
    """What a signature vouches for: the artifacts and how they are to be served."""

    digest: str
    threshold: str  # the threshold tag, exactly as written
    feature_set_version: str

    def payload(self) -> bytes:
        return json.dumps(
            {"digest": self.digest, "threshold": self.threshold, "fsv": self.feature_set_version},
            sort_keys=True,
        ).encode()

    def sign(self, key: bytes) -> str:
        return hmac.new(key, self.payload(), hashlib.sha256).hexdigest()

    def verify(self, key: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(key), signature)


def seal_tags(folder: Path, threshold: str, feature_set_version: str, key: bytes) -> dict[str, str]:
    """The tags that let a version be loaded later: digest and signature."""
    seal = ModelSeal(artifact_digest(folder), threshold, feature_set_version)
    return {DIGEST_TAG: seal.digest, SIGNATURE_TAG: seal.sign(key)}


def check_seal(folder: Path, tags: dict[str, str], key: bytes | None, what: str) -> None:
    """Refuse ``folder`` unless it matches the digest in ``tags`` and, with a ``key``, the
    signature over digest, threshold and feature-set version.

    Raises:
        UnsafeModelError: no seal, another digest, or a signature that does not verify.
    """
    digest, signature = tags.get(DIGEST_TAG), tags.get(SIGNATURE_TAG)
    if not digest or (key is not None and not signature):
        raise UnsafeModelError(
            f"{what} carries no signed digest (registered before model signing, or not by "
            "Vigil's training): retrain it with `make train`"
        )
    actual = artifact_digest(folder)
    if not hmac.compare_digest(actual, digest):
        raise UnsafeModelError(
            f"{what}: its artifacts changed since registration (digest {actual[:12]}..., "
            f"recorded {digest[:12]}...)"
        )
    if key is not None:
        seal = ModelSeal(digest, tags.get("threshold", ""), tags.get("feature_set_version", ""))
        if not seal.verify(key, signature or ""):
            raise UnsafeModelError(
                f"{what}: the signature does not verify with this platform's signing key "
                "(tags edited, or registered elsewhere): not loaded"
            )


def load_sklearn(folder: Path, what: str) -> Any:
    """The estimator of an MLflow sklearn model folder, if it was saved with skops.

    Raises:
        UnsafeModelError: not an sklearn model, or saved in a format that runs code on load.
    """
    import skops.io

    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"{what}: no readable MLmodel file ({exc})") from exc
    flavor = (spec or {}).get("flavors", {}).get("sklearn")
    if not isinstance(flavor, dict):
        raise UnsafeModelError(f"{what} is not an sklearn model")
    if flavor.get("serialization_format") != "skops":
        raise UnsafeModelError(
            f"{what} is saved as {flavor.get('serialization_format')!r}, which runs code when "
            "loaded: only skops models are served"
        )
    path = (folder / str(flavor.get("pickled_model", ""))).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        raise UnsafeModelError(f"{what}: its model file is missing or outside the artifact")
    try:
        return skops.io.load(path, trusted=list(SKOPS_TRUSTED_TYPES))
    except Exception as exc:  # untrusted types, a damaged file
        raise UnsafeModelError(
            f"{what}: skops refused the file ({type(exc).__name__}: {exc})"
        ) from exc
