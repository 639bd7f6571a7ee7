"""The skeleton every partitioned Spark job of the platform shares (ETL, features).

Both jobs read rows partitioned by patient and sorted by time, run a *pure* per-patient
transform in each task (``mapInPandas``), and have the task itself write what it made to
Parquet under a staging folder of the run (handing every row back to the JVM cost more
than computing it). Tasks report only what they wrote; the driver then *publishes* the
reported files of successful tasks into the zone, replacing each computed partition.
A failed task attempt's files are never reported, so never published.

- :func:`by_patient` regroups Spark's Arrow batches so that no patient is split;
- :class:`StagedWriter` holds a task's output per (zone, partition) and writes it in
  few, large files named by task and attempt;
- :func:`publish` replaces each partition's files with the staged ones;
- :class:`JobStatus` is the one vocabulary of run statuses (tables ``etl_runs``,
  ``feature_runs`` and the summaries).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd
import pyarrow as pa

from stack.lake import Lake


class JobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NOTHING_TO_DO = "nothing_to_do"
    FAILED = "failed"


def by_patient(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Regroup Arrow batches of patient-sorted rows so that no patient is split.

    Spark hands ``mapInPandas`` a partition as batches of at most N rows; the rows are
    partitioned and sorted by patient, so only the last patient of a batch can continue in
    the next one: hold it back and prepend it there.
    """
    carry: pd.DataFrame | None = None
    for incoming in batches:
        batch = incoming if carry is None else pd.concat([carry, incoming], ignore_index=True)
        if batch.empty:
            continue
        last = batch["patient_id"].iloc[-1]
        tail = batch["patient_id"].to_numpy() == last
        carry = batch[tail]
        if (~tail).any():
            yield batch[~tail].reset_index(drop=True)
    if carry is not None and not carry.empty:
        yield carry.reset_index(drop=True)


def task_tag() -> str:
    """``<partition>-<attempt>`` of the running Spark task (a driver-side call: 00000-0)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return f"{ctx.partitionId():05d}-{ctx.attemptNumber()}" if ctx else "00000-0"


@dataclass(frozen=True)
class Written:
    """One file a task wrote: its zone (a key of the job's own), partition, path, rows."""

    zone: str
    partition: str
    file: str
    rows: int


@dataclass
class StagedWriter:
    """A task's output rows, held per (zone, partition) and written to ``staging`` in files
    of at least ``hold_rows`` rows (one per partition per flush), named by task and attempt.

    Args:
        lake_root: the lake (the task opens its own :class:`Lake`).
        staging: the run's staging folder (``catalog.staging_zone(job)/<run>``).
        hold_rows: rows held before a flush: few large files, bounded memory.
    """

    lake_root: str
    staging: str
    hold_rows: int
    wrote: list[Written] = field(default_factory=list)
    _held: dict[tuple[str, str], list[pa.Table]] = field(default_factory=dict)
    _rows: int = 0
    _tag: str = ""

    def add(self, zone: str, partition: str, table: pa.Table) -> None:
        """Hold ``table``'s rows for ``partition`` of ``zone``; flush past ``hold_rows``."""
        if table.num_rows == 0:
            return
        self._held.setdefault((zone, partition), []).append(table)
        self._rows += table.num_rows
        if self._rows >= self.hold_rows:
            self.flush()

    def flush(self) -> None:
        """Write everything held, one file per (zone, partition)."""
        if not self._held:
            return
        lake = Lake(self.lake_root)
        self._tag = self._tag or task_tag()
        for (zone, q), parts in sorted(self._held.items()):
            rel = f"{self.staging}/{zone}/{q}/part-{self._tag}-{len(self.wrote):04d}.parquet"
            table = pa.concat_tables(parts)
            lake.write_parquet(table, rel)
            self.wrote.append(Written(zone, q, rel, table.num_rows))
        self._held.clear()
        self._rows = 0

    def files(self) -> dict[str, list[object]]:
        """The files written, as the columns of a task's report frame."""
        return {
            "zone": [w.zone for w in self.wrote],
            "partition": [w.partition for w in self.wrote],
            "file": [w.file for w in self.wrote],
            "rows": [w.rows for w in self.wrote],
        }


def staged_files(reported: Iterable[Mapping[str, object]]) -> dict[str, dict[str, list[str]]]:
    """``{zone: {partition: [files]}}`` from the report rows of kind ``file``."""
    out: dict[str, dict[str, list[str]]] = {}
    for r in reported:
        if r["kind"] == "file":
            out.setdefault(str(r["zone"]), {}).setdefault(str(r["partition"]), []).append(
                str(r["file"])
            )
    return out


def publish(
    lake: Lake, zone_dir: str, partitions: Iterable[str], files: dict[str, list[str]]
) -> None:
    """Make each partition of ``zone_dir`` hold exactly its staged ``files`` (a partition
    with none is emptied: it was computed and has no rows now)."""
    for q in partitions:
        lake.replace_dir(f"{zone_dir}/{q}", files.get(q, []))
