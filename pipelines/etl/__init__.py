"""Spark ETL validated by Great Expectations: raw lake → processed lake + PostgreSQL."""
