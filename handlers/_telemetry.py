"""Logs and metrics of the Lambda handlers, with aws-lambda-powertools.

- **Logs**: every record, the mesh's and the libraries', is one JSON line
  from Powertools' formatter on stdout: ``level``, ``message``,
  ``timestamp``, ``service``, ``location``, ``xray_trace_id`` (the
  invocation's ``_X_AMZN_TRACE_ID``), and from the invocation's context
  ``cold_start``, ``function_name``, ``function_request_id`` (the context's
  ``aws_request_id``), ``function_arn`` and ``function_memory_size``; the
  ``extra`` fields a log call passes come along as keys. The formatter is
  put on the root logger at the first invocation, replacing the runtime's
  own root handler, so nothing is logged twice; importing a handler changes
  no logging (a process that only imports one, a test run, keeps its own).
- **Metrics**: CloudWatch Embedded Metric Format, flushed once per
  invocation, namespace ``DataMCP`` (``POWERTOOLS_METRICS_NAMESPACE``),
  dimensions ``service`` and ``handler``: ``RecordsProcessed``,
  ``RecordsFailed`` (retried by the event source), ``RecordsDeadLettered``
  (failed for good, sent to the dead-letter queue), ``ProcessingTime`` (ms)
  and Powertools' ``ColdStart``.

Powertools' Logger and Metrics add ~20 ms to a handler's cold import here
(docs/serverless.md has the measurement); its batch and idempotency
utilities are not used (same page, why).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

F = TypeVar("F", bound=Callable[..., Any])

NAMESPACE = "DataMCP"
#: Also the name of Powertools' own logger: it must not be an ancestor of the
#: mesh's loggers (``datamcp.*``), or their records would stop there.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "datamcp-lambda")
logger = Logger(service=SERVICE, use_rfc3339=True)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE), service=SERVICE
)
_RUNTIME_HANDLER = "LambdaLoggerHandler"  # awslambdaric's root handler


def install(level: str = "INFO") -> None:
    """Send every log record through the Powertools formatter (idempotent)."""
    ours = logger.registered_handler
    # Powertools' own logger has this handler too: its records stop there.
    logging.getLogger(logger.service).propagate = False
    root = logging.getLogger()
    root.handlers[:] = [
        h for h in root.handlers if h is not ours and type(h).__name__ != _RUNTIME_HANDLER
    ] + [ours]
    root.setLevel(level)
    logger.setLevel(level)
    # Alembic narrates every migration step it considers at INFO.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def count(*, processed: int = 0, failed: int = 0, dead_lettered: int = 0) -> None:
    """Record this invocation's outcome (flushed when it answers)."""
    metrics.add_metric(name="RecordsProcessed", unit=MetricUnit.Count, value=processed)
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    metrics.add_metric(name="RecordsDeadLettered", unit=MetricUnit.Count, value=dead_lettered)


def observed(handler_name: str, local_context: Callable[[], Any]) -> Callable[[F], F]:
    """Wrap a handler: the context's keys on every log line for this
    invocation, its metrics flushed as EMF when it answers (or raises).
    ``local_context`` makes a context when a caller passes none."""

    def wrap(fn: F) -> F:
        def timed(event: Any, context: Any) -> Any:
            metrics.add_dimension(name="handler", value=handler_name)
            started = time.perf_counter()
            try:
                return fn(event, context)
            finally:
                elapsed = (time.perf_counter() - started) * 1000
                metrics.add_metric(
                    name="ProcessingTime", unit=MetricUnit.Milliseconds, value=elapsed
                )

        inner = metrics.log_metrics(
            logger.inject_lambda_context(timed, clear_state=True),
            capture_cold_start_metric=True,
            raise_on_empty_metrics=False,
        )

        @functools.wraps(fn)
        def handler(event: Any, context: Any = None) -> Any:
            if logger.registered_handler not in logging.getLogger().handlers:
                install()
            return inner(event, context if context is not None else local_context())

        return handler  # type: ignore[return-value]

    return wrap
