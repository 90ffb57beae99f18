"""Bundles by name: ``iberia-demo`` resolves to a directory wherever precipdiff is installed.

A bundle argument (CLI, namelist ``bundle_path``, :func:`precipdiff.bundle.load_bundle`,
:func:`precipdiff.bundle.read_manifest`) that is not an existing path and has no path
separator is looked up by name, in this order:

1. the directories of ``$PRECIPDIFF_MODEL_PATH`` (``:``-separated), each holding bundles
   as sub-directories (a site's shared model store);
2. the bundles shipped inside the installed package (``precipdiff/models/<name>``: the
   wheel carries the small shipped bundles, see ``setup.py``);
3. ``models/`` of the source checkout the package runs from (editable installs).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from precipdiff.errors import BundleError

__all__ = ["find_bundle", "model_directories", "shipped_bundles"]

MANIFEST_NAME = "manifest.json"


def model_directories() -> list[Path]:
    """Directories searched for bundles by name, in order.

    Returns
    -------
    list of pathlib.Path
        Existing directories only.
    """
    dirs = [Path(p) for p in os.environ.get("PRECIPDIFF_MODEL_PATH", "").split(os.pathsep) if p]
    try:
        packaged = resources.files("precipdiff") / "models"
        if packaged.is_dir():
            dirs.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - odd loaders
        pass
    checkout = Path(__file__).resolve().parents[3] / "models"
    if (checkout.parent / "pyproject.toml").is_file():
        dirs.append(checkout)
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def shipped_bundles() -> dict[str, Path]:
    """Bundles findable by name (the first of each name in search order).

    Returns
    -------
    dict
        ``{name: directory}``.
    """
    found: dict[str, Path] = {}
    for d in model_directories():
        for m in sorted(d.glob(f"*/{MANIFEST_NAME}")):
            found.setdefault(m.parent.name, m.parent)
    return found


def find_bundle(name_or_path: str | os.PathLike[str]) -> Path:
    """Return the bundle directory for a path or a bundle name.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        An existing path (returned unchanged), or a bare name such as ``iberia-demo``.

    Returns
    -------
    pathlib.Path
        The bundle directory (or the path as given).

    Raises
    ------
    BundleError
        A bare name that no search directory holds (the message lists what is available
        and where it looked).
    """
    p = Path(name_or_path)
    text = str(name_or_path)
    if p.exists() or os.sep in text or "/" in text or text in ("", ".", ".."):
        return p
    bundles = shipped_bundles()
    if text in bundles:
        return bundles[text]
    where = ", ".join(str(d) for d in model_directories()) or "none"
    raise BundleError(
        f"model bundle {text!r} is neither a directory nor a known bundle name; known: "
        f"{sorted(bundles) or 'none'} (searched $PRECIPDIFF_MODEL_PATH and the shipped "
        f"bundles: {where})"
    )
