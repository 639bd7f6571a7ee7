"""Renderings of a monitoring run: plain text for ``make drift`` and the logs, and the
header of ``drift.html`` that puts Vigil's verdict above Evidently's detail."""

from __future__ import annotations

import html
import re

from monitoring.job import MonitoringSummary
from monitoring.performance import Performance
from stack.settings import Settings


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
    lines += verdict(s)
    lines.append(f"reports: {s.report_dir} (MLflow run {s.run_id})")
    return "\n".join(lines)


def verdict(s: MonitoringSummary) -> list[str]:
    """Vigil's verdict, as the trigger acts on it."""
    if not s.triggered:
        return ["no retraining needed"]
    number = f" (trigger #{s.trigger_id})" if s.trigger_id is not None else ""
    return [f"RETRAINING TRIGGERED{number}:", *(f"  - {r}" for r in s.reasons)]


_STYLE = (
    "font-family:system-ui,sans-serif;margin:16px 24px;padding:16px 20px;border-radius:8px;"
    "border:2px solid {color};background:{bg};color:#1b1b1b;max-width:1100px"
)


def drift_page(evidently_html: str, s: MonitoringSummary, settings: Settings) -> str:
    """Evidently's self-contained page, titled and headed by Vigil: model and version,
    the windows compared, the verdict and the lines ``make drift`` prints. Evidently's own
    dataset-level line below counts drifted columns against the same share
    (``trigger_share``) but not the severity Vigil also asks for, and knows nothing of
    prediction drift or realized performance: the header says which one acts."""
    d, cfg = s.drift, settings.monitoring.drift
    title = (
        f"Vigil drift report: {s.model_name} v{s.model_version}, "
        f"{s.window_start:%Y-%m-%d %H:%M}–{s.window_end:%Y-%m-%d %H:%M} UTC"
    )
    triggered = s.triggered
    color, bg = ("#b3261e", "#fdecea") if triggered else ("#1e6b3a", "#eaf6ee")
    head = "RETRAINING TRIGGERED" if triggered else "No retraining needed"
    body_lines = render(s).splitlines()[1:-1]  # without the heading and the paths
    detail = html.escape("\n".join(body_lines))
    banner = (
        f'<section id="vigil-verdict" style="{_STYLE.format(color=color, bg=bg)}">'
        f'<h1 style="margin:0 0 6px;font-size:22px">{html.escape(title)}</h1>'
        f'<p style="margin:0 0 10px">Current window: {s.window_start:%Y-%m-%d %H:%M} to '
        f"{s.window_end:%Y-%m-%d %H:%M} UTC, {d.current_rows:,} rows. Reference: the "
        f"champion's training sample, {d.reference_rows:,} rows.</p>"
        f'<p style="margin:0 0 10px;font-size:20px;font-weight:700;color:{color}">'
        f"Vigil's verdict: {html.escape(head)}</p>"
        f'<pre style="white-space:pre-wrap;margin:0 0 10px;font-size:13px">{detail}</pre>'
        f'<p style="margin:0;font-size:13px">Retraining needs {cfg.trigger_share:.0%} of '
        f"tested columns drifted <em>and</em> one at {cfg.trigger_severity:g}× its "
        f"threshold, or the risk score drifted that far, or realized performance below "
        f"its floor. Evidently's per-column detail follows; its dataset-level line counts "
        f"columns against the same share only.</p></section>"
    )
    page = evidently_html.replace("<head>", f"<head><title>{html.escape(title)}</title>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + banner, page, count=1)
