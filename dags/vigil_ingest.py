"""Ingestion: drain Kafka (vitals, outcomes, admissions) into the raw lake every 5 minutes.

A bounded drain: the lander reads what is there, writes Parquet exactly once, commits and
stops. When it landed vital signs the ``raw`` Asset is updated and ETL runs; an empty
drain is *skipped* (no Asset event, no empty ETL run).
"""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import POLICY, RAW_LAKE, TAGS, settings


@dag(schedule="*/5 * * * *", doc_md=__doc__, tags=[*TAGS, "ingest"], **POLICY)
def vigil_ingest() -> None:
    @task(outlets=[RAW_LAKE])
    def land() -> dict[str, int]:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.landing import Lander

        s = Lander(settings()).run(bounded=True)
        if not s.vitals:
            raise AirflowSkipException(f"nothing to land ({s.records} records)")
        return {"records": s.records, "vitals": s.vitals, "outcomes": s.outcomes}

    land()


vigil_ingest()
