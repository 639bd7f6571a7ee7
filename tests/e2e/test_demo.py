"""`make demo`'s job, small: stack → simulated ward → Kafka → raw lake → reconciled summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from demo.run import run_demo
from features.spec import FEATURE_SET_VERSION
from pipelines.eda.report import SECTIONS, run_eda
from pipelines.produce import with_simulator
from serving.server import ServingProcess
from stack.localstack import down, free_port
from tests.conftest import TINY_TRAINING, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_end_to_end_and_reconciles(tmp_path: Path) -> None:
    s = make_settings(
        tmp_path,
        serving={"port": free_port()},
        local_stack={
            "kafka_port": free_port(),
            "postgres_port": free_port(),
            "mlflow_port": free_port(),
            "start_timeout_s": 120,
        },
        mlflow={"local_store": str(tmp_path / "mlruns")},
        spark={"master": "local[2]", "shuffle_partitions": 4},
        etl={"reports_dir": str(tmp_path / "reports")},
        training={**TINY_TRAINING, "reports_dir": str(tmp_path / "reports" / "training")},
        eda={"reports_dir": str(tmp_path / "reports" / "eda")},
        # Frequent deteriorations, so a small ward holds enough episodes to train on.
        simulator={"episodes": {"deterioration_rate_per_day": 1.0, "enrichment": 1.0}},
    )
    s = with_simulator(s, patients=60, hours=8)
    console = Console(record=True, width=400)  # no wrapping of long paths
    try:
        result = run_demo(s, console, live_seconds=12)
        eda = run_eda(s)  # the EDA report from the lake the demo filled
    finally:
        ServingProcess(s).stop()  # the demo leaves the service up for the user; not here
        down(s)
    text = console.export_text()
    assert result["reconciliation"]["ok"], result["reconciliation"]
    # admissions are spread over the first quarter of the window: ~7/8 of full coverage
    assert 60 * 8 * 60 * 0.7 < result["landed"]["vitals"] < 60 * 8 * 60 * 1.05
    for needle in ("reconciled with simulator", "MLflow UI", "dead letters", "raw vitals",
                   "ETL:", "GX Data Docs"):  # fmt: skip
        assert needle in text
    etl = result["etl"]
    assert etl["status"] == "succeeded"
    totals = etl["totals"]
    assert totals["raw_rows"] == result["landed"]["vitals"]
    assert totals["raw_rows"] == (
        totals["source_rows"] + totals["quarantined_rows"] + totals["duplicates"]
    )
    assert f"127.0.0.1:{s.local_stack.mlflow_port}" in text
    feats = result["features"]
    assert feats["status"] == "succeeded"
    # ~60 patients × 8 h at one row per 5 minutes, less the admission spread.
    assert 60 * 8 * 12 * 0.6 < feats["feature_rows"] < 60 * 8 * 12 * 1.05
    assert sum(v for k, v in feats["labels"].items() if k != "positive") == feats["feature_rows"]
    assert f"features {FEATURE_SET_VERSION}" in text
    # Training registered a challenger; the gate judged it and said why.
    trained = result["training"]
    assert "skipped" not in trained, trained
    assert trained["model_version"] == "1"
    assert trained["rows"]["positive_rows"] > 0
    gate = result["gate"]
    assert gate is not None
    assert set(gate["checks"]) == {
        "beats_news2_roc_auc", "beats_news2_pr_auc",
        "beats_news2_ge5", "beats_news2_ge7", "beats_news2_ge5_or_red", "calibrated",
    }  # fmt: skip
    assert "Training and the promotion gate" in text
    assert "model card" in text
    # Live: the model was served and scored the streamed ward, whatever the gate said (a
    # first model it held back is served as @challenger, and the demo says so).
    live = result["live"]
    assert live is not None
    assert live["scored"] > 0
    assert live["versions"] == {"1": live["scored"]}
    assert "Live scoring" in text
    assert "BentoML" in text
    assert ("serves @challenger v1" in text) == (not gate["promoted"])
    # The EDA report read every zone of the real lake (raw, processed, quarantine, features).
    page = eda.html_path.read_text()
    assert all(f"id='{name}'" in page for name in SECTIONS)
    assert len(eda.figures["correlations"]) == 2  # the feature table was there
    assert eda.numbers["balance"]["patients"] == 60
    assert eda.numbers["quarantine_reasons"]  # the ETL's quarantine zone
    assert sum(r["after"] for r in eda.numbers["outliers"]) == 0
