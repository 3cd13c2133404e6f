"""The server's structured logs: one JSON object per line on stderr.

    configure_logging("info")
    log_event("ready", endpoint="tcp://127.0.0.1:5555", workers=2)
    # {"ts": 1733300000.1, "level": "info", "event": "ready", "endpoint": ..., "workers": 2}

The broker and its workers (which inherit the configuration) log through the
"edgesdk.server" logger; edgesdk.server.ServerProcess reads these lines to learn when a
server is ready and where it listens.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

log = logging.getLogger("edgesdk.server")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                "event": record.getMessage()}
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["traceback"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
        return json.dumps(body, default=str)


def configure_logging(level: str = "info", stream=None) -> None:
    """JSON-lines logs on stderr for the edgesdk.server logger (workers inherit it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


__all__ = ["JsonFormatter", "configure_logging", "log", "log_event"]
