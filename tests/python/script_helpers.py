"""Load a repository script (bench/, scripts/, examples/) as a module, to test its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(rel: str) -> ModuleType:
    """Import ``REPO/rel`` under its file stem, registered in ``sys.modules``.

    Registering lets dataclasses and pickling inside the script resolve their module.
    """
    path = REPO / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod
