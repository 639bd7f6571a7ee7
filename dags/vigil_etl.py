"""ETL: validate (Great Expectations), clean and resample new raw partitions.

Scheduled on the ``raw`` Asset, so a new raw partition flows on without clock coupling.
A failed batch-level validation fails the task at once (no retries: the data, not the
machine, is wrong) with the validation's message naming the partition and expectation.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import POLICY, PROCESSED, RAW_LAKE, TAGS, settings


@dag(schedule=[RAW_LAKE], doc_md=__doc__, tags=[*TAGS, "etl"], **POLICY)
def vigil_etl() -> None:
    @task(outlets=[PROCESSED])
    def etl() -> dict[str, object]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.etl.job import run_etl
        from pipelines.etl.validation import EtlValidationError

        try:
            s = run_etl(settings())
        except EtlValidationError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not s.pending:
            raise AirflowSkipException("no new raw partitions")
        return {"partitions": list(s.pending), "status": s.status}

    etl()


vigil_etl()
