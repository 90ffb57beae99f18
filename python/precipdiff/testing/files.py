"""Predictor files for tests: small CF netCDF files as a climate model would deliver them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from precipdiff.grids import LatLonGrid
from precipdiff.testing.models import random_predictors
from precipdiff.variables import VariableSpec, convert_units, get_variable

__all__ = ["write_predictor_files"]


def write_predictor_files(
    directory: str | os.PathLike[str],
    variables: Sequence[str | VariableSpec],
    grid: LatLonGrid,
    days: int,
    *,
    start: str = "2000-01-01",
    calendar: str = "standard",
    seed: int = 0,
    history: str | None = "2000-01-01T00:00:00Z: made by precipdiff.testing.files",
    units: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write one daily CF file per variable (CMIP-style: ``<name>.nc``, values at 12:00).

    Parameters
    ----------
    directory : str or os.PathLike
        Where the files go (created).
    variables : sequence of str or VariableSpec
        Variables, e.g. ``["hus850", "psl", "ta850"]``; values are plausible random fields
        (:func:`precipdiff.testing.models.random_predictors`) in canonical units.
    grid : LatLonGrid
        Grid of the files.
    days : int
        Number of daily records.
    start : str
        Date of the first record (``YYYY-MM-DD``).
    calendar : str
        CF calendar of the time axis.
    seed : int
        Random seed.
    history : str or None
        The files' global ``history`` attribute (``None``: none).
    units : mapping, optional
        Units to store some variables in instead of the canonical ones, e.g.
        ``{"psl": "hPa", "ta850": "degC"}`` (values converted accordingly).

    Returns
    -------
    list of pathlib.Path
        The files, in the order of ``variables``.
    """
    from precipdiff.io import import_netcdf4

    nc4 = import_netcdf4()
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [v if isinstance(v, VariableSpec) else get_variable(v) for v in variables]
    values = random_predictors(specs, grid, times=days, seed=seed)
    paths = []
    for spec in specs:
        path = out_dir / f"{spec.name}.nc"
        with nc4.Dataset(path, "w") as ds:
            ds.Conventions = "CF-1.8"
            if history is not None:
                ds.history = history
            ds.createDimension("time", None)
            ds.createDimension("lat", grid.shape[0])
            ds.createDimension("lon", grid.shape[1])
            t = ds.createVariable("time", "f8", ("time",))
            t.units = f"days since {start} 00:00:00"
            t.calendar = calendar
            t.standard_name = "time"
            t[:] = np.arange(days) + 0.5
            for name, vals, cunits in (
                ("lat", grid.lat, "degrees_north"),
                ("lon", grid.lon, "degrees_east"),
            ):
                c = ds.createVariable(name, "f8", (name,))
                c.units = cunits
                c.standard_name = "latitude" if name == "lat" else "longitude"
                c[:] = vals
            v = ds.createVariable(spec.name, "f4", ("time", "lat", "lon"))
            given = (units or {}).get(spec.name, spec.units)
            # the file's units -> canonical is linear: invert it for the stored values
            b = float(convert_units(np.array([0.0]), given, spec.units)[0])
            a = float(convert_units(np.array([1.0]), given, spec.units)[0]) - b
            v.units = given
            v.standard_name = spec.standard_name
            v[:] = (values[spec.name] - b) / a
        paths.append(path)
    return paths
