"""Logging set-up for ``qlevents serve`` (given to uvicorn, so every worker has it)."""

from __future__ import annotations

from typing import Any


def log_config(level: str = "info") -> dict[str, Any]:
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "qlevents": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }
