"""The ward simulator: physiology → device faults → contract JSON, in emission order.

:class:`WardSimulator` yields chunks of messages ``(role, key, value, emit_s)`` where
``role`` is ``"vitals"``, ``"outcomes"`` or ``"admissions"`` and ``emit_s`` is when the
message leaves the device (seconds after the simulation start). Faults are injected here,
at the device and the network, and every one is counted in :class:`SimStats` so that
downstream stages can reconcile what they saw with what was sent.

Deterministic by seed: the same settings give the same bytes in the same order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipelines.simulator.physiology import Readings, WardState, generate_chunk
from pipelines.simulator.population import KINDS, NO_EPISODE, Population, draw_population
from pipelines.simulator.scenarios import get_scenario
from stack.contracts import AVPU, SCHEMA_VERSION
from stack.settings import SimulatorSettings

Message = tuple[str, bytes, bytes, float]  # role, key, value, emit_s
INT_VITALS = ("heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate")
MALFORMED_KINDS = ("bad_json", "missing_field", "wrong_type", "invalid_value")
IMPOSSIBLE = {
    "heart_rate": (-10.0, 0.0, 350.0, 480.0),
    "spo2": (101.0, 118.0, 127.0, 140.0),
    "resp_rate": (-2.0, 0.0, 99.0, 150.0),
    "temperature": (0.0, 15.2, 55.0, 61.0),
    "systolic_bp": (0.0, 350.0, 420.0, 999.0),
}


@dataclass
class SimStats:
    """What the simulator sent, by kind: the ground truth for reconciliation."""

    patients: int = 0
    readings: int = 0  # distinct readings generated (one event_id each)
    vitals_messages: int = 0  # messages on the vitals topic, duplicates and malformed included
    valid_events: int = 0  # distinct, well-formed events (readings - malformed)
    duplicates: int = 0
    late: int = 0
    malformed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_KINDS, 0))
    artifacts: int = 0
    impossible: int = 0
    missing_values: int = 0
    fahrenheit_readings: int = 0
    admissions: int = 0
    outcomes: int = 0
    outcomes_by_kind: dict[str, int] = field(default_factory=dict)
    episodes_started: int = 0
    episodes_resolving: int = 0  # of the started, those that settle by themselves
    observation_sets: int = 0  # sets charted (news2_tier) or score reviews (continuous)
    escalations: int = 0  # triggers the ward responded to during an episode
    rescues: int = 0  # of those, deteriorations turned around (their outcome averted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_UUID_SLOTS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random (version 4) UUID strings from ``rng``, formatted in bulk."""
    if n == 0:
        return []
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, _UUID_SLOTS] = hexed
    text = out.tobytes().decode("ascii")
    return [text[i : i + 36] for i in range(0, 36 * n, 36)]


def _iso(start_ms: int, ts_s: npt.NDArray[np.float64]) -> list[str]:
    ms = (start_ms + np.floor(ts_s * 1000)).astype("datetime64[ms]")
    return [s + "Z" for s in np.datetime_as_string(ms, unit="ms").tolist()]


def _column(values: npt.NDArray[np.float64], as_int: bool) -> list[Any]:
    out: list[Any] = values.tolist()
    nan = np.isnan(values)
    if as_int:
        out = [None if m else int(v) for v, m in zip(out, nan.tolist(), strict=True)]
    elif nan.any():
        out = [None if m else v for v, m in zip(out, nan.tolist(), strict=True)]
    return out


