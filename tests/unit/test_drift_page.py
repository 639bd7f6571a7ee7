"""drift.html: Evidently's page titled and headed with Vigil's own verdict, the one the
retraining trigger acts on (it used to say only Evidently's "Dataset drift NOT detected"
on runs where `make drift` printed RETRAINING TRIGGERED, with no title, model or window)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import detect_drift
from monitoring.job import MonitoringSummary
from monitoring.performance import Performance
from monitoring.report import drift_page, render
from stack.settings import Settings


def _two_features(settings: Settings) -> tuple[str, str]:
    """Two numerical features the drift test looks at."""
    from features.spec import DISCRETE_FEATURES, FEATURE_NAMES

    skip = set(DISCRETE_FEATURES) | set(settings.monitoring.drift.exclude)
    usable = [f for f in FEATURE_NAMES if f not in skip]
    return usable[0], usable[1]


def _summary(settings: Settings, reasons: list[str], tmp: Path) -> tuple[MonitoringSummary, str]:
    rng = np.random.default_rng(3)
    moved, still = _two_features(settings)
    ref = pd.DataFrame({moved: rng.normal(80, 10, 3000), still: rng.normal(96, 2, 3000)})
    cur = pd.DataFrame({moved: rng.normal(95, 10, 3000), still: rng.normal(96, 2, 3000)})
    drift, snapshot = detect_drift(ref, cur, settings.monitoring.drift)
    snapshot.save_html(str(tmp / "evidently.html"))
    perf = Performance("realized", 0, 0, 0, False, None, None, None)
    s = MonitoringSummary(
        run_id="", model_name="vigil-deterioration", model_version="7",
        window_start=pd.Timestamp("2026-01-05 00:00", tz="UTC"),
        window_end=pd.Timestamp("2026-01-06 00:00", tz="UTC"), drift=drift,
        prediction_source="backtest", realized=perf, backtest=perf, reasons=reasons,
        report_dir=tmp,
    )  # fmt: skip
    return s, (tmp / "evidently.html").read_text()


@pytest.mark.parametrize("triggered", [True, False])
def test_the_page_is_titled_and_says_vigils_verdict_above_evidently(
    settings: Settings, tmp_path: Path, triggered: bool
) -> None:
    reasons = ["feature drift: 1/2 columns (50% >= 2%)"] if triggered else []
    s, evidently = _summary(settings, reasons, tmp_path)
    page = drift_page(evidently, s, settings)
    title = re.search(r"<title>([^<]*)</title>", page)
    assert title is not None
    assert "vigil-deterioration v7" in title[1]
    assert "2026-01-05 00:00–2026-01-06 00:00 UTC" in title[1]
    banner = page[page.index('<section id="vigil-verdict"') :]
    banner = banner[: banner.index("</section>")]
    want = "RETRAINING TRIGGERED" if triggered else "No retraining needed"
    assert f"Vigil's verdict: {want}" in banner
    assert _two_features(settings)[0] in banner  # the drifted column, as `make drift` says
    for line in render(s).splitlines()[1:-1]:
        assert line.strip().replace("'", "&#x27;").replace(">", "&gt;")[:40] in banner
    # Banner first, then Evidently's whole page, unchanged.
    body = page.index("<body")
    assert body < page.index('id="vigil-verdict"')
    assert len(page) > len(evidently)
    assert page.count("<body") == 1
    assert page.replace(banner + "</section>", "", 1).replace(f"<title>{title[1]}</title>", "", 1
                                                              ) == evidently  # fmt: skip


def test_evidently_counts_drifted_columns_against_vigils_share(
    settings: Settings, tmp_path: Path
) -> None:
    """One column of two drifted: Evidently's default share (50 %) says "not detected";
    with Vigil's trigger share (2 %) its dataset line agrees with Vigil's count."""
    s, evidently = _summary(settings, [], tmp_path)
    assert len(s.drift.drifted) == 1
    assert s.drift.share >= settings.monitoring.drift.trigger_share
    assert "Dataset drift NOT detected" not in evidently
