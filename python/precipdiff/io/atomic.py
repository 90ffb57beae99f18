"""Atomic publication of files and directories, with the permissions the umask gives.

Everything precipdiff writes (netCDF outputs, stream files, restarts, manifests, bundles,
compiled networks) is built under a hidden temporary name next to its destination and
renamed onto it when complete, so a reader never sees a half-written file. Python's
:func:`tempfile.mkstemp` / :func:`tempfile.mkdtemp` create ``0600`` / ``0700`` entries
whatever the umask; before the rename, :func:`publish_permissions` gives them the mode a
plain ``open()`` / ``mkdir()`` would have had (``0666`` / ``0777`` minus the umask), so
colleagues on shared HPC space can read results and shared bundles when the umask allows.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "current_umask", "publish_permissions"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """Return the process umask without changing it.

    Reads ``/proc/self/status`` (Linux >= 4.7); elsewhere sets and restores it under a
    lock (``os.umask`` has no read-only form).

    Returns
    -------
    int
        The umask, e.g. ``0o022``.
    """
    try:
        text = Path("/proc/self/status").read_text()
        m = re.search(r"^Umask:\s*([0-7]+)\s*$", text, re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def publish_permissions(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` (or ``mkdir()``) would have given it.

    Parameters
    ----------
    path : str or os.PathLike
        A file (or, with ``directory=True``, a directory) made by ``tempfile``.
    directory : bool
        ``path`` is a directory (``0777`` minus the umask, else ``0666`` minus it).
    """
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched,
    so a reader never sees a half-written file. The published file has the mode the
    umask gives (not ``tempfile``'s ``0600``).

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.

    Yields
    ------
    pathlib.Path
        Temporary file in the same directory (same filesystem, so the rename is atomic).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish_permissions(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    text : str
        Content (UTF-8).
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
