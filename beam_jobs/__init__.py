"""Beam pipelines of wofn: one module per job, each with `run(argv)` (Dagster calls the same).

Importing this package first quiets one warning Beam logs on import, about its optional GCP
modules ("apitools not found, and bigquery client libraries are not available"): wofn uses no
BigQuery, and the line opened every job's output.
"""

import logging


class _NoOptionalGcpWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


if not any(isinstance(f, _NoOptionalGcpWarning) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_NoOptionalGcpWarning())
