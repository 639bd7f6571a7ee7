"""Does retraining on a drift scenario pay? Old model vs retrained, on many later wards.

The closed loop (``make demo-drift``, the loop test) shows one later ward scored live; a
ward of 75 patients × 12 h holds only 13-20 deteriorations, so one ward's comparison is
noisy. This bench asks the question over many held-out wards, in process (no servers):

- ``v1``: trained on a baseline day of ``--patients`` patients (the champion);
- ``v2 same size``: trained on a day of the scenario with the *same* number of patients
  (does the new regime teach something the old one did not, data volume aside?);
- ``v2 window``: trained on what a sliding window holds after the scenario day (the two
  baseline days and the scenario day, as ``make demo-drift`` retrains);

each scored on ``--wards`` later wards of the scenario (``--ward-patients`` × 12 h, other
seeds) and, as a control, as many later baseline wards. Per family, with fixed
hyperparameters (the tuned search is ``bench_training``'s subject, not this one's).

    python -m bench.bench_retrain [--scenario respiratory_wave --wards 10]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import typer
import xgboost
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import machine, versions, write_result
from features.spec import FEATURE_NAMES
from pipelines.cohort import ward_day
from stack.settings import Family, load_settings
from training.dataset import labelled_rows
from training.models import build, risk

PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 0.1},
    "xgboost": {
        "n_estimators": 300,
        "learning_rate": 0.05,
        "max_depth": 4,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
    },
    "random_forest": {"n_estimators": 200, "max_depth": 12, "min_samples_leaf": 20},
}
MODELS = ("v1", "v2_same_size", "v2_window")


def _rows(scenario: str, seed: int, day: int, patients: int, hours: float = 24) -> pd.DataFrame:
    s = load_settings(environ={})
    c = ward_day(s.simulator, s.features, scenario=scenario, seed=seed, day=day,
                 patients=patients, deterioration_rate=0.5, hours=hours)  # fmt: skip
    return labelled_rows(c.features, c.labels)


def _fit(family: Family, rows: pd.DataFrame) -> Any:
    est = build(family, PARAMS[family], positive_share=float(rows["label"].mean()),
                seed=0, n_jobs=2)  # fmt: skip
    return est.fit(rows[list(FEATURE_NAMES)], rows["label"])


def main(
    scenario: str = typer.Option("respiratory_wave"),
    patients: int = typer.Option(300, help="patients of each training day"),
    wards: int = typer.Option(10, help="held-out wards of the scenario (and of baseline)"),
    ward_patients: int = typer.Option(75),
    first_seed: int = typer.Option(3000),
    families: str = typer.Option("logistic_regression,xgboost"),
) -> None:
    t0 = time.perf_counter()
    # The training days of make demo-drift: baseline day 0, baseline day 1 (half), scenario.
    base = _rows("baseline", 11, 0, patients)
    base2 = _rows("baseline", 12, 1, patients // 2)
    new = _rows(scenario, 13, 2, patients)
    training = {"v1": base, "v2_same_size": new, "v2_window": pd.concat([base, base2, new])}
    held_out = {
        kind: [
            _rows(kind, first_seed + i + 100 * (kind == "baseline"), 3, ward_patients, 12)
            for i in range(wards)
        ]
        for kind in (scenario, "baseline")
    }
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {}
    for family in families.split(","):
        fam: Family = family  # type: ignore[assignment]
        fitted = {m: _fit(fam, rows) for m, rows in training.items()}
        per: dict[str, Any] = {}
        for kind, frames in held_out.items():
            scores: dict[str, list[tuple[float, float]]] = {m: [] for m in MODELS}
            for rows in frames:
                x, y = rows[list(FEATURE_NAMES)], rows["label"]
                for m, model in fitted.items():
                    p = risk(model, x)
                    scores[m].append((roc_auc_score(y, p), average_precision_score(y, p)))
            v1 = np.array(scores["v1"])
            summary: dict[str, Any] = {
                m: {
                    "roc_auc_mean": round(float(np.mean([a for a, _ in s])), 4),
                    "pr_auc_mean": round(float(np.mean([b for _, b in s])), 4),
                }
                for m, s in scores.items()
            }
            for m in MODELS[1:]:
                d = np.array(scores[m]) - v1
                summary[m] |= {
                    "roc_auc_minus_v1": round(float(d[:, 0].mean()), 4),
                    "pr_auc_minus_v1": round(float(d[:, 1].mean()), 4),
                    "roc_auc_wins": int((d[:, 0] > 0).sum()),
                    "pr_auc_wins": int((d[:, 1] > 0).sum()),
                }
            summary["per_ward"] = {
                m: [[round(a, 4), round(b, 4)] for a, b in s] for m, s in scores.items()
            }
            per[kind] = summary
            line = "  ".join(
                f"{m} ROC {summary[m]['roc_auc_mean']:.3f} PR {summary[m]['pr_auc_mean']:.3f}"
                for m in MODELS
            )
            typer.echo(f"{family:20s} on {kind:18s} {line}")
        out[family] = per
    result: dict[str, Any] = {
        "parameters": {
            "scenario": scenario,
            "training_patients": {m: int(r["patient_id"].nunique()) for m, r in training.items()},
            "training_rows": {m: len(r) for m, r in training.items()},
            "held_out_wards": wards,
            "held_out_ward": f"{ward_patients} patients x 12 h, deterioration rate 0.5/day",
            "held_out_positive_patients": {
                kind: [int(f.loc[f["label"] == 1, "patient_id"].nunique()) for f in frames]
                for kind, frames in held_out.items()
            },
            "first_seed": first_seed,
            "params": {f: PARAMS[f] for f in families.split(",")},
            "build_seconds": round(build_s, 1),
        },
        "question": "does a model retrained on the scenario beat the old champion on later "
        "wards of the scenario (wins out of held_out_wards), and not on baseline wards?",
        "results": out,
        "machine": machine(),
        "versions": {**versions("scikit-learn"), "xgboost": xgboost.__version__},
    }
    path = write_result(f"retrain_{scenario}", result)
    typer.echo(f"{path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    typer.run(main)
