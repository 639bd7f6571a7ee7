"""What every Vigil DAG shares: the Assets between stages, the run policy, settings.

DAG files stay thin: they import this module and the stage functions, nothing else, and
do no work at import time (settings are loaded when a task runs, never at parse time).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset

# Data-driven scheduling: each stage's output is an Asset the next stage is scheduled on.
RAW_LAKE = Asset("vigil://lake/raw/vitals")
PROCESSED = Asset("vigil://lake/processed/vitals_minute")
FEATURES = Asset("vigil://lake/features")
CHALLENGER = Asset("vigil://registry/challenger")
CHAMPION = Asset("vigil://registry/champion")
RETRAIN = Asset("vigil://monitoring/retraining-trigger")

START = datetime(2026, 1, 1)
TAGS = ["vigil"]
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "vigil",
    # Transient failures (a broker restart) retry; data errors fail at once (the tasks
    # raise AirflowFailException for them). VIGIL_AIRFLOW_RETRIES=0 for tests and demos.
    "retries": int(os.environ.get("VIGIL_AIRFLOW_RETRIES", "2")),
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
}
POLICY: dict[str, Any] = {
    "start_date": START,
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
}


def settings() -> Any:
    """The validated settings of this deployment (``conf/`` + ``VIGIL__*`` variables)."""
    from stack.logs import configure_task_logging
    from stack.settings import load_settings

    s = load_settings()
    configure_task_logging(s.logging)
    return s
