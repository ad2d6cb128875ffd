"""Log lines for the journal: sd-daemon priority prefixes under systemd, plain text elsewhere."""

from __future__ import annotations

import logging
import os


class JournalFormatter(logging.Formatter):
    """One line per event; under systemd (JOURNAL_STREAM set) with the sd-daemon `<priority>`
    prefix that journald reads, so a multi-line OpenBao error stays one entry at its level."""

    PRIORITIES = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def __init__(self, journal: bool | None = None):
        super().__init__()
        self.journal = bool(os.environ.get("JOURNAL_STREAM")) if journal is None else journal

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        if not self.journal:
            return f"sevenleague-pki: {record.levelname.lower()}: {message}"
        priority = self.PRIORITIES.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>{message}"
