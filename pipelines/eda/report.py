"""``make eda``: an HTML report a clinician and a data scientist can read together.

Reads the lake (raw, processed and quarantine zones, features, labels, outcomes,
admissions), computes each section's numbers (:mod:`pipelines.eda.analysis`), draws one
figure per section (:mod:`pipelines.eda.figures`), writes ``report.html`` (figures
embedded) with the PNGs and ``summary.json`` beside it under ``reports/eda/<time>/``, and
logs the folder to MLflow (experiment ``<prefix>-eda``). The written summary is generated
from the same numbers, so it cannot disagree with the figures.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from pipelines.eda import analysis as A  # noqa: N812
from pipelines.eda import figures as F  # noqa: N812
from pipelines.eda.data import EdaData, EdaDataError, from_lake
from stack.lake import Lake
from stack.logs import configure_logging
from stack.metrics import record_stage
from stack.settings import Settings, load_settings
from stack.tracking import Tracking

log = logging.getLogger("vigil.eda")

SECTIONS = (
    "distributions", "correlations", "outliers", "missingness", "trajectories", "circadian",
    "subgroups",
)  # fmt: skip


@dataclass
class EdaReport:
    out_dir: Path
    figures: dict[str, list[Path]] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def html_path(self) -> Path:
        return self.out_dir / "report.html"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def write_summary(numbers: dict[str, Any]) -> list[str]:
    """Sentences from the numbers (each one checkable against ``summary.json``)."""
    b = numbers["balance"]
    out = [
        f"{b['patients']:,} patients, {b['deteriorated_patients']:,} of whom deteriorated; "
        f"{_pct(b['positive_share'])} of {b['labelled_minutes']:,} labelled patient-minutes "
        f"precede a deterioration within {numbers['horizon_hours']:g} h.",
    ]
    dist = pd.DataFrame(numbers["distributions"])
    shifts = []
    for v in ("heart_rate", "resp_rate", "spo2", "systolic_bp", "temperature"):
        d = dist[dist["vital"] == v].set_index("group")
        if {"deteriorated", "stayed well"} <= set(d.index) and d.loc["deteriorated", "n"]:
            det, well = d.loc["deteriorated", "median"], d.loc["stayed well", "median"]
            shifts.append((abs(det - well) / max(abs(well), 1e-9), v, det, well))
    if shifts:
        shifts.sort(reverse=True)
        _, v, det, well = shifts[0]
        name, unit = A.LABELS[v]
        out.append(
            f"Before a deterioration the largest shift in the median is in {name.lower()}: "
            f"{det:.1f} vs {well:.1f} {unit} in patients who stayed well."
        )
    band = dist[(dist["group"] == "stayed well") & dist["in_news2_zero_band"].notna()]
    if len(band):
        low = band.sort_values("in_news2_zero_band").iloc[0]
        out.append(
            f"Among minutes that stayed well, {A.LABELS[low['vital']][0].lower()} is the vital "
            f"least often in its NEWS2 zero-score range ({_pct(low['in_news2_zero_band'])})."
        )
    o = pd.DataFrame(numbers["outliers"])
    before, after = int(o["before"].sum()), int(o["after"].sum())
    top = o.sort_values("before", ascending=False).iloc[0]
    out.append(
        f"Cleaning found {before:,} faulty values (most: {top['kind']} {top['vital']}, "
        f"{int(top['before']):,}); {after:,} remain in the processed data."
    )
    miss = pd.Series(numbers["missing_per_vital"])
    out.append(
        f"Missing readings are set by the measurement cadence: {_pct(miss.min())} of minutes "
        f"lack {A.LABELS[miss.idxmin()][0].lower()}, {_pct(miss.max())} lack "
        f"{A.LABELS[miss.idxmax()][0].lower()}."
    )
    sub = pd.DataFrame(numbers["subgroups"])
    age = sub[(sub["subgroup"] == "age band") & sub["per_patient_day"].notna()]
    if len(age) > 1:
        hi, lo = age.loc[age["per_patient_day"].idxmax()], age.loc[age["per_patient_day"].idxmin()]
        out.append(
            f"Deterioration is most frequent in the {hi['value']} age band "
            f"({hi['per_patient_day']:.3f} per patient-day) and least in {lo['value']} "
            f"({lo['per_patient_day']:.3f})."
        )
    return out


def build_report(d: EdaData, out_dir: Path) -> EdaReport:
    """Compute, draw and write the report for ``d`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = EdaReport(out_dir)
    dist = A.distributions(d)
    vit_corr, feat_corr = A.correlations(d)
    outl, reasons = A.outliers(d), A.quarantine_reasons(d)
    per_vital, by_hour, co = A.missingness(d)
    traj = A.trajectories(d)
    circ = A.circadian(d)
    subs = A.subgroups(d)
    bal = A.class_balance(d)

    rep.figures["distributions"] = [F.distributions(d, out_dir)]
    corr_figs = [F.correlation(vit_corr, "Vital signs (per patient-minute)",
                               out_dir / "correlation_vitals.png")]  # fmt: skip
    if feat_corr is not None:
        corr_figs.append(F.correlation(feat_corr, "Main features and the label",
                                       out_dir / "correlation_features.png"))  # fmt: skip
    rep.figures["correlations"] = corr_figs
    rep.figures["outliers"] = [F.outliers(outl, reasons, out_dir)]
    rep.figures["missingness"] = [F.missingness(per_vital, by_hour, co, out_dir)]
    rep.figures["trajectories"] = [F.trajectories(traj, d.horizon_hours, out_dir)]
    rep.figures["circadian"] = [F.circadian(circ, out_dir)]
    rep.figures["subgroups"] = [F.subgroups(subs, bal, out_dir)]

    rep.numbers = {
        "horizon_hours": d.horizon_hours,
        "balance": bal,
        "distributions": dist.to_dict("records"),
        "outliers": outl.to_dict("records"),
        "quarantine_reasons": reasons.to_dict("records"),
        "missing_per_vital": per_vital.to_dict(),
        "subgroups": subs.to_dict("records"),
        "trajectory_patients": traj.groupby("group")["patients"].max().to_dict()
        if len(traj) else {},
        "circadian_amplitude": (circ.max() - circ.min()).to_dict() if len(circ) else {},
    }  # fmt: skip
    rep.summary = write_summary(rep.numbers)
    (out_dir / "summary.json").write_text(
        json.dumps({"summary": rep.summary, **rep.numbers}, indent=1, default=str)
    )
    rep.html_path.write_text(_html(rep, dist, outl, subs))
    return rep


_TEXT = {
    "distributions": "Every vital per patient-minute, split by whether a deterioration "
    "follows within the horizon; shaded: the NEWS2 zero-score range (RCP 2017).",
    "correlations": "Spearman correlations of the vitals, and of the main model features with "
    "the label.",
    "outliers": "Faulty values by kind, counted in the raw events (before) and in the processed "
    "minutes (after); and the ETL's quarantine reasons.",
    "missingness": "Patient-minutes without a reading of each vital (blood pressure and "
    "temperature are measured every 15 and 30 minutes by design), by hour of day, and which "
    "vitals go missing together.",
    "trajectories": "Median and interquartile band of each vital over the 12 hours before a "
    "deterioration, against patients who never deteriorated aligned at the same time since "
    "admission.",
    "circadian": "Mean of each vital by hour of day in patient-minutes that stayed well.",
    "subgroups": "Class balance, and deterioration rates by age band, sex and SpO₂ scale "
    "(scale 2: hypercapnic COPD).",
}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(rep: EdaReport, dist: pd.DataFrame, outl: pd.DataFrame, subs: pd.DataFrame) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Vigil EDA report</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;"
        "padding:2px 6px;text-align:right}</style></head><body>",
        "<h1>Vigil — exploratory data analysis</h1>",
        f"<p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
        "<h2 id='summary'>Summary</h2><ul>",
        *[f"<li>{html.escape(s)}</li>" for s in rep.summary],
        "</ul>",
    ]
    tables = {"distributions": dist, "outliers": outl, "subgroups": subs}
    for name in SECTIONS:
        parts.append(f"<h2 id='{name}'>{name.capitalize()}</h2><p>{html.escape(_TEXT[name])}</p>")
        parts += [_img(p) for p in rep.figures[name]]
        if name in tables:
            parts.append(tables[name].to_html(index=False, float_format=lambda x: f"{x:.3g}",
                                              na_rep="–"))  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def run_eda(settings: Settings) -> EdaReport:
    """Build the report from the lake and log it to MLflow.

    Raises:
        EdaDataError: no processed data in the lake yet.
    """
    t0 = time.perf_counter()
    data = from_lake(Lake(settings.lake.root), settings.features.horizon_hours)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rep = build_report(data, settings.resolve(settings.eda.reports_dir) / stamp)
    tags = {"vigil.kind": "eda", "patients": str(data.patients)}
    with Tracking(settings, "eda").run(f"eda-{stamp}", tags=tags) as run:
        run.metrics({
            "patients": data.patients,
            "positive_share": rep.numbers["balance"]["positive_share"],
        })  # fmt: skip
        run.artifacts(rep.out_dir, "eda")
    record_stage(settings, "eda", seconds=time.perf_counter() - t0)
    log.info("eda done", extra={"stage": "eda", "report": str(rep.html_path)})
    return rep


def main() -> None:
    """Build the EDA report from the lake (``make eda``)."""
    settings = load_settings()
    configure_logging(settings.logging)
    try:
        rep = run_eda(settings)
    except EdaDataError as exc:
        typer.echo(f"eda: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("\n".join(f"- {s}" for s in rep.summary))
    typer.echo(f"report: {rep.html_path}")


if __name__ == "__main__":
    typer.run(main)
