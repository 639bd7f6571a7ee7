"""Online features: bounded per-patient state that turns raw events into feature vectors.

For the scorer. Each poll batch of raw, contract-valid events goes through exactly what
the batch path runs — :func:`features.cleaning.clean_events`, the within-minute
aggregation of :func:`features.resample.aggregate_minute_arrays`, and
:func:`features.transform.compute` — so a vector here equals the batch job's vector for
the same patient and minute (``tests/unit/test_online_parity.py`` and the Spark parity
test prove it, faults, gaps and out-of-order arrivals included).

State, all bounded:

- a ring of the last ``WINDOW_MINUTES + lateness`` per-minute values per patient
  (observed medians of the channels and the oxygen flag, on the 0.01 grid);
- per block of :data:`BLOCK` minutes in that ring, exact totals per vital (count, Σq,
  Σq², Σt, Σt², Σt·q), min, max and the last observed minute per channel. A window is
  the whole blocks inside it plus two partial blocks summed from the ring, so a vector
  costs the same for a 15- or a 240-minute window;
- the count and sum of the first :data:`~features.spec.BASELINE_MINUTES` of the stay;
- the raw events of the last ``lateness + 10`` minutes (for dedupe, for re-cleaning a
  minute when a late event joins it, and as the artifact rules' look-back);
- admission facts.

Late events within ``lateness_minutes`` of a patient's newest event are folded in: the
minutes they touch are re-cleaned and re-aggregated, as the ETL does when a late file
lands. Later than that, they are counted (``too_late``) and left to the batch path.
Each call vectorises across the whole batch: no per-event Python loop.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.cleaning import (
    HR_CONTEXT,
    NO_TIME,
    SPO2_CONTEXT,
    STATUS_OK,
    VITALS,
    CleaningState,
    clean_events,
    reference_readings,
)
from features.resample import AGG_COLUMNS, aggregate_minute_arrays
from features.spec import (
    BASELINE_MINUTES,
    CHANNELS,
    FEATURE_NAMES,
    LATEST,
    STAT_VITALS,
    STAT_WINDOWS,
    STATIC,
    WINDOW_MINUTES,
)
from features.transform import (
    CARRY_LIMITS,
    WindowStats,
    compute,
    quantize,
    shift_moments,
    static_vector,
    window_stats,
)

F = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Columns = dict[str, np.ndarray]  # retained events, column by column
NONE = NO_TIME  # "no minute yet" (and "no reading yet" in ref_ts): one sentinel
# The ring's channels: the stat vitals first (a contiguous slice), then the rest.
RING_CHANNELS = (*STAT_VITALS, *[c for c in LATEST if c not in STAT_VITALS])
_AGG_NAMES = {"avpu": "avpu_rank", "on_oxygen": "o2"}  # names in AGG_COLUMNS
_AGG_IDX = [AGG_COLUMNS.index(_AGG_NAMES.get(c, c)) for c in RING_CHANNELS]
_LATEST_IDX = [RING_CHANNELS.index(c) for c in LATEST]  # ring order -> LATEST order
CONTEXT_MINUTES = int(max(HR_CONTEXT, SPO2_CONTEXT) / pd.Timedelta(minutes=1))
EVENT_COLUMNS = ["event_id", "patient_id", "ts", *VITALS, "consciousness", "on_oxygen"]
BLOCK = 15  # minutes per block: every window is a whole number of blocks
assert all(w % BLOCK == 0 for w in STAT_WINDOWS)
V = len(STAT_VITALS)
_MID = WINDOW_MINUTES // BLOCK  # most whole blocks strictly inside a window
_J = np.arange(BLOCK, dtype=np.int64)
_W240 = STAT_WINDOWS.index(WINDOW_MINUTES)


# Powers of the minute's time within its block (rows 1, t, t²), for one matrix product.
_POWERS = np.stack([np.ones(BLOCK), _J, _J * _J])


def _nan_outside(keep: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """0 where ``keep``, NaN elsewhere: added to values, it blanks those not kept.

    Adding rather than calling ``np.where`` on the values' full shape: with a mask as
    irregular as observed minutes are, a per-element select is several times slower.
    """
    out: npt.NDArray[np.float32] = np.where(keep, np.float32(0), np.float32(np.nan))
    return out


def _only(x: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """``x`` where ``keep`` (broadcast), NaN elsewhere."""
    out: npt.NDArray[np.float32] = x + _nan_outside(keep)
    return out


def _minutes_first(
    x: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """``x`` (``[..., BLOCK]``) where ``keep`` (broadcast), NaN elsewhere, with the minute
    axis moved to the front and contiguous: ``[BLOCK, ...]``.

    Reductions over the minutes of a block are then a few whole-array operations (a
    reduction along a short last axis costs a loop per row).
    """
    out = np.empty((x.shape[-1], *x.shape[:-1]), dtype=np.float32)
    np.add(np.moveaxis(x, -1, 0), np.moveaxis(_nan_outside(keep), -1, 0), out=out)
    return out


def _block_sums(q: npt.NDArray[np.float32]) -> I64:
    """Sums n, Σq, Σq², Σt, Σt², Σt·q over the minutes of blocks, t the minute within
    its block (0 .. BLOCK-1; :func:`~features.transform.shift_moments` moves t).

    Args:
        q: ``[BLOCK, ..., V]`` quantised minute values, minutes first (see
            :func:`_minutes_first`); NaN: not observed or not counted.

    Returns:
        ``[..., 6, V]``. Values and times are integers, so every float64 sum is exact.
    """
    seen = ~np.isnan(q)
    # NaN -> +0.0 through the bits: exact, and no per-element branch.
    x = (q.view(np.int32) * seen).view(np.float32).reshape(BLOCK, -1).astype(np.float64)
    by_p = _POWERS @ seen.reshape(BLOCK, -1).astype(np.float64)  # n, Σt, Σt²
    by_x = _POWERS[:2] @ x  # Σq, Σt·q
    sq = np.einsum("jn,jn->n", x, x)
    sums = np.stack([by_p[0], by_x[0], sq, by_p[1], by_p[2], by_x[1]])
    out: I64 = np.moveaxis(sums.reshape(6, *q.shape[1:]), 0, -2).astype(np.int64)
    return out


def _filled(shape: tuple[int, ...], dtype: type, fill: Any) -> np.ndarray:
    """A new array of ``shape`` holding ``fill`` (a scalar, or a row broadcast along it)."""
    out: np.ndarray = np.empty(shape, dtype=dtype)
    out[...] = fill
    return out


def _event_order(cols: Columns) -> I64:
    """Row order by patient, time, event id: the ETL's order (``sortWithinPartitions``)."""
    order: I64 = np.lexsort(
        (cols["event_id"].astype("S36"), cols["ts"].view(np.int64), cols["_slot"])
    )
    return order


