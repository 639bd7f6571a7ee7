"""``make demo``: wiring of every stage, end to end, on the embedded stack (no logic)."""
