"""Training on the simulator's standard cohort: the default budget's time and honesty.

The standard cohort is the baseline scenario, 1,000 patients × 48 h, seed 42 (about 120
deteriorations). It is built in process (``pipelines.cohort``: the same pure functions
as the Spark path), written to a private lake, and trained on with ``conf/base.yaml``'s
training section unchanged, against a private MLflow server; then the gate runs.

Targets (issue #5): champion ROC-AUC ≥ NEWS2's + 0.05 and PR-AUC ≥ 1.5 × NEWS2's on
held-out patients; default training + tuning ≤ 10 minutes on this 2-core machine.

    python -m bench.bench_training [--patients 1000 --hours 48 --seed 42]
"""

from __future__ import annotations

import time
from typing import Any

import typer

from bench.common import machine, private_stack, versions, write_result
from pipelines.cohort import build_cohort
from stack.lake import Lake
from training.job import run_training
from training.promotion import run_promote


def main(
    patients: int = typer.Option(1000),
    hours: float = typer.Option(48.0),
    seed: int = typer.Option(42),
) -> None:
    with private_stack(["mlflow"]) as (settings, _):
        sim = settings.simulator.model_copy(
            update={"patients": patients, "hours": hours, "seed": seed, "scenario": "baseline"}
        )
        t0 = time.perf_counter()
        cohort = build_cohort(sim, settings.features)
        build_s = time.perf_counter() - t0
        cohort.to_lake(Lake(settings.lake.root))

        t1 = time.perf_counter()
        s = run_training(settings)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        gate = run_promote(settings)
        gate_s = time.perf_counter() - t2

    roc, pr = s.test["roc_auc"], s.test["pr_auc"]
    n_roc, n_pr = s.news2["roc_auc"], s.news2["pr_auc"]
    iv = gate.decision.intervals
    result: dict[str, Any] = {
        "cohort": {
            "patients": patients, "hours": hours, "seed": seed, "scenario": "baseline",
            "outcomes": len(cohort.outcomes), "build_s": round(build_s, 1), **s.rows,
        },
        "training_budget": settings.training.model_dump(
            include={"families", "trials", "timeout_s", "folds", "tune_row_stride", "n_jobs"}
        ),
        "chosen": {"family": s.family, "params": s.params, "threshold": s.threshold},
        "studies": s.studies,
        "cv": s.cv,
        "held_out": {
            "model": s.test,
            "news2": {"roc_auc": n_roc, "pr_auc": n_pr},
            "intervals": {k: {m: v.to_dict() for m, v in d.items()} for k, d in iv.items()},
        },
        "figures": {
            "train_seconds": {"value": round(train_s, 1), "unit": "s", "target": "<= 600",
                              "met": train_s <= 600},
            "roc_auc_gain_over_news2": {"value": round(roc - n_roc, 4), "target": ">= 0.05",
                                        "met": roc - n_roc >= 0.05},
            "pr_auc_ratio_to_news2": {"value": round(pr / n_pr, 3), "target": ">= 1.5",
                                      "met": pr / n_pr >= 1.5},
            "not_trivial": {"value": round(roc, 4), "target": "ROC-AUC <= 0.97",
                            "met": roc <= 0.97},
            "gate_seconds": {"value": round(gate_s, 1), "unit": "s"},
        },
        "gate": {"promoted": gate.promoted, "reasons": gate.decision.reasons},
        "machine": machine(),
        "versions": versions("scikit-learn", "xgboost-cpu", "optuna", "mlflow"),
    }  # fmt: skip
    path = write_result("training", result)
    typer.echo(f"{path}: " + ", ".join(f"{k}={v['value']}" for k, v in result["figures"].items()))


if __name__ == "__main__":
    typer.run(main)
