"""Logging set-up for entry points (the CLI and the notebooks), never for library code."""

from __future__ import annotations

import logging
import os
import sys

from cxr_tutorial import logger


def setup_logging(level: str | int | None = None) -> None:
    """Send the package logger's records to stderr with a short, readable format.

    Calling it twice does not add a second handler, so notebooks can call it in their
    first cell and still be re-run. It returns nothing, so a notebook cell that ends with
    it shows no output.

    Args:
        level: A logging level name or number. Defaults to the environment variable
            ``CXR_TUTORIAL_LOG_LEVEL``, else ``INFO``.
    """
    level = level or os.environ.get("CXR_TUTORIAL_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = level.upper()
    logger.setLevel(level)
    if not any(getattr(h, "_cxr_tutorial", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._cxr_tutorial = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