def _epoch_minutes(ts: pd.Series) -> I64:
    minutes: I64 = ts.to_numpy("datetime64[us]").astype("datetime64[m]").astype(np.int64)
    return minutes


def _group_min_max(codes: npt.NDArray[np.intp], values: I64) -> tuple[I64, I64]:
    """Per group ``0..codes.max()``: the min and the max of ``values``."""
    k = int(codes.max()) + 1 if len(codes) else 0
    lo = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, codes, values)
    np.maximum.at(hi, codes, values)
    return lo, hi


def _group_cummax(groups: I64, values: I64) -> I64:
    """Running max of ``values`` within each group, in the given (arrival) order."""
    if len(values) == 0:
        return values.copy()
    order = np.argsort(groups, kind="stable")
    g, v = groups[order], values[order] - values.min()
    start = np.ones(len(g), dtype=bool)
    start[1:] = g[1:] != g[:-1]
    run = np.cumsum(start) - 1
    # Offsetting each run above the last lets one accumulate serve them all.
    span = int(v.max()) + 1
    out = np.empty_like(values)
    out[order] = np.maximum.accumulate(run * span + v) - run * span + values.min()
    return out


# An event's fate in :meth:`OnlineFeatures.fold`.
ACCEPTED, DUPLICATE, FUTURE, TOO_LATE = "accepted", "duplicate", "future", "too_late"


@dataclass(frozen=True)
class Folded:
    """What :meth:`OnlineFeatures.fold` made of a batch: a vector per accepted event and
    a status per event, in input order."""

    vectors: pd.DataFrame
    status: npt.NDArray[np.object_]