class WardSimulator:
    """Generates a ward's message stream chunk by chunk.

    Args:
        cfg: simulator settings (seed, size, faults, scenario...).
        record_faults: keep ``fault_log`` (event_id → fault kinds) for tests and the ETL.
    """

    def __init__(self, cfg: SimulatorSettings, *, record_faults: bool = False) -> None:
        self.cfg = cfg
        self.scenario = get_scenario(cfg.scenario)
        self.population: Population = draw_population(cfg, self.scenario)
        self.stats = SimStats(patients=self.population.size)
        self.record_faults = record_faults
        self.fault_log: dict[str, list[str]] = {}
        self.state: WardState | None = None  # the ward's care so far, once messages() runs
        self._start_ms = int(cfg.start.timestamp() * 1000)
        self._steps_total = int(np.ceil(cfg.hours * 3600 / cfg.interval_s))
        self._steps_chunk = max(1, int(cfg.chunk_minutes * 60 // cfg.interval_s))
        self._end_s = cfg.hours * 3600.0

    @property
    def duration_s(self) -> float:
        return self._end_s

    def messages(self) -> Iterator[list[Message]]:
        """Chunks of messages in emission order; late messages wait in a heap."""
        state = WardState.initial(self.population, np.random.default_rng([self.cfg.seed, 2]))
        pending: list[Message] = []  # late messages not yet due
        pop = self.population
        self.state = state
        for chunk, first in enumerate(range(0, self._steps_total, self._steps_chunk)):
            steps = min(self._steps_chunk, self._steps_total - first)
            rng = np.random.default_rng([self.cfg.seed, 3, chunk])
            readings = generate_chunk(pop, self.cfg, state, first, steps, rng)
            chunk_end_s = (first + steps) * self.cfg.interval_s
            chunk_start_s = first * self.cfg.interval_s
            admit_s = pop.admit_min * 60.0
            admitted = np.nonzero((admit_s >= chunk_start_s) & (admit_s < chunk_end_s))[0]
            batch = pending + self._admission_messages(
                admitted, admit_s, np.random.default_rng([self.cfg.seed, 4, chunk])
            )
            batch += self._vitals_messages(readings, rng)
            outcome_s = state.outcome_min * 60.0  # rescues made so far have removed theirs
            ends = np.nonzero((outcome_s >= chunk_start_s) & (outcome_s < chunk_end_s))[0]
            batch += self._outcome_messages(ends, outcome_s, rng)
            started = (
                (pop.episode_kind != NO_EPISODE)
                & (pop.onset_min * 60 >= chunk_start_s)
                & (pop.onset_min * 60 < chunk_end_s)
            )
            self.stats.episodes_started += int(started.sum())
            self.stats.episodes_resolving += int((started & pop.recovers).sum())
            emit = np.fromiter((m[3] for m in batch), dtype=np.float64, count=len(batch))
            order = np.argsort(emit, kind="stable")
            due = int(np.searchsorted(emit[order], chunk_end_s, side="left"))
            self.stats.observation_sets = state.sets
            self.stats.escalations = state.escalations
            self.stats.rescues = state.rescues
            yield [batch[i] for i in order[:due].tolist()]
            pending = [batch[i] for i in order[due:].tolist()]
        if pending:
            yield pending

    # ------------------------------------------------------------------ vitals
    def _vitals_messages(self, r: Readings, rng: np.random.Generator) -> list[Message]:
        n = len(r)
        if n == 0:
            return []
        f = self.cfg.faults
        pop = self.population
        vals = {v: a.copy() for v, a in r.values.items()}
        ids = _uuids(rng, n)
        faults: dict[int, list[str]] = {}

        def note(idx: npt.NDArray[np.int64], kind: str) -> None:
            if self.record_faults:
                for i in idx.tolist():
                    faults.setdefault(i, []).append(kind)

        # Readings that never happened: a sensor gave nothing.
        for v, a in vals.items():
            drop = (rng.random(n) < f.missing) & ~np.isnan(a)
            a[drop] = np.nan
            self.stats.missing_values += int(drop.sum())
            note(np.nonzero(drop)[0], f"missing:{v}")

        # Motion artifacts: a probe slips (SpO2 0–50) or the ECG picks up movement (HR spike).
        art = np.nonzero(rng.random(n) < f.artifact)[0]
        on_spo2 = rng.random(art.size) < 0.6
        for i, use_spo2 in zip(art.tolist(), on_spo2.tolist(), strict=True):
            v = "spo2" if use_spo2 else "heart_rate"
            vals[v][i] = rng.integers(0, 51) if v == "spo2" else rng.integers(170, 251)
        self.stats.artifacts += int(art.size)
        note(art, "artifact")

        # Impossible values: firmware or transcription errors corrupt a measured value.
        imp = np.nonzero(rng.random(n) < f.impossible)[0]
        names = list(IMPOSSIBLE)
        for i in imp.tolist():
            measured = [v for v in names if not np.isnan(vals[v][i])] or names
            v = measured[int(rng.integers(0, len(measured)))]
            vals[v][i] = IMPOSSIBLE[v][int(rng.integers(0, 4))]
        self.stats.impossible += int(imp.size)
        note(imp, "impossible")

        # Thermometers configured in Fahrenheit.
        fahr = pop.fahrenheit[r.patient] & ~np.isnan(vals["temperature"])
        vals["temperature"] = np.where(
            fahr, np.round(vals["temperature"] * 9 / 5 + 32, 1), vals["temperature"]
        )
        self.stats.fahrenheit_readings += int(fahr.sum())
        note(np.nonzero(fahr)[0], "fahrenheit")

        iso = _iso(self._start_ms, r.ts_s)
        cols = {v: _column(vals[v], v in INT_VITALS) for v in vals}
        avpu = [None if a < 0 else AVPU[a] for a in r.avpu.tolist()]
        o2 = r.on_oxygen.tolist()
        pids = [pop.patient_id[i] for i in r.patient.tolist()]
        devs = [pop.device_id[i] for i in r.patient.tolist()]

        malformed = rng.random(n) < f.malformed
        mal_kind = rng.integers(0, len(MALFORMED_KINDS), n)
        late = (rng.random(n) < f.late) & ~malformed
        dup = (rng.random(n) < f.duplicate) & ~malformed
        emit = r.ts_s + rng.uniform(0, 0.5, n)
        emit = np.where(late, r.ts_s + rng.uniform(60, f.late_max_minutes * 60, n), emit)
        dup_lag = rng.uniform(0.05, 5.0, n)

        out: list[Message] = []
        hr, sbp, dbp = cols["heart_rate"], cols["systolic_bp"], cols["diastolic_bp"]
        spo2, rr, temp = cols["spo2"], cols["resp_rate"], cols["temperature"]
        emit_l, mal_l, dup_l = emit.tolist(), malformed.tolist(), dup.tolist()
        for i in range(n):
            event = {
                "event_id": ids[i],
                "schema_version": SCHEMA_VERSION,
                "patient_id": pids[i],
                "device_id": devs[i],
                "ts": iso[i],
                "heart_rate": hr[i],
                "systolic_bp": sbp[i],
                "diastolic_bp": dbp[i],
                "spo2": spo2[i],
                "resp_rate": rr[i],
                "temperature": temp[i],
                "consciousness": avpu[i],
                "on_oxygen": o2[i],
            }
            key = pids[i].encode()
            if mal_l[i]:
                kind = MALFORMED_KINDS[int(mal_kind[i])]
                self.stats.malformed[kind] += 1
                if self.record_faults:
                    faults.setdefault(i, []).append(f"malformed:{kind}")
                out.append(("vitals", key, _malform(event, kind), emit_l[i]))
                continue
            value = orjson.dumps(event)
            out.append(("vitals", key, value, emit_l[i]))
            if dup_l[i]:
                out.append(("vitals", key, value, emit_l[i] + float(dup_lag[i])))
        self.stats.readings += n
        self.stats.valid_events += n - int(malformed.sum())
        self.stats.duplicates += int(dup.sum())
        self.stats.late += int(late.sum())
        if self.record_faults:
            note(np.nonzero(late)[0], "late")
            note(np.nonzero(dup)[0], "duplicate")
            for i, kinds in faults.items():
                self.fault_log[ids[i]] = kinds
        self.stats.vitals_messages += len(out)
        return out

    # ------------------------------------------------------------------ admissions
    def _admission_messages(
        self,
        patients: npt.NDArray[np.int64],
        admit_s: npt.NDArray[np.float64],
        rng: np.random.Generator,
    ) -> list[Message]:
        """The ADT feed: one admission per patient at the start of their stay.

        Patients with hypercapnic COPD live at 88-92 % on purpose (see ``population``), so
        their chart prescribes NEWS2's SpO2 scale 2; other COPD patients stay on scale 1.
        """
        pop = self.population
        ids = _uuids(rng, len(patients))
        out: list[Message] = []
        for j, i in enumerate(patients.tolist()):
            ts_s = float(admit_s[i])
            event = {
                "admission_id": ids[j],
                "schema_version": SCHEMA_VERSION,
                "patient_id": pop.patient_id[i],
                "ts": _iso(self._start_ms, np.array([ts_s]))[0],
                "age": int(pop.age[i]),
                "sex": "F" if pop.female[i] else "M",
                "spo2_scale": 2 if pop.hypercapnic[i] else 1,
            }
            out.append(("admissions", pop.patient_id[i].encode(), orjson.dumps(event), ts_s))
        self.stats.admissions += len(out)
        return out

    # ------------------------------------------------------------------ outcomes
    def _outcome_messages(
        self,
        patients: npt.NDArray[np.int64],
        outcome_s: npt.NDArray[np.float64],
        rng: np.random.Generator,
    ) -> list[Message]:
        pop = self.population
        out: list[Message] = []
        ids = _uuids(rng, len(patients))
        for j, i in enumerate(patients.tolist()):
            ts_s = float(outcome_s[i]) + float(rng.uniform(0, 30))
            kind = KINDS[int(pop.episode_kind[i])]
            event = {
                "outcome_id": ids[j],
                "schema_version": SCHEMA_VERSION,
                "patient_id": pop.patient_id[i],
                "ts": _iso(self._start_ms, np.array([ts_s]))[0],
                "kind": kind,
                "event": pop.outcome_event[i],
            }
            out.append(("outcomes", pop.patient_id[i].encode(), orjson.dumps(event), ts_s))
            self.stats.outcomes += 1
            self.stats.outcomes_by_kind[kind] = self.stats.outcomes_by_kind.get(kind, 0) + 1
        return out


def _malform(event: dict[str, Any], kind: str) -> bytes:
    """A message that breaks the contract in the named way."""
    if kind == "bad_json":
        raw = orjson.dumps(event)
        return raw[: max(1, len(raw) // 2)]  # truncated in transit
    bad = dict(event)
    if kind == "missing_field":
        del bad["ts"]
    elif kind == "wrong_type":
        bad["heart_rate"] = "tachy"
    else:  # invalid_value
        bad["consciousness"] = "X"
    return orjson.dumps(bad)


def summarize_population(pop: Population) -> dict[str, Any]:
    """Counts that describe the ward drawn for a run."""
    kinds = Counter(KINDS[k] for k in pop.episode_kind.tolist() if k != NO_EPISODE)
    return {
        "patients": pop.size,
        "copd": int(pop.copd.sum()),
        "hypercapnic": int(pop.hypercapnic.sum()),
        "beta_blocker": int(pop.beta_blocker.sum()),
        "median_age": float(np.median(pop.age)),
        "episodes": dict(kinds),
        "fahrenheit_devices": int(pop.fahrenheit.sum()),
    }
