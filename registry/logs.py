"""Log output: JSON lines for machines, plain text for a terminal; the same records either way.

A record's structured fields travel in its `fields` attribute (`logger.info("request", extra={"fields": {...}})`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

ACCESS_LOGGER = "moorage.access"
LogFormat = Literal["auto", "json", "text"]


_second_cache: list[Any] = [None, ""]


def _timestamp(record: logging.LogRecord) -> str:
    # One strftime per second, not per line: the access log writes one line per request.
    second = int(record.created)
    if _second_cache[0] != second:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{int(record.msecs):03d}Z"


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return json.dumps(text) if (not text or " " in text or '"' in text) else text


def resolve_format(log_format: LogFormat, stream: Any = None) -> Literal["json", "text"]:
    if log_format != "auto":
        return log_format
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server: uvicorn's loggers and ours, one formatter, standard error."""
    formatter = JsonFormatter if resolve_format(log_format) == "json" else TextFormatter
    level_name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"moorage": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "moorage", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level_name},
        "loggers": {
            "uvicorn": {"level": level_name},
            "uvicorn.error": {"level": level_name},
            # Our access log (moorage.access) replaces uvicorn's, which knows neither routes nor request ids.
            "uvicorn.access": {"level": "WARNING", "propagate": False},
            "moorage": {"level": level_name},
        },
    }
