"""One poll batch through the scorer, step by step (:meth:`BatchScorer.process`).

1. **validate** against the contract; invalid messages are dead letters with the reason;
2. **featurise**: the online state folds the valid events in and gives each its fate —
   a vector when accepted, else duplicate, future or too late (stored with that status);
3. **score** with the champion in micro-batches (rows the service refuses set aside as
   dead letters, ``service_rejected``), and with the shadow when there is one;
4. **alerts**: the policy decides, for events scored for the first time, and the service
   explains;
5. **persist** in one transaction (rows PostgreSQL refuses isolated, ``store_rejected``);
6. **publish** to ``predictions`` and ``alerts``;
7. **account** in the summary and the metrics.

Each step waits out its dependency's outages (``stack.resilience``) and none lets one
record stop the batch.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.alerts import AlertPolicy
from features.online import ACCEPTED, DUPLICATE, OnlineFeatures
from serving.client import (
    NoShadowModelError,
    ServiceClient,
    ServiceRejectedError,
    ServiceUnavailableError,
    feature_matrix,
)
from serving.messages import alert_message, prediction_messages
from serving.metrics import ScorerMetrics
from serving.store import (
    NO_PREDICTIONS,
    NO_ROWS,
    PREDICTION_COLUMNS,
    Dead,
    ScoringStore,
    is_outage,
    prediction_frame,
    status_frame,
)
from serving.summary import Laps, ScoreSummary
from stack.batchvalidate import BatchValidator, validate_isolated
from stack.consume import Polled
from stack.kafka import Producer
from stack.resilience import Isolated, Outage, isolate
from stack.settings import Settings

log = logging.getLogger("vigil.scorer")


@dataclass
class _Batch:
    """One poll on its way through :meth:`Scorer.process`."""

    recs: Polled
    now: pd.Timestamp
    scored_at: datetime
    laps: Laps
    dead: list[Dead] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)  # event id -> record position
    vec: pd.DataFrame = field(default_factory=pd.DataFrame)  # accepted events' vectors
    status_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # future / too late
    duplicates: int = 0
    preds: pd.DataFrame = field(default_factory=lambda: NO_PREDICTIONS)
    shadow: pd.DataFrame = field(default_factory=lambda: NO_PREDICTIONS)
    champion: pd.DataFrame = field(default_factory=pd.DataFrame)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    raised: pd.DataFrame = field(default_factory=pd.DataFrame)
    suppressed: int = 0
    new_alerts: set[str] = field(default_factory=set)


class BatchScorer:
    """The steps of a batch, with the scorer's collaborators.

    Args:
        outages: the scorer's waiters per dependency (``postgres``, ``service``,
            ``kafka``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        online: OnlineFeatures,
        policy: AlertPolicy,
        service: ServiceClient,
        validator: BatchValidator,
        store: ScoringStore,
        metrics: ScorerMetrics,
        outages: dict[str, Outage],
    ) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.topics = settings.kafka.topics
        self.online, self.policy, self.service = online, policy, service
        self.validator, self.store, self.metrics, self.outages = validator, store, metrics, outages
        self._shadow_checked = 0.0
        self._shadow = True

    def _kafka(self, fn: Callable[[], Any]) -> Any:
        from stack.kafka import is_broker_outage

        return self.outages["kafka"].call(fn, retry_on=is_broker_outage)

    # ------------------------------------------------------------------ the service
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Call the service, waiting out its outages (the batch in hand kept)."""
        return self.outages["service"].call(
            fn, retry_on=lambda exc: isinstance(exc, ServiceUnavailableError)
        )

    def _score(self, x: np.ndarray) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
        """The champion's predictions of the feature matrix ``x``, in micro-batches,
        waiting out the service's outages; rows that crossed the threshold come with
        their top features (for alerts).

        Returns:
            The predictions of the rows the service took, in row order, and the rows it
            refused (a 4xx that persists when the row is sent alone), with the reason.
        """
        n = self.cfg.micro_batch_rows
        parts: list[pd.DataFrame] = []
        refused: list[tuple[int, str]] = []
        if not len(x):
            return NO_PREDICTIONS, refused
        for a in range(0, len(x), n):
            iso = self._call(functools.partial(self._score_isolated, x[a : a + n]))
            for part, frame in iso.done:
                parts.append(frame.set_axis([a + i for i in part]))
            refused += [(a + i, _first_line(exc)) for i, exc in iso.failed]
        if not parts:
            return NO_PREDICTIONS, refused
        preds = pd.concat(parts).sort_index()
        return preds.reset_index(drop=True), refused

    def _score_isolated(self, p: np.ndarray) -> Isolated[pd.DataFrame]:
        """One micro-batch scored; rows the service refuses are isolated (bisection)."""
        return isolate(
            range(len(p)),
            lambda part: self.service.predict_matrix(p[part], explain=True),
            poison=lambda exc: isinstance(exc, ServiceRejectedError),
        )

    def _in_micro_batches(
        self, x: np.ndarray, score: Callable[[np.ndarray], pd.DataFrame]
    ) -> pd.DataFrame:
        """``score`` over the rows of ``x`` in slices of ``scorer.micro_batch_rows``."""
        n = self.cfg.micro_batch_rows
        parts = [score(x[a : a + n]) for a in range(0, len(x), n)]
        return pd.concat(parts, ignore_index=True) if parts else NO_PREDICTIONS

    def _shadow_due(self) -> bool:
        # After a 409 (no challenger), look again only every reload interval.
        if self._shadow:
            return True
        if time.monotonic() - self._shadow_checked > self.settings.serving.reload_interval_s:
            self._shadow = True
        return self._shadow

    # ------------------------------------------------------------------ one batch
    def process(self, recs: Polled, producer: Producer, summary: ScoreSummary) -> None:
        """Validate, featurise, score, alert, store and publish one poll (not the commit)."""
        now, scored_at = pd.Timestamp.now(tz="UTC"), datetime.now(UTC)
        b = _Batch(recs, now, scored_at, Laps(summary, self.metrics))
        summary.records += len(recs)
        self._validate(b, summary)
        self._featurise(b, summary)
        self._score_batch(b, summary)
        self._alerts(b, summary)
        self._persist(b, summary)
        self._publish(b, producer)
        self._account(b, summary)

    def _validate(self, b: _Batch, summary: ScoreSummary) -> None:
        """The contract: valid events on, the others to the dead letters with the reason."""
        res = validate_isolated(self.validator, b.recs.values)
        b.dead = [(b.recs.record(i), reason, detail) for i, reason, detail in res.rejects]
        summary.invalid.update(reason for _r, reason, _d in b.dead)
        for _r, reason, _d in b.dead:
            self.metrics.invalid.labels(reason=reason).inc()
        self.metrics.events.labels(outcome="invalid").inc(len(b.dead))
        valid = res.table.to_pandas()
        summary.valid += len(valid)
        b.where = dict(zip(valid["event_id"].tolist(), valid["_index"].tolist(), strict=True))
        b.vec = valid.drop(columns="_index").assign(
            _kafka_ts=_kafka_times(b.recs.timestamps_ms[valid["_index"].to_numpy()])
        )
        b.laps.lap("validate")

    def _set_aside(
        self,
        b: _Batch,
        summary: ScoreSummary,
        ids: list[str],
        reason: str,
        detail: str | list[str],
    ) -> list[Dead]:
        """Contract-valid events set aside as dead letters by a later step; their letters."""
        details = detail if isinstance(detail, list) else [detail] * len(ids)
        letters = [
            (b.recs.record(b.where[e]), reason, d) for e, d in zip(ids, details, strict=True)
        ]
        b.dead += letters
        summary.isolated[reason] += len(ids)
        self.metrics.invalid.labels(reason=reason).inc(len(ids))
        if ids:
            log.error("%d event(s) set aside as dead letters: %s", len(ids), reason)
        return letters

    def _featurise(self, b: _Batch, summary: ScoreSummary) -> None:
        """The online state's verdict on every valid event, and the accepted ones' vectors."""
        valid = b.vec
        vec, status, failed = self.fold_isolated(valid.drop(columns="_kafka_ts"), b.now)
        self._set_aside(b, summary, failed, "internal_error",
                        "the online features failed on this event")  # fmt: skip
        b.duplicates = int((status == DUPLICATE).sum())
        summary.duplicates += b.duplicates
        later = (status != ACCEPTED) & (status != DUPLICATE) & (status != _FAILED)
        b.status_rows = valid[later].assign(status=status[later], as_of=pd.NaT)
        summary.status.update(b.status_rows["status"].tolist())
        kts = valid[status == ACCEPTED].set_index("event_id")["_kafka_ts"]
        b.vec = vec.assign(_kafka_ts=kts.reindex(vec["event_id"]).array)
        b.laps.lap("features")

    def _score_batch(self, b: _Batch, summary: ScoreSummary) -> None:
        """Champion (rows it refuses set aside) and, when there is one, the shadow."""
        x = feature_matrix(b.vec)
        b.preds, refused = self._score(x)
        if refused:
            out = [i for i, _why in refused]
            self._set_aside(b, summary, b.vec["event_id"].iloc[out].tolist(), "service_rejected",
                            [why for _i, why in refused])  # fmt: skip
            b.vec = b.vec.drop(index=b.vec.index[out]).reset_index(drop=True)
            x = np.delete(x, out, axis=0)
        if len(b.vec) and self.settings.serving.shadow_alias and self._shadow_due():
            # The shadow never holds up the champion: one attempt, skipped on any failure.
            try:
                b.shadow = self._in_micro_batches(
                    x, lambda p: self.service.predict_matrix(p, shadow=True)
                )
            except NoShadowModelError:
                self._shadow, self._shadow_checked = False, time.monotonic()
            except (ServiceUnavailableError, ServiceRejectedError) as exc:
                log.warning("shadow scoring skipped for this batch: %s", type(exc).__name__)
                self._shadow, self._shadow_checked = False, time.monotonic()
        summary.scored += len(b.preds)
        summary.status["scored"] += len(b.preds)
        b.champion = prediction_frame(b.vec, b.preds, "champion", b.scored_at)
        rows = [b.champion, status_frame(b.status_rows, b.scored_at)]
        if len(b.shadow):
            rows.append(prediction_frame(b.vec, b.shadow, "shadow", b.scored_at))
        b.table = (
            pd.concat([r for r in rows if len(r)], ignore_index=True)
            if any(len(r) for r in rows)
            else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
        )
        summary.versions.update(b.champion["model_version"].tolist())
        b.laps.lap("score")

    def _alerts(self, b: _Batch, summary: ScoreSummary) -> None:
        """The policy decides, the service explains.

        Only for events scored for the first time: a redelivered event's decision was
        made, and its alert stored, in the same transaction as its first prediction.
        Deciding again after a restart, with the policy seeded from the stored alerts
        instead of the history it had then, could raise a second alert in an episode (a
        late event may have alerted since).
        """
        champion = b.champion
        crossed = champion["alert"].to_numpy(dtype=bool)
        stored = self.store.already_stored(champion.loc[crossed, "event_id"].tolist())
        replayed = champion["event_id"].isin(stored).to_numpy()
        fresh = champion[~replayed]
        reasons = self.policy.decide(fresh[["patient_id", "ts", "risk", "alert"]])
        raised = fresh[reasons.notna().to_numpy()].assign(reason=reasons.dropna().to_numpy())
        b.suppressed = int((crossed & ~replayed).sum()) - len(raised)
        summary.suppressed += b.suppressed
        summary.replayed_alerts += len(stored)
        if len(raised):
            raised = raised.assign(top_features=self._explanations(b, raised))
            # What the risk means (outcome, horizon), as the version that scored it says.
            if "risk_of" in b.preds:
                meaning = dict(zip(b.preds["model_version"], b.preds["risk_of"], strict=True))
                raised = raised.assign(risk_of=raised["model_version"].map(meaning).fillna(""))
        b.raised = raised
        b.laps.lap("alerts")

    def _explanations(self, b: _Batch, raised: pd.DataFrame) -> list[Any]:
        """Each raised alert's top features: from the call that scored it where the model's
        explanations are cheap; otherwise (or for a row it left out) one ``/explain`` call."""
        vec = b.vec
        tops = dict(zip(vec["event_id"].tolist(), b.preds["top_features"].tolist(), strict=True))
        ask = [e for e in raised["event_id"].tolist() if tops[e] is None]
        if ask:
            idx = vec.index[vec["event_id"].isin(set(ask))]
            try:
                why = self._call(lambda: self.service.explain(vec.loc[idx]))
            except ServiceRejectedError as exc:  # the alert stands, unexplained
                # Not the refusal's text: it may quote feature values.
                log.error("alerts left unexplained: /explain refused them (%s)",
                          type(exc).__name__)  # fmt: skip
                why = [{"top_features": []} for _ in idx]
            tops.update(
                zip(vec.loc[idx, "event_id"], (w["top_features"] for w in why), strict=True)
            )
        return [tops[e] for e in raised["event_id"].tolist()]

    def _persist(self, b: _Batch, summary: ScoreSummary) -> None:
        """One transaction for the batch (rows PostgreSQL refuses isolated by event)."""
        b.new_alerts, refused = self.store.store_isolated(
            b.table, b.raised, b.dead, b.scored_at, self.online.stay_facts()
        )
        if refused:
            b.champion = b.champion[~b.champion["event_id"].isin(refused).to_numpy()]
            b.raised = b.raised[~b.raised["event_id"].isin(refused)]
            b.table = b.table[~b.table["event_id"].isin(refused)]
            letters = self._set_aside(b, summary, refused, "store_rejected",
                                      "PostgreSQL refused this event's rows")  # fmt: skip
            self.outages["postgres"].call(
                lambda: self.store.store(NO_ROWS, NO_ROWS, letters, b.scored_at),
                retry_on=is_outage,
            )
        b.laps.lap("store")

    def _publish(self, b: _Batch, producer: Producer) -> None:
        """Predictions and new alerts to their topics (all again after a failure: the
        topics are at least once; the tables are the record)."""
        messages = prediction_messages(b.champion)
        keys = [k.encode() for k in b.champion["patient_id"].tolist()]
        alerts = b.raised[b.raised["event_id"].isin(b.new_alerts)] if len(b.raised) else b.raised

        def publish() -> None:
            for key, message in zip(keys, messages, strict=True):
                producer.send(self.topics.predictions, message, key=key)
            for _, a in alerts.iterrows():
                producer.send(self.topics.alerts, alert_message(a), key=a["patient_id"].encode())
            producer.flush()

        self._kafka(publish)
        b.laps.lap("publish")

    def _account(self, b: _Batch, summary: ScoreSummary) -> None:
        """The batch in the summary and the metrics."""
        table = b.table
        summary.alerts += len(b.new_alerts)
        summary.stored += int((table["role"] == "champion").sum()) if len(table) else 0
        summary.shadow_stored += int((table["role"] == "shadow").sum()) if len(table) else 0
        sent = b.champion["kafka_ts"].to_numpy("datetime64[ns]")
        sent = sent[~np.isnat(sent)].astype(np.int64)  # no Kafka timestamp: no latency
        latency_s = time.time() - sent / 1e9
        summary.latency_ms.extend((latency_s * 1000).tolist())
        summary.note_batch(len(b.recs), b.laps.steps)
        summary.batches += 1
        m = self.metrics
        for value in latency_s:
            m.latency.observe(float(value))
        m.events.labels(outcome="scored").inc(len(b.champion))
        m.events.labels(outcome="duplicate").inc(b.duplicates)
        for status, n in b.status_rows["status"].value_counts().items():
            m.events.labels(outcome=str(status)).inc(int(n))
        m.predictions.labels(role="champion").inc(len(b.champion))
        m.predictions.labels(role="shadow").inc(len(b.shadow))
        m.alerts.inc(len(b.new_alerts))
        m.suppressed.inc(b.suppressed)
        if len(b.champion):
            m.model.clear()
            last = b.champion.iloc[-1]
            m.model.labels(last["model_name"], last["model_version"]).set(1)
        m.last_batch.set(time.time())
        b.laps.lap("metrics")

    def fold_isolated(
        self, events: pd.DataFrame, now: pd.Timestamp
    ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
        """``online.fold(events)``; should it fail, the events it fails on are isolated
        (bisection): their status is failed and their ids returned, the others folded in
        as usual."""
        try:
            folded = self.online.fold(events, now=now)
            return folded.vectors, folded.status, []
        except Exception as exc:
            log.error("online features failed on a batch, isolating: %s", type(exc).__name__)
        status = np.full(len(events), _FAILED, dtype=object)

        def attempt(part: list[int]) -> pd.DataFrame:
            folded = self.online.fold(events.iloc[part], now=now)
            status[part] = folded.status
            return folded.vectors

        iso = isolate(range(len(events)), attempt, poison=lambda exc: isinstance(exc, Exception))
        parts = [v for _part, v in iso.done if len(v)]
        vec = pd.concat(parts, ignore_index=True) if parts else self.online.update(events[:0])
        return vec, status, [str(events["event_id"].iloc[i]) for i, _exc in iso.failed]


_FAILED = "failed"  # an event the online state failed on (set aside)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def _kafka_times(ms: np.ndarray) -> pd.DatetimeIndex:
    """Kafka timestamps (ms; unknown: negative, see ``stack.consume.Polled``) as UTC
    times, NaT where unknown."""
    ms = np.asarray(ms, dtype=np.int64)
    times = ms.astype("datetime64[ms]")
    times[ms < 0] = np.datetime64("NaT")
    return pd.DatetimeIndex(times).tz_localize("UTC")
