"""Clinical validity on held-out wards: the model against every NEWS2 trigger.

Two kinds of ward, each with its own model (in process: ``pipelines.cohort`` builds
features and labels with the batch path's pure functions; ``training.job``'s steps
tune, choose, calibrate; no MLflow needed):

- the **continuously monitored** ward of the base configuration (minute-level monitors,
  4-hour horizon), scored on a held-out ward of every simulator scenario;
- the **general ward** of ``conf/wards/general.yaml`` (observation sets at the NEWS2
  frequency, 24-hour horizon), the ward the early-warning literature reports on, scored
  on held-out baseline and respiratory-wave wards.

Held-out wards have **another seed** (patients the model never saw). Rows are those the
scorer scores (``training.rows: fresh``: on the general ward, the observation sets).
The model is reported side by side with NEWS2 (RCP 2017) as a score and as each of its
triggers (≥ 5, ≥ 7, ≥ 5 or a red score):

- discrimination: ROC-AUC, PR-AUC (patient-bootstrap interval of the ROC-AUC gain);
- calibration of the served risk: slope, mean risk / observed rate, Brier skill;
- at each trigger's alert budget (the model given as many alerts): sensitivity, PPV,
  episodes caught (an alert within the horizon before the outcome), and ward alerts per
  patient-day *after the scorer's alert policy* (``features.alerts.AlertPolicy``: quiet
  period, re-alert margin), for the trigger and for the model.

Published reference for NEWS2's own discrimination (24 h, any of death / ICU / arrest):
AUROC 0.873 per observation set (Smith et al., *Resuscitation* 2013;84:465-470, 35,585
admissions): the general ward's target. The monitored ward's 4-hour label on
minute-level data is a harder target for NEWS2 (see docs/clinical.md).

    python -m bench.bench_clinical [--patients 1000 --hours 48 --test-patients 500]
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import machine, versions, write_result
from features.news2 import TRIGGERS
from features.spec import FEATURE_NAMES
from pipelines.cohort import build_cohort
from pipelines.simulator.scenarios import SCENARIOS
from stack.settings import Settings, load_settings
from training.clinical import AlertPolicySettings, calibration_stats, matched_comparison
from training.dataset import labelled_rows
from training.evaluate import compare
from training.job import choose, prepare, scored_rows, study
from training.models import risk

PUBLISHED_NEWS2_AUROC_24H = 0.873  # Smith et al. 2013, any outcome within 24 h
GENERAL_WARD = Path(__file__).resolve().parents[1] / "conf" / "wards" / "general.yaml"


PART_PATIENTS = 1000  # a larger ward is simulated in parts, bounding memory
PART_SEED_STEP = 10_000  # part k of a ward of seed s has seed s + k x this


def _rows(sim: Any, settings: Settings) -> tuple[pd.DataFrame, float, dict[str, Any]]:
    """The ward's labelled rows (those the scorer would score), its labelled patient-days
    and the simulator's counts.

    A ward of more than :data:`PART_PATIENTS` patients is built as parts of that size
    (seeds ``seed + k * PART_SEED_STEP``), keeping only each part's scored rows: a
    4,000-patient general ward at once peaked near 17 GB.
    """
    cadence = settings.features.cadence_minutes
    parts = -(-sim.patients // PART_PATIENTS)
    frames, days, ward_days = [], 0.0, 0.0
    stats: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for k in range(parts):
        n = min(PART_PATIENTS, sim.patients - k * PART_PATIENTS)
        part = sim.model_copy(update={"patients": n, "seed": sim.seed + k * PART_SEED_STEP})
        c = build_cohort(part, settings.features)
        rows = labelled_rows(c.features, c.labels)
        days += len(rows) * cadence / 1440.0  # every grid row stands for a cadence of stay
        frames.append(scored_rows(settings, rows))
        stats.update({key: c.sim_stats[key] for key in _COUNTS})
        ward_days += len(c.features) * cadence / 1440.0
        kinds.update(c.sim_stats["outcomes_by_kind"])
        del c
    out = {**stats, "outcomes_by_kind": dict(kinds), "ward_patient_days": ward_days}
    return pd.concat(frames, ignore_index=True), days, out


_COUNTS = ("outcomes", "episodes_started", "episodes_resolving", "escalations", "rescues")


def _ward_facts(stats: dict[str, Any], days: float, rows: pd.DataFrame) -> dict[str, Any]:
    """The ward as a clinician would describe it: outcomes per 100 patient-days (all of
    the stays, not only labelled rows), their mix, episodes, escalations and rescues."""
    stay_days = stats["ward_patient_days"]
    return {
        "patient_days": round(stay_days, 1),
        "outcomes_per_100_patient_days": round(100 * stats["outcomes"] / stay_days, 2),
        "outcome_mix": stats["outcomes_by_kind"],
        "episodes": stats["episodes_started"], "resolving": stats["episodes_resolving"],
        "escalations": stats["escalations"], "rescues": stats["rescues"],
        "scored_rows_per_patient_day": round(len(rows) / max(days, 1e-9), 1),
    }  # fmt: skip


def _train(
    settings: Settings, patients: int, hours: float, seed: int
) -> tuple[Any, dict[str, Any]]:
    sim = settings.simulator.model_copy(
        update={"patients": patients, "hours": hours, "seed": seed, "scenario": "baseline"}
    )
    rows, days, stats = _rows(sim, settings)
    prepared = prepare(settings, rows)
    cfg = settings.training
    studies = [study(cfg, prepared, family) for family in cfg.families]
    chosen = choose(settings, prepared, studies)
    return chosen, {
        "patients": patients, "hours": hours, "seed": seed, "rows": len(rows),
        "positive_rows": int(rows["label"].sum()), "family": chosen.family,
        "calibration": chosen.calibration.calibration.method,
        "calibration_cv_log_loss": chosen.calibration.cv_log_loss,
        "threshold": chosen.threshold, "ward": _ward_facts(stats, days, rows),
    }  # fmt: skip


def _scenario(
    chosen: Any, settings: Settings, scenario: str, patients: int, hours: float, seed: int
) -> dict[str, Any]:
    sim = settings.simulator.model_copy(
        update={"patients": patients, "hours": hours, "seed": seed, "scenario": scenario}
    )
    rows, days, stats = _rows(sim, settings)
    y = rows["label"].to_numpy(dtype=np.int8)
    raw = risk(chosen.model, rows[list(FEATURE_NAMES)])
    p = chosen.calibration.calibration.apply(raw)
    news2 = rows["news2_total"].to_numpy(dtype=np.float64)
    iv = compare(y, {"model": p, "news2": news2}, rows["patient_id"].to_numpy(),
                 replicates=200, confidence=0.95, seed=0)  # fmt: skip
    cal = calibration_stats(y, p)
    out: dict[str, Any] = {
        "seed": seed, "patients": patients, "hours": hours, "rows": len(rows),
        "positive_rows": int(y.sum()), "patient_days": round(days, 1),
        "ward": _ward_facts(stats, days, rows),
        "model": {"roc_auc": float(roc_auc_score(y, p)),
                  "pr_auc": float(average_precision_score(y, p)), **cal,
                  "expected_observed": cal["mean_predicted"] / max(cal["observed_rate"], 1e-12)},
        "news2": {"roc_auc": float(roc_auc_score(y, news2)),
                  "pr_auc": float(average_precision_score(y, news2))},
        "roc_auc_gain": iv["model-news2"]["roc_auc"].to_dict(),
        "pr_auc_gain": iv["model-news2"]["pr_auc"].to_dict(),
        "triggers": {},
    }  # fmt: skip
    policy = AlertPolicySettings(
        settings.scorer.quiet_period_minutes, settings.scorer.realert_margin
    )
    for key, trigger in TRIGGERS.items():
        c = matched_comparison(rows, p, trigger, days, policy)
        out["triggers"][key] = {
            "label": trigger.label,
            "alerts_rows": c.trigger.alerts,
            "trigger": {"sensitivity": c.trigger.sensitivity, "ppv": c.trigger.precision,
                        "episodes_caught": c.trigger_lead["detected"],
                        "episodes": c.trigger_lead["episodes"],
                        "lead_minutes_median": c.trigger_lead["median_minutes"],
                        "ward_alerts_per_patient_day": c.trigger_ward_alerts},
            "model": {"sensitivity": c.model.sensitivity, "ppv": c.model.precision,
                      "episodes_caught": c.model_lead["detected"],
                      "lead_minutes_median": c.model_lead["median_minutes"],
                      "ward_alerts_per_patient_day": c.model_ward_alerts},
        }  # fmt: skip
        if c.ward is not None:  # the model held to the trigger's ward alerts instead
            w = c.ward
            out["triggers"][key]["ward_budget"] = {
                "threshold": w.threshold,
                "trigger": {"ward_alerts_per_patient_day": w.trigger_alerts / days,
                            "alert_ppv": w.trigger_ppv,
                            "episodes_caught": w.trigger_lead["detected"],
                            "lead_minutes_median": w.trigger_lead["median_minutes"]},
                "model": {"ward_alerts_per_patient_day": w.model_alerts / days,
                          "alert_ppv": w.model_ppv,
                          "episodes_caught": w.model_lead["detected"],
                          "lead_minutes_median": w.model_lead["median_minutes"]},
            }  # fmt: skip
    return out


def _family(
    settings: Settings, patients: int, hours: float, seed: int, test_patients: int,
    test_seed: int, scenarios: tuple[str, ...],
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Train on one ward of this kind, score held-out wards of each scenario."""
    t0 = time.perf_counter()
    chosen, trained = _train(settings, patients, hours, seed)
    trained["seconds"] = round(time.perf_counter() - t0, 1)
    wards = {
        name: _scenario(chosen, settings, name, test_patients, hours, test_seed + i)
        for i, name in enumerate(scenarios)
    }
    return trained, wards


