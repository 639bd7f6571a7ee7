"""Training, the registry and the promotion gate against a real MLflow server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION
from stack.lake import Lake
from stack.localstack import mlflow_tracking_uri as tracking_uri
from stack.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistryError
from stack.settings import Settings
from stack.tracking import experiment_name
from training.job import TrainingDataError, load_rows, run_training
from training.promotion import run_promote

pytestmark = pytest.mark.integration


def test_no_features_in_the_lake_is_a_clear_error(training_settings: Settings) -> None:
    with pytest.raises(TrainingDataError, match="run `make features`"):
        run_training(training_settings)


def test_train_gate_promote_refuse_and_roll_back(
    training_settings: Settings, cohort: Any, cohort_rows: pd.DataFrame
) -> None:
    s = training_settings
    cohort.to_lake(Lake(s.lake.root))
    rows = load_rows(s)
    assert len(rows) == len(cohort_rows)
    reg = ModelRegistry(s)
    client = MlflowClient(tracking_uri(s))

    # 1. A model that is NEWS2 in disguise (every other feature blanked) is refused.
    news2_only = rows.copy()
    news2_only[[c for c in FEATURE_NAMES if c != "news2_total"]] = 0.0
    a = run_training(s, rows=news2_only)
    assert reg.by_alias(CHALLENGER).version == a.model_version  # type: ignore[union-attr]
    gate_a = run_promote(s)
    assert not gate_a.promoted
    assert not gate_a.decision.checks["beats_news2_roc_auc"]
    assert reg.by_alias(CHAMPION) is None
    assert reg.ref(a.model_version).tags["gate_decision"] == "reject"

    # 2. The real model beats NEWS2 and becomes the first champion.
    b = run_training(s)
    assert b.test["roc_auc"] > b.news2["roc_auc"]
    gate_b = run_promote(s)
    assert gate_b.promoted, gate_b.decision.reasons
    champ = reg.by_alias(CHAMPION)
    assert champ is not None
    assert champ.version == b.model_version
    assert reg.by_alias(CHALLENGER) is None  # the challenger's role is over
    assert champ.tags["previous_champion"] == "none"
    assert champ.tags["gate_decision"] == "promote"
    assert champ.tags["feature_set_version"] == FEATURE_SET_VERSION
    assert 0 < float(champ.tags["threshold"]) < 1

    # 3. A model trained on shuffled labels is at chance and is refused against it.
    shuffled = rows.copy()
    shuffled["label"] = np.random.default_rng(1).permutation(shuffled["label"].to_numpy())
    c = run_training(s, rows=shuffled)
    assert abs(c.test["roc_auc"] - 0.5) < 0.1  # scored against its own shuffled labels
    gate_c = run_promote(s)
    assert not gate_c.promoted
    assert not gate_c.decision.checks["not_worse_than_champion_roc_auc"]
    assert reg.by_alias(CHAMPION).version == b.model_version  # type: ignore[union-attr]
    assert reg.by_alias(CHALLENGER).version == c.model_version  # type: ignore[union-attr]

    # 4. Same data, same seed: the same hyperparameters and metrics (reproducible), and a
    #    model that is not worse than the champion is promoted over it.
    d = run_training(s)
    assert d.params == b.params
    assert d.test == b.test
    assert d.cv == b.cv
    gate_d = run_promote(s)
    assert gate_d.promoted, gate_d.decision.reasons
    assert gate_d.champion_before == b.model_version
    assert reg.ref(d.model_version).tags["previous_champion"] == b.model_version
    assert "retired_at" in reg.ref(b.model_version).tags

    # 5. Rollback restores the previous champion, once; the first has no predecessor.
    assert reg.rollback() == (d.model_version, b.model_version)
    assert reg.by_alias(CHAMPION).version == b.model_version  # type: ignore[union-attr]
    assert "rolled_back_at" in reg.ref(d.model_version).tags
    with pytest.raises(RegistryError, match="first champion"):
        reg.rollback()
    listed = {v.version: v.aliases for v in reg.versions()}  # what `make models` prints
    assert listed[b.model_version] == (CHAMPION,)
    assert listed[c.model_version] == ()  # c lost @challenger when d was trained
    assert listed[d.model_version] == ()

    # The champion loads from the registry by alias and scores like at training time.
    mlflow.set_tracking_uri(tracking_uri(s))
    model = mlflow.sklearn.load_model(f"models:/{s.training.registered_model}@{CHAMPION}")
    p = model.predict_proba(rows[list(FEATURE_NAMES)].head(50))[:, 1]
    assert ((p >= 0) & (p <= 1)).all()

    # What a data scientist sees in the MLflow UI: parent runs, nested studies and trials,
    # sortable metrics, lineage, figures and the model card.
    exp = client.get_experiment_by_name(experiment_name(s, s.training.experiment))
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parent = next(r for r in runs if r.info.run_id == b.run_id)
    kinds = [r.data.tags.get("vigil.kind") for r in runs]
    assert kinds.count("training") == 4
    assert kinds.count("study") == 4 * 2
    assert kinds.count("trial") == 4 * 2 * 2
    trial = next(r for r in runs if r.data.tags.get("vigil.kind") == "trial")
    assert trial.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in runs}
    for key in ("test_roc_auc", "test_pr_auc", "test_f1", "test_precision", "test_recall",
                "test_accuracy", "test_brier", "cv_pr_auc_mean", "cv_pr_auc_std",
                "news2_roc_auc", "threshold", "lead_minutes_median",
                "news2_ge5_ward_alert_ppv", "model_at_news2_ge5_ward_budget_alert_ppv",
                "model_at_news2_ge7_ward_budget_episodes_caught"):  # fmt: skip
        assert key in parent.data.metrics, key
    for key in ("feature_set_version", "data_from", "data_to", "git_commit",
                "etl_validation_runs"):  # fmt: skip
        assert parent.data.tags.get(key), key
    assert int(parent.data.params["data_rows"]) == len(rows)
    names = {a.path for a in client.list_artifacts(b.run_id)}
    assert {"model_card.md", "split.json", "figures", "subgroups.csv", "gate"} <= names
    figures = {a.path for a in client.list_artifacts(b.run_id, "figures")}
    assert {f"figures/{n}.png" for n in ("roc_pr", "calibration", "confusion_matrix",
            "feature_importance", "optuna_history")} <= figures  # fmt: skip
    card = Path(b.card_path).read_text()
    for section in ("## Data", "## Held-out patients: model vs NEWS2", "## Operating threshold",
                    "## Warning lead time", "## Subgroups", "## Limitations",
                    "## NEWS2 triggers vs the model at the same ward alerts"):  # fmt: skip
        assert section in card
    split = reg.run_json(b.run_id, "split.json")
    assert not set(split["train_patients"]) & set(split["test_patients"])
