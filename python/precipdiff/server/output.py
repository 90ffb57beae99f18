"""Output stream: every member of the fine-grid precipitation to CF netCDF files.

One process (the namelist's ``output_rank``) writes one file per month or year,
``<output_dir>/<output_prefix>_<YYYY-MM>.nc`` or ``..._<YYYY>.nc``, with
``pr(time, member, lat, lon)`` for every window, the window bounds as
``time_bnds`` and the run's metadata (bundle id, effective namelist, seed) as
global attributes. The ESM's own diagnostics never see the fine grid.

Each window is written and flushed when it is handed back; a restarted run
re-opens the file of its month and overwrites windows it writes again (the
time value identifies the window), so restart + rerun leaves no duplicates.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.errors import InputError
from precipdiff.server.config import PluginConfig

MM_PER_DAY_TO_KG_M2_S = 1.0 / 86400.0


class OutputStream:
    """Writer of the fine-grid ensemble, one netCDF file per month or year.

    Parameters
    ----------
    config : PluginConfig
        Namelist settings (``output_dir``, ``output_frequency``, ``output_prefix``,
        ``output_units``, ``reference_time``, ``calendar``, ``window_s``,
        ``members``).
    fine_lat, fine_lon : numpy.ndarray
        Fine-grid coordinates in degrees.
    bundle_id : str
        Identifier (hash) of the model bundle, recorded in every file.
    """

    def __init__(
        self,
        config: PluginConfig,
        fine_lat: np.ndarray,
        fine_lon: np.ndarray,
        bundle_id: str,
    ) -> None:
        from precipdiff.grids import LatLonGrid

        self.config = config
        self.directory = Path(config.output_dir)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"precipdiff_nml: output_dir = {config.output_dir!r} cannot be created: {exc}"
            ) from exc
        self.grid = LatLonGrid(lat=np.asarray(fine_lat), lon=np.asarray(fine_lon))
        self.bundle_id = bundle_id
        ref = config.reference_time.strip().replace("T", " ")
        if len(ref) <= 10:
            ref += " 00:00:00"
        self.time_units = f"seconds since {ref}"
        self._ds: Any = None
        self._path: Path | None = None

    def file_for(self, window: int) -> Path:
        """Return the file that window ``window`` is written to.

        Parameters
        ----------
        window : int
            Window index.

        Returns
        -------
        pathlib.Path
            ``<output_dir>/<prefix>_<YYYY-MM>.nc`` (monthly) or ``_<YYYY>.nc``.
        """
        import cftime

        start = cftime.num2date(
            window * self.config.window_s, self.time_units, calendar=self.config.calendar
        )
        tag = (
            f"{start.year:04d}"
            if self.config.output_frequency == "year"
            else (f"{start.year:04d}-{start.month:02d}")
        )
        return self.directory / f"{self.config.output_prefix}_{tag}.nc"

    def write(self, window: int, members_mm: np.ndarray) -> None:
        """Write all members of one window.

        Parameters
        ----------
        window : int
            Window index (its time bounds are ``[n, n + 1) * window_s``).
        members_mm : numpy.ndarray
            ``(members, nlat_f, nlon_f)`` precipitation in mm/day.
        """
        path = self.file_for(window)
        if path != self._path:
            self._close_file()
            self._open(path)
        ds = self._ds
        w = self.config.window_s
        t0, t1 = window * w, (window + 1) * w
        times = np.asarray(ds.variables["time_bnds"][:, 0], dtype=np.float64)
        hit = np.flatnonzero(np.isclose(times, t0, rtol=0.0, atol=1e-3))
        i = int(hit[0]) if hit.size else times.size
        factor = MM_PER_DAY_TO_KG_M2_S if self.config.output_units == "kg m-2 s-1" else 1.0
        ds.variables["time"][i] = 0.5 * (t0 + t1)
        ds.variables["time_bnds"][i, :] = [t0, t1]
        ds.variables["pr"][i] = (members_mm * factor).astype(np.float32)
        ds.sync()

    def close(self) -> None:
        """Close the open file (idempotent)."""
        self._close_file()

    def _close_file(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None
            self._path = None

    def _open(self, path: Path) -> None:
        from precipdiff import __version__
        from precipdiff.io import import_netcdf4

        nc4 = import_netcdf4()
        cfg = self.config
        if path.exists():
            try:
                ds = nc4.Dataset(str(path), "a")
            except OSError as exc:
                raise InputError(f"output file {str(path)!r} cannot be reopened: {exc}") from exc
            if "pr" not in ds.variables or len(ds.dimensions["member"]) != cfg.members:
                ds.close()
                raise InputError(
                    f"output file {str(path)!r} exists but was not written by a precipdiff run "
                    f"with members = {cfg.members}; move it away or change output_dir"
                )
            self._ds, self._path = ds, path
            return
        ds = nc4.Dataset(str(path), "w", format="NETCDF4")
        nlat, nlon = self.grid.shape
        ds.createDimension("time", None)
        ds.createDimension("bnds", 2)
        ds.createDimension("member", cfg.members)
        ds.createDimension("lat", nlat)
        ds.createDimension("lon", nlon)
        t = ds.createVariable("time", "f8", ("time",))
        t.standard_name = "time"
        t.units = self.time_units
        t.calendar = cfg.calendar
        t.bounds = "time_bnds"
        t.axis = "T"
        tb = ds.createVariable("time_bnds", "f8", ("time", "bnds"))
        tb.units = self.time_units
        tb.calendar = cfg.calendar
        m = ds.createVariable("member", "i4", ("member",))
        m.long_name = "ensemble member (1-based)"
        m[:] = np.arange(1, cfg.members + 1, dtype=np.int32)
        for name, vals, bnds, std, units in (
            ("lat", self.grid.lat, self.grid.lat_bounds, "latitude", "degrees_north"),
            ("lon", self.grid.lon, self.grid.lon_bounds, "longitude", "degrees_east"),
        ):
            v = ds.createVariable(name, "f8", (name,))
            v.standard_name = std
            v.units = units
            v.bounds = f"{name}_bnds"
            v[:] = vals
            b = ds.createVariable(f"{name}_bnds", "f8", (name, "bnds"))
            b[:] = bnds
        pr = ds.createVariable(
            "pr",
            "f4",
            ("time", "member", "lat", "lon"),
            zlib=True,
            complevel=1,
            chunksizes=(1, 1, nlat, nlon),
        )
        if cfg.output_units == "kg m-2 s-1":
            pr.standard_name = "precipitation_flux"
            pr.units = "kg m-2 s-1"
        else:
            pr.standard_name = "lwe_precipitation_rate"
            pr.units = "mm day-1"
        pr.long_name = "precipitation generated by precipdiff (window mean)"
        pr.cell_methods = "time: mean"
        ds.Conventions = "CF-1.8"
        ds.title = "precipdiff fine-grid precipitation ensemble"
        ds.source = f"precipdiff {__version__} (arXiv 2504.00307 method, online)"
        ds.bundle_id = self.bundle_id
        ds.seed = np.int64(cfg.seed)
        ds.members = np.int64(cfg.members)
        ds.window_s = np.float64(cfg.window_s)
        ds.return_mode = cfg.return_mode
        ds.inference = cfg.inference
        ds.bias_correction = "on" if cfg.bias_correction else "off"
        ds.namelist = cfg.to_namelist_text()
        ds.history = (
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} "
            "created by the precipdiff output stream"
        )
        ds.sync()
        self._ds, self._path = ds, path
