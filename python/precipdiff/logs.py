"""Logging conventions of the package.

Every module logs through ``logging.getLogger(__name__)`` (names under ``precipdiff``);
the library never configures handlers. The command line does
(:func:`precipdiff.offline.cli.main.configure_logging`: ``-v``/``-q``), an ESM process
gets Python's default (warnings and errors on stderr). What is logged at INFO: every unit
conversion and every regridding of inputs (never silent), files written, progress of long
runs when no progress bar is shown.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["log_once"]

_SEEN: set[tuple[str, int, str]] = set()
_LOCK = threading.Lock()


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Log ``message`` the first time it is seen in this process (per logger and level).

    For facts that repeat on every call (a unit conversion of every time step read, a
    remap of every window): they are logged once, not once per call.

    Parameters
    ----------
    logger : logging.Logger
        Where to log.
    level : int
        Logging level, e.g. ``logging.INFO``.
    message : str
        The message (already formatted).
    """
    key = (logger.name, level, message)
    with _LOCK:
        if key in _SEEN:
            return
        _SEEN.add(key)
    logger.log(level, message)
