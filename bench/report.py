"""Write ``docs/benchmarks.md`` from ``bench/results/*.json`` (never figures by hand).

    python -m bench.report           # rewrite docs/benchmarks.md
    python -m bench.report --check   # exit 1 if docs/benchmarks.md is not what the JSON says

Each benchmark's headline figures, with the target and whether it was met, then where
its full record is. ``tests/unit/test_bench_report.py`` fails when the page and the
results disagree, so a result committed without its page (or the reverse) is caught.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"

Row = tuple[str, str, str, str]  # figure, value, target, met


def _n(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{x:,.{digits}f}"
    return str(x)


def _met(ok: Any) -> str:
    return "–" if ok is None else ("met" if ok else "**not met**")


def _table(rows: list[Row]) -> str:
    out = ["| figure | value | target | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- sections
def _ingest(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    t = d.get("targets", {})
    for client, r in d["results"].items():
        produce, drain = r["simulate_vs_raw_produce"], r["landing_drain_vs_raw_consume"]
        rss = r["lander_peak_rss_mb"]
        rows += [
            (f"{client}: simulator → Kafka vs raw produce", f"{_n(produce, 2)}×",
             t.get("simulate_vs_raw_produce", ""), _met(produce >= 0.8)),
            (f"{client}: landing drain vs raw consume",
             f"{_n(drain, 2)}× ({_n(r['landing_drain_msgs_per_s'])} msg/s)",
             t.get("landing_drain_vs_raw_consume", ""), _met(drain >= 0.8)),
            (f"{client}: lander peak RSS", f"{_n(rss)} MB", t.get("lander_peak_rss_mb", ""),
             _met(rss <= 1024)),
        ]  # fmt: skip
    return rows


def _etl(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    sizes = sorted(d["results"], key=int)
    for size in sizes:
        r = d["results"][size]
        largest = size == sizes[-1]
        rows.append((
            f"{int(size):,} raw events on {d['parameters']['spark_master']}",
            f"{_n(r['seconds'], 1)} s, {_n(r['events_per_s'])} events/s",
            d["target"]["events_per_s_at_largest"] if largest else "",
            _met(r["events_per_s"] >= 100_000) if largest else "–",
        ))  # fmt: skip
    return rows


def _features(d: dict[str, Any]) -> list[Row]:
    t = d["target"]
    rows: list[Row] = []
    for size in sorted((k for k in d["batch"] if k.isdigit()), key=int):
        r = d["batch"][size]
        largest = size == max((k for k in d["batch"] if k.isdigit()), key=int)
        rows.append((
            f"batch, {int(size):,} processed rows", f"{_n(r['processed_rows_per_s'])} rows/s",
            t["batch_rows_per_s"] if largest else "",
            _met(r["processed_rows_per_s"] >= 100_000) if largest else "–",
        ))  # fmt: skip
    for r in d["online"]["runs"]:
        rows.append((
            f"online, {d['online']['patients']:,} patients, polls of {r['poll_batch']:,}",
            f"{_n(r['events_per_s'])} events/s, peak {_n(r['peak_rss_mb'])} MB",
            f"{t['online_events_per_s']}; {t['online_rss_mb']} MB",
            _met(r["events_per_s"] >= 50_000 and r["peak_rss_mb"] <= 1024),
        ))  # fmt: skip
    return rows


def _training(d: dict[str, Any]) -> list[Row]:
    c = d["cohort"]
    rows: list[Row] = [(
        "cohort", f"{c['patients']:,} patients × {_n(c['hours'])} h, {c['rows']:,} rows", "", "–"
    )]  # fmt: skip
    for name, f in d["figures"].items():
        unit = f" {f['unit']}" if f.get("unit") else ""
        value = _n(f["value"], 1 if unit else 3) + unit
        rows.append((name.replace("_", " "), value, str(f.get("target", "")), _met(f.get("met"))))
    return rows


def _serving(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for size in (1, 100):
        r = d["http"].get(f"ratio_{size}_rows", {})
        if r:
            rows.append((
                f"HTTP /predict vs mlflow models serve, {size} row(s)",
                f"{_n(r['throughput_x'], 1)}× throughput, "
                f"p99 {_n(r['p99_bentoml_over_mlflow'], 2)}×",
                str(r.get("target", "")), _met(r.get("met")),
            ))  # fmt: skip
    stream = d["stream"]
    for client, s in stream.items():
        if not isinstance(s, dict) or "workers_1" not in s:
            continue
        w1, w2 = s["workers_1"], s.get("workers_2", {})
        rows.append((
            f"stream, {client}, 1 / 2 workers",
            f"{_n(w1['scorer_events_per_s'])} / {_n(w2.get('scorer_events_per_s'))} events/s "
            f"(raw consume {_n(s['raw_consume_per_s'])})",
            str(s.get("target", "")), _met(s.get("met")),
        ))  # fmt: skip
    if isinstance(stream.get("paced"), dict):
        p = stream["paced"]
        rows.append((
            f"event→prediction at {_n(p['offered_per_s'])} events/s offered",
            f"p50 {_n(p['p50_ms'])} ms, p99 {_n(p['p99_ms'])} ms",
            str(p.get("target", "p99 <= 250 ms")), _met(p.get("met", p["p99_ms"] <= 250)),
        ))  # fmt: skip
    for key, r in stream.items():
        if key.startswith("rss_") and isinstance(r, dict):
            rows.append((
                f"scorer peak RSS, {r['patients']:,} patients", f"{_n(r['peak_rss_mb'])} MB",
                str(r.get("target", "")), _met(r.get("met")),
            ))  # fmt: skip
    if isinstance(stream.get("replay"), dict):
        r = stream["replay"]
        rows.append((
            f"history replay at takeover, {r['patients']:,} patients × {_n(r['hours'])} h",
            f"{r['replayed_events']:,} events in {_n(r['replay_seconds'], 1)} s, "
            f"{_n(r['peak_rss_mb'])} MB", "none", "–",
        ))  # fmt: skip
    return rows


def _drift(d: dict[str, Any]) -> list[Row]:
    p = d["parameters"]
    rows: list[Row] = [(
        f"false alarms on {p['baseline_seeds']} baseline wards of other seeds",
        _n(d["false_alarm_rate"], 2), "0", _met(d["false_alarm_rate"] == 0),
    )]  # fmt: skip
    for scenario, r in d["detection"].items():
        rows.append((
            f"{scenario.replace('_', ' ')} detected", f"{r['detected']} of {r['runs']} wards",
            "every ward", _met(r["detected"] == r["runs"]),
        ))  # fmt: skip
    return rows


def _retrain(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for family, by_ward in d["results"].items():
        for ward, r in by_ward.items():
            for model in ("v2_same_size", "v2_window"):
                m = r.get(model)
                if not m:
                    continue
                rows.append((
                    f"{family}, {ward.replace('_', ' ')} wards: {model} − v1",
                    f"PR-AUC {m['pr_auc_minus_v1']:+.3f} ({m['pr_auc_wins']} of "
                    f"{d['parameters']['held_out_wards']} won), ROC-AUC "
                    f"{m['roc_auc_minus_v1']:+.3f}", "none (a question)", "–",
                ))  # fmt: skip
    return rows


def _chaos(d: dict[str, Any]) -> list[Row]:
    f, t = d["figures"], d["targets"]
    rows: list[Row] = [
        ("exits that needed a human", _n(f["exits_needing_a_human"]), "0",
         _met(t["exits_needing_a_human"]["met"])),
        ("valid events with a prediction",
         f"{_n(100 * f['valid_events_scored_share'], 2)} % of {f['valid_events']:,}", "100 %",
         _met(t["valid_events_scored_share"]["met"])),
        ("duplicates stored", _n(f["duplicates_stored"]), "0", _met(t["duplicates_stored"]["met"])),
        ("messages unaccounted for (scorer / lander)",
         f"{_n(f['unaccounted_scorer'])} / {_n(f['unaccounted_lander'])} of "
         f"{f['messages_sent']:,} ({f['hostile_messages']:,} hostile)", "0",
         _met(t["unaccounted"]["met"])),
    ]  # fmt: skip
    for dep, w in f.get("scorer_waited_out", {}).items():
        if w["back_after_s"]:
            rows.append((f"scorer waited out {dep}", f"{_n(sum(w['back_after_s']), 1)} s, "
                         f"{w['retries']} retries, no exit", "no exit", "met"))  # fmt: skip
    for fault, seconds in f["recovery_s"].items():
        rows.append((f"recovery after {fault} killed", f"{_n(seconds, 1)} s "
                     f"(down {_n(f['down_s'][fault], 1)} s)", "none", "–"))  # fmt: skip
    return rows


def _clinical_wards(kind: str, trained: dict[str, Any], wards: dict[str, Any]) -> list[Row]:
    t = trained
    ward = t.get("ward", {})
    facts = (
        f"; ward: {_n(ward['outcomes_per_100_patient_days'], 2)} outcomes / 100 patient-days, "
        f"{_n(ward['scored_rows_per_patient_day'], 1)} scored rows / patient-day, "
        f"{_n(ward['rescues'])} rescues of {_n(ward['escalations'])} escalations"
        if ward
        else ""
    )
    rows: list[Row] = [(
        f"{kind}: trained on", f"baseline, {t['patients']:,} patients × {_n(t['hours'])} h "
        f"(seed {t['seed']}): {t['family']}, {t['calibration']} calibration{facts}", "", "–",
    )]  # fmt: skip
    for name, w in wards.items():
        m, g = w["model"], w["roc_auc_gain"]
        rows.append((
            f"{kind}, {name} (seed {w['seed']}, {w['patients']} patients): ROC-AUC model / NEWS2",
            f"{_n(m['roc_auc'], 3)} / {_n(w['news2']['roc_auc'], 3)}, gain "
            f"{_n(g['estimate'], 3)} [{_n(g['low'], 3)}, {_n(g['high'], 3)}]", "gain low > 0",
            _met(g["low"] > 0),
        ))  # fmt: skip
        rows.append((
            f"{kind}, {name}: PR-AUC model / NEWS2; calibration slope, mean risk / observed, "
            "Brier skill",
            f"{_n(m['pr_auc'], 3)} / {_n(w['news2']['pr_auc'], 3)}; "
            f"{_n(m['calibration_slope'], 2)}, {_n(m['expected_observed'], 2)}, "
            f"{_n(m['brier_skill'], 3)}", "", "–",
        ))  # fmt: skip
    for tr in wards["baseline"]["triggers"].values():
        a, b = tr["trigger"], tr["model"]
        rows.append((
            f"{kind}, baseline, {tr['label']} vs model at its budget: sensitivity, PPV, "
            "episodes caught, ward alerts / patient-day",
            f"{_n(a['sensitivity'], 3)} vs {_n(b['sensitivity'], 3)}; {_n(a['ppv'], 3)} vs "
            f"{_n(b['ppv'], 3)}; {_n(a['episodes_caught'])} vs {_n(b['episodes_caught'])} of "
            f"{_n(a['episodes'])}; {_n(a['ward_alerts_per_patient_day'], 2)} vs "
            f"{_n(b['ward_alerts_per_patient_day'], 2)}", "model ≥ trigger",
            _met(b["sensitivity"] >= a["sensitivity"]),
        ))  # fmt: skip
    for tr in wards["baseline"]["triggers"].values():
        if "ward_budget" not in tr:
            continue
        a, b = tr["ward_budget"]["trigger"], tr["ward_budget"]["model"]
        rows.append((
            f"{kind}, baseline, {tr['label']} vs model at its ward alerts: ward alerts / "
            "patient-day, alert PPV, episodes caught, median lead (h)",
            f"{_n(a['ward_alerts_per_patient_day'], 2)} vs "
            f"{_n(b['ward_alerts_per_patient_day'], 2)}; {_n(a['alert_ppv'], 3)} vs "
            f"{_n(b['alert_ppv'], 3)}; {_n(a['episodes_caught'])} vs "
            f"{_n(b['episodes_caught'])}; {_n(a['lead_minutes_median'] / 60, 1)} vs "
            f"{_n(b['lead_minutes_median'] / 60, 1)}", "model ≥ trigger (episodes)",
            _met(b["episodes_caught"] >= a["episodes_caught"]),
        ))  # fmt: skip
    return rows


def _clinical(d: dict[str, Any]) -> list[Row]:
    rows = _clinical_wards("monitored", d["trained"], d["wards"])
    if "general_ward" in d:
        g = d["general_ward"]
        rows += _clinical_wards(f"general ({_n(g['horizon_hours'])} h)", g["trained"], g["wards"])
    for name, f in d["figures"].items():
        rows.append((name.replace("_", " "), _n(f["value"], 3), str(f["target"]), _met(f["met"])))
    return rows


def _scale_landing(d: dict[str, Any]) -> list[Row]:
    r, p = d["results"], d["parameters"]
    names = {"all_1": "one lander, every partition", "group_1": "one lander in a group",
             "group_2": "two landers in a group"}  # fmt: skip
    rows: list[Row] = []
    for k, label in names.items():
        x = r[k]
        took = f"{_n(x['wall_s'], 1)} s, start {_n(x['startup_s'], 1)} s"
        rows.append((f"{label}: {_n(p['messages'])} messages",
                     f"{_n(x['msgs_per_s'])} msg/s ({took})", "–", "–"))  # fmt: skip
    split = r["group_2"]["records_per_lander"]
    rows += [
        ("two landers: records each", " / ".join(_n(x) for x in split), "both land", _met(
            min(split) > 0)),
        ("two vs one in a group", f"{_n(r['group_2_vs_group_1'], 2)}×", "–", "–"),
        ("group vs every partition (one lander)", f"{_n(r['group_1_vs_all_1'], 2)}×", "–", "–"),
    ]  # fmt: skip
    return rows


def _scale_spark(d: dict[str, Any]) -> list[Row]:
    r, p = d["results"], d["parameters"]
    rows: list[Row] = []
    for w in (1, 2):
        x = r[f"workers_{w}"]
        rows += [
            (f"ETL, {w} worker{'s' if w > 1 else ''} ({p['worker']})",
             f"{_n(x['etl_events_per_s'])} events/s ({_n(x['etl_s'], 1)} s)", "–", "–"),
            (f"features, {w} worker{'s' if w > 1 else ''}",
             f"{_n(x['features_events_per_s'])} events/s ({_n(x['features_s'], 1)} s)", "–", "–"),
        ]  # fmt: skip
    rows += [
        ("ETL: two workers vs one", f"{_n(r['etl_2_vs_1_workers'], 2)}×", "–", "–"),
        ("features: two workers vs one", f"{_n(r['features_2_vs_1_workers'], 2)}×", "–", "–"),
    ]
    return rows


ANCHORS = {"retrain_respiratory_wave": "retrain"}

SECTIONS: list[tuple[str, str, str, Callable[[dict[str, Any]], list[Row]]]] = [
    ("ingest", "Ingest: simulator → Kafka → raw lake", "python -m bench.bench_ingest", _ingest),
    ("etl", "ETL: raw lake → processed lake + PostgreSQL", "python -m bench.bench_etl", _etl),
    ("features", "Features: batch and online", "python -m bench.bench_features", _features),
    ("training", "Training and the gate", "python -m bench.bench_training", _training),
    ("serving", "Serving: HTTP and the Kafka scorer", "python -m bench.bench_serving", _serving),
    ("drift", "Drift: false alarms and detection", "python -m bench.bench_drift", _drift),
    ("retrain_respiratory_wave", "Retraining on a respiratory wave",
     "python -m bench.bench_retrain", _retrain),
    ("chaos", "Chaos: hostile messages and killed parts", "python -m bench.bench_chaos", _chaos),
    ("clinical", "Clinical validity: the model against every NEWS2 trigger",
     "python -m bench.bench_clinical", _clinical),
    ("scale_landing", "Scale-out: one lander and two",
     "python -m bench.bench_scale --part landing", _scale_landing),
    ("scale_spark", "Scale-out: Spark standalone with one worker and two",
     "python -m bench.bench_scale --part spark", _scale_spark),
]  # fmt: skip


def render() -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.report` from `bench/results/*.json`; do not edit by "
        "hand. Each run records its machine (here 2 cores, 24 GB, no GPU), versions and "
        "parameters in its JSON, with earlier runs where they were kept. `make bench` runs "
        "them all (about an hour).",
        "",
    ]
    for name, title, command, build in SECTIONS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        out += [
            f"## {title}",
            f'<a id="{ANCHORS.get(name, name.replace("_", "-"))}"></a>',
            "",
            f"`{command}` · measured {str(d.get('when', '?'))[:16].replace('T', ' ')} UTC · "
            f"[`bench/results/{name}.json`](../bench/results/{name}.json)",
            "",
            _table(build(d)),
            "",
        ]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE} is out of date: run `python -m bench.report`", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"written {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