def main(
    patients: int = typer.Option(1000, help="training ward (baseline scenario)"),
    hours: float = typer.Option(48.0, help="continuously monitored wards"),
    seed: int = typer.Option(42),
    test_patients: int = typer.Option(500, help="each held-out ward"),
    test_seed: int = typer.Option(901, help="held-out wards' seed (never trained on)"),
    trials: int = typer.Option(4, help="Optuna trials per family (monitored ward)"),
    general_trials: int = typer.Option(8, help="Optuna trials per family (general ward)"),
    general_patients: int = typer.Option(4000, help="general ward: training ward"),
    general_test_patients: int = typer.Option(2000, help="general ward: each held-out ward"),
) -> None:
    warnings.filterwarnings("ignore")

    def with_trials(s: Settings, n: int) -> Settings:
        return s.model_copy(update={"training": s.training.model_copy(update={"trials": n})})

    monitored = with_trials(load_settings(environ={}), trials)
    general = with_trials(load_settings(GENERAL_WARD, environ={}), general_trials)
    trained, wards = _family(
        monitored, patients, hours, seed, test_patients, test_seed, tuple(SCENARIOS)
    )
    g_trained, g_wards = _family(
        general, general_patients, general.simulator.hours, seed, general_test_patients,
        test_seed + 100, ("baseline", "respiratory_wave"),
    )  # fmt: skip
    base_ward = wards["baseline"]
    g_base = g_wards["baseline"]
    result = {
        "trained": trained | {"trials": trials},
        "wards": wards,
        "general_ward": {
            "config": str(GENERAL_WARD), "horizon_hours": general.features.horizon_hours,
            "trained": g_trained | {"trials": general_trials}, "wards": g_wards,
        },
        "figures": {
            "roc_auc_gain_low_every_ward": {
                "value": round(min(w["roc_auc_gain"]["low"]
                                   for w in (*wards.values(), *g_wards.values())), 4),
                "target": "> 0 (patient-bootstrap 95 % lower bound, every ward)",
                "met": all(w["roc_auc_gain"]["low"] > 0
                           for w in (*wards.values(), *g_wards.values())),
            },
            "baseline_calibration_slope": {
                "value": round(base_ward["model"]["calibration_slope"], 3),
                "target": "0.8 to 1.2",
                "met": 0.8 <= base_ward["model"]["calibration_slope"] <= 1.2,
            },
            "baseline_brier_skill": {
                "value": round(base_ward["model"]["brier_skill"], 3),
                "target": "> 0",
                "met": base_ward["model"]["brier_skill"] > 0,
            },
            "general_ward_news2_auroc_24h": {
                "value": round(g_base["news2"]["roc_auc"], 3),
                "target": f"0.80 to 0.90 (published 24 h: {PUBLISHED_NEWS2_AUROC_24H})",
                "met": 0.80 <= g_base["news2"]["roc_auc"] <= 0.90,
            },
            "general_ward_roc_auc_gain_low": {
                "value": round(g_base["roc_auc_gain"]["low"], 4),
                "target": "> 0 (patient-bootstrap 95 % lower bound)",
                "met": g_base["roc_auc_gain"]["low"] > 0,
            },
        },
        "machine": machine(),
        "versions": versions("scikit-learn", "xgboost-cpu", "numpy"),
    }  # fmt: skip
    path = write_result("clinical", result)
    typer.echo(f"written {path}")
    for kind, ws in (("monitored", wards), ("general", g_wards)):
        for name, w in ws.items():
            typer.echo(
                f"{kind:9s} {name:20s} model ROC {w['model']['roc_auc']:.3f} "
                f"NEWS2 {w['news2']['roc_auc']:.3f} gain {w['roc_auc_gain']['estimate']:+.3f} "
                f"[{w['roc_auc_gain']['low']:+.3f}] slope {w['model']['calibration_slope']:.2f} "
                f"skill {w['model']['brier_skill']:.3f}"
            )


if __name__ == "__main__":
    typer.run(main)
