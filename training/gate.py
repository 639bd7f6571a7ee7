"""The promotion gate: may the challenger replace the champion?

All contenders are scored on the same held-out patients, and the gate reads patient-level
bootstrap intervals (``training.evaluate.compare``) of the *differences*:

1. **not worse than the champion** beyond a margin: the lower bound of
   challenger − champion is ≥ −margin, for ROC-AUC and for PR-AUC (skipped when there is
   no champion yet);
2. **better than NEWS2 as a score**: the lower bound of challenger − NEWS2 is > 0, for
   ROC-AUC and for PR-AUC;
3. **not worse than any NEWS2 trigger** of ``gate.news2_triggers`` (by default all three
   of the RCP chart: ≥ 5, ≥ 7, ≥ 5 or a red score; ``features.news2.TRIGGERS``): given as
   many alerts as the trigger raises on these rows (a matched alert budget), the
   challenger's share of pre-deterioration rows caught minus the trigger's has a
   patient-bootstrap upper bound ≥ 0 (each replicate matches its own budget);
4. **calibrated on the held-out patients**: its risks (after the sealed calibration map)
   have a calibration slope whose patient-bootstrap interval reaches into
   ``gate.calibration_slope``, a mean risk / observed rate
   within ``gate.expected_observed``, and a Brier skill above ``gate.min_brier_skill`` —
   a number shown to a clinician as a risk must be one.

Pure: the caller loads models and rows; this module only decides and explains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from features.news2 import TRIGGERS, Trigger
from stack.settings import GateSettings
from training.clinical import calibration_stats, slope_interval
from training.evaluate import Interval, bootstrap_weights, compare

CHALLENGER, CHAMPION, NEWS2 = "challenger", "champion", "news2"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: dict[str, bool]
    reasons: list[str]
    intervals: dict[str, dict[str, Interval]]
    rule: dict[str, dict[str, float]] = field(default_factory=dict)  # per trigger key
    calibration: dict[str, float] = field(default_factory=dict)

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
            "calibration": self.calibration,
        }


def rule_comparison(
    y: npt.ArrayLike,
    challenger: npt.ArrayLike,
    news2_total: npt.ArrayLike,
    news2_red: npt.ArrayLike,
    trigger: Trigger,
    patients: npt.ArrayLike | None = None,
    *,
    replicates: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Sensitivity of a NEWS2 trigger and of the challenger given as many alerts, and
    (with ``patients`` and ``replicates``) the patient-bootstrap interval of the
    difference, challenger − trigger, each replicate matching its own alert budget."""
    y_a = np.asarray(y, dtype=np.int8)
    fired = trigger.fires(news2_total, news2_red)
    k = int(fired.sum())
    pos = max(int((y_a == 1).sum()), 1)
    order = np.argsort(-np.asarray(challenger, dtype=np.float64), kind="stable")
    top = order[:k]
    out = {
        "alerts": float(k),
        "rule_sensitivity": float((fired & (y_a == 1)).sum() / pos),
        "rule_ppv": float((fired & (y_a == 1)).sum() / k) if k else float("nan"),
        "model_sensitivity_same_alerts": float((y_a[top] == 1).sum() / pos),
    }
    out["difference"] = out["model_sensitivity_same_alerts"] - out["rule_sensitivity"]
    if patients is None or replicates <= 0:
        return out
    hit = (y_a == 1).astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs: list[npt.NDArray[np.float64]] = []
    for start in range(0, replicates, 50):  # [replicates, rows] in chunks, as compare() does
        w = bootstrap_weights(patients, min(50, replicates - start), rng)
        p_w = np.maximum((w * hit).sum(axis=1), 1e-12)
        rule_sens = (w * (fired * hit)).sum(axis=1) / p_w
        budget = (w * fired).sum(axis=1, keepdims=True)  # each replicate's own alert count
        w_ord = w[:, order]
        alerted = np.cumsum(w_ord, axis=1) <= budget + 1e-9
        diffs.append((w_ord * alerted * hit[order]).sum(axis=1) / p_w - rule_sens)
    lo, hi = np.quantile(np.concatenate(diffs), [(1 - confidence) / 2, (1 + confidence) / 2])
    out |= {"difference_low": float(lo), "difference_high": float(hi)}
    return out


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
        rule = rules[key] = rule_comparison(
            y, challenger, news2_total, news2_red, trigger, patients,
            replicates=cfg.bootstrap, confidence=cfg.confidence, seed=seed,
        )  # fmt: skip
        # Not shown worse at the trigger's workload: a few dozen alerts on a few dozen
        # patients make the point estimate a coin toss, so the interval decides.
        ok = rule["difference_high"] >= -1e-9  # ties (no difference) pass
        checks[f"beats_{key}"] = ok
        reasons.append(
            f"{'PASS' if ok else 'FAIL'} with {trigger.label}'s {int(rule['alerts']):,} alerts "
            f"the challenger catches {rule['model_sensitivity_same_alerts']:.1%} of "
            f"pre-deterioration rows vs the trigger's {rule['rule_sensitivity']:.1%} "
            f"(difference {rule['difference']:+.1%} [{rule['difference_low']:+.1%}, "
            f"{rule['difference_high']:+.1%}], {pct} CI; upper bound must be ≥ 0)"
        )
    cal = calibration_stats(y, challenger)
    eo = cal["mean_predicted"] / cal["observed_rate"] if cal["observed_rate"] > 0 else np.inf
    slope, s_low, s_high = slope_interval(
        y, challenger, patients, replicates=cfg.bootstrap, confidence=cfg.confidence, seed=seed
    )
    cal |= {"calibration_slope_low": s_low, "calibration_slope_high": s_high,
            "expected_observed": eo}  # fmt: skip
    lo, hi = cfg.calibration_slope
    eo_lo, eo_hi = cfg.expected_observed
    # The slope is noisy on a few dozen patients: refuse when its interval lies wholly
    # outside the bounds (the evidence says miscalibrated), as the other checks read theirs.
    slope_ok = s_high >= lo and s_low <= hi
    ok = bool(slope_ok and eo_lo <= eo <= eo_hi and cal["brier_skill"] > cfg.min_brier_skill)
    checks["calibrated"] = ok
    reasons.append(
        f"{'PASS' if ok else 'FAIL'} calibration on held-out patients: slope "
        f"{slope:.2f} [{s_low:.2f}, {s_high:.2f}] ({pct} CI must reach into [{lo}, {hi}]), "
        f"mean risk / observed rate {eo:.2f} (within [{eo_lo}, {eo_hi}]), Brier skill "
        f"{cal['brier_skill']:.3f} (> {cfg.min_brier_skill})"
    )
    return GateDecision(
        promote=all(checks.values()),
        checks=checks,
        reasons=reasons,
        intervals=iv,
        rule=rules,
        calibration=cal,
    )
