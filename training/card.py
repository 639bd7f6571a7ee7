"""The model card: what a clinician, a data scientist and an auditor need on one page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.calibrate import CalibrationChoice
from training.clinical import MatchedComparison, comparisons_table, ward_budget_table
from training.evaluate import Interval
from training.threshold import OperatingPoint
from training.tune import StudyResult


@dataclass(frozen=True)
class ModelCard:
    model_name: str
    family: str
    params: dict[str, Any]
    run_id: str
    lineage: dict[str, str]
    counts: dict[str, int]
    cv: dict[str, float]
    test: dict[str, float]
    intervals: dict[str, dict[str, Interval]]
    triggers: dict[str, MatchedComparison]
    calibration: CalibrationChoice
    calibration_test: dict[str, float]
    calibration_raw: dict[str, float]
    calibration_groups: pd.DataFrame
    operating_valid: OperatingPoint
    operating_test: OperatingPoint
    ward_alerts: float  # per patient-day at the threshold, after the scorer's alert policy
    budget: str
    lead_model: dict[str, float]
    subgroups: pd.DataFrame
    importances: pd.Series
    studies: list[StudyResult]
    horizon_hours: float = 4.0
    rows: str = "fresh"  # training.rows
    enrichment: float = 1.0  # simulator.episodes.enrichment of the configuration


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [_f(v) if isinstance(v, float) else str(v) for v in row.tolist()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _odds_note(odds_ratio: float) -> str:
    if odds_ratio == 1.0:
        return " (no prevalence correction)"
    return f", then corrected to deployment odds × {odds_ratio:g} (enriched training data)"


def _enrichment_note(enrichment: float, odds_ratio: float) -> str:
    """What the configured simulator's enrichment means for the served risk."""
    if enrichment == 1.0:
        return ""
    text = (
        f" This configuration's simulated wards are enriched {enrichment:g}× over the real "
        "ward's deterioration rate (`simulator.episodes.enrichment`, chosen so a few "
        "hundred patients hold enough outcomes to train on); "
    )
    if abs(odds_ratio * enrichment - 1.0) < 0.05:
        return text + "the odds ratio above takes the risk back to the real ward's rate."
    return text + (
        f"the served risk is the enriched ward's, about {enrichment:g}× the real ward's for "
        f"a rare outcome (`odds_ratio: {1 / enrichment:.3g}` serves the real ward's)."
    )


def _calibration_lines(c: ModelCard) -> list[str]:
    cal, t, r = c.calibration.calibration, c.calibration_test, c.calibration_raw
    losses = ", ".join(f"{k} {v:.4f}" for k, v in c.calibration.cv_log_loss.items())
    return [
        f"The served number is the **{cal.describe()}**. A **{cal.method}** map, chosen by "
        f"patient-grouped cross-validated log-loss on out-of-fold predictions ({losses}), "
        "turns the estimator's score into it; the map is sealed with the model.",
        "",
        "| held-out patients | observed rate | mean risk | slope | intercept | Brier | "
        "Brier skill |",
        "|---|---|---|---|---|---|---|",
        f"| calibrated risk | {_f(t['observed_rate'], 4)} | {_f(t['mean_predicted'], 4)} | "
        f"{_f(t['calibration_slope'], 2)} | {_f(t['calibration_intercept'], 2)} | "
        f"{_f(t['brier'], 4)} | {_f(t['brier_skill'])} |",
        f"| raw score | {_f(r['observed_rate'], 4)} | {_f(r['mean_predicted'], 4)} | "
        f"{_f(r['calibration_slope'], 2)} | {_f(r['calibration_intercept'], 2)} | "
        f"{_f(r['brier'], 4)} | {_f(r['brier_skill'])} |",
        "",
        "Slope 1 and intercept 0 are ideal; Brier skill is 1 − Brier / Brier of predicting "
        "the observed rate for everyone (> 0: better than the base rate). Figures: "
        "`calibration.png` (reliability diagram), `decision_curve.png` (net benefit).",
    ]


