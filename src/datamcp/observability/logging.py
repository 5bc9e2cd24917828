"""Structured JSON logs carrying the trace id and request id of the current call.

The ids are captured when a record is created (a log record factory), in the
task that logs, so they stay right whatever handler formats the record later.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

from datamcp.core.context import current_principal, current_request_id

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_CONTEXT = ("trace_id", "span_id", "request_id", "subject")


def install_log_context() -> None:
    """Make every new log record carry the current trace, span and request ids.

    Idempotent: installing twice does not stack factories.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_datamcp", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = f"{span.trace_id:032x}"
            record.span_id = f"{span.span_id:016x}"
        request_id = current_request_id.get()
        if request_id:
            record.request_id = request_id
            record.subject = current_principal.get().subject
        return record

    factory._datamcp = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT:
            value = record.__dict__.get(key)
            if value:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _CONTEXT and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send logs to stderr, as JSON lines or plain text."""
    install_log_context()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every plugin it loads at INFO; keep only what matters.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
