"""Plain-text rendering of a monitoring run for terminals and logs of ``make drift``."""

from __future__ import annotations

from monitoring.job import MonitoringSummary
from monitoring.performance import Performance


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _perf(p: Performance) -> str:
    if not p.rows:
        return f"{p.source:9s} no stored predictions of this version in the window"
    if not p.labelled:
        return f"{p.source:9s} no labelled rows yet ({p.rows:,} rows, outcomes pending)"
    text = (
        f"{p.source:9s} ROC-AUC {_f(p.roc_auc)}  PR-AUC {_f(p.pr_auc)}  "
        f"({p.labelled:,} labelled, {p.positive:,} positive"
        f"{'' if p.judged else ', too few to judge'})"
    )
    if p.alerts is not None:
        text += (
            f"\n          alerts {p.alerts:,}: precision {_f(p.alert_precision, '.2f')}, "
            f"episodes caught {_f(p.alert_recall, '.2f')} of {p.episodes}, "
            f"{_f(p.alerts_per_patient_day, '.2f')} per patient-day"
        )
    return text


def render(s: MonitoringSummary) -> str:
    d = s.drift
    lines = [
        f"{s.model_name} v{s.model_version} on {s.window_start:%Y-%m-%d %H:%M} .. "
        f"{s.window_end:%Y-%m-%d %H:%M} UTC ({d.current_rows:,} rows vs "
        f"{d.reference_rows:,} reference)",
        f"feature drift: {len(d.drifted)}/{d.tested} columns ({d.share:.1%})",
    ]
    for c in d.drifted[:10]:
        lines.append(
            f"  {c.column:28s} {c.method} {c.score:.3f} (> {c.threshold:g}); "
            f"mean {_f(c.reference_mean, '.2f')} -> {_f(c.current_mean, '.2f')}"
        )
    if len(d.drifted) > 10:
        lines.append(f"  ... and {len(d.drifted) - 10} more (see drift.html)")
    p = d.prediction
    if p is not None:
        lines.append(
            f"prediction drift ({s.prediction_source}): {p.method} {p.score:.3f} "
            f"{'DRIFTED' if p.drifted else 'ok'}; mean risk {_f(p.reference_mean)} -> "
            f"{_f(p.current_mean)}"
        )
    lines += [_perf(s.realized), _perf(s.backtest)]
    if s.triggered:
        lines.append(f"RETRAINING TRIGGERED (trigger #{s.trigger_id}):")
        lines += [f"  - {r}" for r in s.reasons]
    else:
        lines.append("no retraining needed")
    lines.append(f"reports: {s.report_dir} (MLflow run {s.run_id})")
    return "\n".join(lines)
