"""The EDA report on a small simulated ward: every section, figure and number in place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.cleaning import FAHRENHEIT_BAND, HARD_LIMITS, VITALS
from pipelines.eda.analysis import news2_band
from pipelines.eda.data import EdaData, EdaDataError, from_cohort
from pipelines.eda.report import SECTIONS, EdaReport, build_report
from stack.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data() -> EdaData:
    from pipelines.cohort import ward_day

    base = load_settings(environ={})
    ward = ward_day(base.simulator, base.features, scenario="baseline", seed=3, patients=60,
                    deterioration_rate=0.5, keep_stages=True)  # fmt: skip
    return from_cohort(ward, horizon_hours=4.0)


@pytest.fixture(scope="module")
def report(data: EdaData, tmp_path_factory: pytest.TempPathFactory) -> EdaReport:
    return build_report(data, tmp_path_factory.mktemp("eda"))


def test_every_section_and_figure_is_in_the_report(report: EdaReport) -> None:
    page = report.html_path.read_text()
    assert set(report.figures) == set(SECTIONS)
    figures = [p for ps in report.figures.values() for p in ps]
    assert len(figures) == 8  # two correlation matrices
    for name in SECTIONS:
        assert f"id='{name}'" in page
    assert page.count("data:image/png;base64,") == len(figures)
    for png in figures:
        assert png.exists()
        assert png.stat().st_size > 20_000  # a drawn figure, not an empty canvas
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_numbers_match_the_data(data: EdaData, report: EdaReport) -> None:
    m = data.minutes
    numbers: dict[str, Any] = json.loads((report.out_dir / "summary.json").read_text())
    first = report.summary[0]
    patients = m["patient_id"].nunique()
    deteriorated = data.outcomes["patient_id"].isin(m["patient_id"]).sum()
    labelled = int(m["group"].notna().sum())
    share = float((m["group"] == 1).sum() / labelled)
    assert first.startswith(f"{patients:,} patients, {deteriorated:,} of whom deteriorated")
    assert f"{100 * share:.1f} % of {labelled:,} labelled" in first
    assert numbers["balance"]["patients"] == patients
    # Faulty values: °F readings counted in the raw events, none left after cleaning.
    raw_t = data.raw["temperature"].astype(float)
    fahr = int(((raw_t >= FAHRENHEIT_BAND[0]) & (raw_t <= FAHRENHEIT_BAND[1])).sum())
    outl = pd.DataFrame(numbers["outliers"]).set_index(["vital", "kind"])
    assert outl.loc[("temperature", "°F reading"), "before"] == fahr > 0
    assert outl["after"].sum() == 0
    for v in VITALS:
        lo, hi = HARD_LIMITS[v]
        assert m[v].dropna().between(lo, hi).all()
    total = int(outl["before"].sum())
    assert any(f"Cleaning found {total:,} faulty values" in s for s in report.summary)
    # The missingness sentence quotes the per-vital shares.
    miss = pd.Series(numbers["missing_per_vital"])
    per = {v: float((m[f"n_{v}"].fillna(0) == 0).mean()) for v in VITALS}
    assert miss.to_dict() == pytest.approx(per)
    assert any(f"{100 * max(per.values()):.1f} % lack temperature" in s for s in report.summary)


def test_distribution_shift_and_band_are_right(data: EdaData, report: EdaReport) -> None:
    dist = pd.DataFrame(json.loads((report.out_dir / "summary.json").read_text())["distributions"])
    rr = dist[dist["vital"] == "resp_rate"].set_index("group")
    well = data.minutes.loc[data.minutes["group"] == 0, "resp_rate"].dropna()
    assert rr.loc["stayed well", "median"] == pytest.approx(float(well.median()))
    assert rr.loc["deteriorated", "median"] > rr.loc["stayed well", "median"]
    assert news2_band("resp_rate") == (12.0, 20.0)  # RCP 2017: 12-20 scores 0
    assert news2_band("spo2")[0] == 96.0
    assert news2_band("temperature") == pytest.approx((36.1, 38.0))
    assert news2_band("diastolic_bp") is None
    sentence = next(s for s in report.summary if "largest shift" in s)
    med = re.findall(r"(\d+\.\d) vs (\d+\.\d)", sentence)[0]
    assert float(med[0]) != float(med[1])


def test_trajectories_show_the_run_up_to_deterioration(data: EdaData) -> None:
    from pipelines.eda.analysis import trajectories

    t = trajectories(data)
    rr = t[(t["vital"] == "resp_rate") & (t["hours_before"] <= 1)]
    case = rr[rr["group"] == "deteriorated"]["median"].mean()
    ctrl = rr[rr["group"] == "matched controls"]["median"].mean()
    assert case > ctrl + 1  # tachypnoea in the last hour
    assert set(t["group"]) == {"deteriorated", "matched controls"}


def test_no_processed_data_is_a_clear_error(tmp_path: Path) -> None:
    from pipelines.eda.data import from_lake
    from stack.lake import Lake

    with pytest.raises(EdaDataError, match="make etl"):
        from_lake(Lake(tmp_path / "lake"), 4.0)
