"""``make promote`` and ``make rollback``: the gate applied to the registry.

The gate set is the challenger's own held-out test patients (recorded in its run's
``split.json``) with their labelled rows as the lake holds them now, minus any patient
the current champion was trained on, so neither model is scored on patients it has seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.spec import FEATURE_NAMES, FEATURE_SET_VERSION
from stack.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistryError
from stack.settings import Settings
from training.gate import GateDecision, decide

log = logging.getLogger("vigil.training")


@dataclass(frozen=True)
class PromotionResult:
    challenger: str
    champion_before: str | None
    promoted: bool
    decision: GateDecision
    gate_rows: int
    gate_patients: int
    excluded_patients: int


def gate_rows(
    rows: pd.DataFrame, test_patients: list[str], champion_train: list[str] | None
) -> tuple[pd.DataFrame, int]:
    """Rows of the challenger's test patients that the champion never trained on."""
    keep = set(test_patients)
    excluded = 0
    if champion_train:
        seen = keep & set(champion_train)
        excluded = len(seen)
        keep -= seen
    return rows[rows["patient_id"].isin(keep)].reset_index(drop=True), excluded


def run_promote(settings: Settings, rows: pd.DataFrame | None = None) -> PromotionResult:
    """Gate the ``challenger`` against ``champion`` and NEWS2; promote if it passes.

    Args:
        rows: labelled feature rows (default: the lake, as ``training.job.load_rows``).

    Raises:
        RegistryError: no challenger, a feature-set mismatch, or no positives to judge on.
    """
    from training.job import load_rows

    reg = ModelRegistry(settings)
    challenger = reg.by_alias(CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{reg.name} has no @{CHALLENGER}: run `make train` first")
    if challenger.feature_set_version != FEATURE_SET_VERSION:
        raise RegistryError(
            f"challenger v{challenger.version} uses features "
            f"{challenger.feature_set_version!r}, this code {FEATURE_SET_VERSION!r}"
        )
    champion = reg.by_alias(CHAMPION)
    split = reg.run_json(challenger.run_id, "split.json")
    champion_train: list[str] | None = None
    if champion is not None:
        champion_train = reg.run_json(champion.run_id, "split.json")["train_patients"]
    if rows is None:
        rows = load_rows(settings)
    judged, excluded = gate_rows(rows, split["test_patients"], champion_train)
    y = judged["label"].to_numpy(dtype=np.int8)
    if len(np.unique(y)) < 2:
        raise RegistryError(
            f"the gate set ({judged['patient_id'].nunique()} patients, {excluded} excluded as "
            "seen by the champion) lacks positives or negatives: nothing to judge on"
        )
    x = judged[list(FEATURE_NAMES)]
    cfg = settings.training.gate
    decision = decide(
        y,
        judged["patient_id"].to_numpy(),
        challenger=reg.load(challenger).risk(x),
        news2_total=judged["news2_total"].to_numpy(dtype=np.float64),
        news2_red=judged["news2_red"].to_numpy(dtype=np.float64),
        champion=reg.load(champion).risk(x) if champion is not None else None,
        cfg=cfg,
        seed=settings.training.seed,
    )
    evidence = decision.evidence() | {
        "challenger": challenger.version,
        "champion": champion.version if champion else None,
        "gate_rows": len(judged),
        "gate_patients": int(judged["patient_id"].nunique()),
        "excluded_seen_by_champion": excluded,
    }
    reg.record_gate(challenger.version, evidence)
    if decision.promote:
        reg.promote(challenger.version)
    log.info(
        "gate %s v%s", "promoted" if decision.promote else "rejected", challenger.version,
        extra={"evidence": {k: v for k, v in evidence.items() if k != "intervals"}},
    )  # fmt: skip
    return PromotionResult(
        challenger=challenger.version,
        champion_before=champion.version if champion else None,
        promoted=decision.promote,
        decision=decision,
        gate_rows=len(judged),
        gate_patients=int(judged["patient_id"].nunique()),
        excluded_patients=excluded,
    )
