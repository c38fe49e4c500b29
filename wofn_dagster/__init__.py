"""Dagster definitions of wofn: assets by stage over the core library and the Beam jobs."""
