"""deploy/: no container runtime here, so the files are held to what can be checked:
the published schemas (Compose Specification, Kubernetes 1.30 OpenAPI), and Vigil's own
contracts — every setting they give is a valid Vigil setting, every entry module exists,
every path the Dockerfile copies is in the repository, every scrape target is a service."""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.utils import canonicalize_name

from ops.images import STREAM_REQUIREMENTS, stream_requirements
from stack.settings import REPO_ROOT, load_settings

DEPLOY = REPO_ROOT / "deploy"
K8S_VERSION = "1.30.0"
SECRET_VALUES = {
    "VIGIL__POSTGRES__URL": "postgresql://vigil:pw@postgres:5432/vigil",
    "VIGIL__MLFLOW__SIGNING_KEY": "k" * 32,
}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    jsonschema.validate(_compose(), schema)


def test_a_compose_file_the_schema_refuses_is_refused() -> None:
    """The check can fail: a misspelt key is an error, not ignored."""
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    broken = _compose()
    broken["services"]["lander"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize(
    ("name", "doc"), _manifests(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_kubernetes_manifests_follow_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "vigil") == "vigil" or doc["kind"] == "Namespace"


def test_a_manifest_the_api_refuses_is_refused() -> None:
    import kubernetes_validate

    doc = next(d for n, d in _manifests() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_configmap_is_the_compose_config() -> None:
    config = next(d for n, d in _manifests() if d["kind"] == "ConfigMap")
    assert yaml.safe_load(config["data"]["vigil.yaml"]) == yaml.safe_load(
        (DEPLOY / "vigil.yaml").read_text()
    )


def _vigil_env(env: dict[str, Any] | list[dict[str, Any]]) -> dict[str, str]:
    """The VIGIL__ variables of a service or container, secrets given example values."""
    pairs = env.items() if isinstance(env, dict) else [(e["name"], e.get("value")) for e in env]
    out = {}
    for key, value in pairs:
        if key.startswith("VIGIL__"):
            out[key] = SECRET_VALUES.get(key, str(value))
    return out


def test_every_container_gets_valid_vigil_settings() -> None:
    """The config file plus each service's VIGIL__ variables load (unknown keys, wrong
    types and missing secrets would fail here), with what a container needs."""
    envs = [
        _vigil_env(svc.get("environment", {}))
        for svc in _compose()["services"].values()
        if "VIGIL_CONFIG" in (svc.get("environment") or {})
    ]
    envs += [
        _vigil_env(c.get("env", []))
        for _, d in _manifests()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert len(envs) >= 6
    for env in envs:
        assert set(env) == set(SECRET_VALUES)  # both secrets, from the environment
        s = load_settings(DEPLOY / "vigil.yaml", environ=env)
        assert s.kafka.bootstrap_servers  # never the embedded broker in a container
        assert s.postgres.url
        assert s.mlflow.tracking_uri
        assert s.landing.assignment == "group"
        assert s.serving.host == "0.0.0.0"


def _commands() -> list[list[str]]:
    cmds = [svc["command"] for svc in _compose()["services"].values() if "command" in svc]
    cmds += [
        c["command"]
        for _, d in _manifests()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if "command" in c
    ]
    text = (DEPLOY / "Dockerfile").read_text()
    cmds += [json.loads(m) for m in re.findall(r"^CMD (\[.*\])$", text, re.M)]
    return cmds


def test_every_entry_module_exists() -> None:
    modules = [c[c.index("-m") + 1] for c in _commands() if c[:2] == ["python", "-m"]]
    assert {"pipelines.landing", "serving"} <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_the_dockerfile_copies_what_exists_and_builds_the_targets_compose_names() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    built = {svc["build"]["target"] for svc in _compose()["services"].values() if "build" in svc}
    assert built <= stages, built - stages
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO_ROOT / src).exists(), src
    # Every package of Vigil's code is in the image (the entry modules import across them).
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests", "bench", "demo"}
    copied = {line.split()[0] for line in re.findall(r"^COPY (.+)$", text, re.M)}
    assert packages <= copied, packages - copied


def test_prometheus_scrapes_services_compose_runs() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    services = _compose()["services"]
    hosts = {t.split(":")[0] for job in prom["scrape_configs"]
             for sc in job.get("static_configs", []) for t in sc["targets"]}  # fmt: skip
    hosts |= {n for job in prom["scrape_configs"]
              for sd in job.get("dns_sd_configs", []) for n in sd["names"]}  # fmt: skip
    assert hosts <= set(services), hosts - set(services)
    assert Path(REPO_ROOT / "conf/prometheus/alerts.yml").exists()


def _lock_versions(text: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", text, re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_the_stream_images_requirements_are_fresh_and_pinned_as_in_the_lock() -> None:
    """requirements-stream.txt is what ops.images generates from the installed (locked)
    environment, a subset of requirements.lock at the same versions, and far smaller."""
    stream_text = STREAM_REQUIREMENTS.read_text()
    assert stream_text == stream_requirements(), "stale: run python -m ops.images"
    stream = _lock_versions(stream_text)
    lock = _lock_versions((REPO_ROOT / "requirements.lock").read_text())
    assert {name: lock.get(name) for name in stream} == stream
    assert {"kafka-python", "pyarrow", "psycopg", "httpx"} <= set(stream)
    assert not {"pyspark", "apache-airflow", "mlflow", "great-expectations", "bentoml"} & set(
        stream
    )
    assert len(stream) < len(lock) / 5


def test_the_lander_and_scorer_images_are_the_lean_stream_stage() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    parents = {stage: parent for parent, stage in stages}
    assert parents["lander"] == parents["scorer"] == "stream"
    stream = text[text.index("AS stream\n") : text.index("AS lander\n")]
    assert "requirements-stream.txt" in stream
    assert "requirements.lock" not in stream
    copied = {line.split()[0] for line in re.findall(r"^COPY (.+)$", stream, re.M)}
    # What the lander's and the scorer's processes import of Vigil (their integration
    # tests run them able to import only the stream requirements).
    assert copied >= {"conf", "stack", "pipelines", "features", "serving"}
    assert not copied & {"training", "monitoring", "dags", "ops"}
