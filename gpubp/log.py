"""gpubp's log: one logger, "gpubp", for what the library says (the backend it chose, kernels it
compiles).

Messages go through `logging`.  Until the application configures logging itself (a handler on the
root logger), INFO and above are written to stderr as "gpubp: message"; after that they reach the
application's handlers only, like any library's.  `logging.getLogger("gpubp").setLevel(logging.WARNING)`
silences the informational lines.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("gpubp")


class _DefaultHandler(logging.Handler):
    """Writes to the current sys.stderr, and only while the root logger has no handler."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("gpubp: %(message)s"))

    def emit(self, record):
        if logging.getLogger().handlers:
            return
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


if not any(isinstance(h, _DefaultHandler) for h in logger.handlers):
    logger.addHandler(_DefaultHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
