"""Real-time serving: the BentoML service, its managed process, and the Kafka scorer."""