class OnlineFeatures:
    """Per-patient feature state; :meth:`fold` takes a poll batch and returns vectors.

    Args:
        lateness_minutes: how late (behind the patient's newest event) an event may be
            and still be folded in.
        max_future_minutes: events further than this ahead of ``now`` are refused, as
            the ETL quarantines them.
        capacity: initial number of patient slots (grows as needed).
    """

    def __init__(
        self, *, lateness_minutes: int = 45, max_future_minutes: int = 5, capacity: int = 1024
    ) -> None:
        self.lateness = lateness_minutes
        self.max_future = pd.Timedelta(minutes=max_future_minutes)
        self.R = WINDOW_MINUTES + lateness_minutes + 1
        self.NB = self.R // BLOCK + 2  # block slots: every block a window can reach
        self.slots: dict[str, int] = {}
        # Quantised minute values (exact small integers, so float32 holds them exactly).
        # Stored by block ([patient, block slot, channel, minute in block]) so that a
        # block is one contiguous read; it holds every minute of the last R.
        # The per-patient arrays (one row per patient slot), declared once in
        # :meth:`_layout` and made, grown and measured from it.
        self.ring: npt.NDArray[np.float32]
        self.pre: I64
        self.bmin: npt.NDArray[np.float32]
        self.bmax: npt.NDArray[np.float32]
        self.plast: I64
        self.anchor: I64
        self.base_n: I64
        self.base_s: I64
        self.first: I64
        self.newest: I64
        self.static: F
        self.ref_val: F
        self.ref_ts: I64
        self.trusted: npt.NDArray[np.bool_]
        self.reported: npt.NDArray[np.bool_]
        self.base_final: npt.NDArray[np.bool_]
        for name, (shape, dtype, fill) in self._layout().items():
            setattr(self, name, _filled((capacity, *shape), dtype, fill))
        self._admitted: dict[str, F] = {}  # admission facts, by patient (slot or not)
        self.events = _Retained()
        self._ids: set[str] = set()
        self._expire_at = 0
        self._name_array: npt.NDArray[np.object_] = np.array([], dtype=object)
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ patients
    def _slot_of(self, pids: npt.NDArray[np.object_]) -> I64:
        slots = self.slots
        new = [pid for pid in pd.unique(pids).tolist() if pid not in slots]
        for pid in new:
            slots[pid] = len(slots)
        if len(slots) > len(self.first):
            self._grow(len(slots))
        for pid in new:
            vec = self._admitted.get(pid)
            if vec is not None:
                self.static[slots[pid]] = vec
        return np.array([slots[p] for p in pids.tolist()], dtype=np.int64)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], type, Any]]:
        """Every per-patient array: its shape after the patient axis, type and empty value.

        - ``ring``: quantised minute values (exact small integers: float32 holds them
          exactly), by block — ``[block slot, channel, minute in block]`` — so a block is
          one contiguous read; it holds every minute of the last R;
        - per block (ring of NB blocks), per stat vital: ``pre``, the exact sums n, Σq,
          Σq², Σt, Σt², Σt·q over every block *before* it (t = minute − the patient's
          ``anchor`` minute), so whole blocks of a window are one difference; ``bmin`` and
          ``bmax``, the block's own; ``plast``, the last observed minute before it per
          channel;
        - ``base_n``, ``base_s``: observed minutes and Σq over the stay's first
          BASELINE_MINUTES; ``first``, ``newest``: the stay's first usable and newest
          minutes; ``static``: admission facts;
        - ``ref_val``, ``ref_ts``: the artifact rules' context, the last plausible HR and
          SpO2 and their times (ns since epoch), as of the newest event (rebuilt from the
          retained events after late ones);
        - stays: ``trusted``, the first minute is the stay's own (not where a replay cut
          in); ``reported``, its final first hours were handed out (:meth:`stay_facts`);
          ``base_final``, restored whole (:meth:`restore_stays`), so minutes folded in
          later never add to them again.
        """
        nb, c = self.NB, len(RING_CHANNELS)
        return {
            "ring": ((nb, c, BLOCK), np.float32, np.nan),
            "pre": ((nb, 6, V), np.int64, 0),
            "bmin": ((nb, V), np.float32, np.nan),
            "bmax": ((nb, V), np.float32, np.nan),
            "plast": ((nb, c), np.int64, NONE),
            "anchor": ((), np.int64, 0),
            "base_n": ((V,), np.int64, 0),
            "base_s": ((V,), np.int64, 0),
            "first": ((), np.int64, NONE),
            "newest": ((), np.int64, NONE),
            "static": ((len(STATIC),), np.float64, static_vector(None)),
            "ref_val": ((2,), np.float64, np.nan),
            "ref_ts": ((2,), np.int64, NONE),
            "trusted": ((), np.bool_, True),
            "reported": ((), np.bool_, False),
            "base_final": ((), np.bool_, False),
        }

    def _grow(self, need: int) -> None:
        # Doubling, but not past the patients admitted when they are that many: the
        # ward's admissions bound the patients a state can be asked to hold.
        cap = max(need, 2 * len(self.first))
        if len(self._admitted) >= need:
            cap = min(cap, len(self._admitted))
        extra = cap - len(self.first)
        for name, (shape, dtype, fill) in self._layout().items():
            grown = np.concatenate([getattr(self, name), _filled((extra, *shape), dtype, fill)])
            setattr(self, name, grown)

    def admit(self, admissions: pd.DataFrame) -> None:
        """Record admission facts (``patient_id``, ``age``, ``sex``, ``spo2_scale``).

        A patient gets a slot (the bulk of the state) only when their first vital sign
        arrives: a scorer worker reads every admission of the ward, but holds state for
        the patients of its own partitions only.
        """
        if admissions.empty:
            return
        for pid, row in zip(
            admissions["patient_id"].tolist(), admissions.to_dict("records"), strict=True
        ):
            vec = static_vector(row)
            self._admitted[pid] = vec
            slot = self.slots.get(pid)
            if slot is not None:
                self.static[slot] = vec

    @property
    def patients(self) -> int:
        """Patients with state (a vital sign seen)."""
        return len(self.slots)

    @property
    def admissions(self) -> int:
        """Patients whose admission facts are known."""
        return len(self._admitted)

    def memory_bytes(self) -> int:
        """Bytes held by the state arrays and the retained events."""
        arrays = sum(getattr(self, name).nbytes for name in self._layout())
        return int(arrays + self.events.nbytes())

    # ------------------------------------------------------------------ stays
    def stay_facts(self) -> pd.DataFrame:
        """Stays whose first hours are final, each handed out once, for a store that
        outlives this state (the scorer's ``stay_baselines``): ``patient_id``,
        ``first_minute`` (epoch minutes), ``base_n`` and ``base_s`` (per stat vital).

        Final: the newest minute is ``BASELINE_MINUTES`` + the lateness bound past the
        first, so no event still accepted can touch the first hours. Stays whose start
        this state may not have seen (:meth:`distrust`) are not handed out.
        """
        n = len(self.slots)
        first, newest = self.first[:n], self.newest[:n]
        final = (first != NONE) & (newest - first >= BASELINE_MINUTES + self.lateness)
        idx = np.flatnonzero(final & self.trusted[:n] & ~self.reported[:n])
        self.reported[idx] = True
        return pd.DataFrame(
            {
                "patient_id": self._names()[idx],
                "first_minute": self.first[idx],
                "base_n": list(self.base_n[idx]),
                "base_s": list(self.base_s[idx]),
            }
        )

    def distrust(self, patient_ids: list[str], up_to_minute: int) -> None:
        """These patients' first minute, if not after ``up_to_minute``, may be where a
        replay of history began rather than their stay: :meth:`stay_facts` leaves them
        out (until :meth:`restore_stays` puts the real start back)."""
        slots = np.array([self.slots[p] for p in patient_ids if p in self.slots], dtype=np.int64)
        if len(slots):
            first = self.first[slots]
            self.trusted[slots[(first != NONE) & (first <= up_to_minute)]] = False

    def restore_stays(self, facts: pd.DataFrame) -> int:
        """Put back the first minute and first-hours sums of stays (``stay_facts`` of an
        earlier state) for known patients: a replay of recent history began after their
        stay did (or, at its edge, missed a few of its first events). ``stay_minutes``
        and the baseline features are then the whole stay's. Returns how many."""
        if facts.empty:
            return 0
        slots = np.array([self.slots.get(p, -1) for p in facts["patient_id"].tolist()])
        take = slots >= 0  # final facts of the whole stay: never worse than a replay's
        if not take.any():
            return 0
        s = slots[take].astype(np.int64)
        self.first[s] = facts["first_minute"].to_numpy(dtype=np.int64)[take]
        self.base_n[s] = np.stack(facts["base_n"].to_numpy()[take])
        self.base_s[s] = np.stack(facts["base_s"].to_numpy()[take])
        self.trusted[s] = True
        self.reported[s] = True
        # Final: the facts may already hold minutes still to come here (a worker that
        # stored them had scored past the offsets this one resumes from).
        self.base_final[s] = True
        return int(take.sum())

    # ------------------------------------------------------------------ update
    def update(self, events: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Fold a poll batch in; return one feature vector per accepted event
        (:meth:`fold`'s vectors, for callers that need no per-event status)."""
        return self.fold(events, now).vectors

    def fold(self, events: pd.DataFrame, now: pd.Timestamp | None = None) -> Folded:
        """Fold a poll batch in: a feature vector per accepted event, a status per event.

        Args:
            events: contract-valid events (:data:`EVENT_COLUMNS`), any order.
            now: the wall clock for the future-timestamp rule (default: now).

        Returns:
            ``vectors``: ``event_id``, ``patient_id``, ``ts`` (the event's), ``as_of`` (the
            minute the vector describes, + 1 minute: the feature timestamp) and
            :data:`~features.spec.FEATURE_NAMES`, for events accepted in this batch;
            ``status``: per event (input order) :data:`ACCEPTED`, :data:`DUPLICATE` (its
            id was taken before, or earlier in the batch), :data:`FUTURE` (beyond the
            future bound) or :data:`TOO_LATE` (beyond the lateness bound). The decision is
            made here, once: a caller never re-derives it.
        """
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        if len(events) > 1:
            # A poll that carries one patient further than the lateness bound (catching up
            # after downtime) is folded in pieces, so that every event's minute is still
            # held when its vector is computed and no minute overwrites one a ring apart.
            codes = pd.factorize(events["patient_id"])[0]
            lo, hi = _group_min_max(codes, _epoch_minutes(events["ts"]))
            if (hi - lo).max() > self.lateness:
                half = len(events) // 2
                a, b = self.fold(events.iloc[:half], now), self.fold(events.iloc[half:], now)
                return Folded(
                    pd.concat([a.vectors, b.vectors], ignore_index=True),
                    np.concatenate([a.status, b.status]),
                )
        status = np.full(len(events), ACCEPTED, dtype=object)
        event_ids = events["event_id"]
        again = event_ids.duplicated().to_numpy()
        self.counts["duplicates"] += int(again.sum())
        ids = self._ids
        seen = np.array([e in ids for e in event_ids.tolist()], dtype=bool) & ~again
        self.counts["duplicates"] += int(seen.sum())
        future = (events["ts"] > now + self.max_future).to_numpy() & ~again & ~seen
        self.counts["future"] += int(future.sum())
        status[again | seen] = DUPLICATE
        status[future] = FUTURE
        keep = ~(again | seen | future)
        if not keep.any():
            return Folded(self._empty_result(), status)
        new = events.loc[keep, EVENT_COLUMNS] if not keep.all() else events[EVENT_COLUMNS]

        slots = self._slot_of(new["patient_id"].to_numpy(dtype=object))
        minute = _epoch_minutes(new["ts"])
        # Lateness against the newest minute that arrived before the event (arrival order).
        newest = np.maximum(_group_cummax(slots, minute), self.newest[slots])
        late = minute < newest - self.lateness
        self.counts["too_late"] += int(late.sum())
        if late.any():
            status[np.flatnonzero(keep)[late]] = TOO_LATE
            new, slots, minute = new[~late], slots[~late], minute[~late]
        if new.empty:
            return Folded(self._empty_result(), status)
        self.counts["accepted"] += len(new)
        new = new.assign(_slot=slots, _minute=minute)

        t_slots, inverse = np.unique(slots, return_inverse=True)
        t0, batch_max = _group_min_max(inverse, minute)  # minutes touched per patient
        self._refold(new, t_slots, t0, batch_max)
        return Folded(self._vectors_for(new), status)

    def _refold(self, new: pd.DataFrame, t_slots: I64, t0: I64, batch_max: I64) -> None:
        """Re-clean and re-aggregate every minute from each patient's ``t0`` on."""
        t0_arr = np.full(len(self.first), np.iinfo(np.int64).max, dtype=np.int64)
        t0_arr[t_slots] = t0
        old = self.events
        arrived = _columns(new)
        redo = old.where(lambda slot, m: m >= t0_arr[slot], since=int(t0.min()))
        both = {c: np.concatenate([redo[c], arrived[c]]) for c in _RETAINED}
        order = _event_order(both)
        frame = _frame({c: a[order] for c, a in both.items()})
        prior = self._prior(t_slots, t0, old)
        cleaned, after = clean_events(frame, prior)
        self._keep_refs(after)
        usable = cleaned[(cleaned["status"] == STATUS_OK).to_numpy()]

        # Clear each touched patient's minutes from t0 (or the old newest + 1, if later
        # minutes were skipped) to the new newest, then write the re-aggregated minutes.
        old_newest = self.newest[t_slots]
        new_newest = np.maximum(old_newest, batch_max)
        lo = np.where(old_newest == NONE, t0, np.minimum(t0, old_newest + 1))
        lo = np.maximum(lo, new_newest - self.R + 1)
        lengths = (new_newest - lo + 1).clip(min=0)
        rep_slots = np.repeat(t_slots, lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        clear_min = np.repeat(lo, lengths) + offsets
        # Minutes that held data of their own (up to the old newest) leave the baseline.
        redone = clear_min <= np.repeat(old_newest, lengths)
        self._baseline_add(rep_slots[redone], clear_min[redone], sign=-1)
        b, j = self._at(clear_min)
        self.ring[rep_slots, b, :, j] = np.nan
        self.newest[t_slots] = new_newest
        fresh_patient = old_newest == NONE
        self.anchor[t_slots[fresh_patient]] = lo[fresh_patient] // BLOCK * BLOCK

        if len(usable):
            agg = aggregate_minute_arrays(usable["_slot"].to_numpy(dtype=np.int64), usable)
            a_slot, a_min = agg.key, agg.minute
            b, j = self._at(a_min)
            self.ring[a_slot, b, :, j] = quantize(agg.values[:, _AGG_IDX])
            # Rows come by slot, then minute: a slot's first row has its earliest minute.
            f_slot, f_row = np.unique(a_slot, return_index=True)
            moved = self._move_first(f_slot, a_min[f_row])
            fresh = ~np.isin(a_slot, moved)  # a moved baseline was summed again whole
            self._baseline_add(a_slot[fresh], a_min[fresh], sign=1)
        self._reblock(t_slots, lo, old_newest, new_newest)

        # Expiry scans every retained event, so it runs when the retained set has grown
        # by a quarter since the last one (a few batches), not on every batch.
        if old.rows + len(new) > self._expire_at:
            gone = old.expire(self._expired)
            self._ids.difference_update(gone)
            self._expire_at = max(int(1.25 * (old.rows + len(new))), 1024)
        self._ids.update(arrived["event_id"].tolist())
        old.append(arrived)

    def _prior(self, t_slots: I64, t0: I64, old: _Retained) -> CleaningState:
        """The artifact rules' context just before each touched patient's ``t0``.

        In order, that is the carried last reference readings; for a patient with a late
        event (a carried reference at or after ``t0``) it is rebuilt from retained events.
        """
        start_ns = t0 * 60_000_000_000
        vals = self.ref_val[t_slots].copy()
        tss = self.ref_ts[t_slots].copy()
        stale = ((tss != NONE) & (tss >= start_ns[:, None])).any(axis=1)
        if stale.any():
            s_slots = t_slots[stale]
            lo = np.full(len(self.first), np.iinfo(np.int64).max, dtype=np.int64)
            lo[s_slots] = t0[stale]
            ctx = old.where(
                lambda slot, m: (m < lo[slot]) & (m >= lo[slot] - CONTEXT_MINUTES),
                since=int(t0[stale].min()) - CONTEXT_MINUTES,
            )
            order = _event_order(ctx)
            ctx = {c: a[order] for c, a in ctx.items()}
            pos = np.full(len(self.first), -1, dtype=np.int64)
            pos[t_slots] = np.arange(len(t_slots))
            vals[pos[s_slots]] = np.nan
            tss[pos[s_slots]] = NONE
            refs = reference_readings(ctx["heart_rate"], ctx["spo2"])
            ns, ctx_slot = ctx["ts"].view(np.int64), ctx["_slot"]
            for k, ref in enumerate(refs):
                seen = np.flatnonzero(~np.isnan(ref))
                # Each patient's last reading in event order: its first in reverse.
                slots, first_back = np.unique(ctx_slot[seen][::-1], return_index=True)
                last = seen[len(seen) - 1 - first_back]
                vals[pos[slots], k] = ref[last]
                tss[pos[slots], k] = ns[last]
        # ref_val and ref_ts agree on "none" (_keep_refs writes them together).
        return CleaningState(
            pd.Index(self._names()[t_slots], name="patient_id", dtype="object"), vals, tss
        )

    def _blocks(self, a: np.ndarray, slots: I64, blocks: I64) -> np.ndarray:
        """``a[slots, blocks % NB]`` for a ``[patient, block slot, ...]`` state array.

        ``np.take`` on the flattened leading axes: about twice as fast as indexing with
        two index arrays, which matters on the per-vector path.
        """
        flat = a.reshape(-1, *a.shape[2:])  # a view: the state arrays are contiguous
        return np.take(flat, slots * self.NB + blocks % self.NB, axis=0)

    def _at(self, minutes: I64) -> tuple[I64, I64]:
        """Where a minute lives in :attr:`ring`: block slot and minute within the block."""
        return (minutes // BLOCK) % self.NB, minutes % BLOCK

    def _names(self) -> npt.NDArray[np.object_]:
        if len(self._name_array) != len(self.slots):
            self._name_array = np.array(list(self.slots), dtype=object)
        return self._name_array

    def _keep_refs(self, state: CleaningState) -> None:
        """Carry the references after this batch (the prior's, updated by its events)."""
        if len(state.patients) == 0:
            return
        slots = np.array([self.slots[p] for p in state.patients.tolist()], dtype=np.int64)
        has = ~np.isnan(state.values) & (state.ts_ns != NO_TIME)
        self.ref_val[slots] = np.where(has, state.values, np.nan)
        self.ref_ts[slots] = np.where(has, state.ts_ns, NONE)

    def _expired(self, slots: I64, minutes: I64) -> npt.NDArray[np.bool_]:
        return minutes < self.newest[slots] - self.lateness - CONTEXT_MINUTES - 1

    def _move_first(self, slots: I64, candidate: I64) -> I64:
        """A patient's first usable minute; an earlier one moves the baseline along.

        Only a stay younger than the lateness bound can gain an earlier first minute, so
        every minute of its baseline is still in the ring and is summed again. Returns the
        slots whose first minute moved.
        """
        cur = self.first[slots]
        fresh = cur == NONE
        self.first[slots[fresh]] = candidate[fresh]
        # Rare: a late event before the stay's start (never for first hours restored
        # whole: their first minute is the stay's).
        earlier = ~fresh & (candidate < cur) & ~self.base_final[slots]
        moved: I64 = slots[earlier]
        if len(moved):
            self.first[moved] = candidate[earlier]
            self.base_n[moved] = 0
            self.base_s[moved] = 0
            span = np.minimum(self.newest[moved] - self.first[moved] + 1, BASELINE_MINUTES)
            rep = np.repeat(moved, span)
            offs = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
            self._baseline_add(rep, self.first[rep] + offs, sign=1)
        return moved

    def _baseline_add(self, slots: I64, minutes: I64, *, sign: int) -> None:
        """Add (or take away) the ring's values at these minutes to the baseline sums."""
        first = self.first[slots]
        k = minutes - first
        keep = (first != NONE) & (k >= 0) & (k < BASELINE_MINUTES) & ~self.base_final[slots]
        slots, minutes = slots[keep], minutes[keep]
        if len(slots) == 0:
            return
        b, j = self._at(minutes)
        q = self.ring[slots, b, :V, j].astype(np.float64)
        seen = ~np.isnan(q)
        np.add.at(self.base_n, slots, sign * seen.astype(np.int64))
        np.add.at(self.base_s, slots, sign * np.where(seen, q, 0.0).astype(np.int64))

    def _reblock(self, slots: I64, lo: I64, old_newest: I64, newest: I64) -> None:
        """Recompute every block that holds a minute in [lo, newest], and the prefix sums
        after each, block by block."""
        b0, b1 = lo // BLOCK, newest // BLOCK
        count = (b1 - b0 + 1).clip(min=0)
        rep = np.repeat(slots, count)
        if len(rep) == 0:
            return
        step = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        blocks = np.repeat(b0, count) + step
        minutes = blocks[:, None] * BLOCK + _J[None, :]  # [k, BLOCK]
        # Minutes past the newest, or older than the ring holds, are not this block's data.
        nw = self.newest[rep][:, None]
        valid = (minutes <= nw) & (minutes > nw - self.R)
        vals = self._blocks(self.ring, rep, blocks)  # [k, channels, BLOCK]
        seen_all = valid[:, None, :] & ~np.isnan(vals)
        last = np.where(seen_all, minutes[:, None, :], NONE).max(axis=2)  # [k, channels]
        q = _minutes_first(vals[:, :V], valid[:, None, :])  # [BLOCK, k, V]
        tot = shift_moments(_block_sums(q), blocks * BLOCK - self.anchor[rep])  # t from the anchor
        slot_b = blocks % self.NB
        self.bmin[rep, slot_b] = np.fmin.reduce(q, axis=0)
        self.bmax[rep, slot_b] = np.fmax.reduce(q, axis=0)

        # The running sums start from the block before b0 — or, after a gap, from the
        # block after the old newest (the blocks between are empty).
        known = np.where(old_newest == NONE, b0, np.minimum(b0, old_newest // BLOCK + 1))
        pre = self._blocks(self.pre, slots, known)
        plast = self._blocks(self.plast, slots, known)
        fresh = old_newest == NONE
        pre[fresh] = 0
        plast[fresh] = NONE
        self.pre[slots, b0 % self.NB] = pre
        self.plast[slots, b0 % self.NB] = plast
        start = np.cumsum(count) - count
        for i in range(int(count.max())):
            live = np.nonzero(count > i)[0]
            k = start[live] + i
            nxt = (blocks[k] + 1) % self.NB
            pre[live] += tot[k]
            plast[live] = np.maximum(plast[live], last[k])
            self.pre[slots[live], nxt] = pre[live]
            self.plast[slots[live], nxt] = plast[live]

    # ------------------------------------------------------------------ vectors
    def _vectors_for(self, new: pd.DataFrame) -> pd.DataFrame:
        # One vector per event (events sharing a patient-minute are rare, and recomputing
        # them is cheaper than matching them up).
        values = self.vectors(new["_slot"].to_numpy(), new["_minute"].to_numpy())
        as_of = (new["_minute"].to_numpy() + 1).astype("datetime64[m]")
        keys_out = pd.DataFrame(
            {
                "event_id": new["event_id"].to_numpy(),
                "patient_id": new["patient_id"].to_numpy(),
                "ts": new["ts"].reset_index(drop=True),  # to_numpy() would box each time
                "as_of": pd.DatetimeIndex(as_of).tz_localize("UTC").as_unit("us"),
            }
        )
        vectors = pd.DataFrame(values, columns=list(FEATURE_NAMES), copy=False)
        return pd.concat([keys_out, vectors], axis=1, copy=False)

    def vectors(self, slots: I64, minutes: I64, chunk: int = 4096) -> F:
        """Feature matrix for (patient slot, as-of epoch minute) pairs, from the state."""
        out = np.empty((len(slots), len(FEATURE_NAMES)))
        for a in range(0, len(slots), chunk):
            s, m = slots[a : a + chunk], minutes[a : a + chunk]
            first = self.first[s]
            # No usable minute yet (every reading so far impossible): no stay to measure;
            # the batch path has no row for such an event at all.
            stay = np.where((first != NONE) & (m >= first), m - first, np.nan)
            out[a : a + chunk] = compute(self._stats(s, m), stay, self.static[s])
        return out

    def _stats(self, s: I64, m: I64) -> WindowStats:
        """Window sums for rows (slot, as-of minute) from block prefix sums and partials.

        A window of w minutes ending at ``m`` is: the tail of ``m``'s block up to ``m``,
        the whole blocks before it (one difference of :attr:`pre`), and the head — the
        part of the block where the window starts that lies inside it. The tail and the
        heads (one per window) are summed from the ring.
        """
        rows = len(s)
        bm = m // BLOCK
        k = (m + 1) % BLOCK  # where each window starts within its block
        starts = np.stack([(m - w + 1) // BLOCK for w in STAT_WINDOWS], axis=1)  # [rows, W]
        apart = starts < bm[:, None]  # False only for a window that is exactly m's block
        # A query may be later than the patient's newest minute: the ring slots past it
        # (and the block slots past its block) still hold older minutes.
        newest = self.newest[s]
        end_b = newest // BLOCK + 1  # blocks from here on are empty

        # Partial blocks: 0 = the tail, 1.. = the head of each window.
        pblock = np.concatenate([bm[:, None], starts], axis=1)  # [rows, 1 + W]
        pmin = pblock[:, :, None] * BLOCK + _J  # [rows, 1 + W, BLOCK]
        inside = np.empty(pmin.shape, dtype=bool)
        inside[:, 0] = _J[None, :] <= (m % BLOCK)[:, None]
        inside[:, 1:] = (_J[None, None, :] >= k[:, None, None]) & apart[:, :, None]
        inside &= pmin <= newest[:, None, None]
        vals = self._blocks(self.ring, s[:, None], pblock)  # [rows, 1 + W, channels, BLOCK]
        q = _minutes_first(vals[:, :, :V], inside[:, :, None, :])  # [BLOCK, rows, 1 + W, V]
        part = shift_moments(_block_sums(q), pblock * BLOCK - m[:, None])  # t = minute - as-of
        p_lo, p_hi = np.fmin.reduce(q, axis=0), np.fmax.reduce(q, axis=0)

        # Whole blocks: prefix at m's block minus prefix after the window's first block.
        def prefix(block: I64) -> I64:
            out: I64 = self._blocks(self.pre, s[:, None], np.minimum(block, end_b[:, None]))
            return out

        mid = prefix(bm[:, None]) - prefix(starts + 1)  # [rows, W, 6, V], t from the anchor
        mid[~apart] = 0
        whole = shift_moments(mid, np.broadcast_to((self.anchor[s] - m)[:, None], mid.shape[:2]))
        totals = part[:, :1] + part[:, 1:] + whole

        # Min and max over the whole blocks of each window: running over the blocks
        # before m's, most recent first, read at each window's number of whole blocks.
        nmid = np.clip(bm[:, None] - 1 - starts, 0, _MID)  # [rows, W]
        lo = np.fmin(p_lo[:, :1], p_lo[:, 1:])  # [rows, W, V]
        hi = np.fmax(p_hi[:, :1], p_hi[:, 1:])
        most = int(nmid.max()) if rows else 0
        if most:
            mid_b = bm[None, :] - 1 - np.arange(most)[:, None]  # [most, rows]
            present = (mid_b < end_b[None, :])[:, :, None]
            run_lo = _only(self._blocks(self.bmin, s[None, :], mid_b), present)
            run_hi = _only(self._blocks(self.bmax, s[None, :], mid_b), present)
            for i in range(1, most):  # (ufunc.accumulate along axis 0 is ~40x slower)
                np.fmin(run_lo[i - 1], run_lo[i], out=run_lo[i])
                np.fmax(run_hi[i - 1], run_hi[i], out=run_hi[i])
            at, row = np.maximum(nmid - 1, 0), np.arange(rows)[:, None]
            none = (nmid == 0)[:, :, None]
            lo = np.fmin(lo, np.where(none, np.float32(np.nan), run_lo[at, row]))
            hi = np.fmax(hi, np.where(none, np.float32(np.nan), run_hi[at, row]))

        # Last observed minute per channel: in the tail, else before m's block.
        tail_seen = (inside[:, 0, None, :] & ~np.isnan(vals[:, 0]))[:, :, ::-1]  # latest first
        tail_last = np.where(
            tail_seen.any(axis=2),
            (bm * BLOCK + BLOCK - 1)[:, None] - tail_seen.argmax(axis=2),
            NONE,
        )
        ring_last = np.maximum(tail_last, self._blocks(self.plast, s, np.minimum(bm, end_b)))
        at_block, at_minute = self._at(np.maximum(ring_last, 0))
        ring_value = self.ring[s[:, None], at_block, np.arange(len(RING_CHANNELS)), at_minute]
        last, value = ring_last[:, _LATEST_IDX], ring_value[:, _LATEST_IDX]  # LATEST order
        has_last = (last != NONE) & (last > (m - WINDOW_MINUTES)[:, None])
        age = np.where(has_last, m[:, None] - last, -1)
        carried = has_last & (age <= CARRY_LIMITS[None, :])
        latest = np.where(carried, value.astype(np.float64), np.nan)
        age_f = age[:, : len(CHANNELS)].astype(np.float64)
        age_f[~has_last[:, : len(CHANNELS)]] = np.nan

        # Baseline: the whole first hours once they are over, else the window so far.
        first = self.first[s]
        over = (first != NONE) & ((m - first) >= BASELINE_MINUTES - 1)
        base_n = np.where(over[:, None], self.base_n[s], totals[:, _W240, 0])
        base_s = np.where(over[:, None], self.base_s[s], totals[:, _W240, 1])
        return window_stats(
            totals, lo.astype(np.float64), hi.astype(np.float64), age=age_f, latest=latest,
            base_n=base_n, base_s=base_s,
        )  # fmt: skip

    def known(self, event_ids: list[str]) -> npt.NDArray[np.bool_]:
        """Which event ids the state has already taken (a resend brings nothing new)."""
        ids = self._ids
        return np.array([e in ids for e in event_ids], dtype=np.bool_)

    def answerable(self, patient_ids: list[str], as_of: pd.Series) -> npt.NDArray[np.bool_]:
        """Which (patient, feature time) queries the retained state can still answer."""
        slots = np.array([self.slots.get(p, -1) for p in patient_ids], dtype=np.int64)
        minutes = _epoch_minutes(as_of) - 1
        known = slots >= 0
        newest = np.where(known, self.newest[np.maximum(slots, 0)], NONE)
        return known & (minutes >= newest - (self.R - WINDOW_MINUTES))

    def features_at(self, patient_ids: list[str], as_of: pd.Series) -> pd.DataFrame:
        """Vectors for given patients at given feature times (as-of minute + 1 minute).

        Raises:
            ValueError: a query is older than the state keeps (or for an unseen patient).
        """
        ok = self.answerable(patient_ids, as_of)
        if not ok.all():
            i = int(np.argmin(ok))
            raise ValueError(
                f"{patient_ids[i]} at {as_of.iloc[i]}: outside the retained window "
                f"(the online state keeps {self.R - WINDOW_MINUTES} minutes of lateness)"
            )
        slots = np.array([self.slots[p] for p in patient_ids], dtype=np.int64)
        minutes = _epoch_minutes(as_of) - 1
        out = pd.DataFrame(self.vectors(slots, minutes), columns=list(FEATURE_NAMES))
        out.insert(0, "ts", as_of.to_numpy())
        out.insert(0, "patient_id", patient_ids)
        return out

    def _empty_result(self) -> pd.DataFrame:
        cols: dict[str, pd.Series] = {
            "event_id": pd.Series(dtype="object"),
            "patient_id": pd.Series(dtype="object"),
            "ts": pd.Series(dtype="datetime64[us, UTC]"),
            "as_of": pd.Series(dtype="datetime64[us, UTC]"),
        }
        for name in FEATURE_NAMES:
            cols[name] = pd.Series(dtype="float64")
        return pd.DataFrame(cols)


_RETAINED = [*EVENT_COLUMNS, "_slot", "_minute"]
# Retained columns' types: times as datetime64[ns] (UTC), vitals float64 with NaN.
_KINDS: dict[str, np.dtype] = {
    **dict.fromkeys(_RETAINED, np.dtype(object)),
    **dict.fromkeys(VITALS, np.dtype(np.float64)),
    "ts": np.dtype("datetime64[ns]"),
    "_slot": np.dtype(np.int64),
    "_minute": np.dtype(np.int64),
}


def _columns(frame: pd.DataFrame) -> Columns:
    """A frame's retained columns as numpy arrays of :data:`_KINDS`."""
    out: Columns = {}
    for c in _RETAINED:
        kind = _KINDS[c]
        if c == "ts":
            out[c] = frame[c].to_numpy("datetime64[ns]")  # UTC, zone dropped
        elif kind == np.float64:
            out[c] = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[c] = frame[c].to_numpy(dtype=kind)
    return out


def _frame(cols: Columns) -> pd.DataFrame:
    """Retained columns back as a frame of events (``ts`` zoned UTC again)."""
    return pd.DataFrame(
        {c: pd.DatetimeIndex(a).tz_localize("UTC") if c == "ts" else a for c, a in cols.items()}
    )


class _Retained:
    """The retained events, in arrival order, as append-only chunks of numpy columns (one
    chunk per batch).

    A batch appends its events without copying the rest, and a lookup skips the chunks
    whose newest minute is before the minutes it asks for, so a small poll costs in
    proportion to itself, not to the hundreds of thousands of events held for lateness.
    Expiry, a few batches apart, merges the chunks into one. Plain arrays, not frames:
    on a poll of a few hundred events, a frame's per-operation overhead was most of the
    cost of a lookup.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.chunks: list[Columns] = []
        self.newest: list[int] = []  # the newest minute of each chunk
        self.rows = 0

    def append(self, cols: Columns) -> None:
        n = len(cols["_slot"])
        if n:
            self.chunks.append(cols)
            self.newest.append(int(cols["_minute"].max()))
            self.rows += n

    def where(self, keep: Callable[[I64, I64], npt.NDArray[np.bool_]], since: int) -> Columns:
        """The events (in arrival order) for which ``keep(slot, minute)`` holds; only chunks
        holding a minute at or after ``since`` are looked at (``keep`` must be false below)."""
        picks = []
        for chunk, newest in zip(self.chunks, self.newest, strict=True):
            if newest >= since:
                rows = np.flatnonzero(keep(chunk["_slot"], chunk["_minute"]))
                if len(rows):
                    picks.append((chunk, rows))
        if not picks:
            return {c: np.empty(0, dtype=_KINDS[c]) for c in _RETAINED}
        if len(picks) == 1:
            chunk, rows = picks[0]
            return {c: chunk[c][rows] for c in _RETAINED}
        return {c: np.concatenate([ch[c][rows] for ch, rows in picks]) for c in _RETAINED}

    def expire(self, expired: Callable[[I64, I64], npt.NDArray[np.bool_]]) -> list[str]:
        """Merge the chunks, dropping the events ``expired(slot, minute)`` names; their ids."""
        if not self.chunks:
            return []
        whole = {c: np.concatenate([ch[c] for ch in self.chunks]) for c in _RETAINED}
        gone = expired(whole["_slot"], whole["_minute"])
        ids: list[str] = whole["event_id"][gone].tolist()
        self._clear()
        self.append({c: a[~gone] for c, a in whole.items()})
        return ids

    def __len__(self) -> int:
        return self.rows

    def nbytes(self) -> int:
        """The arrays' bytes plus the strings their object columns point at."""
        total = 0
        for chunk in self.chunks:
            for a in chunk.values():
                total += a.nbytes
                if a.dtype == object:
                    total += sum(map(sys.getsizeof, a.tolist()))
        return total


__all__ = ["EVENT_COLUMNS", "LATEST", "STATIC", "OnlineFeatures"]
