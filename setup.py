"""Build hook: the small shipped model bundles go into the wheel as package data.

``pip install precipdiff`` then gives ``precipdiff inspect iberia-demo`` etc. outside a
checkout (:mod:`precipdiff.bundle.registry` finds them by name). Everything else is
declared in pyproject.toml. Only the files a bundle needs are shipped (manifest, weights,
model card, evaluation): no figures, no machine-specific compiled networks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED_FILES = (
    "manifest.json",
    "*.safetensors",
    "MODEL_CARD.md",
    "EVALUATION.md",
    "evaluation.json",
)
# Bundles that stay in the checkout only: models/speedy-t30 (6 MB of weights) serves the
# SPEEDY example (examples/speedy, docs/speedy.md), which needs a checkout and SPEEDY's source;
# models/iberia-demo-distilled (the demo's two-evaluation student, 4.7 MB) is reproducible from
# the shipped demo with `precipdiff train distill configs/iberia_demo.yaml`.
NOT_SHIPPED = frozenset({"speedy-t30", "iberia-demo-distilled"})


class BuildPyWithModels(build_py):
    """``build_py`` that also copies ``models/<name>/`` into ``precipdiff/models/<name>/``."""

    def run(self) -> None:
        """Build the package, then add the shipped bundles."""
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds the checkout's models/ directly
        dst = Path(self.build_lib) / "precipdiff" / "models"
        for manifest in sorted((ROOT / "models").glob("*/manifest.json")):
            if manifest.parent.name in NOT_SHIPPED:
                continue
            out = dst / manifest.parent.name
            out.mkdir(parents=True, exist_ok=True)
            for pattern in SHIPPED_FILES:
                for f in sorted(manifest.parent.glob(pattern)):
                    shutil.copy2(f, out / f.name)


setup(
    cmdclass={"build_py": BuildPyWithModels},
    # build/ is the CMake build tree: keep setuptools' staging in a sub-directory of its own
    options={"build": {"build_base": "build/setuptools"}},
)
