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


class _LibraryLogger(logging.Logger):
    """The "gpubp" logger.  With no level of its own (setLevel not called) it is at INFO while the root
    logger has no handler, so that `_DefaultHandler` writes the informational lines, and once the
    application has configured logging at the level the root logger gives it, like any library's
    logger (a fixed INFO level would send INFO records to an application's handlers set at WARNING).
    The answer is not cached, since a handler can be added to the root logger at any time."""

    def getEffectiveLevel(self):
        level = super().getEffectiveLevel()
        if self.level == logging.NOTSET and not logging.getLogger().handlers:
            return min(level, logging.INFO)
        return level

    def isEnabledFor(self, level):
        if self.disabled or self.manager.disable >= level:
            return False
        return level >= self.getEffectiveLevel()


def _ours(cls) -> bool:
    """Whether `cls` is this module's class of that name, or the same class of an earlier import of
    the module (importlib.reload, sys.modules emptied and gpubp imported again): `isinstance` with
    the new class does not recognise those."""
    return cls.__module__ == __name__ and cls.__name__ in ("_LibraryLogger", "_DefaultHandler")


def _install() -> None:
    if type(logger) is logging.Logger or _ours(type(logger)):
        logger.__class__ = _LibraryLogger
    # an earlier import's handler is replaced, not joined by a second one (each line was written twice)
    for h in [h for h in logger.handlers if _ours(type(h))]:
        logger.removeHandler(h)
    logger.addHandler(_DefaultHandler())


_install()
