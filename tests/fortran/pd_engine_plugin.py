"""The real Plugin with a small deterministic engine, for Fortran tests of the server logic.

Selected with PRECIPDIFF_PLUGIN_CLASS=pd_engine_plugin:EnginePlugin (this directory on
PYTHONPATH). Everything but the networks is the production code path: namelist,
window clock, accumulator, remapping, seeds, output selection, restart files. The
engine needs ``hus850`` and ``psl``; its coarse grid is the ESM grid and its fine grid
the ESM grid refined 2x; member ``k`` of window ``n`` is the sum of the window means
(in arbitrary units) plus noise drawn from ``window_seed_sequence(seed, n, k)``, so
results depend on the window means, the window index and the seed, as the real
generator's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from precipdiff.server.config import PluginConfig
from precipdiff.server.engine import PredictorSpec, window_seed_sequence
from precipdiff.server.plugin import Plugin


def _refine(x: np.ndarray) -> np.ndarray:
    """Cell centres of a grid twice as fine covering the same cells (regular spacing)."""
    d = float(x[1] - x[0]) if x.size > 1 else 1.0
    return np.concatenate([[c - d / 4, c + d / 4] for c in x])


class ArithmeticEngine:
    """InferenceEngine with arithmetic the tests can reason about."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray) -> None:
        self.predictors = [PredictorSpec("hus850", 850.0), PredictorSpec("psl")]
        self.coarse_lon, self.coarse_lat = np.asarray(lon, float), np.asarray(lat, float)
        self.fine_lon, self.fine_lat = _refine(self.coarse_lon), _refine(self.coarse_lat)
        self.bundle_id = "arithmetic-engine-1"

    def generate(
        self,
        predictors: Mapping[str, np.ndarray],
        members: int,
        seed: int,
        window: int,
        steps: int | None,
        conserve_mass: bool,
        member_offset: int = 0,
    ) -> np.ndarray:
        base = 1000.0 * predictors["hus850"][0] + (predictors["psl"][0] - 1.0e5) / 100.0
        fine = np.kron(base, np.ones((2, 2)))
        out = np.empty((members, *fine.shape))
        for k in range(members):
            rng = np.random.default_rng(window_seed_sequence(seed, window, member_offset + k))
            out[k] = np.abs(fine) + rng.random(fine.shape)
        return out

    def bias_correct(self, predictors: dict[str, np.ndarray], date: Any) -> dict[str, np.ndarray]:
        return predictors

    def bias_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_bias_state(self, state: Mapping[str, np.ndarray]) -> None:
        return None


class EnginePlugin(Plugin):
    """Plugin.from_namelist with the arithmetic engine instead of a bundle."""

    @classmethod
    def from_namelist(  # type: ignore[override]
        cls,
        nml_path: str,
        lon: np.ndarray,
        lat: np.ndarray,
        *,
        rank: int | None = None,
        member_comm: Any = None,
        engine: Any = None,
    ) -> EnginePlugin:
        config = PluginConfig.from_namelist(nml_path)
        return cls(config, lon, lat, ArithmeticEngine(lon, lat), rank=rank)
