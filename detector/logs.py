"""Logging for a service under systemd: one line per record on stderr, text or JSON.

Text lines carry a `<N>` syslog priority prefix that journald turns into the record's
priority (SyslogLevelPrefix=, on by default) and no timestamp (journald adds its own).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            separators=(",", ":"),
        )


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Send the `shadowai` logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger = logging.getLogger("shadowai")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
