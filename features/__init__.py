"""Feature and label definitions shared by batch and online paths (pure, no I/O). Issue #4."""
