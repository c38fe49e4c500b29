"""wofn: West-of-N synthetic preferences for self-improving reward models (core library).

The core imports neither Beam nor Dagster: `beam_jobs/` and `wofn_dagster/` build on it.
"""

__version__ = "0.1.0"
