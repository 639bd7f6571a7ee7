"""``make demo``: the main job end to end on the embedded stack.

Starts the stack, backfills a small ward into Kafka, lands it into the raw lake, runs the
validated Spark ETL into the processed lake and PostgreSQL, computes features and labels,
trains (Optuna, MLflow) and registers a challenger, runs the promotion gate, and prints
what arrived where, reconciled against what the simulator says it sent.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from features.spec import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    FEATURES_TABLE,
    FEATURES_ZONE,
    LABELS_ZONE,
)
from pipelines.etl.job import run_etl
from pipelines.features.job import run_features
from pipelines.landing import Lander, LandingSummary
from pipelines.produce import ProduceSummary, simulate_to_kafka, with_simulator
from serving.scorer import Scorer
from serving.server import ServingProcess
from serving.summary import ScoreSummary
from stack.catalog import (
    PROCESSED_VITALS,
    QUARANTINE,
    RAW_ADMISSIONS,
    RAW_DEAD,
    RAW_OUTCOMES,
    RAW_VITALS,
)
from stack.kafka import KafkaClient
from stack.lake import Lake
from stack.localstack import endpoints, ensure_topics, mask_url, up
from stack.logs import configure_logging
from stack.registry import RegistryError
from stack.settings import LoggingSettings, Settings, load_settings
from training.job import TrainingDataError, TrainSummary, run_training
from training.promotion import PromotionResult, run_promote


def reconcile(sent: ProduceSummary, landed: LandingSummary) -> dict[str, Any]:
    """Compare what the simulator sent with what landed; ``ok`` is the verdict."""
    s = sent.stats
    malformed = sum(s.malformed.values())
    checks = {
        "messages": (sent.messages, landed.records),
        "vitals rows (incl. duplicates)": (s.vitals_messages - malformed, landed.vitals),
        "dead letters": (malformed, sum(landed.dead_letters.values())),
        "outcomes": (s.outcomes, landed.outcomes),
        "admissions": (s.admissions, landed.admissions),
    }
    return {
        "checks": {k: {"sent": a, "landed": b, "ok": a == b} for k, (a, b) in checks.items()},
        "ok": all(a == b for a, b in checks.values()),
    }


def run_demo(settings: Settings, console: Console, live_seconds: float = 60.0) -> dict[str, Any]:
    """Stack up → simulate → land → ETL → features → train → gate → live scoring → summary."""
    t0 = time.monotonic()
    console.rule("[bold]Vigil demo")
    with console.status("starting the embedded stack (Kafka API, PostgreSQL, MLflow)…"):
        actions = up(settings)
    ep = endpoints(settings)
    console.print(f"stack: {actions}")
    sent, _sim = simulate_to_kafka(settings, progress=True)
    console.print(
        f"simulated {settings.simulator.patients} patients × {settings.simulator.hours:g} h "
        f"(seed {settings.simulator.seed}) → "
        f"{sent.messages:,} messages in {sent.seconds:.1f}s ({sent.rate:,.0f}/s)"
    )
    with console.status("landing Kafka → raw lake (bounded drain)…"):
        landed = Lander(settings).run(bounded=True)
    rec = reconcile(sent, landed)
    with console.status("Spark ETL: validate (Great Expectations), clean, resample, load…"):
        etl = run_etl(settings)
    with console.status("features + labels (Spark, the scorer's own transform)…"):
        feats = run_features(settings)
    trained, gate, skipped = _train_and_gate(settings, console)
    lake = Lake(settings.resolve(settings.lake.root))

    table = Table(title="What arrived where", show_lines=False)
    table.add_column("item")
    table.add_column("value", justify="right")
    s = sent.stats
    table.add_row("patients", f"{s.patients:,}")
    table.add_row("distinct vitals events", f"{s.valid_events:,}")
    table.add_row("vitals rows landed (duplicates kept for ETL)", f"{landed.vitals:,}")
    table.add_row("admissions", f"{landed.admissions:,}")
    table.add_row("outcomes (deteriorations)", f"{landed.outcomes:,}  {s.outcomes_by_kind}")
    for reason, n in sorted(landed.dead_letters.items()):
        table.add_row(f"dead letters: {reason}", f"{n:,}")
    table.add_row("injected: late / duplicate", f"{s.late:,} / {s.duplicates:,}")
    table.add_row(
        "injected: artifacts / impossible / °F",
        f"{s.artifacts:,} / {s.impossible:,} / {s.fahrenheit_readings:,}",
    )
    table.add_row("landing rate", f"{landed.rate:,.0f} records/s")
    table.add_row("reconciled with simulator", "[green]yes[/]" if rec["ok"] else "[red]NO[/]")
    t = {k: etl.total(k) for k in ("raw_rows", "source_rows", "quarantined_rows", "duplicates")}
    table.add_row(
        f"ETL: {len(etl.pending)} hour partitions ({etl.status})",
        f"raw {t['raw_rows']:,} = source {t['source_rows']:,} + quarantined "
        f"{t['quarantined_rows']:,} + duplicates {t['duplicates']:,}",
    )
    table.add_row(
        "ETL: values corrected / rejected",
        f"{etl.total('corrected_values'):,} / {etl.total('rejected_values'):,}",
    )
    table.add_row("ETL: patient-minutes (lake + PostgreSQL)", f"{etl.total('minute_rows'):,}")
    checks = ", ".join(
        f"{v['suite']} {'passed' if v['success'] else 'FAILED'}" for v in etl.validations
    )
    table.add_row("ETL: Great Expectations", checks or "nothing new to validate")
    lab = feats.labels
    table.add_row(
        f"features {FEATURE_SET_VERSION}: rows every {settings.features.cadence_minutes} min",
        f"{feats.feature_rows:,} rows × {len(FEATURE_NAMES)} features, "
        f"{feats.patients:,} patients ({feats.status})",
    )
    table.add_row(
        f"labels (deterioration within {settings.features.horizon_hours:g} h)",
        f"{lab.get('positive', 0):,} positive of {lab.get('labelled', 0):,} labelled; "
        f"{lab.get('censored', 0):,} censored, {lab.get('after_outcome', 0):,} after outcome",
    )
    console.print(table)
    if trained is not None:
        console.print(_training_table(settings, trained, gate))
    elif skipped:
        console.print(f"[yellow]training skipped: {skipped}[/]")
    console.print(f"raw vitals    {lake.uri}/{RAW_VITALS}/date=…/hour=…/")
    console.print(f"raw outcomes  {lake.uri}/{RAW_OUTCOMES}/")
    console.print(f"admissions    {lake.uri}/{RAW_ADMISSIONS}/")
    console.print(
        f"dead letters  {lake.uri}/{RAW_DEAD}/  and topic {settings.kafka.topics.dead_letters}"
    )
    console.print(f"processed     {lake.uri}/{PROCESSED_VITALS}/  and table vitals_minute")
    console.print(f"quarantine    {lake.uri}/{QUARANTINE}/  and table quarantine")
    console.print(f"validation    {etl.report_dir}/  (JSON + GX Data Docs in data_docs/)")
    console.print(f"features      {lake.uri}/{FEATURES_ZONE}/  and table {FEATURES_TABLE}")
    console.print(f"labels        {lake.uri}/{LABELS_ZONE}/  and table feature_labels")
    if trained is not None:
        console.print(f"model card    {trained.card_path}")
    console.print(
        f"MLflow UI     {ep.mlflow_uri}  (experiment {settings.mlflow.experiment_prefix}-"
        f"{settings.training.experiment}, model {settings.training.registered_model})"
    )
    console.print(f"PostgreSQL    {mask_url(ep.database_url)}")
    console.print(f"Kafka         {ep.bootstrap_servers} (memory storage: `make down` forgets it)")
    live = None
    if gate is not None and live_seconds > 0:
        serve = settings
        if not gate.promoted and gate.champion_before is None:
            # A first model that the gate held back (on a demo-sized ward its intervals are
            # wide): show the serving path with it, saying plainly what it is.
            console.print(
                f"[yellow]no model has passed the gate, so there is no @champion: the live part "
                f"serves @challenger v{gate.challenger}, which `make serve` would refuse[/]"
            )
            serve = settings.model_copy(
                update={
                    "serving": settings.serving.model_copy(
                        update={"model_alias": "challenger", "shadow_alias": None}
                    )
                }
            )
        live = _live(serve, console, live_seconds)
    if live is None and live_seconds > 0:
        console.print("[yellow]live scoring skipped (see above)[/]")
    console.print(f"done in {time.monotonic() - t0:.0f}s; `make down` stops the stack.")
    if not rec["ok"]:
        console.print(rec)
    return {
        "sent": sent.to_dict(),
        "landed": landed.to_dict(),
        "reconciliation": rec,
        "etl": etl.to_dict(),
        "features": feats.to_dict(),
        "training": trained.to_dict() if trained is not None else {"skipped": skipped},
        "gate": None
        if gate is None
        else {
            "promoted": gate.promoted,
            "challenger": gate.challenger,
            "champion_before": gate.champion_before,
            "checks": gate.decision.checks,
        },
        "live": live,
    }


def _live(settings: Settings, console: Console, seconds: float) -> dict[str, Any] | None:
    """Serve the model (@champion, or the alias configured), score a live ward for
    ``seconds`` and print alerts as they happen."""
    reg_name = settings.training.registered_model
    proc = ServingProcess(settings)
    alias = settings.serving.model_alias
    with console.status(f"starting the BentoML service for {reg_name}@{alias}…"):
        try:
            proc.start_or_explain()
        except Exception as exc:
            console.print(f"[red]the service did not start:[/] {exc}")
            return None
    speedup = 120.0
    start = pd.Timestamp.now(tz="UTC").floor("min") - pd.Timedelta(seconds=seconds * speedup)
    ward = with_simulator(
        settings,
        patients=100,
        hours=seconds * speedup / 3600,
        seed=int(time.time()) % 1_000_000 + 1,
        start=start.to_pydatetime(),
        mode="live",
        speedup=speedup,
        episodes={
            **settings.simulator.episodes.model_dump(),
            "deterioration_rate_per_day": 1.0,
            "enrichment": 1.0,
        },
    )
    # A consumer group of this run's own, starting from now: earlier demos' events (and
    # this run's backfill) are history, not live traffic. The live ward's events go to
    # topics of their own (``*.live``): on the backfill's topics the next demo's landing
    # would land them too, and its reconciliation (sent == landed) would fail.
    topics = ward.kafka.topics
    live_topics = topics.model_copy(
        update={
            "vitals": f"{topics.vitals}.live",
            "admissions": f"{topics.admissions}.live",
            "outcomes": f"{topics.outcomes}.live",
            "dead_letters": f"{topics.dead_letters}.live",
        }
    )
    ward = ward.model_copy(
        update={"kafka": ward.kafka.model_copy(update={"topics": live_topics})}
    ).with_scorer(group_id=f"vigil-demo-{ward.simulator.seed}", new_group_starts_at="latest")
    ensure_topics(ward)
    scorer = Scorer(ward)
    result: dict[str, ScoreSummary] = {}
    worker = threading.Thread(target=lambda: result.update(s=scorer.run(bounded=False)))
    worker.start()
    if not scorer.ready.wait(60):
        scorer.stop.set()
        console.print("[red]the scorer did not get its partitions within 60 s[/]")
        return None
    console.rule(
        f"[bold]live: a ward of 100 patients streamed at {speedup:g}× real time for "
        f"{seconds:g} s, scored by {proc.url}"
    )
    alerts = _AlertTail(ward)
    producer = threading.Thread(target=lambda: simulate_to_kafka(ward))
    producer.start()

    def show(batch: list[dict[str, Any]]) -> None:
        for a in batch:
            top = ", ".join(f"{t['feature']}={_num(t['value'])}" for t in a["top_features"][:3])
            # The calibrated risk with what it is a risk of (outcome, horizon).
            meaning = a.get("risk_of") or "risk"
            console.print(
                f"[red]ALERT[/] {a['patient_id']} at {a['ts'][11:16]}: {a['risk']:.1%} "
                f"{meaning} ({a['reason'].replace('_', ' ')}; model v{a['model_version']}): "
                f"{top}"
            )

    while producer.is_alive():
        show(alerts.poll())
    # The stream has ended: let the scorer catch up, then stop it and show the last alerts.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and scorer.lag() > 0:
        show(alerts.poll())
    scorer.stop.set()
    worker.join(timeout=60)
    show(alerts.poll())
    alerts.close()
    s = result.get("s")
    if s is None:
        return None
    d = s.to_dict()
    table = Table(title="Live scoring")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("events scored", f"{d['scored']:,} ({d['events_per_s']:,.0f}/s)")
    table.add_row(
        "alerts raised / suppressed by the quiet period", f"{d['alerts']:,} / {d['suppressed']:,}"
    )
    table.add_row("invalid events (dead letters)", f"{sum(s.invalid.values()):,}")
    table.add_row("event → prediction latency p50 / p99",
                  f"{d['latency_p50_ms']:.0f} / {d['latency_p99_ms']:.0f} ms")  # fmt: skip
    table.add_row("model version(s)", ", ".join(f"v{v}" for v in sorted(s.versions)) or "-")
    table.add_row("shadow predictions (@challenger)", f"{d['shadow_stored']:,}")
    console.print(table)
    console.print(
        f"BentoML       {proc.url}  (OpenAPI {proc.url}/docs.json, metrics {proc.url}/metrics)"
    )
    console.print("predictions   table predictions, topic " + settings.kafka.topics.predictions)
    console.print("alerts        table alerts, topic " + settings.kafka.topics.alerts)
    return d


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


class _AlertTail:
    """Reads new messages of the alerts topic as they arrive (group-less, from now on)."""

    def __init__(self, settings: Settings) -> None:
        client = KafkaClient(settings.kafka, endpoints(settings).bootstrap_servers)
        self.c = client.consumer(None)
        parts = client.all_partitions([settings.kafka.topics.alerts])
        self.c.assign(parts)
        for tp, (_lo, hi) in self.c.watermarks(parts).items():
            self.c.seek(tp, hi)
        self.last_seen = time.monotonic()

    def poll(self) -> list[dict[str, Any]]:
        recs = self.c.poll_batch(1000, 0.2)
        if recs:
            self.last_seen = time.monotonic()
        return [orjson.loads(r.value or b"{}") for r in recs]

    def close(self) -> None:
        self.c.close()


def _train_and_gate(
    settings: Settings, console: Console
) -> tuple[TrainSummary | None, PromotionResult | None, str]:
    """Train and gate; a ward too small to learn from is reported, not fatal."""
    cfg = settings.training
    with console.status(
        f"training: {len(cfg.families)} Optuna studies × {cfg.trials} trials "
        f"(patient-grouped CV) → MLflow → @challenger…"
    ):
        try:
            trained = run_training(settings)
        except TrainingDataError as exc:
            return None, None, str(exc)
    with console.status("promotion gate: challenger vs champion vs NEWS2 (patient bootstrap)…"):
        try:
            gate = run_promote(settings)
        except RegistryError as exc:
            return trained, None, str(exc)
    return trained, gate, ""


def _training_table(settings: Settings, t: TrainSummary, gate: PromotionResult | None) -> Table:
    table = Table(title="Training and the promotion gate (held-out patients)")
    table.add_column("item")
    table.add_column("value", justify="right")
    for family, st in t.studies.items():
        table.add_row(f"study {family}", f"CV PR-AUC {st['cv_pr_auc']:.3f} ({st['trials']} trials)")
    table.add_row("chosen", f"{t.family} → {settings.training.registered_model} v{t.model_version}")
    table.add_row("ROC-AUC model / NEWS2", f"{t.test['roc_auc']:.3f} / {t.news2['roc_auc']:.3f}")
    table.add_row("PR-AUC model / NEWS2", f"{t.test['pr_auc']:.3f} / {t.news2['pr_auc']:.3f}")
    table.add_row(
        f"threshold ({settings.training.threshold.describe()})",
        f"{t.threshold:.4f}: sensitivity {t.test['recall']:.2f}, PPV {t.test['precision']:.2f}",
    )
    if gate is not None:
        verdict = (
            f"[green]promoted v{gate.challenger} to @champion[/]"
            if gate.promoted
            else f"[yellow]kept @champion {gate.champion_before or '(none)'}[/]"
        )
        table.add_row("gate", verdict)
        for line in gate.decision.reasons:
            table.add_row("", line)
    table.add_row("took", f"{t.seconds:.0f} s")
    return table


def main(
    patients: int = typer.Option(None, help="Patients on the ward (default: config)."),
    hours: float = typer.Option(None, help="Simulated hours."),
    seed: int = typer.Option(
        None,
        help="Simulator seed (default: a new ward each run, so reruns add patients "
        "rather than replaying the same events).",
    ),
    live_seconds: float = typer.Option(60.0, help="How long the live ward streams (0: skip)."),
) -> None:
    """Run the Vigil demo on the embedded stack."""
    seed = seed if seed is not None else int(time.time()) % 1_000_000
    settings = with_simulator(load_settings(), patients=patients, hours=hours, seed=seed)
    configure_logging(LoggingSettings(level="WARNING", format="text"))
    result = run_demo(settings, Console(), live_seconds=live_seconds)
    if not result["reconciliation"]["ok"]:
        raise typer.Exit(1)
