"""netCDF restart files of the embedded-server plugin.

A restart file holds everything that makes a restarted run continue bit for bit:

* the window accumulator (float64 sums on the ESM grid and sample counts per
  field), the window index and the expected next model time;
* the random-number state -- which is fully determined by the window index,
  because window ``n`` seeds its generator from ``(seed, n)``; the identity
  attributes (seed, members, ...) are checked on reading;
* in lagged mode, the pending result (all members) of the window whose inference
  ran in the background and has not been handed back yet;
* the result currently handed back, so ``output_fine``/``output_model`` return
  the same values after a restart.

* the running state of online bias correction (:class:`precipdiff.qdm.OnlineQDM`:
  the trailing projection quantiles and the sample buffer of the current group),
  in the netCDF group ``bias_state``;
* the ESM grid's coordinates (``lat``, ``lon``) and the identity of the run (global
  attributes ``id_*``: bundle, seed, members, window, sampler steps, mass
  conservation, returned field, reference time, calendar, bias correction,
  remapping): a restart is refused, naming the difference, unless all of them match.
  A grid of the same shape with other coordinates (flipped or shifted) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.errors import InputError

#: Format 2 added the grid coordinates and the full identity; format-1 files cannot be
#: checked against this run and are refused.
RESTART_FORMAT = "precipdiff-restart-2"


@dataclass
class RestartState:
    """The plugin state stored in a restart file.

    Parameters
    ----------
    sums : Mapping[str, numpy.ndarray]
        Accumulated sums per field on the ESM grid (float64).
    counts : Mapping[str, int]
        Number of samples accumulated per field.
    steps_in_window : int
        Steps taken in the current window.
    window : int
        Index of the open window, -1 before the first step.
    next_time : float
        Model time the next step must have (NaN before the first step).
    ready_window : int
        Window whose result is handed back, -1 for none.
    members : numpy.ndarray or None
        All members (mm/day) of ``ready_window``.
    pending_window : int
        Window whose lagged result is pending, -1 for none.
    pending : numpy.ndarray or None
        All members (mm/day) of ``pending_window``.
    bias_state : Mapping[str, numpy.ndarray]
        Running bias-correction state (may be empty).
    lat, lon : numpy.ndarray
        The ESM grid's coordinates (degrees).
    """

    sums: Mapping[str, np.ndarray]
    counts: Mapping[str, int]
    steps_in_window: int
    window: int
    next_time: float
    ready_window: int
    members: np.ndarray | None
    pending_window: int
    pending: np.ndarray | None
    bias_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    lat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lon: np.ndarray = field(default_factory=lambda: np.zeros(0))


#: Identity keys added after format 2, with the value a file written before them implies.
# Keys added after format 2 was introduced: what files written before them mean.
_IDENTITY_DEFAULTS = {"precision": "float32", "output_calibration": 0}


def write_restart_file(path: str | Path, state: RestartState, identity: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file (overwritten).
    state : RestartState
        The state to store.
    identity : Mapping[str, Any]
        Settings a reader must match (bundle id, seed, members, window, grids);
        stored as global attributes.

    Raises
    ------
    InputError
        When the file cannot be written.
    """
    from precipdiff.io import cf, import_netcdf4
    from precipdiff.io.atomic import atomic_path

    nc4 = import_netcdf4()
    names = list(state.sums)
    shape = (state.lat.size, state.lon.size)
    try:
        with atomic_path(path) as tmp, nc4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.Conventions = cf.CONVENTIONS
            ds.title = "precipdiff plugin restart"
            ds.restart_format = RESTART_FORMAT
            for k, v in identity.items():
                ds.setncattr(f"id_{k}", v)
            ds.steps_in_window = np.int64(state.steps_in_window)
            ds.window = np.int64(state.window)
            ds.next_time = np.float64(state.next_time)
            ds.ready_window = np.int64(state.ready_window)
            ds.pending_window = np.int64(state.pending_window)
            ds.createDimension("lat", shape[0])
            ds.createDimension("lon", shape[1])
            for axis, values, units in (
                ("lat", state.lat, "degrees_north"),
                ("lon", state.lon, "degrees_east"),
            ):
                coord = ds.createVariable(axis, "f8", (axis,))
                coord.setncatts(cf.coordinate_attributes(axis))
                coord.units = units
                coord[:] = values
            for name in names:
                var = ds.createVariable(f"sum_{name}", "f8", ("lat", "lon"))
                var.long_name = f"sum of {name} over the open window's steps"
                var.sample_count = np.int64(state.counts[name])
                var[:] = state.sums[name]
            for key, arr in (("members", state.members), ("pending", state.pending)):
                if arr is None:
                    continue
                if "member" not in ds.dimensions:
                    ds.createDimension("member", arr.shape[0])
                    ds.createDimension("lat_f", arr.shape[1])
                    ds.createDimension("lon_f", arr.shape[2])
                var = ds.createVariable(key, "f8", ("member", "lat_f", "lon_f"))
                var.long_name = f"{key} window's generated precipitation, every member"
                var.units = "mm day-1"
                var[:] = arr
            grp = ds.createGroup("bias_state")
            for i, (key, arr) in enumerate(state.bias_state.items()):
                a = np.asarray(arr)
                dims = []
                for j, n in enumerate(a.shape):
                    dname = f"d{i}_{j}"
                    grp.createDimension(dname, n)
                    dims.append(dname)
                var = grp.createVariable(f"v{i}", a.dtype.str.lstrip("<>=|"), tuple(dims))
                var.long_name = f"bias-correction state {key}"
                var.key = key
                var[...] = a
    except OSError as exc:
        raise InputError(f"could not write restart file {str(path)!r}: {exc}") from exc


