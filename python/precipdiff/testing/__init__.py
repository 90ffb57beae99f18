"""Helpers for tests and examples: locating the shared real data sets."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path | None:
    """Return the directory holding the shared real data sets, or ``None``.

    Looks at ``$PRECIPDIFF_SHARED_DATA`` first, then ``../shared/data`` relative
    to the repository root (where CI places it).

    Returns
    -------
    pathlib.Path or None
        The directory, or ``None`` when it cannot be found.
    """
    env = os.environ.get("PRECIPDIFF_SHARED_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[3]
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None
