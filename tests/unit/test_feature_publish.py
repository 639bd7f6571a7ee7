"""Publishing staged feature files: what tasks reported replaces the hours, nothing else."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from features.spec import FEATURES_ZONE
from pipelines.features.job import STAGING_ZONE, FeatureJob
from stack.lake import Lake
from stack.settings import Settings


def _rows(n: int) -> pa.Table:
    return pa.table({"patient_id": [f"p{i}" for i in range(n)], "x": [float(i) for i in range(n)]})


def test_reported_files_replace_their_hours_and_unreported_ones_never_land(
    settings: Settings, tmp_path: Path
) -> None:
    job = FeatureJob(settings)
    lake: Lake = job.lake
    q1, q2, q3 = "date=2026-01-05/hour=01", "date=2026-01-05/hour=02", "date=2026-01-05/hour=03"
    # Last run's files: q1 and q2 are recomputed now, q3 is not.
    for q in (q1, q2, q3):
        lake.write_parquet(_rows(2), f"{FEATURES_ZONE}/{q}/part-old.parquet")
    staging = f"{STAGING_ZONE}/run1"
    lake.write_parquet(_rows(3), f"{staging}/{q1}/part-00000-0-0000.parquet")
    lake.write_parquet(_rows(4), f"{staging}/{q1}/part-00001-0-0000.parquet")
    # A failed attempt's file: written, never reported.
    lake.write_parquet(_rows(9), f"{staging}/{q1}/part-00001-1-0000.parquet")
    reported = {
        q1: [
            f"{staging}/{q1}/part-00000-0-0000.parquet",
            f"{staging}/{q1}/part-00001-0-0000.parquet",
        ]
    }
    job._publish([q1, q2], reported)
    lake.delete_dir(staging)

    assert lake.files(f"{FEATURES_ZONE}/{q1}") == [
        f"{FEATURES_ZONE}/{q1}/part-00000-0-0000.parquet",
        f"{FEATURES_ZONE}/{q1}/part-00001-0-0000.parquet",
    ]
    assert lake.read_table(f"{FEATURES_ZONE}/{q1}").num_rows == 7
    assert lake.files(f"{FEATURES_ZONE}/{q2}") == []  # recomputed with no rows: emptied
    assert lake.read_table(f"{FEATURES_ZONE}/{q3}").num_rows == 2  # untouched
    assert lake.files(STAGING_ZONE, suffix="") == []
    assert not list(Path(lake.path(STAGING_ZONE)).rglob("*"))
    lake.delete_dir("no/such/folder")  # nothing to delete is fine
