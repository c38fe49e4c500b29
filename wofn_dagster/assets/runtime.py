"""How the inference steps run: their retry policy, which errors are not retried, and the Beam
jobs' progress lines forwarded to the run's log."""

import logging
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from wofn import data, models, schemas

# Sampling and scoring load models and run Beam jobs: a worker lost, a full disk or a busy GPU
# can fail a step once and not again. Bad input or settings fail the same way every time, so
# those raise Failure(allow_retries=False) (see `no_retry_on_bad_input`).
INFERENCE_RETRY = RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


@contextmanager
def no_retry_on_bad_input():
    """Turn errors that a retry cannot fix (bad input files, schemas, missing models) into a Failure
    that the retry policy does not retry."""
    try:
        yield
    except (data.InputError, schemas.SchemaError, models.ModelNotFoundError) as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


class _ToDagster(logging.Handler):
    def __init__(self, context):
        super().__init__(logging.INFO)
        self._context = context

    def emit(self, record: logging.LogRecord) -> None:
        self._context.log.info(f"{record.name}: {record.getMessage()}")


@contextmanager
def forward_logs(context, *names: str):
    """Show INFO lines of the given Python loggers (e.g. a Beam job's progress) in the run's log.

    Works for jobs running in this process (DirectRunner in_memory); other runners log on workers.
    """
    handler = _ToDagster(context)
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)

