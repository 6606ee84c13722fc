"""Structured logging with structlog: one line per event, JSON or console.

Every line carries what identifies the connection (client address, login, tenant);
statements are never logged with their literal values.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(fmt: str | None = None, level: str | None = None) -> None:
    """Log to stderr; `fmt` is json or console (TENANTGATE_LOG_FORMAT), console by default."""
    fmt = fmt or os.environ.get("TENANTGATE_LOG_FORMAT", "console")
    level_name = (level or os.environ.get("TENANTGATE_LOG_LEVEL", "info")).upper()
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        # One write per line (message and newline together): with `workers: N` several
        # processes share stderr, and print()'s two writes let their lines interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**context):
    return structlog.get_logger("tenantgate").bind(**context)
