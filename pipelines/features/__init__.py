"""Batch features and labels: see :mod:`pipelines.features.job`."""
