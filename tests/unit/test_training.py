"""Training's pure parts: search spaces, families, metrics, bootstrap, gate, tuning."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.metrics import average_precision_score, roc_auc_score

from features.news2 import TRIGGERS
from features.spec import FEATURE_NAMES
from stack.settings import NEWS2_TRIGGERS, GateSettings, ParamRange, load_settings
from training.dataset import split_by_patient
from training.evaluate import compare, lead_times, metrics_at, weighted_ranking
from training.gate import decide, rule_comparison
from training.models import FAMILIES, build, importances, pip_requirements, risk, suggest
from training.promotion import gate_rows
from training.tune import fold_index, tune_family, tuning_rows

GATE = GateSettings(bootstrap=100)


# --------------------------------------------------------------------------- config
def test_search_ranges_are_validated() -> None:
    with pytest.raises(ValidationError, match="choices, or both low and high"):
        ParamRange(low=1)
    with pytest.raises(ValidationError, match="low 5 > high 2"):
        ParamRange(low=5, high=2)
    with pytest.raises(ValidationError, match="log range needs low > 0"):
        ParamRange(low=0.0, high=1.0, log=True)
    assert ParamRange(low=2, high=6).is_int
    assert not ParamRange(low=2.0, high=6.0).is_int


def test_base_config_search_spaces_build_every_family() -> None:
    cfg = load_settings(environ={}).training
    assert set(cfg.search_spaces) == set(FAMILIES)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    rng = np.random.default_rng(0)
    n = 8000  # the forest's widest leaves (300 rows of a 10 % bootstrap) need this many
    x = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    x.iloc[::7, 1] = np.nan  # missing values must be accepted by every family
    y = (x["a"] + rng.normal(scale=0.5, size=n) > 0.8).astype(int)
    for family in FAMILIES:
        trial = study.ask()
        params = suggest(trial, cfg.search_spaces[family])
        for name, r in cfg.search_spaces[family].items():
            if r.is_int:
                assert isinstance(params[name], int)
                assert r.low <= params[name] <= r.high  # type: ignore[operator]
            elif r.choices is not None:
                assert params[name] in r.choices
        model = build(family, params, positive_share=float(y.mean()), seed=0, n_jobs=1)
        model.fit(x, y)
        p = risk(model, x)
        assert p.shape == (n,)
        assert ((p >= 0) & (p <= 1)).all()
        assert roc_auc_score(y, p) > 0.7  # learns the planted signal
        imp = importances(model, list(x.columns))
        assert imp.index[0] == "a"


def test_unknown_family_or_parameter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        build("svm", {}, positive_share=0.1, seed=0, n_jobs=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['depth'\]"):
        build("xgboost", {"depth": 3}, positive_share=0.1, seed=0, n_jobs=1)


# --------------------------------------------------------------------------- metrics
def test_logged_models_declare_pinned_requirements_of_what_they_load() -> None:
    from importlib.metadata import version

    for family in FAMILIES:
        reqs = dict(r.split("==") for r in pip_requirements(family))
        assert reqs["scikit-learn"] == version("scikit-learn")
        assert reqs["mlflow"] == version("mlflow")
        assert {"skops", "numpy", "pandas", "scipy"} <= set(reqs)
        assert any(n.startswith("xgboost") for n in reqs) == (family == "xgboost"), reqs


def test_weighted_ranking_equals_sklearn_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(2000) < 0.05
    s = np.round(rng.random(2000) + 0.4 * y, 2)  # many ties
    w = rng.integers(0, 4, size=(3, 2000)).astype(float)
    roc, ap = weighted_ranking(y, s, w)
    for i in range(3):
        assert roc[i] == pytest.approx(roc_auc_score(y, s, sample_weight=w[i]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y, s, sample_weight=w[i]), abs=1e-12)


def test_metrics_at_threshold() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.2, 0.9])
    m = metrics_at(y, s, 0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def _patients_scores(n_pat: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``n_pat`` patients, half of whom deteriorate; a latent risk per row."""
    rng = np.random.default_rng(seed)
    pid = np.repeat([f"p{i:03d}" for i in range(n_pat)], 40)
    ever = np.repeat(rng.random(n_pat) < 0.5, 40)
    y = (ever & (np.tile(np.arange(40), n_pat) >= 30)).astype(np.int8)
    latent = y + rng.normal(scale=0.8, size=len(y))
    return pid, y, latent


