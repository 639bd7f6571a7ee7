"""``make demo-drift``: the closed loop, from a quiet ward to a retrained champion.

1. A baseline ward (day 0) → train → gate → ``@champion`` v1.
2. Another baseline day: monitoring finds nothing (no false alarm).
3. A respiratory-virus wave (day 2): monitoring names the drifted columns and triggers;
   ``retrain_if_needed`` trains on the sliding window (the three days), the gate decides.
4. A later period of the wave, never trained on, streamed live through the BentoML
   service and the scorer with the previous champion in shadow; once its outcomes have
   landed, both are judged on their stored predictions (realized performance).

Wards are simulated and featurised in process (``pipelines.cohort``: the same pure
functions as the Kafka → Spark path, proven equal by the feature parity tests), into a
lake and a PostgreSQL database of the demo's own, so the loop takes minutes, not hours,
and leaves the main demo's data alone. MLflow is the stack's server: the runs are there
to compare in the UI.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from monitoring.job import (
    champion,
    landed_outcomes,
    run_monitoring,
    stored_predictions,
)
from monitoring.performance import realized
from monitoring.report import render
from ops.live import score_live
from ops.retrain import retrain_if_needed
from pipelines.cohort import Cohort, build_cohort, ward_day, ward_day_settings
from stack import db
from stack.db import recreate_database
from stack.lake import Lake
from stack.localstack import endpoints, up
from stack.logs import configure_logging
from stack.registry import CHALLENGER, ModelRef, ModelRegistry
from stack.settings import LoggingSettings, Settings, load_settings
from training.job import run_training
from training.promotion import run_promote

DB = "vigil_drift_demo"


def demo_settings(base: Settings) -> Settings:
    """``base`` with a lake, database, registered model and budget of the demo's own."""
    url = endpoints(base).database_url
    own = recreate_database(url, DB)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lake = base.resolve(base.lake.root).parent / f"drift-demo-{stamp}"
    out = base.model_copy(
        update={
            "lake": base.lake.model_copy(update={"root": str(lake)}),
            "postgres": base.postgres.model_copy(update={"url": own}),
            "training": base.training.model_copy(
                update={
                    "experiment": "drift-demo",
                    # A registered model per run: a champion left by an earlier run
                    # would otherwise be the gate's opponent and the monitored model.
                    "registered_model": f"vigil-drift-demo-{stamp}",
                    "trials": 4,
                    "timeout_s": 60.0,
                    "families": ("logistic_regression", "xgboost"),
                }
            ),
            "monitoring": base.monitoring.model_copy(
                update={
                    "experiment": "drift-demo-monitoring",
                    "retrain": base.monitoring.retrain.model_copy(update={"window_days": 3.0}),
                }
            ),
        }
    )
    db.migrate(out)
    return out


def ward(base: Settings, scenario: str, seed: int, day: int, patients: int) -> Cohort:
    # Deteriorations several times the default rate: enough episodes to train and gate on.
    return ward_day(base.simulator, base.features, scenario=scenario, seed=seed, day=day,
                    patients=patients, deterioration_rate=0.5)  # fmt: skip


