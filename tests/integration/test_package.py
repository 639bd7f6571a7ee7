"""``make package``: a Bento of the champion that serves without the registry.

It failed with the pinned BentoML ("Absolute path … requirements.lock is not allowed")
and no test covered it. Here the real command builds a Bento into a BentoML home of the
test's own, and the real ``bentoml serve`` of that Bento answers as the registry-served
champion does, from a requirement set without Airflow, PySpark or Great Expectations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from features.spec import FEATURE_NAMES
from stack.localstack import free_port, write_private
from stack.modelsafety import signing_key
from stack.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration

NOT_SERVED = ("apache-airflow", "pyspark", "great-expectations", "mlflow", "pytest", "mypy")


def _env(tmp: Path, s: Settings, **extra: str) -> dict[str, str]:
    config = tmp / "settings.yaml"
    write_private(config, yaml.safe_dump(s.model_dump(mode="json")))
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ, "VIGIL_CONFIG": str(config), "BENTOML_HOME": str(tmp / "bentoml"),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_DO_NOT_TRACK": "true", **extra,
    }  # fmt: skip


def test_make_package_builds_a_bento_that_serves_the_champion_alone(
    served: dict[str, Any], tmp_path: Path
) -> None:
    base: Settings = served["settings"]
    # The key that signed the models travels in the settings (another run dir here).
    s = base.model_copy(
        update={
            "mlflow": base.mlflow.model_copy(update={"signing_key": signing_key(base).decode()})
        }
    )
    env = _env(tmp_path, s)
    built = subprocess.run(
        [sys.executable, "-m", "serving", "package"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    tag = next(line.split()[2] for line in built.stdout.splitlines() if line.startswith("built"))
    assert tag.startswith("vigil:v")

    bento = tmp_path / "bentoml" / "bentos" / "vigil" / tag.split(":")[1]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "bentoml==" in requirements
    assert "scikit-learn==" in requirements
    assert not [p for p in NOT_SERVED if f"\n{p}==" in f"\n{requirements}"]

    port = free_port()
    serve_env = _env(tmp_path, s, VIGIL__SERVING__MODEL_SOURCE="bento",
                     VIGIL__SERVING__PORT=str(port))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.launch", "serve", tag, "--host", "127.0.0.1",
         "--port", str(port)],
        env=serve_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"")[-3000:]
            time.sleep(1)
        rows = {"rows": [dict.fromkeys(FEATURE_NAMES, 0.5), dict.fromkeys(FEATURE_NAMES, None)]}
        packaged = httpx.post(f"{url}/predict", json=rows, timeout=30)
        registry = httpx.post(f"{served['url']}/predict", json=rows, timeout=30)
        assert packaged.status_code == 200, packaged.text
        got, want = packaged.json(), registry.json()
        assert [p["risk"] for p in got] == pytest.approx([p["risk"] for p in want], abs=1e-12)
        assert {p["model_version"] for p in got} == {served["champion"]}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