def read_restart_file(
    path: str | Path, identity: Mapping[str, Any], lat: np.ndarray, lon: np.ndarray
) -> RestartState:
    """Read a restart file and check it belongs to this configuration.

    Parameters
    ----------
    path : str or pathlib.Path
        Restart file.
    identity : Mapping[str, Any]
        Settings that must match the ones stored.
    lat, lon : numpy.ndarray
        The ESM grid's coordinates; the stored ones must be equal (to 1e-9 degrees).

    Returns
    -------
    RestartState
        The stored state.

    Raises
    ------
    InputError
        Missing or unreadable file, wrong format, another grid (even of the same
        shape), or mismatched settings.
    """
    from precipdiff.io import import_netcdf4

    p = Path(path)
    if not p.is_file():
        raise InputError(f"restart file {str(p)!r} does not exist")
    nc4 = import_netcdf4()
    try:
        ds = nc4.Dataset(str(p), "r")
    except OSError as exc:
        raise InputError(f"restart file {str(p)!r} is not a readable netCDF file: {exc}") from exc
    with ds:
        ds.set_auto_mask(False)
        attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
        if attrs.get("restart_format") == "precipdiff-restart-1":
            raise InputError(
                f"restart file {str(p)!r} has the older format precipdiff-restart-1, which "
                "lacks the grid coordinates and settings needed to check that it belongs to "
                "this run; restart from a file written by this version (or start the run "
                "from its initial state)"
            )
        if attrs.get("restart_format") != RESTART_FORMAT:
            raise InputError(
                f"restart file {str(p)!r} is not a precipdiff restart (restart_format = "
                f"{attrs.get('restart_format')!r}, expected {RESTART_FORMAT!r})"
            )
        _check_grid(p, ds, lat, lon)
        for key, want in identity.items():
            have = attrs.get(f"id_{key}", _IDENTITY_DEFAULTS.get(key))
            if isinstance(have, np.generic):
                have = have.item()
            same = have is not None and (
                math.isclose(float(have), float(want))
                if isinstance(want, float)
                else str(have) == str(want)
            )
            if not same:
                raise InputError(
                    f"restart file {str(p)!r} was written with {key} = {have!r}, but this run "
                    f"has {key} = {want!r}"
                )
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        fields = str(identity.get("fields", "")).split(",") if identity.get("fields") else []
        for name in fields:
            var = ds.variables.get(f"sum_{name}")
            if var is None:
                raise InputError(f"restart file {str(p)!r} has no accumulator for field {name!r}")
            arr = np.asarray(var[:], dtype=np.float64)
            if arr.shape != (lat.size, lon.size):
                raise InputError(
                    f"restart file {str(p)!r}: accumulator {name!r} has shape {arr.shape}, the "
                    f"ESM grid is {(lat.size, lon.size)}"
                )
            sums[name] = arr
            counts[name] = int(var.getncattr("sample_count"))

        def opt(name: str) -> np.ndarray | None:
            v = ds.variables.get(name)
            return None if v is None else np.asarray(v[:], dtype=np.float64)

        bias: dict[str, np.ndarray] = {}
        if "bias_state" in ds.groups:
            for var in ds.groups["bias_state"].variables.values():
                bias[str(var.getncattr("key"))] = np.array(var[...])
        return RestartState(
            sums=sums,
            counts=counts,
            steps_in_window=int(attrs["steps_in_window"]),
            window=int(attrs["window"]),
            next_time=float(attrs["next_time"]),
            ready_window=int(attrs["ready_window"]),
            members=opt("members"),
            pending_window=int(attrs["pending_window"]),
            pending=opt("pending"),
            bias_state=bias,
            lat=np.asarray(lat, dtype=np.float64),
            lon=np.asarray(lon, dtype=np.float64),
        )


def _check_grid(path: Path, ds: Any, lat: np.ndarray, lon: np.ndarray) -> None:
    """Refuse a restart written on another ESM grid, naming the first difference."""
    for axis, want in (("lat", np.asarray(lat, np.float64)), ("lon", np.asarray(lon, np.float64))):
        var = ds.variables.get(axis)
        have = None if var is None else np.asarray(var[:], dtype=np.float64)
        if have is None or have.shape != want.shape:
            n = "none" if have is None else str(have.size)
            raise InputError(
                f"restart file {str(path)!r} was written on another ESM grid: {n} {axis} "
                f"values there, {want.size} here"
            )
        diff = np.flatnonzero(~np.isclose(have, want, rtol=0.0, atol=1e-9))
        if diff.size:
            i = int(diff[0])
            raise InputError(
                f"restart file {str(path)!r} was written on another ESM grid of the same "
                f"shape: {axis}[{i}] is {have[i]:g} there and {want[i]:g} here "
                f"({diff.size} of {want.size} {axis} values differ; flipped or shifted grid?)"
            )
