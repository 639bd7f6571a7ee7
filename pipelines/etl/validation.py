"""Great Expectations suites for the ETL, defined in code and versioned with it.

Two suites, both run on Spark DataFrames:

- ``raw_vitals`` on each batch of raw partitions: columns, types, physiological ranges,
  presence of every vital, ``event_id`` uniqueness, timestamps neither in the future nor
  absurdly old, allowed AVPU values. Row-level faults are expected (the ETL quarantines
  them); the ``mostly`` thresholds from config say how many a *healthy* batch may hold,
  so only a broken batch fails.
- ``processed_vitals`` on the per-minute output: one row per patient-minute, required
  fields present, every value within physical limits, counts consistent.

A failed suite raises :class:`EtlValidationError` naming the partition(s) and the
expectations with what was observed. Results are kept as JSON and GX Data Docs HTML.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.cleaning import HARD_LIMITS, VITALS
from features.resample import AVPU, COUNT_COLUMNS
from pipelines.etl.datadocs import make_offline
from stack.settings import EtlSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network here, and no need

SUITE_VERSION = "2026.11.1"  # bump when an expectation changes; recorded with every run

RAW_COLUMNS = {
    "event_id": "StringType",
    "schema_version": "ShortType",
    "patient_id": "StringType",
    "device_id": "StringType",
    "ts": "TimestampType",
    **dict.fromkeys(VITALS, "DoubleType"),
    "consciousness": "StringType",
    "on_oxygen": "BooleanType",
}


class EtlValidationError(RuntimeError):
    """A batch failed its expectations; the message names partition(s) and expectations."""


@dataclass
class ValidationOutcome:
    suite: str
    success: bool
    failures: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None


def raw_expectations(cfg: EtlSettings, now: datetime) -> list[Any]:
    """The raw-batch suite. ``now`` bounds timestamps (the run's own clock)."""
    import great_expectations as gx

    e = gx.expectations
    out: list[Any] = [
        e.ExpectTableColumnsToMatchSet(column_set=list(RAW_COLUMNS), exact_match=False),
        *(e.ExpectColumnValuesToBeOfType(column=c, type_=t) for c, t in RAW_COLUMNS.items()),
        *(
            e.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("event_id", "patient_id", "device_id", "ts")
        ),
        e.ExpectColumnValuesToBeUnique(column="event_id", mostly=1 - cfg.max_duplicate_share),
        e.ExpectColumnValuesToBeBetween(
            column="ts",
            min_value=now - timedelta(days=cfg.max_age_days),
            max_value=now + timedelta(minutes=cfg.max_future_minutes),
            mostly=1 - cfg.max_bad_time_share,
        ),
        e.ExpectColumnValuesToBeInSet(column="consciousness", value_set=list(AVPU)),
    ]
    for vital in VITALS:
        share = cfg.min_present_share.get(vital, 0.0)
        if share > 0:
            out.append(e.ExpectColumnValuesToNotBeNull(column=vital, mostly=share))
        lo, hi = HARD_LIMITS[vital]
        if vital == "temperature":  # °F readings are valid input, converted by the ETL
            hi = 113.0
        out.append(
            e.ExpectColumnValuesToBeBetween(
                column=vital, min_value=lo, max_value=hi, mostly=1 - cfg.max_out_of_range_share
            )
        )
    return out


def processed_expectations() -> list[Any]:
    """The per-minute output suite: nothing out of contract may leave the ETL."""
    import great_expectations as gx

    e = gx.expectations
    out: list[Any] = [
        e.ExpectCompoundColumnsToBeUnique(column_list=["patient_id", "minute"]),
        *(e.ExpectColumnValuesToNotBeNull(column=c) for c in ("patient_id", "minute", "n_events")),
        e.ExpectColumnValuesToBeInSet(column="consciousness", value_set=list(AVPU)),
        *(e.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in COUNT_COLUMNS),
    ]
    for vital in VITALS:
        lo, hi = HARD_LIMITS[vital]
        out.append(e.ExpectColumnValuesToBeBetween(column=vital, min_value=lo, max_value=hi))
    return out


def _describe_failure(res: Any) -> str:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id"}}
    r = res.result or {}
    seen = []
    if "unexpected_percent" in r and r["unexpected_percent"] is not None:
        seen.append(f"{r['unexpected_percent']:.2f}% unexpected")
    if "observed_value" in r:
        seen.append(f"observed {r['observed_value']}")
    observed = f" — {', '.join(seen)}" if seen else ""
    return f"{cfg.type}({', '.join(f'{k}={v}' for k, v in kwargs.items())}){observed}"


class SuiteRunner:
    """Runs suites on Spark DataFrames in an ephemeral GX context, keeping the results."""

    def __init__(self, report_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.report_dir = report_dir
        report_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.ctx.add_data_docs_site(
            "local",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(report_dir / "data_docs"),
                },
            },
        )
        # persist=False: by default GX caches each batch's DataFrame before computing its
        # metrics. Building that cache of every row was half of a suite's time (15.7 of
        # 30.6 s for the raw suite at 10M events); the metrics themselves read only the
        # columns they need from Parquet (the whole raw suite then took 12 s).
        self.source = self.ctx.data_sources.add_spark("spark", persist=False)
        self._n = 0
        self._used: set[str] = set()

    def run(
        self, name: str, df: DataFrame, expectations: list[Any], *, detail: bool = False
    ) -> ValidationOutcome:
        """Validate ``df``; ``detail`` adds observed values and examples (slower: for the
        failure path, where the message should say what was seen)."""
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        self._n += 1
        # Names are unique per context; keep the plain suite name for the main runs.
        unique = name if name not in self._used else f"{name}_{self._n}"
        self._used.add(unique)
        asset = self.source.add_dataframe_asset(unique)
        batch = asset.add_batch_definition_whole_dataframe("all")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=unique))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=unique, data=batch, suite=suite)
        )
        checkpoint = self.ctx.checkpoints.add(
            gx.Checkpoint(
                name=unique,
                validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format="SUMMARY" if detail else "BOOLEAN_ONLY",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": df})
        make_offline(self.report_dir / "data_docs")  # no CDN, no tracker: see datadocs
        vres = next(iter(result.run_results.values()))
        failures = [_describe_failure(r) for r in vres.results if not r.success]
        path = self.report_dir / f"{name}.json"
        path.write_text(json.dumps(vres.to_json_dict(), indent=2, default=str))
        return ValidationOutcome(
            suite=name,
            success=bool(vres.success),
            failures=failures,
            statistics=dict(vres.statistics),
            json_path=path,
        )


def utc_now() -> datetime:
    return datetime.now(UTC)
