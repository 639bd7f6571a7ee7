"""A ward scored live: simulator → Kafka → the scorer → the BentoML service → PostgreSQL.

For the drift demo and the loop test: a simulated period streams on topics of its own
(so nothing else on the broker is re-scored), the service serves the registry's
``@champion`` and, when there is one, ``@challenger`` in shadow, and the scorer stores
every prediction. Once the outcomes have landed, ``monitoring.job.stored_predictions``
and ``monitoring.performance.realized`` judge each version on what it predicted live.
"""

from __future__ import annotations

import uuid

from pipelines.produce import ProduceSummary, simulate_to_kafka
from serving.scorer import Scorer
from serving.server import ServingProcess
from serving.summary import ScoreSummary
from stack.localstack import free_port
from stack.settings import Settings, SimulatorSettings, TopicNames

ROLES = tuple(TopicNames.model_fields)  # vitals, outcomes, admissions, ... alerts


def live_settings(settings: Settings, ward: SimulatorSettings) -> Settings:
    """``settings`` with topics, a consumer group and a service port of their own."""
    tag = uuid.uuid4().hex[:6]
    topics = {role: f"{role}.live-{tag}" for role in ROLES}
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"topics": settings.kafka.topics.model_copy(update=topics)}
            ),
            "simulator": ward,
            "serving": settings.serving.model_copy(update={"port": free_port()}),
            "scorer": settings.scorer.model_copy(
                update={
                    "group_id": f"scorer-live-{tag}",
                    "new_group_starts_at": "earliest",
                    "idle_timeout_s": 4.0,
                    "metrics_port": None,
                }
            ),
        }
    )


def score_live(settings: Settings, ward: SimulatorSettings) -> tuple[ProduceSummary, ScoreSummary]:
    """Stream ``ward`` and score all of it; the service is stopped afterwards."""
    live = live_settings(settings, ward)
    sent = simulate_to_kafka(live)[0]
    service = ServingProcess(live)
    service.start_or_explain()
    try:
        return sent, Scorer(live).run(bounded=True)
    finally:
        service.stop()