def _calibrated(latent: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(y = 1 | latent) for latent ~ N(y, 0.8²): a perfectly calibrated risk."""
    prior = float(y.mean())
    logit = np.log(prior / (1 - prior)) + (2 * latent - 1) / (2 * 0.8**2)
    return 1 / (1 + np.exp(-logit))


def test_bootstrap_intervals_cover_the_estimate_and_a_difference_with_itself_is_zero() -> None:
    pid, y, latent = _patients_scores(60, 0)
    iv = compare(y, {"a": latent, "b": latent}, pid, replicates=100, confidence=0.9, seed=0)
    a = iv["a"]["roc_auc"]
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(roc_auc_score(y, latent))
    d = iv["a-b"]["pr_auc"]
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)


def test_patient_bootstrap_is_wider_than_a_row_bootstrap_would_be() -> None:
    pid, y, latent = _patients_scores(40, 1)
    by_patient = compare(y, {"m": latent}, pid, replicates=200, confidence=0.9, seed=0)
    by_row = compare(y, {"m": latent}, np.arange(len(y)), replicates=200, confidence=0.9, seed=0)
    width = {k: v["m"]["pr_auc"].high - v["m"]["pr_auc"].low
             for k, v in (("patient", by_patient), ("row", by_row))}  # fmt: skip
    assert width["patient"] > width["row"]


def test_lead_time_counts_episodes_and_takes_the_first_alert() -> None:
    rows = pd.DataFrame(
        {
            "patient_id": ["a"] * 4 + ["b"] * 3 + ["c"] * 2,
            "label": [0, 1, 1, 1, 1, 1, 1, 0, 0],
            "minutes_to_outcome": [300, 200, 100, 10, 150, 50, 5, np.nan, np.nan],
        }
    )
    alert = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=bool)  # a: first in-horizon alert at 100
    out = lead_times(rows, alert)
    assert out == {"episodes": 2.0, "detected": 1.0, "median_minutes": 100.0}


# --------------------------------------------------------------------------- gate
def test_gate_promotes_a_better_challenger_and_refuses_a_worse_one() -> None:
    pid, y, latent = _patients_scores(120, 2)
    rng = np.random.default_rng(9)
    news2 = np.round(np.clip(latent * 2 + rng.normal(scale=2.0, size=len(y)), 0, 20))
    champion = latent + rng.normal(scale=0.8, size=len(y))
    better = _calibrated(latent, y)
    worse = latent + rng.normal(scale=3.0, size=len(y))
    ok = decide(
        y,
        pid,
        challenger=better,
        news2_total=news2,
        news2_red=np.zeros_like(news2),
        champion=champion,
        cfg=GATE,
    )
    assert ok.promote, ok.reasons
    assert all(ok.checks.values())
    bad = decide(
        y,
        pid,
        challenger=worse,
        news2_total=news2,
        news2_red=np.zeros_like(news2),
        champion=champion,
        cfg=GATE,
    )
    assert not bad.promote
    assert not bad.checks["not_worse_than_champion_roc_auc"]
    assert any(r.startswith("FAIL roc_auc challenger − champion") for r in bad.reasons)


def test_gate_refuses_a_model_that_does_not_beat_news2() -> None:
    pid, y, latent = _patients_scores(120, 4)
    news2 = np.round(np.clip(latent * 3 + 3, 0, 20))
    same_as_news2 = news2 / 20 + 1e-3  # a monotone transform: the same ranking
    d = decide(
        y,
        pid,
        challenger=same_as_news2,
        news2_total=news2,
        news2_red=np.zeros_like(news2),
        champion=None,
        cfg=GATE,
    )
    assert not d.promote
    assert not d.checks["beats_news2_roc_auc"]
    assert not d.checks["beats_news2_pr_auc"]
    assert "not_worse_than_champion_roc_auc" not in d.checks  # no champion: not compared


def test_gate_refuses_a_good_ranker_whose_risks_are_not_risks() -> None:
    pid, y, latent = _patients_scores(120, 5)
    news2 = np.zeros(len(y))
    good = _calibrated(latent, y)
    ok = decide(y, pid, challenger=good, news2_total=news2, news2_red=news2, champion=None,
                cfg=GATE)  # fmt: skip
    assert ok.checks["calibrated"], ok.reasons
    assert ok.calibration["calibration_slope"] == pytest.approx(1.0, abs=0.25)
    # The same ranking, over-confident and inflated (what class weighting does): refused.
    logit = np.log(good / (1 - good))
    inflated = 1 / (1 + np.exp(-(2.5 * logit + 2)))
    bad = decide(y, pid, challenger=inflated, news2_total=news2, news2_red=news2,
                 champion=None, cfg=GATE)  # fmt: skip
    assert not bad.checks["calibrated"]
    assert not bad.promote
    assert bad.checks["beats_news2_roc_auc"]  # it ranks as well: only calibration fails
    assert any(r.startswith("FAIL calibration") for r in bad.reasons)


def test_rule_comparison_gives_the_model_the_rules_alert_count() -> None:
    y = np.array([1, 1, 0, 0, 0, 1])
    news2 = np.array([6, 2, 7, 1, 0, 5])  # rule >= 5 fires 3 times, catches 2 of 3
    model = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.7])  # its top 3 are all positives
    red = np.array([0, 1, 0, 0, 0, 0])  # row 1 has a single parameter scoring 3
    r = rule_comparison(y, model, news2, red, TRIGGERS["news2_ge5"])
    assert r["alerts"] == 3
    assert r["rule_sensitivity"] == pytest.approx(2 / 3)
    assert r["model_sensitivity_same_alerts"] == pytest.approx(1.0)
    # ≥ 5 or red also fires on row 1: 4 alerts, all 3 positives; ≥ 7 fires once, on a miss.
    r = rule_comparison(y, model, news2, red, TRIGGERS["news2_ge5_or_red"])
    assert (r["alerts"], r["rule_sensitivity"]) == (4, 1.0)
    r = rule_comparison(y, model, news2, red, TRIGGERS["news2_ge7"])
    assert (r["alerts"], r["rule_sensitivity"], r["model_sensitivity_same_alerts"]) == (1, 0, 1 / 3)


def test_trigger_check_reads_a_patient_bootstrap_interval() -> None:
    pid, y, latent = _patients_scores(120, 6)
    rng = np.random.default_rng(6)
    news2 = np.round(np.clip(latent * 2 + 3 + rng.normal(scale=1.0, size=len(y)), 0, 20))
    red = np.zeros(len(y))
    trig = TRIGGERS["news2_ge5"]
    good = rule_comparison(y, latent, news2, red, trig, pid, replicates=100, seed=1)
    assert good["difference_low"] <= good["difference"] <= good["difference_high"]
    noise = rng.normal(size=len(y))  # ranks nothing: clearly worse at the same workload
    bad = rule_comparison(y, noise, news2, red, trig, pid, replicates=100, seed=1)
    assert bad["difference_high"] < 0
    d = decide(y, pid, challenger=noise, news2_total=news2, news2_red=red, champion=None,
               cfg=GATE)  # fmt: skip
    assert not d.checks["beats_news2_ge5"]
    assert any("upper bound must be ≥ 0" in r and r.startswith("FAIL") for r in d.reasons)


def test_gate_checks_every_configured_trigger() -> None:
    pid, y, latent = _patients_scores(120, 4)
    rng = np.random.default_rng(2)
    news2 = np.round(np.clip(latent * 2 + rng.normal(scale=2.0, size=len(y)), 0, 20))
    red = (rng.random(len(y)) < 0.1).astype(float)
    d = decide(y, pid, challenger=latent, news2_total=news2, news2_red=red, champion=None,
               cfg=GateSettings(bootstrap=50, news2_triggers=["news2_ge7"]))  # fmt: skip
    assert [k for k in d.checks if k.startswith("beats_news2_ge")] == ["beats_news2_ge7"]
    assert set(d.rule) == {"news2_ge7"}
    with pytest.raises(ValidationError):
        GateSettings(news2_triggers=["news2_ge6"])
    with pytest.raises(ValidationError):
        GateSettings(news2_triggers=[])
    # The settings' list of triggers is the chart's (features.news2.TRIGGERS).
    assert tuple(GateSettings().news2_triggers) == NEWS2_TRIGGERS == tuple(TRIGGERS)


def test_gate_set_excludes_patients_the_champion_trained_on() -> None:
    rows = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "d"], "label": [0, 1, 0, 0, 1]})
    judged, excluded = gate_rows(rows, ["a", "b", "c"], champion_train=["b", "x"])
    assert set(judged["patient_id"]) == {"a", "c"}
    assert excluded == 1


# --------------------------------------------------------------------------- tuning
def test_tuning_rows_and_fold_index() -> None:
    rows = pd.DataFrame(
        {"patient_id": ["b"] * 5 + ["a"] * 4, "ts": list(range(5)) + list(range(4))}
    )
    t = tuning_rows(rows.sample(frac=1, random_state=0), 2)
    assert list(zip(t["patient_id"], t["ts"], strict=True)) == [
        ("a", 0), ("a", 2), ("b", 0), ("b", 2), ("b", 4),
    ]  # fmt: skip
    assert fold_index(pd.Series(["a", "b", "a"]), (("a",), ("b",))).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="outside the folds"):
        fold_index(pd.Series(["a", "z"]), (("a",), ("b",)))


def _tune(rows: pd.DataFrame, seed: int, family: Any = "xgboost") -> Any:
    cfg = load_settings(environ={}).training
    split = split_by_patient(rows, folds=3, seed=seed)
    train = tuning_rows(rows[rows["patient_id"].isin(split.train_patients)], 3)
    return split, tune_family(
        family, train, split.folds, cfg.search_spaces[family],
        trials=3, timeout_s=None, seed=seed, n_jobs=2,
    )  # fmt: skip


@pytest.mark.slow
def test_same_seed_same_hyperparameters_and_metrics(cohort_rows: pd.DataFrame) -> None:
    _, a = _tune(cohort_rows, seed=3)
    _, b = _tune(cohort_rows, seed=3)
    assert a.best_params == b.best_params
    assert a.best.fold_pr_auc == b.best.fold_pr_auc
    assert np.array_equal(a.oof, b.oof, equal_nan=True)
    _, c = _tune(cohort_rows, seed=4)
    assert c.best_params != a.best_params


@pytest.mark.slow
def test_shuffled_labels_give_chance_level_on_held_out_patients(
    cohort_rows: pd.DataFrame,
) -> None:
    """No leakage: a model trained on permuted labels knows nothing of held-out patients.

    The bound is one-sided: leakage would show as *above*-chance AUC. On this cohort
    permuted labels give somewhat *below*-chance AUC (measured with the vitals-v2 features:
    mean 0.42 over 12 permutations, 0.38-0.52; the 32 held-out patients are few), which
    says nothing about leakage.
    """
    rows = cohort_rows.copy()
    split = split_by_patient(rows, folds=3, seed=0)
    train = rows[rows["patient_id"].isin(split.train_patients)].copy()
    test = rows[rows["patient_id"].isin(split.test_patients)]
    assert not set(train["patient_id"]) & set(test["patient_id"])
    aucs = []
    for seed in range(3):
        train["label"] = np.random.default_rng(seed).permutation(train["label"].to_numpy())
        model = build("xgboost", {"n_estimators": 100, "max_depth": 3}, positive_share=0.1,
                      seed=seed, n_jobs=2)  # fmt: skip
        model.fit(train[list(FEATURE_NAMES)], train["label"])
        aucs.append(roc_auc_score(test["label"], risk(model, test[list(FEATURE_NAMES)])))
    assert np.mean(aucs) < 0.57, aucs
    # ...while the true labels carry real signal for the same model and rows.
    truth = cohort_rows[cohort_rows["patient_id"].isin(split.train_patients)]
    model = build("xgboost", {"n_estimators": 100, "max_depth": 3}, positive_share=0.1,
                  seed=0, n_jobs=2)  # fmt: skip
    model.fit(truth[list(FEATURE_NAMES)], truth["label"])
    assert roc_auc_score(test["label"], risk(model, test[list(FEATURE_NAMES)])) > 0.75
