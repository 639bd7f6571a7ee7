"""Every lake zone and table is declared once, in ``stack.catalog``, and the code agrees."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack import catalog
from stack.db import MIGRATIONS
from stack.settings import REPO_ROOT

SOURCES = ["stack", "pipelines", "features", "training", "serving", "monitoring", "ops", "demo",
           "bench"]  # fmt: skip
_SQL_TABLE = re.compile(
    r"\b(?:FROM|INTO|JOIN|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+([a-z_][a-z0-9_]*)\b"
)
# Names that are not tables of the catalog: the migration-5 intermediate and its
# partitions' prefix, the scorer's per-connection staging table, SQL words after FROM.
NOT_TABLES = {"vitals_minute_unpartitioned", "_p", "stdin", "unnest", "generate_series",
              "information_schema", "pg_class", "pg_namespace", "pg_roles", "pg_database",
              "pg_tables", "if", "only", "task_instance", "asset_event", "asset",
              "dag_run"}  # fmt: skip


def _created_by_migrations() -> set[str]:
    created: set[str] = set()
    for _n, _what, sql in MIGRATIONS:
        created |= set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_]+)\s*\(", sql))
        created |= set(re.findall(r"CREATE TABLE ([a-z_]+) \(LIKE", sql))
        created -= set(re.findall(r"DROP TABLE ([a-z_]+)", sql))
    return created


def test_the_migrations_create_exactly_the_catalogs_tables() -> None:
    declared = {t.name for t in catalog.TABLES}
    assert _created_by_migrations() | {"schema_migrations"} == declared


def test_the_code_names_no_table_the_catalog_does_not_declare() -> None:
    declared = {t.name for t in catalog.TABLES} | NOT_TABLES
    unknown: dict[str, str] = {}
    for folder in SOURCES:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for name in _SQL_TABLE.findall(path.read_text()):
                system = name.startswith("pg_")  # PostgreSQL's own catalog
                if name not in declared and not name.startswith("features_") and not system:
                    unknown[name] = str(path.relative_to(REPO_ROOT))
    assert unknown == {}


def test_no_module_spells_a_lake_zone_but_the_catalog() -> None:
    # A quoted path beginning with a zone (not a glob of source files like "features/*.py").
    zone = re.compile(r"[\"'](?:raw|processed|features|labels|_staging|_landing|reference)/(?!\*)")
    spelled = [
        str(path.relative_to(REPO_ROOT))
        for folder in SOURCES
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path != REPO_ROOT / "stack" / "catalog.py" and zone.search(path.read_text())
    ]
    assert spelled == []


def test_versioned_locations_move_together() -> None:
    assert catalog.features_zone("vitals-v9") == "features/vitals-v9"
    assert catalog.labels_file("vitals-v9").startswith(catalog.labels_zone("vitals-v9") + "/")
    assert catalog.features_table("vitals-v9") == "features_vitals_v9"


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31)))
def test_partition_names_round_trip(when: datetime) -> None:
    hour = when.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
    assert catalog.hour_of(catalog.partition_of(hour)) == hour


@pytest.mark.parametrize("bad", ["date=2026-01-05/hour=24", "2026-01-05/10", "date=x/hour=01"])
def test_a_bad_partition_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a partition name"):
        catalog.hour_of(bad)


def test_rows_split_by_their_hour() -> None:
    ts = pa.array([0, 3_599_999_999, 3_600_000_000, 7_200_000_001], pa.timestamp("us", "UTC"))
    parts = catalog.by_hour(pa.table({"ts": ts, "x": [1, 2, 3, 4]}), "ts")
    assert {k: t["x"].to_pylist() for k, t in parts.items()} == {
        "date=1970-01-01/hour=00": [1, 2],
        "date=1970-01-01/hour=01": [3],
        "date=1970-01-01/hour=02": [4],
    }
    assert catalog.by_hour(pa.table({"ts": ts[:0]}), "ts") == {}
