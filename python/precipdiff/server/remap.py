"""Remapping between the ESM grid and the bundle's grids inside the plugin.

Window means go from the ESM grid to the bundle's coarse grid (bilinear or
conservative, or a SCRIP/ESMF weight file for any grid); the handed-back field
goes from the fine grid to the ESM grid (conservative, or a weight file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from precipdiff.errors import ConfigError, InputError, PrecipDiffError
from precipdiff.server.config import PluginConfig
from precipdiff.server.engine import InferenceEngine

__all__ = ["FlatRegridder", "build_regridders", "check_coords"]

log = logging.getLogger(__name__)


def check_coords(name: str, values: np.ndarray) -> np.ndarray:
    """Return the ESM grid's 1-D coordinate ``name`` as float64, checked.

    Parameters
    ----------
    name : str
        ``"lon"`` or ``"lat"`` (for messages).
    values : numpy.ndarray
        The coordinate values in degrees.

    Returns
    -------
    numpy.ndarray
        1-D float64 copy or view.

    Raises
    ------
    InputError
        When empty, not 1-D or not finite.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise InputError(f"ESM grid {name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"ESM grid {name} has non-finite values")
    return arr


def build_regridders(
    config: PluginConfig,
    lon: np.ndarray,
    lat: np.ndarray,
    engine: InferenceEngine,
    fine_shape: tuple[int, int],
) -> tuple[Any, Any]:
    """Return the (model -> coarse, fine -> model) remapping callables on 2-D arrays.

    Parameters
    ----------
    config : PluginConfig
        Namelist settings (``remap_method``, ``weights_to_bundle``, ``weights_to_model``).
    lon, lat : numpy.ndarray
        The ESM grid's coordinates (only the shape with both weight files).
    engine : InferenceEngine
        Gives the bundle's coarse and fine grids.
    fine_shape : tuple of int
        ``(nlat_f, nlon_f)``.

    Returns
    -------
    tuple
        ``(to_coarse, to_model)``.

    Raises
    ------
    ConfigError
        A weight file that does not exist.
    GridError
        Grids that cannot be remapped.
    """
    from precipdiff.grids import LatLonGrid, Regridder
    from precipdiff.io.scrip import read_scrip_weights

    model_shape = (lat.size, lon.size)
    coarse = LatLonGrid(lat=np.asarray(engine.coarse_lat), lon=np.asarray(engine.coarse_lon))
    fine = LatLonGrid(lat=np.asarray(engine.fine_lat), lon=np.asarray(engine.fine_lon))
    model: LatLonGrid | None = None
    if not (config.weights_to_bundle and config.weights_to_model):
        model = LatLonGrid(lat=lat, lon=lon)

    if config.weights_to_bundle:
        _check_file("weights_to_bundle", config.weights_to_bundle)
        to_coarse: Callable[[np.ndarray], np.ndarray] = FlatRegridder(
            read_scrip_weights(config.weights_to_bundle), model_shape, coarse.shape
        )
    else:
        assert model is not None
        method: Literal["bilinear", "conservative"] = (
            "bilinear" if config.remap_method == "bilinear" else "conservative"
        )
        to_coarse = Regridder(model, coarse, method=method)
    log.info(
        "remapping ESM fields %s to the bundle's coarse grid %r (%s)",
        model if model is not None else f"{model_shape[0]}x{model_shape[1]}",
        coarse,
        f"weights {config.weights_to_bundle}" if config.weights_to_bundle else method,
    )
    if config.weights_to_model:
        _check_file("weights_to_model", config.weights_to_model)
        to_model: Callable[[np.ndarray], np.ndarray] = FlatRegridder(
            read_scrip_weights(config.weights_to_model), fine_shape, model_shape
        )
    else:
        assert model is not None
        to_model = Regridder(fine, model, method="conservative")
    log.info(
        "remapping generated precipitation %r back to the ESM grid (%s)",
        fine,
        f"weights {config.weights_to_model}" if config.weights_to_model else "conservative",
    )
    return to_coarse, to_model


class FlatRegridder:
    """Apply a SCRIP regridder to 2-D arrays whose memory is the flat grid."""

    def __init__(self, regridder: Any, src_shape: tuple[int, int], dst_shape: tuple[int, int]):
        self.regridder = regridder
        self.src_shape = src_shape
        self.dst_shape = dst_shape

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """Remap one field given in the source grid's flat memory layout.

        Parameters
        ----------
        field : numpy.ndarray
            Source field (any shape with the source grid's number of points).

        Returns
        -------
        numpy.ndarray
            Destination field shaped ``dst_shape``.
        """
        src = getattr(self.regridder, "src_shape", None)
        x = field.reshape(src) if src is not None else field
        try:
            y = np.asarray(self.regridder(x))
        except PrecipDiffError:
            raise
        except Exception as exc:
            raise InputError(
                f"SCRIP weights do not fit a field of shape {field.shape}: {exc}"
            ) from exc
        if y.size != self.dst_shape[0] * self.dst_shape[1]:
            raise InputError(
                f"SCRIP weights produce {y.size} points, the destination grid has "
                f"{self.dst_shape[0]}x{self.dst_shape[1]}"
            )
        return y.reshape(self.dst_shape)


def _check_file(key: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"precipdiff_nml: {key} = {path!r} does not exist")
