"""The promotion gate: may the challenger replace the champion?

All contenders are scored on the same held-out patients, and the gate reads patient-level
bootstrap intervals (``training.evaluate.compare``) of the *differences*:

1. **not worse than the champion** beyond a margin: the lower bound of
   challenger − champion is ≥ −margin, for ROC-AUC and for PR-AUC (skipped when there is
   no champion yet);
2. **better than NEWS2 as a score**: the lower bound of challenger − NEWS2 is > 0, for
   ROC-AUC and for PR-AUC;
3. **better than each NEWS2 trigger** of ``gate.news2_triggers`` (by default all three of
   the RCP chart: ≥ 5, ≥ 7, ≥ 5 or a red score; ``features.news2.TRIGGERS``): given as
   many alerts as the trigger raises on these rows (a matched alert budget), the
   challenger catches at least as many of the rows that precede a deterioration.

Pure: the caller loads models and rows; this module only decides and explains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from features.news2 import TRIGGERS, Trigger
from stack.settings import GateSettings
from training.evaluate import Interval, compare

CHALLENGER, CHAMPION, NEWS2 = "challenger", "champion", "news2"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: dict[str, bool]
    reasons: list[str]
    intervals: dict[str, dict[str, Interval]]
    rule: dict[str, dict[str, float]] = field(default_factory=dict)  # per trigger key

    def evidence(self) -> dict[str, Any]:
        """A JSON-able record of the decision (tagged on the model version)."""
        return {
            "promote": self.promote,
            "checks": self.checks,
            "reasons": self.reasons,
            "intervals": {
                k: {m: iv.to_dict() for m, iv in v.items()} for k, v in self.intervals.items()
            },
            "news2_triggers": self.rule,
        }


def rule_comparison(
    y: npt.ArrayLike,
    challenger: npt.ArrayLike,
    news2_total: npt.ArrayLike,
    news2_red: npt.ArrayLike,
    trigger: Trigger,
) -> dict[str, float]:
    """Sensitivity of a NEWS2 trigger and of the challenger given as many alerts."""
    y_a = np.asarray(y, dtype=np.int8)
    fired = trigger.fires(news2_total, news2_red)
    k = int(fired.sum())
    pos = max(int((y_a == 1).sum()), 1)
    top = np.argsort(-np.asarray(challenger, dtype=np.float64), kind="stable")[:k]
    return {
        "alerts": float(k),
        "rule_sensitivity": float((fired & (y_a == 1)).sum() / pos),
        "rule_ppv": float((fired & (y_a == 1)).sum() / k) if k else float("nan"),
        "model_sensitivity_same_alerts": float((y_a[top] == 1).sum() / pos),
    }


def decide(
    y: npt.ArrayLike,
    patients: npt.ArrayLike,
    *,
    challenger: npt.ArrayLike,
    news2_total: npt.ArrayLike,
    news2_red: npt.ArrayLike,
    champion: npt.ArrayLike | None,
    cfg: GateSettings,
    seed: int = 0,
) -> GateDecision:
    """Apply the three checks of the module docstring to scores of the same rows."""
    scores: dict[str, npt.ArrayLike] = {CHALLENGER: challenger, NEWS2: news2_total}
    if champion is not None:
        scores[CHAMPION] = champion
    iv = compare(
        y, scores, patients, replicates=cfg.bootstrap, confidence=cfg.confidence, seed=seed
    )
    checks: dict[str, bool] = {}
    reasons: list[str] = []
    pct = f"{cfg.confidence:.0%}"
    if champion is not None:
        for metric, margin in (("roc_auc", cfg.margin_roc_auc), ("pr_auc", cfg.margin_pr_auc)):
            d = iv[f"{CHALLENGER}-{CHAMPION}"][metric]
            ok = d.low >= -margin
            checks[f"not_worse_than_champion_{metric}"] = ok
            reasons.append(
                f"{'PASS' if ok else 'FAIL'} {metric} challenger − champion = {d} ({pct} CI); "
                f"lower bound must be ≥ −{margin}"
            )
    else:
        reasons.append("PASS no champion yet: nothing to be compared with")
    for metric in ("roc_auc", "pr_auc"):
        d = iv[f"{CHALLENGER}-{NEWS2}"][metric]
        ok = d.low > 0
        checks[f"beats_news2_{metric}"] = ok
        reasons.append(
            f"{'PASS' if ok else 'FAIL'} {metric} challenger − NEWS2 = {d} ({pct} CI); "
            "lower bound must be > 0"
        )
    rules: dict[str, dict[str, float]] = {}
    for key in cfg.news2_triggers:
        trigger = TRIGGERS[key]
        rule = rules[key] = rule_comparison(y, challenger, news2_total, news2_red, trigger)
        ok = rule["model_sensitivity_same_alerts"] >= rule["rule_sensitivity"]
        checks[f"beats_{key}"] = ok
        reasons.append(
            f"{'PASS' if ok else 'FAIL'} with {trigger.label}'s {int(rule['alerts']):,} alerts "
            f"the challenger catches {rule['model_sensitivity_same_alerts']:.1%} of "
            f"pre-deterioration rows vs the trigger's {rule['rule_sensitivity']:.1%}"
        )
    return GateDecision(
        promote=all(checks.values()), checks=checks, reasons=reasons, intervals=iv, rule=rules
    )
