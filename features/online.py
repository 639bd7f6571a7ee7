"""Online features: bounded per-patient state that turns raw events into feature vectors.

For the scorer. Each poll batch of raw, contract-valid events goes through exactly what
the batch path runs — :func:`features.cleaning.clean_events`, the within-minute
aggregation of :func:`features.resample.aggregate_minutes`, and
:func:`features.transform.compute` — so a vector here equals the batch job's vector for
the same patient and minute (``tests/unit/test_online_parity.py`` and the Spark parity
test prove it, faults, gaps and out-of-order arrivals included).

State, all bounded:

- a ring of the last ``WINDOW_MINUTES + lateness`` per-minute values per patient
  (observed medians of the channels and the oxygen flag);
- the observed values of the first :data:`~features.spec.BASELINE_MINUTES` of the stay;
- the raw events of the last ``lateness + 10`` minutes (for dedupe, for re-cleaning a
  minute when a late event joins it, and as the artifact rules' look-back);
- admission facts.

Late events within ``lateness_minutes`` of a patient's newest event are folded in: the
minutes they touch are re-cleaned and re-aggregated, as the ETL does when a late file
lands. Later than that, they are counted (``too_late``) and left to the batch path.
Each call vectorises across the whole batch: no per-event Python loop.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.cleaning import (
    HR_CONTEXT,
    SPO2_CONTEXT,
    STATUS_OK,
    VITALS,
    CleaningState,
    clean_events,
    reference_readings,
)
from features.resample import aggregate_minutes
from features.spec import (
    BASELINE_MINUTES,
    CHANNELS,
    FEATURE_NAMES,
    LATEST,
    STAT_VITALS,
    STATIC,
    WINDOW_MINUTES,
)
from features.transform import CARRY_LIMITS, carry_forward, compute, static_vector

F = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NONE = np.iinfo(np.int64).min // 2  # "no minute yet"
RING_CHANNELS = (*CHANNELS, "on_oxygen")
_AGG_COLS = [*[c for c in CHANNELS if c != "avpu"], "avpu_rank", "o2"]  # RING_CHANNELS order
_STAT_IDX = [CHANNELS.index(v) for v in STAT_VITALS]
CONTEXT_MINUTES = int(max(HR_CONTEXT, SPO2_CONTEXT) / pd.Timedelta(minutes=1))
EVENT_COLUMNS = ["event_id", "patient_id", "ts", *VITALS, "consciousness", "on_oxygen"]


def _event_order(frame: pd.DataFrame) -> I64:
    """Row order by patient, time, event id: the ETL's order (``sortWithinPartitions``)."""
    order: I64 = np.lexsort(
        (
            frame["event_id"].to_numpy().astype("S36"),
            frame["ts"].to_numpy("datetime64[ns]").astype(np.int64),
            frame["_slot"].to_numpy(),
        )
    )
    return order


def _epoch_minutes(ts: pd.Series) -> I64:
    minutes: I64 = ts.to_numpy("datetime64[us]").astype("datetime64[m]").astype(np.int64)
    return minutes


