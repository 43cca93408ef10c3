"""Structured log lines (one JSON object per line) for operators; never secrets, never data values."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    logger.log(level, json.dumps(record, default=str, sort_keys=False))
