"""EDA: the weekly exploratory data analysis report from the lake (Mondays 06:00 UTC)."""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import POLICY, TAGS, settings


@dag(schedule="0 6 * * 1", doc_md=__doc__, tags=[*TAGS, "eda"], **POLICY)
def vigil_eda() -> None:
    @task
    def report() -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.eda.data import EdaDataError
        from pipelines.eda.report import run_eda

        try:
            return str(run_eda(settings()).html_path)
        except EdaDataError as exc:
            raise AirflowFailException(str(exc)) from exc

    report()


vigil_eda()