class OnlineFeatures:
    """Per-patient feature state; :meth:`update` takes a poll batch and returns vectors.

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
        self.slots: dict[str, int] = {}
        self.ring = np.full((capacity, self.R, len(RING_CHANNELS)), np.nan)
        self.base = np.full((capacity, BASELINE_MINUTES, len(STAT_VITALS)), np.nan)
        self.first = np.full(capacity, NONE, dtype=np.int64)
        self.newest = np.full(capacity, NONE, dtype=np.int64)
        self.static = np.tile(static_vector(None), (capacity, 1))
        self.events = pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in _RETAINED})
        self._ids: set[str] = set()
        self._name_array: npt.NDArray[np.object_] = np.array([], dtype=object)
        # The artifact rules' context per patient: last plausible HR / SpO2 and their times
        # (ns since epoch), as of the newest event; rebuilt from ``events`` after late ones.
        self.ref_val = np.full((capacity, 2), np.nan)
        self.ref_ts = np.full((capacity, 2), NONE, dtype=np.int64)
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ patients
    def _slot_of(self, pids: npt.NDArray[np.object_]) -> I64:
        slots = self.slots
        for pid in pd.unique(pids).tolist():
            if pid not in slots:
                slots[pid] = len(slots)
        if len(slots) > len(self.first):
            self._grow(len(slots))
        return np.array([slots[p] for p in pids.tolist()], dtype=np.int64)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * len(self.first))
        extra = cap - len(self.first)

        def pad(a: np.ndarray, fill: float | int) -> np.ndarray:
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)])

        self.ring = pad(self.ring, np.nan)
        self.base = pad(self.base, np.nan)
        self.first = pad(self.first, NONE)
        self.newest = pad(self.newest, NONE)
        self.static = np.concatenate([self.static, np.tile(static_vector(None), (extra, 1))])
        self.ref_val = pad(self.ref_val, np.nan)
        self.ref_ts = pad(self.ref_ts, NONE)

    def admit(self, admissions: pd.DataFrame) -> None:
        """Record admission facts (``patient_id``, ``age``, ``sex``, ``spo2_scale``)."""
        if admissions.empty:
            return
        slots = self._slot_of(admissions["patient_id"].to_numpy(dtype=object))
        for slot, row in zip(slots.tolist(), admissions.to_dict("records"), strict=True):
            self.static[slot] = static_vector(row)

    @property
    def patients(self) -> int:
        return len(self.slots)

    def memory_bytes(self) -> int:
        """Bytes held by the state arrays and the retained events."""
        arrays = self.ring.nbytes + self.base.nbytes + self.first.nbytes * 2
        return int(arrays + self.static.nbytes + self.events.memory_usage(deep=True).sum())

    # ------------------------------------------------------------------ update
    def update(self, events: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Fold a poll batch in; return one feature vector per accepted event.

        Args:
            events: contract-valid events (:data:`EVENT_COLUMNS`), any order.
            now: the wall clock for the future-timestamp rule (default: now).

        Returns:
            ``event_id``, ``patient_id``, ``ts`` (the event's), ``as_of`` (the minute the
            vector describes, + 1 minute: the feature timestamp) and
            :data:`~features.spec.FEATURE_NAMES`, for events accepted in this batch.
        """
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        if len(events) > 1:
            # A poll that carries one patient further than the lateness bound (catching up
            # after downtime) is folded in pieces, so that every event's minute is still
            # held when its vector is computed and no minute overwrites one a ring apart.
            by = pd.Series(_epoch_minutes(events["ts"])).groupby(events["patient_id"].to_numpy())
            if (by.max() - by.min()).max() > self.lateness:
                half = len(events) // 2
                parts = [self.update(events.iloc[:half], now), self.update(events.iloc[half:], now)]
                return pd.concat(parts, ignore_index=True)
        new = events[EVENT_COLUMNS].drop_duplicates("event_id")
        self.counts["duplicates"] += len(events) - len(new)
        ids = self._ids
        seen = pd.Series([e in ids for e in new["event_id"].tolist()], index=new.index, dtype=bool)
        self.counts["duplicates"] += int(seen.sum())
        new = new[~seen]
        future = new["ts"] > now + self.max_future
        self.counts["future"] += int(future.sum())
        new = new[~future]
        if new.empty:
            return self._empty_result()

        slots = self._slot_of(new["patient_id"].to_numpy(dtype=object))
        minute = _epoch_minutes(new["ts"])
        # Lateness against the newest minute that arrived before the event (arrival order).
        newest = pd.Series(minute).groupby(slots).cummax().to_numpy()
        newest = np.maximum(newest, self.newest[slots])
        late = minute < newest - self.lateness
        self.counts["too_late"] += int(late.sum())
        new, slots, minute = new[~late], slots[~late], minute[~late]
        if new.empty:
            return self._empty_result()
        self.counts["accepted"] += len(new)
        new = new.assign(_slot=slots, _minute=minute)

        touched = pd.DataFrame({"slot": slots, "minute": minute}).groupby("slot")["minute"]
        t0 = touched.min()  # earliest minute touched per patient
        batch_max = touched.max()
        self._refold(new, t0, batch_max)
        return self._vectors_for(new)

    def _refold(self, new: pd.DataFrame, t0: pd.Series, batch_max: pd.Series) -> None:
        """Re-clean and re-aggregate every minute from each patient's ``t0`` on."""
        t_slots = t0.index.to_numpy(dtype=np.int64)
        t0_arr = np.full(len(self.first), np.iinfo(np.int64).max, dtype=np.int64)
        t0_arr[t_slots] = t0.to_numpy()
        old = self.events
        old_slot = old["_slot"].to_numpy()
        old_min = old["_minute"].to_numpy()
        redo_old = old_min >= t0_arr[old_slot]
        frame = pd.concat([old[redo_old], new[_RETAINED]], ignore_index=True)
        frame = frame.iloc[_event_order(frame)].reset_index(drop=True)
        prior = self._prior(t_slots, t0.to_numpy(), old, old_slot, old_min)
        cleaned, after = clean_events(frame, prior)
        self._keep_refs(after)
        usable = cleaned[(cleaned["status"] == STATUS_OK).to_numpy()]

        # Clear each touched patient's minutes from t0 (or the old newest + 1, if later
        # minutes were skipped) to the new newest, then write the re-aggregated minutes.
        old_newest = self.newest[t_slots]
        new_newest = np.maximum(old_newest, batch_max.to_numpy())
        lo = np.where(old_newest == NONE, t0.to_numpy(), np.minimum(t0.to_numpy(), old_newest + 1))
        lo = np.maximum(lo, new_newest - self.R + 1)
        lengths = (new_newest - lo + 1).clip(min=0)
        rep_slots = np.repeat(t_slots, lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        clear_min = np.repeat(lo, lengths) + offsets
        self.ring[rep_slots, clear_min % self.R, :] = np.nan
        self.newest[t_slots] = new_newest

        if len(usable):
            agg = aggregate_minutes(usable).reset_index()
            a_slot = agg["patient_id"].map(self.slots).to_numpy(dtype=np.int64)
            a_min = _epoch_minutes(agg["minute"])
            values = agg[_AGG_COLS].to_numpy(dtype=np.float64)
            self.ring[a_slot, a_min % self.R, :] = values
            first_new = pd.Series(a_min).groupby(a_slot).min()
            self._move_first(first_new.index.to_numpy(), first_new.to_numpy())
        else:
            a_slot = a_min = np.array([], dtype=np.int64)
            values = np.empty((0, len(RING_CHANNELS)))

        # Baseline minutes: clear what was redone, then write it again.
        first = self.first[rep_slots]
        k = clear_min - first
        in_base = (first != NONE) & (k >= 0) & (k < BASELINE_MINUTES)
        self.base[rep_slots[in_base], k[in_base], :] = np.nan
        if len(a_slot):
            k = a_min - self.first[a_slot]
            in_base = (k >= 0) & (k < BASELINE_MINUTES)
            self.base[a_slot[in_base], k[in_base], :] = values[in_base][:, _STAT_IDX]

        expired = self._expired(old_slot, old_min)
        if expired.any():
            self._ids.difference_update(old.loc[expired, "event_id"].tolist())
        kept = old[~expired]
        self._ids.update(new["event_id"].tolist())
        self.events = (
            pd.concat([kept, new[_RETAINED]], ignore_index=True)
            if len(kept)
            else new[_RETAINED].reset_index(drop=True)
        )

    def _prior(
        self, t_slots: I64, t0: I64, old: pd.DataFrame, old_slot: I64, old_min: I64
    ) -> CleaningState:
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
            m = (old_min < lo[old_slot]) & (old_min >= lo[old_slot] - CONTEXT_MINUTES)
            ctx = old[m]
            ctx = ctx.iloc[_event_order(ctx)]
            pos = {slot: i for i, slot in enumerate(t_slots.tolist())}
            rows = np.array([pos[x] for x in s_slots.tolist()], dtype=np.int64)
            vals[rows] = np.nan
            tss[rows] = NONE
            refs = reference_readings(
                ctx["heart_rate"].astype("float64"), ctx["spo2"].astype("float64")
            )
            ns = ctx["ts"].to_numpy("datetime64[ns]").astype(np.int64)
            for k, ref in enumerate(refs):
                seen = pd.DataFrame(
                    {"slot": ctx["_slot"].to_numpy(), "v": ref.to_numpy(), "ts": ns}
                ).dropna(subset=["v"])
                last = seen.groupby("slot").last()
                idx = np.array([pos[x] for x in last.index.tolist()], dtype=np.int64)
                if len(idx):
                    vals[idx, k] = last["v"].to_numpy()
                    tss[idx, k] = last["ts"].to_numpy()
        index = pd.Index(self._names()[t_slots], name="patient_id", dtype="object")
        cols: dict[str, pd.Series] = {}
        for k, name in ((1, "spo2"), (0, "heart_rate")):
            has = ~np.isnan(vals[:, k]) & (tss[:, k] != NONE)
            when = pd.Series(pd.to_datetime(np.where(has, tss[:, k], 0), utc=True), index=index)
            cols[name] = pd.Series(np.where(has, vals[:, k], np.nan), index=index)
            cols[f"{name}_ts"] = when.astype("datetime64[us, UTC]").where(has)
        last = pd.DataFrame(cols, index=index)
        return CleaningState(last=last)

    def _names(self) -> npt.NDArray[np.object_]:
        if len(self._name_array) != len(self.slots):
            self._name_array = np.array(list(self.slots), dtype=object)
        return self._name_array

    def _keep_refs(self, state: CleaningState) -> None:
        """Carry the references after this batch (the prior's, updated by its events)."""
        last = state.last
        if last.empty:
            return
        slots = np.array([self.slots[p] for p in last.index.tolist()], dtype=np.int64)
        for k, name in enumerate(("heart_rate", "spo2")):
            v = last[name].to_numpy(dtype=np.float64)
            ts = last[f"{name}_ts"]
            has = ~np.isnan(v) & ts.notna().to_numpy()
            ns = pd.to_datetime(ts).to_numpy("datetime64[ns]").astype(np.int64)
            self.ref_val[slots, k] = np.where(has, v, np.nan)
            self.ref_ts[slots, k] = np.where(has, ns, NONE)

    def _expired(self, slots: I64, minutes: I64) -> npt.NDArray[np.bool_]:
        return minutes < self.newest[slots] - self.lateness - CONTEXT_MINUTES - 1

    def _move_first(self, slots: I64, candidate: I64) -> None:
        """A patient's first usable minute; an earlier one shifts the baseline along."""
        cur = self.first[slots]
        fresh = cur == NONE
        self.first[slots[fresh]] = candidate[fresh]
        earlier = ~fresh & (candidate < cur)  # rare: a late event before the stay's start
        for s, c, f in zip(
            slots[earlier].tolist(), candidate[earlier].tolist(), cur[earlier].tolist(), strict=True
        ):
            shift = f - c
            kept = self.base[s, : max(BASELINE_MINUTES - shift, 0)].copy()
            self.base[s] = np.nan
            self.base[s, shift : shift + len(kept)] = kept
            self.first[s] = c

    # ------------------------------------------------------------------ vectors
    def _vectors_for(self, new: pd.DataFrame) -> pd.DataFrame:
        keys = pd.DataFrame({"slot": new["_slot"].to_numpy(), "minute": new["_minute"].to_numpy()})
        uniq = keys.drop_duplicates().reset_index(drop=True)
        values = self.vectors(uniq["slot"].to_numpy(), uniq["minute"].to_numpy())
        pos = keys.merge(uniq.reset_index(), on=["slot", "minute"], how="left")["index"]
        out = pd.DataFrame(values[pos.to_numpy()], columns=list(FEATURE_NAMES))
        as_of = (new["_minute"].to_numpy() + 1).astype("datetime64[m]")
        out.insert(0, "as_of", pd.DatetimeIndex(as_of).tz_localize("UTC").as_unit("us"))
        out.insert(0, "ts", new["ts"].to_numpy())
        out.insert(0, "patient_id", new["patient_id"].to_numpy())
        out.insert(0, "event_id", new["event_id"].to_numpy())
        return out

    def vectors(self, slots: I64, minutes: I64, chunk: int = 2048) -> F:
        """Feature matrix for (patient slot, as-of epoch minute) pairs, from the state."""
        out = np.empty((len(slots), len(FEATURE_NAMES)))
        offs = np.arange(WINDOW_MINUTES, dtype=np.int64) - (WINDOW_MINUTES - 1)
        for a in range(0, len(slots), chunk):
            s, m = slots[a : a + chunk], minutes[a : a + chunk]
            win_min = m[:, None] + offs[None, :]
            ring = self.ring[s[:, None], win_min % self.R, :]
            first, newest = self.first[s][:, None], self.newest[s][:, None]
            stale = (win_min < first) | (win_min < newest - self.R + 1) | (win_min > newest)
            ring[stale] = np.nan
            obs = ring[:, :, : len(CHANNELS)]
            latest = carry_forward(ring, CARRY_LIMITS)
            stay = np.where(m >= self.first[s], m - self.first[s], np.nan).astype(np.float64)
            out[a : a + chunk] = compute(obs, latest, stay, self.base[s], self.static[s])
        return out

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


_DTYPES = {
    "event_id": "object",
    "patient_id": "object",
    "ts": "datetime64[us, UTC]",
    **dict.fromkeys(VITALS, "float64"),
    "consciousness": "object",
    "on_oxygen": "object",
}
_DTYPES["_slot"] = "int64"
_DTYPES["_minute"] = "int64"
_RETAINED = [*EVENT_COLUMNS, "_slot", "_minute"]
__all__ = ["EVENT_COLUMNS", "LATEST", "STATIC", "OnlineFeatures"]
