"""The alert policy: alert on a crossed threshold, without flooding the ward with repeats.

For each patient, in event-time order, a prediction over the threshold raises an alert

- ``first``: the patient has had no alert yet;
- ``quiet_period_over``: the last alert is at least ``quiet_period`` old (event time);
- ``risk_rose``: within the quiet period, but the risk is at least ``margin`` above the
  risk of the last alert.

Otherwise it is suppressed. Event time, not the wall clock, drives the policy, so a
replay after a restart makes the same decisions. Pure: state in, decisions out; here,
below the stages, because the scorer applies it and training's evaluation replays it
(ward alerts per patient-day).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class AlertPolicy:
    quiet_period: pd.Timedelta
    margin: float
    last: dict[str, tuple[pd.Timestamp, float]] = field(default_factory=dict)

    def remember(self, patient_id: str, ts: pd.Timestamp, risk: float) -> None:
        """Seed the state with an alert raised earlier (e.g. read back after a restart)."""
        prev = self.last.get(patient_id)
        if prev is None or ts >= prev[0]:
            self.last[patient_id] = (ts, risk)

    def decide(self, scored: pd.DataFrame) -> pd.Series:
        """Reason per row (``first`` | ``quiet_period_over`` | ``risk_rose``) or None.

        Args:
            scored: ``patient_id``, ``ts``, ``risk``, ``alert`` (threshold crossed).
        """
        out = pd.Series([None] * len(scored), index=scored.index, dtype=object)
        crossed = scored[scored["alert"].astype(bool)].sort_values(["ts"], kind="stable")
        reasons: dict[object, str] = {}
        for idx, pid, ts, risk in zip(
            crossed.index,
            crossed["patient_id"].tolist(),
            crossed["ts"].tolist(),  # Timestamps, as the state keeps them
            crossed["risk"].astype(float).tolist(),
            strict=True,
        ):
            prev = self.last.get(pid)
            if prev is None:
                reason = "first"
            elif ts - prev[0] >= self.quiet_period:
                reason = "quiet_period_over"
            elif ts > prev[0] and risk >= prev[1] + self.margin:
                reason = "risk_rose"
            else:
                continue
            reasons[idx] = reason
            self.last[pid] = (ts, risk)
        if reasons:
            out.loc[list(reasons)] = list(reasons.values())
        return out
