"""Logging to a file: the TUI owns the terminal, so nothing is logged to the screen."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def setup_logging(log_file: Path, debug: bool = False) -> Path | None:
    """Send chatty's logs to a rotating file; returns the file, or None when it cannot be created."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in list(root.handlers):
        if getattr(handler, "chatty", False):
            root.removeHandler(handler)
            handler.close()
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        # Without a handler, logging would print every record on stderr, over the TUI and next to
        # chatty's own error message.
        handler = logging.NullHandler()
        handler.chatty = True
        root.addHandler(handler)
        return None
    handler.chatty = True
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    # Warnings from libraries (deprecations, for example) go to the log, not over the screen.
    logging.captureWarnings(True)
    # Libraries stay at INFO even with --debug; their debug output would bury chatty's.
    for name in ("markdown_it", "asyncio", "urllib3", "filelock", "httpx"):
        logging.getLogger(name).setLevel(logging.INFO)
    return log_file