# What the card and the run report, item by item (TRIPOD+AI 2024's headings, abridged).
_CHECKLIST = [
    "| item | where |",
    "|---|---|",
    "| Source of data, participants, outcome and its horizon | Data; docs/simulator.md; "
    "`features/labels.py` |",
    "| Predictors, their definition and timing | `features/spec.py` (feature-set version "
    "above); docs/features.md |",
    "| Sample size, events, missing data | Data (rows, positives); `news2_missing` and "
    "`*_age_min` features carry missingness |",
    "| Model type, tuning, internal validation | Model selection (patient-grouped CV) |",
    "| Performance: discrimination with intervals | Held-out patients (patient bootstrap) |",
    "| Performance: calibration | Calibration; per subgroup |",
    "| Clinical utility | NEWS2 triggers at matched budgets; decision curve |",
    "| Fairness: performance by subgroup | Subgroups |",
    "| Comparison with the standard of care | NEWS2 (continuous and its three triggers) |",
    "| Limitations, intended use | opening paragraph; Limitations |",
    "| Code and model availability | MLflow run and registry version; git commit above |",
    "| External validation | **not done**: simulated data only |",
]


def render_card(c: ModelCard) -> str:
    """Markdown text of the card."""
    iv_m, iv_n, iv_d = c.intervals["model"], c.intervals["news2"], c.intervals["model-news2"]
    lines = [
        f"# Model card — {c.model_name} ({c.family})",
        "",
        "Predicts, at each new reading of a ward patient (a monitor reading or a charted "
        "observation set), the risk of a deterioration outcome (ICU transfer, rapid-response "
        f"call, cardiac arrest) within {c.horizon_hours:g} hours, from vital signs and "
        "admission facts. It supports, and does not replace, the clinical NEWS2 escalation "
        "protocol.",
        "",
        f"MLflow run `{c.run_id}` · feature set `{c.lineage['feature_set_version']}` "
        f"(digest `{c.lineage['feature_set_digest'][:12]}`) · git `{c.lineage['git_commit'][:12]}`",
        "",
        "## Data",
        f"- Feature times {c.lineage['data_from']} → {c.lineage['data_to']}; "
        f"{c.counts['patients']:,} patients, {c.counts['rows']:,} labelled rows "
        f"({c.counts['positive_rows']:,} positive).",
        f"- Split by patient (seed {c.lineage['split_seed']}): {c.counts['train_rows']:,} "
        f"training rows (tuning on {c.counts['tuning_rows']:,}), {c.counts['test_rows']:,} "
        f"rows of held-out patients ({c.counts['test_positive_rows']:,} positive). No patient "
        "is on both sides.",
        f"- ETL validation runs: {c.lineage['etl_validation_runs'][:300]}",
        "",
        "## Model selection (patient-grouped cross-validation)",
        _table(
            pd.DataFrame(
                [
                    {
                        "family": s.family,
                        "trials": len(s.trials),
                        "pruned": sum(t.state == "PRUNED" for t in s.trials),
                        "CV PR-AUC": float(np.mean(s.best.fold_pr_auc)),
                        "± s.d.": float(np.std(s.best.fold_pr_auc)),
                        "CV ROC-AUC": float(np.mean(s.best.fold_roc_auc)),
                        "seconds": float(s.seconds),
                    }
                    for s in c.studies
                ]
            )
        ),
        "",
        f"Chosen: **{c.family}** with {c.params}.",
        "",
        "## Held-out patients: model vs NEWS2 (95 % patient-bootstrap intervals)",
        "| | ROC-AUC | PR-AUC |",
        "|---|---|---|",
        f"| model | {iv_m['roc_auc']} | {iv_m['pr_auc']} |",
        f"| NEWS2 (continuous) | {iv_n['roc_auc']} | {iv_n['pr_auc']} |",
        f"| model − NEWS2 | {iv_d['roc_auc']} | {iv_d['pr_auc']} |",
        "",
        f"PR-AUC ratio model / NEWS2: {_f(iv_m['pr_auc'].estimate / iv_n['pr_auc'].estimate, 2)}×.",
        "",
        "## Calibration: the risk is a probability",
        *_calibration_lines(c),
        "",
        "## Operating threshold and alert budget",
        f"Budget: {c.budget}; threshold {_f(c.operating_valid.threshold, 4)} chosen on "
        "out-of-fold validation predictions.",
        "",
        "| | threshold | sensitivity | PPV | alerts / patient-day | F1 | accuracy | Brier |",
        "|---|---|---|---|---|---|---|---|",
        f"| model, validation | {_f(c.operating_valid.threshold, 4)} | "
        f"{_f(c.operating_valid.sensitivity)} | {_f(c.operating_valid.precision)} | "
        f"{_f(c.operating_valid.alerts_per_patient_day, 1)} | | | |",
        f"| model, test | {_f(c.operating_test.threshold, 4)} | {_f(c.test['recall'])} | "
        f"{_f(c.test['precision'])} | {_f(c.operating_test.alerts_per_patient_day, 1)} | "
        f"{_f(c.test['f1'])} | {_f(c.test['accuracy'])} | {_f(c.test['brier'], 4)} |",
        "",
        "Alerts here are feature rows (one per patient per 5 minutes) over the threshold; "
        "the scorer's alert policy (quiet period, re-alert margin) turns runs of them into "
        f"**{_f(c.ward_alerts, 2)} ward alerts per patient-day** on the held-out patients.",
        "",
        "## NEWS2 triggers vs the model at the same alert budget (held-out patients)",
        "Each trigger of the RCP chart (≥ 5, ≥ 7, ≥ 5 or a single parameter scoring 3) and "
        "the model given exactly as many alerts (its highest risks). Episodes are caught by "
        "an alert within the horizon before the outcome; lead is from the first such alert.",
        "",
        _table(comparisons_table(c.triggers)),
        "",
        "## NEWS2 triggers vs the model at the same ward alerts (held-out patients)",
        "At a row budget the scorer's alert policy turns the trigger's long runs of "
        "crossings into few alerts and the model's into more. Here the model gets its "
        "lowest threshold that raises no more *ward alerts* than the trigger. Alert PPV: "
        "the share of those alerts raised within the horizon before a deterioration.",
        "",
        _table(ward_budget_table(c.triggers)),
        "",
        "## Warning lead time at the operating threshold (held-out episodes)",
        f"- Model: {int(c.lead_model['detected'])} of {int(c.lead_model['episodes'])} episodes "
        f"alerted within the horizon; median lead {_f(c.lead_model['median_minutes'], 0)} min "
        "from the first alert to the outcome.",
        "",
        "## Subgroups (held-out patients, model at the threshold)",
        _table(c.subgroups),
        "",
        "### Calibration per subgroup",
        _table(c.calibration_groups),
        "",
        "## Most important features",
        _table(c.importances.head(15).rename("importance").rename_axis("feature").reset_index()),
        "",
        "## Limitations",
        "- Trained and evaluated on simulated patients; performance on real wards must be "
        "established before any clinical use.",
        "- Labels come from recorded outcomes: a patient who deteriorated without an "
        "escalation being recorded counts as a negative.",
        f"- Rows within {c.horizon_hours:g} hours of the data's end are censored (positives "
        "and negatives alike) and not used; patients whose outcome preceded the data window "
        "are absent."
        + (
            " Only rows with a reading since the previous row train and test it "
            "(`training.rows: fresh`): the moments the scorer scores."
            if c.rows == "fresh"
            else ""
        ),
        "- Subgroups with few positives have wide, unreported uncertainty.",
        f"- The calibration map was fitted on this data's event rate"
        f"{_odds_note(c.calibration.calibration.odds_ratio)}; a ward with another rate needs "
        "`training.calibration.odds_ratio` (or recalibration on its own outcomes)."
        + _enrichment_note(c.enrichment, c.calibration.calibration.odds_ratio),
        "- Drift in population or sensors degrades it; see the monitoring reports.",
        "",
        "## Reporting checklist (TRIPOD+AI, Collins et al., BMJ 2024;385:e078378)",
        *_CHECKLIST,
    ]
    return "\n".join(lines) + "\n"
