"""Static input channels computed from a grid (positional encodings).

A denoiser trained on random patches, or on a small regional grid, cannot know
where it is unless it is told: Iberian winter rain is bound to its mountains
and coasts. Static channels give it that: fields that do not change in time,
appended to the condition. Some are stored in the bundle
(``statics.safetensors``: climatologies, masks); the ones below are computed
from the bundle's grid at load time, so they never disagree with it:

* ``lat_ramp``, ``lon_ramp``: position across the grid, from -1 (first row /
  column) to 1 (last) -- regional grids;
* ``sin_lat``, ``cos_lat``, ``sin_lon``, ``cos_lon``: of the cell-centre
  coordinates -- global grids (continuous across the dateline).
"""

from __future__ import annotations

import numpy as np

from precipdiff.grids import LatLonGrid

#: Names of the static channels computed from the grid.
COMPUTED_STATICS = ("lat_ramp", "lon_ramp", "sin_lat", "cos_lat", "sin_lon", "cos_lon")


def computed_static(name: str, grid: LatLonGrid) -> np.ndarray | None:
    """Return a computed static channel on ``grid``, or ``None`` if ``name`` is not one.

    Parameters
    ----------
    name
        Channel name (:data:`COMPUTED_STATICS`).
    grid
        The grid.

    Returns
    -------
    numpy.ndarray or None
        ``(nlat, nlon)`` float32.
    """
    nlat, nlon = grid.shape
    ones = np.ones((nlat, nlon))
    lat = np.deg2rad(np.asarray(grid.lat, np.float64))[:, None] * ones
    lon = np.deg2rad(np.asarray(grid.lon, np.float64))[None, :] * ones
    if name == "lat_ramp":
        out = np.linspace(-1.0, 1.0, nlat)[:, None] * ones if nlat > 1 else 0 * ones
    elif name == "lon_ramp":
        out = np.linspace(-1.0, 1.0, nlon)[None, :] * ones if nlon > 1 else 0 * ones
    elif name == "sin_lat":
        out = np.sin(lat)
    elif name == "cos_lat":
        out = np.cos(lat)
    elif name == "sin_lon":
        out = np.sin(lon)
    elif name == "cos_lon":
        out = np.cos(lon)
    else:
        return None
    return np.asarray(out, np.float32)
