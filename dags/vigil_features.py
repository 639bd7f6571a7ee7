"""Features and labels for new processed hours (batch path; same code as the scorer's).

Scheduled on the ``processed`` Asset; updates the ``features`` Asset.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from ops.dagpolicy import FEATURES, POLICY, PROCESSED, TAGS, settings


@dag(schedule=[PROCESSED], doc_md=__doc__, tags=[*TAGS, "features"], **POLICY)
def vigil_features() -> None:
    @task(outlets=[FEATURES])
    def features() -> dict[str, object]:
        from pipelines.features.job import run_features

        s = run_features(settings())
        return {"status": s.status, "hours": len(s.pending), "rows": s.feature_rows}

    features()


vigil_features()
