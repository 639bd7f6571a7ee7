"""Prometheus metrics of the scoring consumer, served on ``scorer.metrics_port``.

Each scorer owns its registry (several may run in one process in tests); names follow
the Prometheus conventions: ``_total`` counters, ``_seconds`` histograms, base units.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("vigil.scorer")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ScorerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("vigil_scorer_events_total",
                              "Vital-sign events consumed, by outcome", ["outcome"],
                              registry=r)  # fmt: skip
        self.invalid = Counter("vigil_scorer_invalid_events_total",
                               "Events sent to the dead-letter store, by reason", ["reason"],
                               registry=r)  # fmt: skip
        self.predictions = Counter("vigil_scorer_predictions_total",
                                   "Predictions stored, by role", ["role"], registry=r)  # fmt: skip
        self.alerts = Counter("vigil_scorer_alerts_total", "Alerts raised", registry=r)
        self.suppressed = Counter("vigil_scorer_alerts_suppressed_total",
                                  "Threshold crossings held back by the quiet period",
                                  registry=r)  # fmt: skip
        self.retries = Counter("vigil_scorer_service_retries_total",
                               "Calls to the service retried while it was unavailable",
                               registry=r)  # fmt: skip
        self.replayed = Counter("vigil_scorer_replayed_events_total",
                                "History folded into the online features unscored when "
                                "partitions were taken over (serving.replay)",
                                registry=r)  # fmt: skip
        self.latency = Histogram("vigil_scorer_event_to_prediction_seconds",
                                 "From the event's Kafka timestamp to its stored prediction",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch = Histogram("vigil_scorer_batch_seconds",
                               "Wall time to process one poll batch", registry=r)  # fmt: skip
        self.step = Histogram("vigil_scorer_step_seconds",
                              "Wall time of each step of a batch (validate, features, score, "
                              "alerts, store, publish)", ["step"], registry=r)  # fmt: skip
        self.lag = Gauge("vigil_scorer_consumer_lag",
                         "Events on the topic not yet committed by the scorer's group",
                         ["topic", "partition"], registry=r)  # fmt: skip
        self.model = Gauge("vigil_scorer_model_info",
                           "1 for the model version that scored the last batch",
                           ["model_name", "model_version"], registry=r)  # fmt: skip
        self.dependency_up = Gauge("vigil_scorer_dependency_up",
                                   "1 while a dependency (postgres, service, kafka) answers, 0 "
                                   "during an outage the scorer is waiting out",
                                   ["dependency"], registry=r)  # fmt: skip
        self.outages = Counter("vigil_scorer_outages_total",
                               "Outages of a dependency the scorer waited out (paused, "
                               "partitions kept)", ["dependency"], registry=r)  # fmt: skip
        self.last_batch = Gauge("vigil_scorer_last_batch_timestamp_seconds",
                                "Unix time the last batch was stored", registry=r)  # fmt: skip
        self._server: Any = None

    def serve(self, host: str, port: int) -> bool:
        """Start ``/metrics`` on ``host:port``; False (and a warning) if the port is taken."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.warning("scorer metrics not served on %s:%s: %s", host, port, exc)
            return False
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
