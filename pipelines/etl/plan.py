"""Which raw partitions an ETL run processes (pure functions: no Spark, no database).

A raw partition is one event hour, ``date=YYYY-MM-DD/hour=HH``. Its *fingerprint* is a
digest of the files in it, so late events that land in an hour already processed change
the fingerprint and send the hour back through the ETL; a backfilled old hour is new.

Processing hour H also needs its neighbours: the hours before it as *context* (artifact
rules look back minutes, forward-fill up to 90) and the hours after it, whose first
minutes are forward-filled from H and so are *reprocessed* when H changes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from stack.catalog import hour_of, partition_of


def fingerprints(files: Iterable[str], zone: str) -> dict[str, str]:
    """``{partition: digest of its file names}`` from lake-relative file paths in ``zone``."""
    grouped: dict[str, list[str]] = defaultdict(list)
    prefix = zone.rstrip("/") + "/"
    for f in files:
        if not f.startswith(prefix):
            continue
        parts = f[len(prefix) :].split("/")
        if len(parts) >= 3 and parts[0].startswith("date=") and parts[1].startswith("hour="):
            grouped[f"{parts[0]}/{parts[1]}"].append(parts[-1])
    return {
        p: hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:16]
        for p, names in grouped.items()
    }


@dataclass(frozen=True)
class Plan:
    pending: list[str]  # partitions whose outputs this run (re)writes
    context: list[str]  # partitions read for continuity only
    # Fingerprints as planned: recorded as processed, so files landing *during* the run
    # are never marked done without having been read.
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        return sorted(set(self.pending) | set(self.context))


def plan(
    raw: dict[str, str],
    done: dict[str, str],
    *,
    context_hours: int,
    only: Iterable[str] | None = None,
    force: bool = False,
) -> Plan:
    """Partitions to process now.

    Args:
        raw: fingerprints of the raw partitions present.
        done: fingerprints recorded when each partition was last processed.
        context_hours: neighbouring hours that depend on / give context to a partition.
        only: restrict to these partitions (e.g. a backfill of one hour).
        force: reprocess even when unchanged.
    """
    wanted = set(raw) if only is None else set(only) & set(raw)
    changed = {p for p in wanted if force or done.get(p) != raw[p]}
    pending = set(changed)
    for p in changed:
        h = hour_of(p)
        for k in range(1, context_hours + 1):
            later = partition_of(h + timedelta(hours=k))
            if later in raw:
                pending.add(later)
    context = set()
    for p in pending:
        h = hour_of(p)
        for k in range(1, context_hours + 1):
            earlier = partition_of(h - timedelta(hours=k))
            if earlier in raw and earlier not in pending:
                context.add(earlier)
    return Plan(
        pending=sorted(pending),
        context=sorted(context),
        fingerprints={p: raw[p] for p in pending},
    )
