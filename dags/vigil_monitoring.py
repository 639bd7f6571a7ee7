"""Monitoring: hourly drift and realized performance of ``@champion``.

Writes the Evidently reports, the MLflow run and the ``monitoring_runs`` row. When drift
or a performance floor says so, records a retraining trigger and updates the ``retrain``
Asset, which schedules training (data-driven, no clock coupling). Otherwise, or when the
trigger falls within ``monitoring.retrain.cooldown_hours`` (data time) of the last
retraining, the trigger task is skipped and there is no Asset event.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import POLICY, RETRAIN, TAGS, settings


@dag(schedule="0 * * * *", doc_md=__doc__, tags=[*TAGS, "monitoring"], **POLICY)
def vigil_monitoring() -> None:
    @task
    def drift() -> dict[str, object]:
        from airflow.sdk.exceptions import AirflowFailException

        from monitoring.job import MonitoringError, run_monitoring
        from ops.retrain import hold_for_cooldown

        cfg = settings()
        try:
            s = run_monitoring(cfg)
        except MonitoringError as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"triggered": s.triggered, "reasons": s.reasons, "drift_share": s.drift.share,
                "trigger_id": s.trigger_id, "run_id": s.run_id,
                "held": hold_for_cooldown(cfg, s)}  # fmt: skip

    @task(outlets=[RETRAIN])
    def trigger(result: dict[str, object]) -> dict[str, object]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not result["triggered"]:
            raise AirflowSkipException("no drift or performance trigger")
        if result["held"]:
            raise AirflowSkipException(str(result["held"]))
        return result

    trigger(drift())  # type: ignore[arg-type]  # Airflow passes the XCom value at run time


vigil_monitoring()
