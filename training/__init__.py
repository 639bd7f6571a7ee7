"""Optuna-tuned training, MLflow tracking and the promotion gate. Issue #5."""
