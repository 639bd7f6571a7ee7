"""Labels: did the patient deteriorate within the horizon after the feature time?

For a feature row of patient *p* at time *t* (``ts``, the end of its as-of minute) and
the patient's first landed outcome at time *o*:

- ``t > o`` (or ``t == o``): the row is **excluded** — after the outcome the patient is
  in intensive care or being resuscitated, not on the ward being predicted;
- ``t < o <= t + horizon``: label **1**;
- otherwise label **0**.

Both labels need the whole horizon observed: if the outcome feed is known only up to
``observed_until`` and ``t + horizon`` lies beyond it, the row is **censored** (label
unknown), *whether or not an outcome has already landed inside the partial horizon*. A
patient whose last four hours have not happened yet has not been shown to stay well, and
keeping only the positives of that last stretch would make "close to the end of the
data" (and so length of stay) carry label information: a leak the model can learn and
that a prospective deployment never sees.

Outcomes are joined on ``patient_id``; times are UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LABEL_POSITIVE = 1
LABEL_NEGATIVE = 0
STATUS_LABELLED = "labelled"
STATUS_CENSORED = "censored"
STATUS_AFTER_OUTCOME = "after_outcome"


def make_labels(
    rows: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    horizon: pd.Timedelta,
    observed_until: pd.Timestamp,
) -> pd.DataFrame:
    """Label feature rows.

    Args:
        rows: ``patient_id``, ``ts`` (feature time).
        outcomes: ``patient_id``, ``ts`` (outcome time), ``kind``.
        horizon: how far ahead a deterioration counts (default config: 4 hours).
        observed_until: the time up to which outcomes are known to have landed.

    Returns:
        ``patient_id``, ``ts``, ``label`` (Int8: 1, 0 or <NA>), ``label_status``
        (``labelled`` | ``censored`` | ``after_outcome``), ``outcome_ts``, ``outcome_kind``
        and ``minutes_to_outcome``.
    """
    first = (
        outcomes.sort_values("ts")
        .drop_duplicates("patient_id")
        .set_index("patient_id")[["ts", "kind"]]
        .rename(columns={"ts": "outcome_ts", "kind": "outcome_kind"})
    )
    out = rows[["patient_id", "ts"]].join(first, on="patient_id")
    t = out["ts"]
    o = out["outcome_ts"]
    has = o.notna()
    after = has & (t >= o)
    positive = has & (t < o) & (o <= t + horizon)
    known = t + horizon <= observed_until  # the same rule for positives and negatives
    label = pd.Series(pd.NA, index=out.index, dtype="Int8")
    label[known & ~after] = LABEL_NEGATIVE
    label[known & positive & ~after] = LABEL_POSITIVE
    out["label"] = label
    out["label_status"] = np.where(
        after, STATUS_AFTER_OUTCOME, np.where(known, STATUS_LABELLED, STATUS_CENSORED)
    )
    out["label"] = out["label"].where(~after)
    out["minutes_to_outcome"] = ((o - t).dt.total_seconds() / 60.0).where(has & ~after)
    return out[
        [
            "patient_id",
            "ts",
            "label",
            "label_status",
            "outcome_ts",
            "outcome_kind",
            "minutes_to_outcome",
        ]
    ]
