"""Evidently drift, realized performance and the retraining trigger. Issue #7."""
