"""Data stages: the patient simulator, Kafka producer and landing (later: Spark ETL)."""
