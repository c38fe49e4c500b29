"""Beam pipelines of wofn: one module per job, each with `run(argv)` (Dagster calls the same)."""
