"""BentoML service and the Kafka scoring consumer. Issue #6."""
