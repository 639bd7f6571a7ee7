"""Deployment: gate the new ``@challenger`` against ``@champion`` and NEWS2; promote if it passes.

Scheduled on the ``challenger`` Asset. A promotion moves ``@champion`` in the registry and
updates the ``champion`` Asset; the BentoML service notices the moved alias and hot-swaps
by itself. A challenger that fails the gate stays ``@challenger`` (scored in shadow).
"""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import CHALLENGER, CHAMPION, POLICY, TAGS, settings


@dag(schedule=[CHALLENGER], doc_md=__doc__, tags=[*TAGS, "deployment"], **POLICY)
def vigil_deployment() -> None:
    @task(outlets=[CHAMPION])
    def gate_and_promote() -> dict[str, object]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from ops.retrain import deploy, pending_trigger_in_training
        from stack.registry import RegistryError

        s = settings()
        try:
            r = deploy(s, trigger_id=pending_trigger_in_training(s))
        except RegistryError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not r.promoted:
            raise AirflowSkipException("gate kept the champion: " + "; ".join(r.decision.reasons))
        return {"champion": r.challenger, "was": r.champion_before}

    gate_and_promote()


vigil_deployment()