def run_drift_demo(base: Settings, console: Console, patients: int = 300) -> dict[str, Any]:
    up(base)
    s = demo_settings(base)
    lake = Lake(s.lake.root)
    out: dict[str, Any] = {}

    console.rule("1. baseline ward, day 0 → champion")
    ward(s, "baseline", 11, 0, patients).to_lake(lake, part="baseline")
    t = run_training(s)
    gate = run_promote(s)
    console.print(f"v{t.model_version} ({t.family}) test ROC-AUC {t.test['roc_auc']:.3f}; "
                  f"promoted: {gate.promoted}")  # fmt: skip
    old = champion(s)

    console.rule("2. another baseline day → monitoring")
    ward(s, "baseline", 12, 1, patients // 2).to_lake(lake, part="baseline-2")
    quiet = run_monitoring(s)
    console.print(render(quiet))
    out["quiet_triggered"] = quiet.triggered

    console.rule("3. a respiratory-virus wave, day 2 → retrain-if-needed")
    ward(s, "respiratory_wave", 13, 2, patients).to_lake(lake, part="wave")
    loop = retrain_if_needed(s)
    console.print(render(loop.monitoring))
    console.print(f"action: [bold]{loop.action}[/bold]; {loop.detail}")
    new = champion(s)
    out.update(action=loop.action, drifted=[c.column for c in loop.monitoring.drift.drifted])

    console.rule("4. a later period of the wave, scored live: old vs new champion, realized")
    out["later_wave"] = _realized_live(s, lake, old, new, patients // 4, console)
    console.print(
        f"MLflow UI: {endpoints(s).mlflow_uri} (experiments vigil-drift-demo, "
        f"vigil-drift-demo-monitoring; model {s.training.registered_model}); "
        f"reports: {loop.monitoring.report_dir}"
    )
    return out


def _realized_live(
    s: Settings, lake: Lake, old: ModelRef, new: ModelRef, patients: int, console: Console
) -> dict[str, Any]:
    """Stream 12 h of the wave through the service and the scorer, with the other version
    in shadow, land the outcomes, and judge both on their stored live predictions."""
    reg = ModelRegistry(s)
    if new.version == old.version:  # the gate kept v1: its rejected challenger shadows it
        info = reg.by_alias(CHALLENGER)
        if info is None:
            console.print("no challenger to compare with")
            return {}
        other = info
    else:  # the previous champion, kept in shadow for the comparison
        other = old
        reg.set_alias(CHALLENGER, old.version)
    ward = ward_day_settings(s.simulator, scenario="respiratory_wave", seed=14, day=3,
                             patients=patients, deterioration_rate=0.5, hours=12)  # fmt: skip
    console.print(f"streaming {patients} patients × 12 h: champion v{new.version} serving, "
                  f"v{other.version} in shadow…")  # fmt: skip
    sent, scoring = score_live(s, ward)
    if other is old:
        reg.drop_alias(CHALLENGER)
    build_cohort(ward, s.features).to_lake(lake, part="wave-live")  # its outcomes land
    console.print(f"{sent.stats.valid_events:,} events: {scoring.scored:,} scored, "
                  f"{scoring.shadow_stored:,} in shadow, {scoring.alerts} alerts")  # fmt: skip
    start = pd.Timestamp(ward.start)
    end = start + pd.Timedelta(hours=ward.hours)
    outcomes = landed_outcomes(lake)
    table = Table("model", "served as", "ROC-AUC", "PR-AUC", "alert precision", "episode recall")
    scores: dict[str, Any] = {}
    for who in sorted({old, new, other}, key=lambda c: int(c.version)):
        preds, alerts, role = stored_predictions(s, who, start, end)
        perf = realized(
            preds, alerts, outcomes, horizon=pd.Timedelta(hours=s.features.horizon_hours),
            observed_until=end, cfg=s.monitoring.performance, served_as=role,
        )  # fmt: skip
        scores[f"v{who.version}"] = perf.to_dict()
        table.add_row(f"v{who.version}", str(role), _f(perf.roc_auc), _f(perf.pr_auc),
                      _f(perf.alert_precision), _f(perf.alert_recall))  # fmt: skip
    console.print(table)
    console.print(f"on the same {perf.labelled:,} labelled live predictions "
                  f"({perf.positive:,} positive); alerts are the serving model's only")  # fmt: skip
    return scores


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def main(patients: int = typer.Option(300, help="Patients per simulated day.")) -> None:
    """Run the drift → retrain → promote loop on the embedded stack."""
    configure_logging(LoggingSettings(level="WARNING", format="text"))
    out = run_drift_demo(load_settings(), Console(), patients=patients)
    # A false alarm or a missed wave is a failure; a gate that keeps a champion which still
    # does as well on the wave is the gate working (the table shows why).
    if out["quiet_triggered"] or out["action"] not in ("promoted", "rejected"):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
