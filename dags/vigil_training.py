"""Training: daily at 02:00 UTC, and whenever monitoring records a retraining trigger.

Trains on the sliding window (``monitoring.retrain.window_days`` up to the latest feature
time), registers the best model as ``@challenger`` and updates the ``challenger`` Asset,
which schedules deployment. A pending trigger row is marked ``training`` with the run.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from ops.dagpolicy import CHALLENGER, POLICY, RETRAIN, TAGS, settings


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[RETRAIN]
    ),
    doc_md=__doc__,
    tags=[*TAGS, "training"],
    **POLICY,
)
def vigil_training() -> None:
    @task(outlets=[CHALLENGER])
    def train() -> dict[str, object]:
        from airflow.sdk.exceptions import AirflowFailException

        from ops.retrain import pending_trigger, train_on_window
        from training.job import TrainingDataError

        s = settings()
        trigger = pending_trigger(s)
        try:
            t = train_on_window(s, trigger_id=trigger)
        except TrainingDataError as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"version": t.model_version, "family": t.family, "trigger_id": trigger,
                "test_roc_auc": t.test["roc_auc"]}  # fmt: skip

    train()


vigil_training()
